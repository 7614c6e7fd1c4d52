//! Check-ins with the real binaries: `vigil run` checking in with `vigil receive
//! --checkin-dir`, keys and manifests made by `vigil keygen` and `vigil sign-module`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::upload::Receiver;

const T: Duration = Duration::from_secs(60);

/// A check-in server (`vigil receive --checkin-dir`) with its own signing key.
struct Server {
    tmp: tempfile::TempDir,
    receiver: Receiver,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkin");
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        run_ok(Command::new(vigil()).arg("keygen").arg("--out").arg(tmp.path().join("signer")));
        let mut args = vec!["--checkin-dir".to_string(), dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let receiver = Receiver::start_with(
            "127.0.0.1:0",
            &tmp.path().join("out.jsonl"),
            &tmp.path().join("recv.log"),
            &args,
        );
        Server { tmp, receiver }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("checkin")
    }

    fn key(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Agent config: fast supervision and collection, check-ins every 0.3 s, `extra` appended.
    fn config(&self, supervisor: &str, extra: &str) -> String {
        format!(
            "{}\n[collectors]\ninterval_secs = 0.2\n[collectors.time_drift]\nenabled = false\n\
             [collectors.dns]\nenabled = false\n\n\
             [checkin]\nurl = \"http://{}/v1/checkin\"\ninterval_secs = 0.3\npublic_key_file = \"{}\"\n{extra}",
            fast_config(supervisor),
            self.receiver.addr,
            self.key("signer.pub").display()
        )
    }

    /// Publishes `bytes` as module `version`, signed with `key` (a `vigil keygen` prefix),
    /// and offers it in module.json.
    fn offer_module(&self, version: &str, bytes: &[u8], key: &str) -> Value {
        let file = self.dir().join("modules").join(version);
        std::fs::write(&file, bytes).unwrap();
        let manifest = self.sign(&file, version, key);
        std::fs::write(self.dir().join("module.json"), manifest.to_string()).unwrap();
        manifest
    }

    fn sign(&self, file: &Path, version: &str, key: &str) -> Value {
        let out = run_ok(
            Command::new(vigil())
                .arg("sign-module")
                .arg(file)
                .arg("--key")
                .arg(self.key(&format!("{key}.key")))
                .args(["--version", version]),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("sign-module printed no manifest ({e}): {out}"))
    }

    /// Every check-in request received so far.
    fn checkins(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir().join("checkins.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["request"].clone())
            .collect()
    }

    /// Waits for a check-in request for which `pred` holds.
    fn wait_checkin(&self, agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.checkins().into_iter().find(&pred) {
                return r;
            }
            assert!(
                t0.elapsed() < T,
                "no check-in with {what}; last: {:#}\nlog:\n{}",
                self.checkins().last().cloned().unwrap_or_default(),
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn collections(status: &Value, name: &str) -> u64 {
    status["collectors"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["collections"]
        .as_u64()
        .unwrap()
}

fn collector_state(status: &Value, name: &str) -> String {
    status["collectors"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn last_change(req: &Value, kind: &str, outcome: &str) -> bool {
    req["last_change"]["kind"] == kind && req["last_change"]["outcome"] == outcome
}

#[test]
fn keygen_and_sign_module_make_a_manifest_over_version_and_sha256() {
    let s = Server::start(&[]);
    let text = std::fs::read_to_string(s.key("signer.pub")).unwrap();
    assert_eq!(text.trim().len(), 64, "32 bytes in hex: {text}");
    let mode = std::fs::metadata(s.key("signer.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Keys are never overwritten.
    let again = Command::new(vigil()).arg("keygen").arg("--out").arg(s.key("signer")).output().unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(s.key("signer.pub")).unwrap(), text);

    let m = s.offer_module("1.0", b"#!/bin/sh\nexit 0\n", "signer");
    assert_eq!(m["version"], "1.0");
    assert_eq!(m["url"], "/v1/modules/1.0");
    assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["signature"].as_str().unwrap().len(), 128);
    // The server hands out the module file.
    let (code, body) = http_get(&s.receiver.addr, "/v1/modules/1.0", None);
    assert_eq!((code, body.as_str()), (200, "#!/bin/sh\nexit 0\n"));
}

#[test]
fn checkin_settings_are_applied_by_a_graceful_restart_and_bad_ones_are_refused() {
    let s = Server::start(&[]);
    std::fs::write(s.dir().join("settings.json"), r#"{"collectors": {"cpu": {"enabled": false}}}"#).unwrap();
    let agent = Agent::start(&s.config("", ""), &[]);
    let st = agent.wait_status(T, "cpu disabled by the check-in settings", |st| {
        collector_state(st, "cpu") == "disabled"
            && st["collector"]["state"] == "running"
            && st["collector"]["incarnation"].as_u64() >= Some(2)
    });
    assert_eq!(st["collector"]["incarnation"], 2, "one restart to apply them: {st:#}");
    assert_eq!(st["collector"]["last_exit"]["reason"], "stopped", "a requested stop, not a crash: {st:#}");
    assert_eq!(st["collector"]["crash_counts"], serde_json::json!([]));
    assert_eq!(collector_state(&st, "mem"), "ok", "keys left out keep the config file's values");
    let req = s.wait_checkin(&agent, "settings applied", |r| last_change(r, "settings", "applied"));
    assert!(req["agent_id"].as_str().is_some_and(|a| a.len() == 32), "{req:#}");
    assert_eq!(req["collector"]["state"], "running");

    // Settings that do not validate are not applied, and the refusal is reported.
    let inc = agent.status()["collector"]["incarnation"].as_u64().unwrap();
    std::fs::write(
        s.dir().join("settings.json"),
        r#"{"collectors": {"cpu": {"enabled": true, "bogus": 1}}}"#,
    )
    .unwrap();
    let req = s.wait_checkin(&agent, "settings rejected", |r| last_change(r, "settings", "rejected"));
    assert!(req["last_change"]["error"].as_str().unwrap().contains("bogus"), "{req:#}");
    std::thread::sleep(Duration::from_millis(500));
    let st = agent.status();
    assert_eq!(st["collector"]["incarnation"].as_u64(), Some(inc), "no restart for invalid settings");
    assert_eq!(collector_state(&st, "cpu"), "disabled");
    assert_eq!(st["checkin"]["last_change"]["outcome"], "rejected", "{st:#}");
    assert_eq!(st["checkin"]["consecutive_failures"], 0);
}

#[test]
fn a_rotated_token_is_stored_privately_and_used_by_the_next_upload() {
    // The check-in server knows the agent's old token; the sink (another receiver) accepts
    // only the rotated one, which the agent can learn only from a check-in.
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old-token");
    std::fs::write(&old, "old-secret\n").unwrap();
    let sink_token = tmp.path().join("sink-token");
    std::fs::write(&sink_token, "rotated-secret\n").unwrap();
    let s = Server::start(&["--token-file", old.to_str().unwrap()]);
    let sink = Receiver::start_with(
        "127.0.0.1:0",
        &tmp.path().join("sink.jsonl"),
        &tmp.path().join("sink.log"),
        &["--token-file", sink_token.to_str().unwrap()],
    );
    let upload = format!(
        "\n[[upload]]\nname = \"main\"\nurl = \"ws://{}/v1/ingest\"\nflush_interval_secs = 0.3\ntoken_file = \"{}\"\n",
        sink.addr,
        old.display()
    );
    let agent = Agent::start(&s.config("", &upload), &[]);
    agent.wait_status(T, "the old token refused", |st| st["uploads"][0]["errors"].as_u64() >= Some(1));
    s.wait_checkin(&agent, "a first check-in, made with the sink's token", |_| true);
    assert!(sink.lines().is_empty(), "nothing accepted with the old token");

    std::fs::write(s.dir().join("token"), "rotated-secret\n").unwrap();
    let t0 = Instant::now();
    while sink.lines().is_empty() {
        assert!(t0.elapsed() < T, "no batch accepted after the rotation; log:\n{}", agent.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = agent.data_dir().join("upload.token");
    assert_eq!(std::fs::read_to_string(&stored).unwrap().trim(), "rotated-secret");
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);
    let req = s.wait_checkin(&agent, "token applied", |r| last_change(r, "token", "applied"));
    assert!(!req.to_string().contains("rotated-secret"), "the token itself is never reported: {req}");
    assert!(!agent.log_text().contains("rotated-secret"), "nor logged");
    // Later check-ins are made with the rotated token, which the check-in server accepts.
    let n = s.checkins().len();
    agent.wait_status(T, "more check-ins", |_| s.checkins().len() >= n + 2);
    assert_eq!(agent.status()["checkin"]["consecutive_failures"], 0, "{}", agent.log_tail());
}

#[test]
fn with_a_token_file_check_ins_need_a_token_and_the_rotated_token_opens_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = tmp.path().join("server-token");
    std::fs::write(&fixed, "server-secret\n").unwrap();
    let s = Server::start(&["--token-file", fixed.to_str().unwrap()]);
    std::fs::write(s.dir().join("token"), "rotated-secret\n").unwrap();
    let addr = &s.receiver.addr;

    // No token, or a wrong one: 401, and the token is not handed out.
    for bearer in [None, Some("wrong")] {
        let r = http_request(addr, "POST", "/v1/checkin", bearer);
        assert_eq!(r.code, 401, "{bearer:?}: {}", r.body);
        assert!(!r.body.contains("rotated-secret"));
    }
    assert!(s.checkins().is_empty(), "refused check-ins are not recorded");

    // /v1/ingest takes the --token-file token and the current DIR/token (a plain GET is not
    // a WebSocket upgrade: 400 once past the token check).
    assert_eq!(http_get(addr, "/v1/ingest", Some("wrong")).0, 401);
    assert_eq!(http_get(addr, "/v1/ingest", None).0, 401);
    assert_eq!(http_get(addr, "/v1/ingest", Some("server-secret")).0, 400);
    assert_eq!(http_get(addr, "/v1/ingest", Some("rotated-secret")).0, 400);
    // Read at every request: the next rotation counts at once.
    std::fs::write(s.dir().join("token"), "rotated-again\n").unwrap();
    assert_eq!(http_get(addr, "/v1/ingest", Some("rotated-again")).0, 400);
    assert_eq!(http_get(addr, "/v1/ingest", Some("rotated-secret")).0, 401);

    // An agent checks in with its sink's token and gets the rotated one.
    let upload = format!(
        "\n[[upload]]\nname = \"main\"\nurl = \"ws://{addr}/v1/ingest\"\nflush_interval_secs = 0.3\ntoken_file = \"{}\"\n",
        fixed.display()
    );
    let agent = Agent::start(&s.config("", &upload), &[]);
    s.wait_checkin(&agent, "token applied", |r| last_change(r, "token", "applied"));
    assert_eq!(
        std::fs::read_to_string(agent.data_dir().join("upload.token")).unwrap().trim(),
        "rotated-again"
    );
}

#[test]
fn a_signed_module_is_adopted_and_its_hello_reports_its_version() {
    let s = Server::start(&[]);
    let agent = Agent::start(&s.config("", ""), &[]);
    agent.wait_running(1, T);
    s.offer_module("2.0.0-test", &std::fs::read(vigil()).unwrap(), "signer");
    let st = agent.wait_status(T, "module 2.0.0-test running", |st| {
        let m = &st["collector"]["module"];
        m["version"] == "2.0.0-test"
            && m["state"] == "active"
            && m["reported_version"] == "2.0.0-test"
            && st["collector"]["state"] == "running"
    });
    let m = &st["collector"]["module"];
    assert_eq!(m["builtin"], false);
    assert_eq!(m["previous"], Value::Null, "the built-in collector came before");
    let pid = st["collector"]["pid"].as_i64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, agent.data_dir().join("modules/2.0.0-test/collector"));
    assert!(
        agent.log_lines("Collector is running.").iter().any(|l| l.contains("version=2.0.0-test")),
        "the Hello names the module's version"
    );
    let req = s.wait_checkin(&agent, "module applied", |r| {
        last_change(r, "module", "applied") && r["module"]["version"] == "2.0.0-test"
    });
    assert_eq!(req["last_change"]["id"], "2.0.0-test");
    // It collects.
    let before = collections(&agent.status(), "cpu");
    agent.wait_status(T, "collections by the module", |st| collections(st, "cpu") > before + 2);

    // A restart of the agent keeps the module.
    let config = s.config("", "");
    let agent = agent.restart(&config);
    let st = agent.wait_running(1, T);
    assert_eq!(st["collector"]["module"]["version"], "2.0.0-test");
}

#[test]
fn tampered_modules_are_rejected_and_never_run() {
    let s = Server::start(&[]);
    run_ok(Command::new(vigil()).arg("keygen").arg("--out").arg(s.key("intruder")));
    let agent = Agent::start(&s.config("", ""), &[]);
    agent.wait_running(1, T);
    let marker = s.tmp.path().join("module-ran");
    let script = format!("#!/bin/sh\ntouch {}\nexit 3\n", marker.display());

    // Bad sha256: the file served is not the one signed.
    let m = s.offer_module("3.0", script.as_bytes(), "signer");
    std::fs::write(s.dir().join("modules/3.0"), format!("{script}# tampered\n")).unwrap();
    let st = agent.wait_status(T, "3.0 rejected", |st| {
        st["collector"]["module"]["state"] == "rejected" && st["collector"]["module"]["candidate"] == "3.0"
    });
    assert!(st["collector"]["module"]["error"].as_str().unwrap().contains("sha256"), "{st:#}");
    let req = s.wait_checkin(&agent, "module rejected", |r| last_change(r, "module", "rejected"));
    assert_eq!(req["last_change"]["id"], "3.0");
    assert!(req["last_change"]["error"].as_str().unwrap().contains("sha256"));
    assert_eq!(m["version"], "3.0");

    // Bad signature: signed with a key the agent does not trust.
    s.offer_module("3.1", script.as_bytes(), "intruder");
    let st = agent.wait_status(T, "3.1 rejected", |st| {
        st["collector"]["module"]["state"] == "rejected" && st["collector"]["module"]["candidate"] == "3.1"
    });
    assert!(st["collector"]["module"]["error"].as_str().unwrap().contains("signature"), "{st:#}");

    // Never run, never installed where it could be, the built-in collector untouched.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists(), "a rejected module ran");
    let st = agent.status();
    assert_eq!(st["collector"]["incarnation"], 1, "{st:#}");
    assert_eq!(st["collector"]["module"]["builtin"], true);
    for v in ["3.0", "3.1"] {
        assert!(!agent.data_dir().join("modules").join(v).join("collector").exists());
    }
    assert!(agent.log_lines("Collector module rejected").len() >= 2, "{}", agent.log_tail());
}

#[test]
fn a_module_that_exits_at_once_is_rolled_back_and_collection_continues() {
    let s = Server::start(&[]);
    let supervisor = "crash_loop_crashes = 3\ncrash_loop_window_secs = 30\n";
    let agent = Agent::start(&s.config(supervisor, ""), &[]);
    agent.wait_running(1, T);
    let runs = s.tmp.path().join("module-runs");
    s.offer_module(
        "4.0-bad",
        format!("#!/bin/sh\necho x >> {}\nexit 3\n", runs.display()).as_bytes(),
        "signer",
    );
    let st = agent.wait_status(T, "rolled back", |st| {
        st["collector"]["module"]["state"] == "rolled_back" && st["collector"]["state"] == "running"
    });
    let m = &st["collector"]["module"];
    assert_eq!(m["candidate"], "4.0-bad");
    assert_eq!(m["builtin"], true, "back on the built-in collector: {st:#}");
    assert_eq!(m["bad"], serde_json::json!(["4.0-bad"]));
    let ran = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(ran, 3, "crash_loop_crashes runs, then the rollback");
    assert_eq!(agent.log_lines("crash-looped after the switch").len(), 1, "{}", agent.log_tail());
    let req = s.wait_checkin(&agent, "rolled_back reported", |r| last_change(r, "module", "rolled_back"));
    assert_eq!(req["last_change"]["id"], "4.0-bad");
    assert_eq!(req["module"]["bad"], serde_json::json!(["4.0-bad"]));

    // Still offered, never tried again; the agent keeps collecting.
    let before = collections(&agent.status(), "cpu");
    std::thread::sleep(Duration::from_secs(2));
    let st = agent.status();
    assert!(collections(&st, "cpu") > before + 3, "collecting after the rollback: {st:#}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3, "the bad module never runs again");
    assert_eq!(st["collector"]["module"]["state"], "rolled_back");

    // Not after a restart of the agent either.
    let config = s.config(supervisor, "");
    let agent = agent.restart(&config);
    agent.wait_running(1, T);
    std::thread::sleep(Duration::from_secs(1));
    let st = agent.status();
    assert_eq!(st["collector"]["module"]["bad"], serde_json::json!(["4.0-bad"]));
    assert_eq!(st["collector"]["module"]["builtin"], true);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3);
}

#[test]
fn a_checkin_url_without_a_public_key_is_a_config_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        "[checkin]\nurl = \"http://127.0.0.1:9780/v1/checkin\"\ninterval_secs = 0\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(vigil()).arg("check-config").arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:1: `checkin.url`: needs checkin.public_key_file"), "{err}");
    assert!(err.contains(":3:1: `checkin.interval_secs`"), "{err}");
    assert!(err.contains(":4:1: `checkin.bogus`: unknown field"), "{err}");

    // A public key file that is not a key stops `vigil run` with a clear message.
    let key = dir.path().join("module.pub");
    std::fs::write(&key, "not hex\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[checkin]\nurl = \"http://127.0.0.1:9/v1/checkin\"\npublic_key_file = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(vigil()).arg("check-config").arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "check-config reads the key too");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checkin.public_key_file") && err.contains("module.pub"), "{err}");
    std::fs::remove_file(&key).unwrap();
    let out = Command::new(vigil()).arg("check-config").arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "an unreadable key: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&key, "not hex\n").unwrap();
    let out = Command::new(vigil())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("public_key_file") && err.contains("module.pub"), "{err}");
}

#[test]
fn an_invalid_token_is_rejected_and_not_stored_and_check_ins_go_on() {
    let s = Server::start(&[]);
    std::fs::write(s.dir().join("token"), "two words\n").unwrap();
    let agent = Agent::start(&s.config("", ""), &[]);
    let req = s.wait_checkin(&agent, "token rejected", |r| last_change(r, "token", "rejected"));
    assert!(req["last_change"]["error"].as_str().unwrap().contains("visible ASCII"), "{req:#}");
    assert!(!agent.data_dir().join("upload.token").exists(), "an invalid token is not stored");

    std::fs::write(s.dir().join("token"), "good-token\n").unwrap();
    s.wait_checkin(&agent, "token applied", |r| last_change(r, "token", "applied"));
    assert_eq!(std::fs::read_to_string(agent.data_dir().join("upload.token")).unwrap().trim(), "good-token");
    assert_eq!(agent.status()["checkin"]["consecutive_failures"], 0);
}

#[test]
fn keygen_without_out_writes_vigil_module_keys_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new(vigil()).arg("keygen").current_dir(dir.path()));
    let public = std::fs::read_to_string(dir.path().join("vigil-module.pub")).unwrap();
    assert_eq!(public.trim().len(), 64);
    let mode = std::fs::metadata(dir.path().join("vigil-module.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = Command::new(vigil()).arg("keygen").current_dir(dir.path()).output().unwrap();
    assert!(!again.status.success(), "never overwrites");
    assert_eq!(std::fs::read_to_string(dir.path().join("vigil-module.pub")).unwrap(), public);
}

#[test]
fn a_failed_download_is_a_failed_check_in_not_a_rejection_and_is_retried() {
    let s = Server::start(&[]);
    let agent = Agent::start(&s.config("", ""), &[]);
    agent.wait_running(1, T);
    // The manifest is offered while the file is not served yet: 404. (Signed outside the
    // served dir, so no check-in can find the file before the test wants it to.)
    let file = s.dir().join("modules/5.0");
    let bytes = std::fs::read(vigil()).unwrap();
    let unserved = s.key("5.0.unserved");
    std::fs::write(&unserved, &bytes).unwrap();
    let manifest = s.sign(&unserved, "5.0", "signer");
    std::fs::write(s.dir().join("module.json"), manifest.to_string()).unwrap();
    let st = agent.wait_status(T, "a failed check-in for the download", |st| {
        st["checkin"]["consecutive_failures"].as_u64() >= Some(1)
            && st["checkin"]["last_error"].as_str().is_some_and(|e| e.contains("404"))
    });
    let m = &st["collector"]["module"];
    assert_ne!(m["state"], "rejected", "{st:#}");
    assert!(s.checkins().iter().all(|r| !last_change(r, "module", "rejected")), "not reported as rejected");

    // Once the file is there, the next check-in downloads and adopts it.
    std::fs::write(&file, bytes).unwrap();
    agent.wait_status(T, "module 5.0 running", |st| {
        st["collector"]["module"]["version"] == "5.0" && st["collector"]["module"]["state"] == "active"
    });
    s.wait_checkin(&agent, "module applied", |r| last_change(r, "module", "applied"));
}

#[test]
fn an_unreachable_checkin_server_backs_off_and_collection_goes_on() {
    let s = Server::start(&[]);
    // Nothing listens at this port: every check-in fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = s.config("", "").replace(&s.receiver.addr, &format!("127.0.0.1:{port}"));
    let agent = Agent::start(&cfg, &[]);
    let first = agent.wait_status(T, "two failed check-ins", |st| {
        st["checkin"]["consecutive_failures"].as_u64() >= Some(2)
    });
    assert!(first["checkin"]["last_error"].is_string(), "{}", first["checkin"]);
    assert!(first["checkin"]["last_ok_at"].is_null());
    let load_before = collections(&first, "load");
    std::thread::sleep(Duration::from_millis(1500));
    let later = agent.status();
    // 0.3 s doubling: 0.6, 1.2, 2.4 s… so within 1.5 s at most about two more attempts,
    // where a fixed 0.3 s interval would have made five.
    let failures = later["checkin"]["consecutive_failures"].as_u64().unwrap();
    let added = failures - first["checkin"]["consecutive_failures"].as_u64().unwrap();
    assert!(added <= 3, "{added} more check-ins in 1.5 s: no backoff");
    assert_eq!(later["collector"]["state"], "running");
    assert_eq!(later["collector"]["incarnation"], 1, "check-in failures never restart the collector");
    assert!(collections(&later, "load") >= load_before + 4, "collection goes on");
}

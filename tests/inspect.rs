//! What an operator reads after a crash: `vigil status`, `vigil crashes list | show` and the
//! `/crashes` endpoints, against a collector that really died.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// `vigil ARGS` with no config from the environment.
fn vigil(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(crate::harness::vigil());
    cmd.args(args).env_remove("VIGIL_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vigil")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A GET whose body is kept as bytes (the harness's is text).
fn get_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = text(&raw[..end]);
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "sized answer: {head}");
    (code, raw[end + 4..].to_vec())
}

#[test]
fn a_segv_is_shown_by_status_crashes_and_the_endpoints() {
    let agent = Agent::start(&fast_config(""), &[("VIGIL_FAULT", "stderr-flood:200000@0.3x1")]);
    let s = agent.wait_running(2, T);
    let id = s["collector"]["last_exit"]["crash_report"].as_str().expect("a crash report").to_string();
    agent.wait_reports_on_disk();
    let stderr_file = std::fs::read(agent.crash_dir().join(format!("{id}.stderr"))).unwrap();
    assert!(stderr_file.len() > 100_000);
    let cfg = agent.dir.path().join("vigil.toml");
    let data = agent.data_dir();
    let (cfg, data) = (cfg.to_str().unwrap(), data.to_str().unwrap());

    // /crashes: the report, newest first, with its stderr size.
    let (code, body) = agent.get("/crashes");
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["signal_name"], "SIGSEGV");
    assert_eq!(list[0]["incarnation"], 1);
    assert_eq!(list[0]["stderr_bytes"], stderr_file.len());

    // /crashes/{id}: the report with the stderr as text; /stderr: the exact bytes.
    let (code, body) = agent.get(&format!("/crashes/{id}"));
    assert_eq!(code, 200, "{body}");
    let one: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["signal_name"], "SIGSEGV");
    assert_eq!(one["stderr"].as_str().unwrap().as_bytes(), stderr_file.as_slice());
    assert_eq!(one["stderr_lossy"], false);
    let (code, raw) = get_bytes(&agent.addr, &format!("/crashes/{id}/stderr"));
    assert_eq!(code, 200);
    assert!(raw == stderr_file, "/crashes/{{id}}/stderr is byte-exact");

    // IDs that are not report names never reach the file system.
    std::fs::write(agent.data_dir().join("secret.json"), "{\"marker\": \"do-not-serve\"}").unwrap();
    for bad in [
        "/crashes/..%2Fsecret",
        "/crashes/%2E%2E%2Fsecret",
        "/crashes/..",
        "/crashes/../secret",
        "/crashes/a%00b",
        "/crashes/%2Fetc%2Fpasswd",
        "/crashes/..%2Fsecret/stderr",
        "/crashes/nonexistent-1",
    ] {
        let (code, body) = agent.get(bad);
        assert!(code == 400 || code == 404, "{bad}: {code} {body}");
        assert!(!body.contains("do-not-serve") && !body.contains("root:"), "{bad}: {body}");
    }
    assert_eq!(agent.get("/crashes/..%2Fsecret").0, 400);
    assert_eq!(agent.get("/crashes/20200101T000000.000Z-1").0, 404);

    // `vigil crashes list`, found through the config's agent.data_dir (VIGIL_CONFIG).
    let lookup_cfg = agent.dir.path().join("lookup.toml");
    std::fs::write(&lookup_cfg, format!("[agent]\ndata_dir = \"{data}\"\n")).unwrap();
    let env = [("VIGIL_CONFIG", lookup_cfg.to_str().unwrap())];
    for args in [&["crashes", "list"][..], &["crashes"][..]] {
        let out = vigil(args, &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let o = text(&out.stdout);
        let row = o.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} listed:\n{o}"));
        assert!(row.contains("signaled") && row.contains("SIGSEGV"), "{row}");
    }
    let out = vigil(&["crashes", "list", "--json", "--config", cfg, "--data-dir", data], &[]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());

    // `vigil crashes show ID`: the fields, then the stderr byte for byte.
    let out = vigil(&["crashes", "show", &id, "--config", cfg, "--data-dir", data], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let marker = b"byte-exact) ---\n";
    let at = out.stdout.windows(marker.len()).position(|w| w == marker).expect("stderr marker");
    let head = text(&out.stdout[..at]);
    assert!(head.contains("SIGSEGV (11)") && head.contains(&format!("{id}.stderr")), "{head}");
    assert!(out.stdout[at + marker.len()..] == stderr_file[..], "show prints the stderr tail byte-exact");
    let out = vigil(&["crashes", "show", &id, "--stderr", "--config", cfg, "--data-dir", data], &[]);
    assert!(out.stdout == stderr_file, "--stderr prints only the tail, byte-exact");
    let out = vigil(&["crashes", "show", "20200101T000000.000Z-1", "--config", cfg, "--data-dir", data], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no crash report `20200101T000000.000Z-1`"), "{}", text(&out.stderr));
    let out = vigil(&["crashes", "show", "../secret", "--config", cfg, "--data-dir", data], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());

    // `vigil status`: healthy again (exit 0), and it says how the last collector died.
    let out = vigil(&["status", "--addr", &agent.addr, "--config", cfg], &[]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{o}{}", text(&out.stderr));
    assert!(
        o.starts_with(&format!("vigil {} at http://{}: HEALTHY", s["version"].as_str().unwrap(), agent.addr)),
        "{o}"
    );
    assert!(o.contains("SIGSEGV (signal 11)"), "{o}");
    assert!(o.contains(&format!("crash report  {id}")), "{o}");
    assert!(o.contains(&agent.crash_dir().join(format!("{id}.stderr")).display().to_string()), "{o}");
    assert!(o.contains("incarnation 2, restarts 1"), "{o}");
    let out =
        vigil(&["status", "--addr", &format!("http://{}/", agent.addr), "--json", "--config", cfg], &[]);
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["collector"]["last_exit"]["signal_name"], "SIGSEGV");
    assert_eq!(Path::new(json["crash_dir"].as_str().unwrap()), agent.crash_dir());

    // A damaged report is listed with what is wrong, never a crash of the tool.
    std::fs::write(agent.crash_dir().join("20990101T000000.000Z-7.json"), "{ torn").unwrap();
    let out = vigil(&["crashes", "list", "--config", cfg, "--data-dir", data], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    let first = o.lines().nth(1).unwrap();
    assert!(first.starts_with("20990101T000000.000Z-7") && first.contains("!! not a crash report"), "{o}");
    assert!(o.contains(&id));
    let (code, body) = agent.get("/crashes");
    assert_eq!(code, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert!(list[0]["error"].is_string() && list[1]["id"] == id.as_str(), "{list:#}");
    assert_eq!(agent.get("/crashes/20990101T000000.000Z-7").0, 500);
}

#[test]
fn status_exits_2_when_the_collector_is_down_or_a_sink_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = fast_config("restart_initial_delay_ms = 60000\nrestart_max_delay_secs = 120")
        + &format!("\n[[upload]]\nname = \"main\"\nurl = \"ws://127.0.0.1:{port}/v1/ingest\"\n");
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "exit:3@0.2")]);
    agent.wait_status(T, "backoff with a failing sink", |s| {
        s["collector"]["state"] == "backoff" && s["uploads"][0]["last_error"].is_string()
    });
    let cfg = agent.dir.path().join("vigil.toml");
    let out = vigil(&["status", "--addr", &agent.addr, "--config", cfg.to_str().unwrap()], &[]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{o}{}", text(&out.stderr));
    assert!(o.contains(": UNHEALTHY\n"), "{o}");
    assert!(o.contains("! collector state is backoff after exited (exit 3), crash report "), "{o}");
    assert!(o.contains("! sink main is failing"), "{o}");
    assert!(o.contains("next restart  in "), "{o}");
    assert!(o.contains("exit code 3"), "{o}");
    let out = vigil(&["status", "--addr", &agent.addr, "--json", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    serde_json::from_slice::<Value>(&out.stdout).expect("--json prints JSON when unhealthy too");
}

#[test]
fn status_of_an_unreachable_agent_exits_1_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let out = vigil(&["status", "--addr", &addr, "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains(&format!("unreachable at http://{addr}")) && e.contains("refused"), "{e}");
    assert!(out.stdout.is_empty());

    let sock = dir.path().join("none.sock");
    let out = vigil(
        &["status", "--addr", &format!("unix:{}", sock.display()), "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("unreachable at unix:{}", sock.display())));

    let out = vigil(&["status", "--addr", "localhost:9779", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("host names are not resolved"));

    // A bad config is exit 78 for these commands as for every other.
    std::fs::write(&cfg, "[status]\nbogus = 1\n").unwrap();
    for args in [&["status"][..], &["crashes", "list"][..]] {
        let out = vigil(&[args, &["--config", cfg.to_str().unwrap()]].concat(), &[]);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        assert!(text(&out.stderr).contains("unknown field `bogus`"));
    }
}

#[test]
fn status_follows_the_config_to_a_unix_socket_and_sends_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let cfg = fast_config("").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"\ntoken_file = \"{}\"", sock.display(), token.display()),
    );
    let agent = Agent::start(&cfg, &[]);
    let cfg = agent.dir.path().join("vigil.toml");
    // The harness speaks TCP only: wait for "running" through `vigil status` itself.
    let t0 = std::time::Instant::now();
    let out = loop {
        let out = vigil(&["status"], &[("VIGIL_CONFIG", cfg.to_str().unwrap())]);
        if out.status.code() == Some(0) || t0.elapsed() > T {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{o}{}", text(&out.stderr));
    assert!(
        o.starts_with(&format!("vigil {} at unix:{}: HEALTHY", env!("CARGO_PKG_VERSION"), sock.display())),
        "{o}"
    );
    assert!(o.contains("last exit     none"), "{o}");
    assert!(o.lines().any(|l| l.trim_start().starts_with("cpu ") && l.contains(" ok ")), "{o}");

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let out =
        vigil(&["status", "--config", cfg.to_str().unwrap(), "--token-file", wrong.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
}

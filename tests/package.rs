//! The Debian package (issue 17), checked the way Debian checks packages: lintian, then a
//! real `dpkg -i` on this machine, the installed agent run as the unit runs it, `dpkg -r`
//! and `dpkg --purge`, after which nothing of it is left.
//!
//! These tests install into the real system (/usr/bin/vigil, /etc/vigil, a system user),
//! so they must not run while the other tests do: they are `#[ignore]`d there, and
//! scripts/test runs them on their own, after `scripts/package` built the .deb, with
//! `cargo test --release --test integration -- --ignored package::`.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{fast_config, Reaped};

/// The .deb scripts/package built: `$VIGIL_DEB`, else where scripts/package puts it.
fn deb() -> PathBuf {
    let path = match std::env::var("VIGIL_DEB") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let arch = run(Command::new("dpkg").arg("--print-architecture"));
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "target/debian/vigil_{}_{}.deb",
                env!("CARGO_PKG_VERSION"),
                arch.trim()
            ))
        }
    };
    assert!(
        path.is_file(),
        "{} is missing: build it with scripts/package (scripts/test does)",
        path.display()
    );
    path
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Runs `cmd`, asserts it succeeded and returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// lintian reports no error on the .deb, and every warning it reports is one that
/// docs/operations.md lists with its justification.
#[test]
#[ignore = "needs the .deb from scripts/package; scripts/test runs it after packaging"]
fn lintian_finds_no_error_and_only_the_documented_warnings() {
    let deb = deb();
    assert!(
        Path::new("/usr/bin/lintian").exists(),
        "lintian is not installed: run scripts/test (it installs it)"
    );
    let out =
        output(Command::new("lintian").args(["--fail-on", "error", "--tag-display-limit", "0"]).arg(&deb));
    let text = said(&out);
    assert!(out.status.success(), "lintian reports errors on {}:\n{text}", deb.display());
    assert!(!text.lines().any(|l| l.starts_with("E: ")), "lintian errors:\n{text}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    for line in text.lines().filter(|l| l.starts_with("W: ")) {
        // "W: vigil: TAG [detail]"
        let tag = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            docs.contains(&format!("| `{tag}` |")),
            "lintian warns {tag}, which docs/operations.md does not list and justify:\n{line}"
        );
    }
}

/// The man page the package ships (docs/vigil.1) describes every command `vigil --help`
/// lists, so it cannot fall behind the binary unnoticed.
#[test]
fn the_man_page_describes_every_command() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/vigil.1")).unwrap();
    let help = run(Command::new(crate::harness::vigil()).arg("--help"));
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "no commands in vigil --help:\n{help}");
    for c in commands {
        let roff = c.replace('-', "\\-");
        assert!(
            page.contains(&format!("\\fB{roff}\\fR")) || page.lines().any(|l| l == format!(".B {roff}")),
            "docs/vigil.1 has no entry for `vigil {c}`"
        );
    }
}

/// A stand-in for `systemctl`, first in PATH while dpkg runs the maintainer scripts: systemd
/// is not PID 1 on this machine, so what the scripts ask of the running manager
/// (daemon-reload, start, stop, try-restart) is recorded instead. It answers `is-enabled`
/// from the enable symlink (what systemd itself would read) and says every unit is
/// inactive. Calls that work on the files alone (`--root=…`, e.g. deb-systemd-helper's
/// `preset`, which makes the enable symlink) go to the real systemctl.
///
/// A container image's `/usr/sbin/policy-rc.d` that refuses every action (exit 101, as on
/// this machine) is set aside meanwhile, so the scripts meet the policy of a real host.
struct Systemd {
    dir: tempfile::TempDir,
    made_run_dir: bool,
}

const RUN_DIR: &str = "/run/systemd/system";
const POLICY: &str = "/usr/sbin/policy-rc.d";
const POLICY_ASIDE: &str = "/usr/sbin/policy-rc.d.vigil-test";

impl Systemd {
    fn new() -> Systemd {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = format!(
            "#!/bin/sh\n\
             echo \"$*\" >> {log}\n\
             case \"$*\" in\n\
             *--root=*) exec {real} \"$@\" ;;\n\
             *--version*) echo 'systemd 252 (252)' ;;\n\
             *is-enabled*) [ -e /etc/systemd/system/multi-user.target.wants/vigil.service ] && echo enabled || {{ echo disabled; exit 1; }} ;;\n\
             *is-active*) exit 3 ;;\n\
             *list-units*) ;;\n\
             esac\n\
             exit 0\n",
            log = log.display(),
            real = ["/usr/bin/systemctl", "/bin/systemctl"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("systemctl is not installed: run scripts/test (it installs systemd)"),
        );
        let bin = dir.path().join("systemctl");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        if Path::new(POLICY_ASIDE).exists() && !Path::new(POLICY).exists() {
            // Set aside by an earlier run that was killed before it put it back.
            std::fs::rename(POLICY_ASIDE, POLICY).unwrap();
        }
        if Path::new(POLICY).exists() {
            std::fs::rename(POLICY, POLICY_ASIDE).unwrap();
        }
        // The maintainer scripts talk to systemd only where /run/systemd/system exists.
        let made_run_dir = !Path::new(RUN_DIR).exists();
        if made_run_dir {
            std::fs::create_dir_all(RUN_DIR).unwrap();
        }
        Systemd { dir, made_run_dir }
    }

    fn path(&self) -> String {
        format!("{}:{}", self.dir.path().display(), std::env::var("PATH").unwrap_or_default())
    }

    /// The calls since the last `take`, one per line.
    fn take(&self) -> Vec<String> {
        let log = self.dir.path().join("calls");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        calls.lines().map(str::to_owned).collect()
    }

    fn dpkg(&self, args: &[&str]) -> String {
        run(Command::new("dpkg").args(args).env("PATH", self.path()).env("DEBIAN_FRONTEND", "noninteractive"))
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if Path::new(POLICY_ASIDE).exists() {
            let _ = std::fs::rename(POLICY_ASIDE, POLICY);
        }
        if self.made_run_dir {
            let _ = std::fs::remove_dir(RUN_DIR);
            let _ = std::fs::remove_dir("/run/systemd");
        }
    }
}

/// Purges the package whatever happens in the test, so a failed run leaves nothing behind.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "vigil"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Every path under the places a package can touch: compared before the install and after
/// the purge.
fn snapshot() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, into: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            into.insert(p.clone());
            if is_dir {
                walk(&p, into);
            }
        }
    }
    let mut all = BTreeSet::new();
    let roots = [
        "/etc",
        "/usr/bin",
        "/usr/sbin",
        "/usr/share/doc",
        "/usr/share/man/man1",
        "/usr/lib/debug",
        "/lib/systemd",
        "/usr/lib/systemd",
        "/var/lib",
        "/var/log",
    ];
    for root in roots {
        walk(Path::new(root), &mut all);
    }
    all
}

fn installed() -> bool {
    let out = output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", "vigil"]));
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != "not-installed"
}

fn user_exists(name: &str) -> bool {
    output(Command::new("getent").args(["passwd", name])).status.success()
}

fn group_exists(name: &str) -> bool {
    output(Command::new("getent").args(["group", name])).status.success()
}

fn mode_and_owner(path: &str) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid())
}

/// `setpriv` as the unit runs the agent: user and group vigil, exactly the unit's ambient
/// capabilities, nothing else in the bounding set, no new privileges.
fn as_the_unit_runs_it() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=vigil",
        "--regid=vigil",
        "--init-groups",
        "--inh-caps=-all,+sys_ptrace,+dac_read_search",
        "--ambient-caps=-all,+sys_ptrace,+dac_read_search",
        "--bounding-set=-all,+sys_ptrace,+dac_read_search",
        "--no-new-privs",
        "--",
    ]);
    c
}

#[test]
#[ignore = "installs a package on this machine; scripts/test runs it alone, after packaging"]
fn the_deb_installs_runs_as_its_user_and_purges_without_a_trace() {
    let deb = deb();
    let deb = deb.to_str().unwrap();
    let _purge = Purge;
    if installed() {
        // Left by an earlier run that was killed before its own purge.
        run(Command::new("dpkg").args(["--purge", "vigil"]));
    }
    assert!(!user_exists("vigil"), "a user vigil exists before the install; remove it first");
    for p in ["/etc/vigil", "/var/lib/vigil", "/var/log/vigil", "/usr/bin/vigil"] {
        assert!(!Path::new(p).exists(), "{p} exists before the install; remove it first");
    }
    let systemd = Systemd::new();
    let before = snapshot();

    // dpkg -i: the files, the conffile, the user and the directories.
    systemd.dpkg(&["-i", deb]);
    assert_eq!(mode_and_owner("/usr/bin/vigil"), (0o755, 0));
    assert!(Path::new("/usr/share/man/man1/vigil.1.gz").is_file(), "no man page");
    let version = run(Command::new("/usr/bin/vigil").arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "vigil --version: {version}");
    let checked =
        run(Command::new("/usr/bin/vigil").args(["check-config", "--config", "/etc/vigil/vigil.toml"]));
    assert!(checked.contains("/etc/vigil/vigil.toml: ok"), "check-config: {checked}");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/vigil.toml")).unwrap();
    assert_eq!(std::fs::read_to_string("/etc/vigil/vigil.toml").unwrap(), shipped, "the installed config");
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "vigil"]));
    assert!(
        conffiles.contains("/etc/vigil/vigil.toml "),
        "/etc/vigil/vigil.toml is not a conffile: {conffiles}"
    );
    let passwd = run(Command::new("getent").args(["passwd", "vigil"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "vigil is not a system user: {passwd}");
    assert_eq!(fields[5], "/var/lib/vigil", "{passwd}");
    assert!(fields[6].ends_with("nologin"), "vigil can log in: {passwd}");
    assert_eq!(mode_and_owner("/var/lib/vigil"), (0o700, uid), "the data dir");
    assert_eq!(mode_and_owner("/var/log/vigil"), (0o750, uid), "the log dir");

    // Enabled, not started.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/vigil.service");
    assert_eq!(std::fs::read_link(wants).unwrap(), Path::new("/lib/systemd/system/vigil.service"));
    let calls = systemd.take();
    assert!(calls.iter().any(|c| c.contains("daemon-reload")), "no daemon-reload: {calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("start") || c.contains("restart")),
        "the install started the unit: {calls:?}"
    );

    // The installed unit passes systemd-analyze verify, warnings included.
    let out = output(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/vigil.service"]));
    let text = said(&out);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{text}");
    assert!(!text.lines().any(|l| l.contains("vigil.service")), "systemd-analyze verify warns:\n{text}");

    // The installed agent, as the unit runs it (user vigil, its two capabilities): every
    // collector works, and a crash of the collector gets its stack by ptrace.
    // CAP_DAC_READ_SEARCH: a file system mounted where only root may search (inside a
    // 0700 directory) is measured with the unit's capabilities and missed without them.
    let locked = tempfile::tempdir().unwrap();
    std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(mode_and_owner(locked.path().to_str().unwrap()), (0o700, 0));
    let ext4 = crate::faults::Ext4::mount_in(locked.path());
    let mount = ext4.path().to_str().unwrap().to_owned();
    let once = ["/usr/bin/vigil", "once", "--json", "--config", "/etc/vigil/vigil.toml"];
    let out = output(as_the_unit_runs_it().args(once));
    assert!(out.status.success(), "vigil once as user vigil failed:\n{}", said(&out));
    let measured = |out: &Output| {
        let samples: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("vigil once --json: {e}:\n{}", said(out)));
        samples.as_array().unwrap().iter().any(|s| s["name"] == "fs_disk_util" && s["tags"]["mount"] == mount)
    };
    assert!(measured(&out), "as the unit runs it, vigil once has no fs_disk_util for {mount}");
    let bare = output(
        Command::new("setpriv")
            .args([
                "--reuid=vigil",
                "--regid=vigil",
                "--init-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .args(["--no-new-privs", "--"])
            .args(once),
    );
    assert!(
        !measured(&bare),
        "without CAP_DAC_READ_SEARCH vigil once still measured {mount}: the test proves nothing"
    );
    drop(ext4);
    let conf_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(conf_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = conf_dir.path().join("vigil.toml");
    std::fs::write(&conf, fast_config("")).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut agent = Reaped::spawn(
        as_the_unit_runs_it()
            .args(["/usr/bin/vigil", "run", "--data-dir", "/var/lib/vigil", "--config"])
            .arg(&conf)
            .env("VIGIL_FAULT", "segv@0.5x1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let crashes = Path::new("/var/lib/vigil/crashes");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let found = std::fs::read_dir(crashes)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "json"));
        if let Some(p) = found {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if !v["stack"].is_null() || !v["stack_error"].is_null() {
                    break v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no crash report with a stack in {} within 30 s",
            crashes.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let st = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(st.success(), "vigil run as user vigil ended {st}");
    assert_eq!(report["signal_name"], "SIGSEGV", "{report}");
    assert_eq!(report["capture"], "ptrace", "{report}");
    let frames = report["stack"].as_array().unwrap_or_else(|| panic!("no stack: {}", report["stack_error"]));
    assert!(
        frames.iter().any(|f| f["function"].as_str().is_some_and(|s| s.contains("vigil"))),
        "no vigil frame in the stack: {report}"
    );
    let m = std::fs::metadata(crashes).unwrap();
    assert_eq!(m.uid(), uid, "the crash dir belongs to vigil");

    // dpkg -r: the unit is stopped, the program goes, the data, logs and config stay.
    systemd.dpkg(&["-i", deb]);
    let calls = systemd.take();
    assert!(
        calls.iter().any(|c| c.contains("try-restart vigil.service")),
        "an upgrade restarts a running unit: {calls:?}"
    );
    assert!(wants.exists(), "still enabled after the upgrade");
    systemd.dpkg(&["-r", "vigil"]);
    let calls = systemd.take();
    assert!(
        calls.iter().any(|c| c.contains("stop vigil.service")),
        "the removal did not stop the unit: {calls:?}"
    );
    assert!(!Path::new("/usr/bin/vigil").exists(), "/usr/bin/vigil is left after dpkg -r");
    assert!(!Path::new("/lib/systemd/system/vigil.service").exists());
    assert!(Path::new("/etc/vigil/vigil.toml").exists(), "dpkg -r keeps the conffile");
    let kept = std::fs::read_dir(crashes).unwrap().count();
    assert!(kept >= 2, "dpkg -r must keep the data dir (crash reports): {kept} files");
    assert!(user_exists("vigil"), "dpkg -r keeps the user that owns the data dir");

    // dpkg --purge: nothing left behind.
    systemd.dpkg(&["--purge", "vigil"]);
    assert!(!installed(), "dpkg still knows vigil after --purge");
    assert!(!user_exists("vigil"), "the user vigil is left after --purge");
    assert!(!group_exists("vigil"), "the group vigil is left after --purge");
    let after = snapshot();
    let left: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(left.is_empty(), "left behind after dpkg --purge: {left:?}");
    let gone: Vec<&PathBuf> = before.difference(&after).collect();
    assert!(gone.is_empty(), "dpkg --purge removed what was there before: {gone:?}");
}

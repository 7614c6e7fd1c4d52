//! The status page (`GET /`) loaded in a real headless browser (Debian's chromium, installed by
//! scripts/test), with the collector crashed for real; the crash timeline across a restart of
//! the agent; `vigil status`'s sparkline and `vigil crashes --group`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// The browser; scripts/test installs it, and its absence fails the test.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless chromium on `url` with a fresh profile and `args`; returns its stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: scripts/test installs Debian's chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("90")
        .arg(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The DOM as the browser built it from the page.
fn dom(agent: &Agent) -> String {
    chromium(&format!("http://{}/", agent.addr), &["--dump-dom"])
}

/// The part of `dom` inside the element that starts with `open` (up to its `close`).
fn element<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom.find(open).unwrap_or_else(|| panic!("no {open} in the page:\n{dom}"));
    let end = dom[start..].find(close).map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn config(agent_section: &str) -> String {
    format!("{agent_section}\n[collectors]\ninterval_secs = 1\n\n{}", fast_config(""))
}

#[test]
fn the_status_page_shows_the_crashes_in_a_real_browser_and_they_survive_a_restart() {
    let cfg = config("[agent]\nhostname = \"page-host-7\"\ntags = { env = \"staging\", team = \"infra\" }");
    // Three real SIGSEGVs in a row, then a collector that keeps running.
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@0.3x3")]);
    agent.wait_running(4, Duration::from_secs(30));
    agent.wait_reports_on_disk();
    let st = agent.wait_status(Duration::from_secs(10), "signatures of all three crashes", |s| {
        s["collector"]["crash_counts"].as_array().is_some_and(|c| {
            c.iter()
                .filter(|k| k["signature"].is_string())
                .map(|k| k["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 3
        })
    });
    let hourly = st["collector"]["crashes_per_hour"].as_array().expect("crashes_per_hour");
    assert_eq!(hourly.len(), 24, "{st:#}");
    assert_eq!(hourly[23], 3, "the last hour holds the three crashes: {st:#}");
    assert_eq!(hourly.iter().filter_map(|v| v.as_u64()).sum::<u64>(), 3, "{st:#}");
    assert_eq!(st["host"], "page-host-7");

    let page = dom(&agent);
    assert!(page.contains("<span id=\"host\">page-host-7</span>"), "{page}");
    assert!(page.contains("env=staging") && page.contains("team=infra"), "{page}");
    let day = element(&page, "<svg id=\"timeline\"", "</svg>");
    assert_eq!(day.matches("class=\"crash\"").count(), 3, "one mark per crash in the 24 h timeline:\n{day}");
    assert_eq!(day.matches("data-how=\"SIGSEGV\"").count(), 3, "{day}");
    assert!(day.contains("class=\"backoff\""), "the backoff after each crash is drawn:\n{day}");
    assert!(day.contains("data-count=\"3\""), "the last hour's bar counts 3:\n{day}");
    let recent = element(&page, "<svg id=\"timeline-recent\"", "</svg>");
    assert_eq!(recent.matches("class=\"crash\"").count(), 3, "{recent}");
    assert!(page.contains("<span id=\"crash-total\">3</span>"), "{page}");
    // Same crash, same signature: one colour, one legend entry that counts all three.
    let sig = st["collector"]["crash_counts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|k| k["signature"].as_str())
        .unwrap()
        .to_string();
    assert!(element(&page, "<p id=\"legend\"", "</p>").contains(&format!("{sig} × 3")), "{page}");
    let collectors = element(&page, "<table id=\"collectors\"", "</table>");
    for name in ["cpu", "load", "mem", "dns"] {
        assert!(
            collectors.contains(&format!("<td>{name}</td>")),
            "{name} in the collectors table:\n{collectors}"
        );
    }
    let collector = element(&page, "<table id=\"collector\"", "</table>");
    assert!(collector.contains(">running<") && collector.contains("<th>up</th><td>"), "{collector}");
    assert!(st["collector"]["uptime_ms"].as_u64().is_some(), "{st:#}");
    let stack = element(&page, "<pre id=\"stack\"", "</pre>");
    assert!(stack.contains("#0 ") && stack.contains("vigil"), "the newest crash's stack:\n{stack}");
    // The page as an operator sees it (also the screenshot in docs/operations.md).
    let shot = agent.dir.path().join("page.png");
    chromium(
        &format!("http://{}/", agent.addr),
        &["--window-size=1100,1400", "--hide-scrollbars", &format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());

    // The command line: the sparkline and the grouping.
    let out =
        Command::new(vigil()).args(["status", "--addr", &format!("http://{}", agent.addr)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let spark = text.lines().find(|l| l.contains("crashes 24 h")).unwrap_or_else(|| panic!("{text}"));
    assert!(spark.contains("█ 3 "), "the current hour is the tallest bar: {spark}");
    assert!(text.contains(&format!("{sig} x3 (SIGSEGV)")), "top signatures: {text}");
    let out = Command::new(vigil())
        .args(["crashes", "--group", "--json", "--data-dir"])
        .arg(agent.data_dir())
        .output()
        .unwrap();
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups:#}");
    assert_eq!(groups[0]["count"], 3);
    assert_eq!(groups[0]["signature"], sig.as_str());

    // The timeline is kept in the data dir: a new agent, without faults, still shows it.
    let (_, agent) = agent.stop(Duration::from_secs(10));
    let agent = agent.restart(&cfg);
    agent.wait_running(1, Duration::from_secs(20));
    let st = agent.status();
    assert_eq!(st["collector"]["crashes_per_hour"][23], 3, "{st:#}");
    assert_eq!(st["collector"]["restarts"], 0, "{st:#}");
    let page = dom(&agent);
    assert_eq!(
        element(&page, "<svg id=\"timeline\"", "</svg>").matches("class=\"crash\"").count(),
        3,
        "{page}"
    );
}

#[test]
fn markup_in_the_host_name_a_tag_and_stderr_is_shown_escaped() {
    let markup = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";
    let cfg = config(&format!("[agent]\nhostname = \"h{markup}\"\ntags = {{ role = \"r{markup}\" }}"));
    let agent = Agent::start(&cfg, &[("VIGIL_FAULT", "segv@0.3x1")]);
    agent.wait_running(2, Duration::from_secs(30));
    agent.wait_reports_on_disk();
    // A line in the newest report's stderr tail that is markup.
    let stderr = std::fs::read_dir(agent.crash_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "stderr"))
        .expect("the report's stderr");
    let mut tail = std::fs::read(&stderr).unwrap();
    tail.extend_from_slice(format!("s{markup}\n").as_bytes());
    std::fs::write(&stderr, tail).unwrap();

    let (code, body) = agent.get("/");
    assert_eq!(code, 200);
    assert!(!body.contains("<script") && !body.contains("<img"), "markup reflected unescaped:\n{body}");
    let escaped =
        "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;";
    for (what, prefix) in [("host name", "h"), ("tag", "r"), ("stderr line", "s")] {
        assert!(body.contains(&format!("{prefix}{escaped}")), "the {what} escaped:\n{body}");
    }
    let page = dom(&agent);
    // The browser made text of it, not elements: no script, no image, the title untouched.
    assert!(!page.contains("<script") && !page.contains("<img"), "{page}");
    assert!(page.contains("<title>vigil on h&lt;script&gt;"), "{page}");
    assert!(element(&page, "<pre id=\"stderr\"", "</pre>").contains("s&lt;script&gt;"), "{page}");
    let resp = http_request(&agent.addr, "GET", "/", None);
    let csp = resp.header("content-security-policy").expect("a CSP header");
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
}

#!/usr/bin/env python3
"""The cost of crash forensics (issue 12): the real `vigil run`, its collector dying of a real
SIGSEGV (VIGIL_FAULT=segv@0.1, every incarnation) --crashes times, with
stack_capture = "ptrace", "in_process" and "off", side by side.

From the supervisor's own log timestamps (microseconds, one clock):
  restart   the collector's "Injecting fault" line as the supervisor read it (pid P) ->
            "Collector spawned." of the next collector: what capture adds to the restart,
            the ptrace helper's run while the dying collector waits included (restart delay
            1 ms in this config)
  report    "Exit event received." (pid P) -> the ERROR line of P: capture, the symbolizer
            child, and the report ready to be written
and the supervisor's RSS (/proc/PID/status VmRSS) after the first 100 crashes and at the end.

Usage: cargo build --release && python3 bench/forensics.py [--crashes 1000] [--bin target/release/vigil]
"""
import argparse, os, re, signal, subprocess, sys, tempfile, time
from datetime import datetime, timezone


def ts_us(line):
    stamp = line.split()[0]
    base, frac = stamp.rstrip("Z").split(".")
    secs = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return int(secs) * 1_000_000 + int(frac.ljust(6, "0")[:6])


def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def one_run(binary, mode, crashes):
    d = tempfile.mkdtemp(prefix=f"vigil-forensics-{mode}-")
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write('[agent]\nlog_level = "debug"\n[supervisor]\nrestart_initial_delay_ms = 1\n'
                'restart_max_delay_secs = 0.001\ncrash_loop_crashes = 1000000\ncrash_reports_keep = 20\n'
                f'stack_capture = "{mode}"\n[status]\nlisten = "127.0.0.1:0"\n'
                '[collectors]\ninterval_secs = 1\n[collectors.time_drift]\nenabled = false\n')
    log = os.path.join(d, "vigil.log")
    env = dict(os.environ, VIGIL_FAULT="segv@0.1")
    p = subprocess.Popen([binary, "run", "--config", cfg, "--data-dir", os.path.join(d, "data"),
                          "--log-file", log], stdin=subprocess.DEVNULL, env=env)
    rss_100 = None
    try:
        seen = 0
        deadline = time.time() + crashes * 2 + 30
        while seen < crashes and time.time() < deadline:
            time.sleep(0.5)
            text = open(log).read()
            seen = text.count("Collector crashed")
            if rss_100 is None and seen >= 100:
                rss_100 = rss_kib(p.pid)
        time.sleep(1)
        rss_end = rss_kib(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    fault_at, exit_at, spawned, errors = {}, {}, [], {}
    for line in open(log):
        m = re.search(r"pid=(\d+)", line)
        if not m:
            continue
        pid = int(m.group(1))
        if "Injecting fault" in line:
            fault_at[pid] = ts_us(line)
        elif "Exit event received." in line:
            exit_at[pid] = ts_us(line)
        elif "Collector spawned." in line:
            spawned.append(ts_us(line))
        elif " ERROR " in line and "Collector crashed" in line:
            errors[pid] = ts_us(line)
    restart, report = [], []
    for pid, t in exit_at.items():
        f = fault_at.get(pid)
        nxt = [s for s in spawned if s >= t]
        if nxt and f is not None:
            restart.append((min(nxt) - f) / 1000)
        if pid in errors and f is not None:
            report.append((errors[pid] - f) / 1000)
    return {"mode": mode, "restart": restart, "report": report, "rss_100": rss_100, "rss_end": rss_end,
            "crashes": len(report)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crashes", type=int, default=1000)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    a = ap.parse_args()
    runs = [one_run(a.bin, m, a.crashes) for m in ("ptrace", "in_process", "off")]
    f = lambda xs: f"{pct(xs, 50):.2f} / {pct(xs, 99):.2f}"
    print("| stack_capture | crashes | fault -> next collector spawned p50 / p99 (ms) | fault -> report ready p50 / p99 (ms) | supervisor RSS after 100 / at the end (KiB) |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['mode']} | {r['crashes']} | {f(r['restart'])} | {f(r['report'])} | {r['rss_100']} / {r['rss_end']} |")
    off = runs[-1]
    for on in runs[:-1]:
        print(f"\nrestart p99 grows by {pct(on['restart'], 99) - pct(off['restart'], 99):.2f} ms with {on['mode']}")


if __name__ == "__main__":
    main()

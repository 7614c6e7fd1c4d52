#!/usr/bin/env python3
"""Supervision latency: SIGKILL the collector N times and measure how long the supervisor
takes to have the exit event, and to have logged the crash (report written and synced).

Black box: the real `vigil run` binary, a real SIGKILL. The clock is CLOCK_REALTIME on both
sides: this script's time.time_ns() just before kill(2), and the microsecond timestamp of
the supervisor's log lines ("Exit event received." at debug level, and the ERROR line).

Usage: cargo build --release && python3 bench/supervision.py [--kills 200] [--bin target/release/vigil]
"""
import argparse, json, os, re, signal, subprocess, sys, tempfile, time, urllib.request
from datetime import datetime

def ts_ns(line):
    # 2026-11-27T04:07:06.705488Z
    stamp = line.split()[0]
    base, frac = stamp.rstrip("Z").split(".")
    secs = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=__import__("datetime").timezone.utc).timestamp()
    return int(secs) * 1_000_000_000 + int(frac.ljust(9, "0"))

def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="vigil-bench-")
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write('[agent]\nlog_level = "debug"\n[supervisor]\nrestart_initial_delay_ms = 1\n'
                'restart_max_delay_secs = 0.001\ncrash_loop_crashes = 100000\ncrash_reports_keep = 20\n'
                '[status]\nlisten = "127.0.0.1:0"\n')
    log = os.path.join(d, "vigil.log")
    p = subprocess.Popen([a.bin, "run", "--config", cfg, "--data-dir", os.path.join(d, "data"), "--log-file", log],
                         stdin=subprocess.DEVNULL)
    addr = None
    for _ in range(500):
        time.sleep(0.01)
        if os.path.exists(log):
            m = re.search(r"Status endpoint listening\. addr=(\S+)", open(log).read())
            if m:
                addr = m.group(1); break
    if not addr:
        sys.exit("status endpoint never came up")

    def status():
        with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as r:
            return json.load(r)

    event_us, logged_us = [], []
    pos = 0
    for i in range(a.kills):
        # Wait for a running incarnation i+1.
        while True:
            s = status()["collector"]
            if s["state"] == "running" and s["incarnation"] == i + 1:
                pid = s["pid"]; break
            time.sleep(0.002)
        t0 = time.time_ns()
        os.kill(pid, signal.SIGKILL)
        got_event = got_err = None
        deadline = time.time() + 5
        while (got_event is None or got_err is None) and time.time() < deadline:
            with open(log) as f:
                f.seek(pos)
                for line in f:
                    if f"pid={pid}" in line and "Exit event received." in line:
                        got_event = ts_ns(line)
                    if f"pid={pid}" in line and " ERROR " in line and "SIGKILL" in line:
                        got_err = ts_ns(line)
            time.sleep(0.001)
        if got_event is None or got_err is None:
            sys.exit(f"kill {i}: no exit event for pid {pid} in the log")
        event_us.append((got_event - t0) / 1000)
        logged_us.append((got_err - t0) / 1000)
        pos = os.path.getsize(log)
    p.send_signal(signal.SIGTERM); p.wait(timeout=15)
    print(f"kills: {a.kills}")
    for name, xs in (("SIGKILL -> Supervisor has ChildExited", event_us),
                     ("SIGKILL -> crash report written + ERROR logged", logged_us)):
        print(f"{name}: p50 {pct(xs, 50)/1000:.3f} ms, p99 {pct(xs, 99)/1000:.3f} ms, max {max(xs)/1000:.3f} ms")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Soak: N crash cycles of the collector under one supervisor (CONTRACT §10: nothing
accumulates). Every cycle waits for a running incarnation and SIGKILLs its collector; each
crash is a full cycle for the supervisor (exit status, stderr tail, crash report written and
pruned to crash_reports_keep, restart). Twenty times along the way it samples the
supervisor's open fds, RSS, threads, the crash dir's file count and the zombies among its
children. The figures must stay flat: a leak of one fd or a few KiB per crash shows after
10,000.

Black box: the real `vigil run` binary, real signals, a real data dir.

Usage: cargo build --release && python3 bench/soak.py [--cycles 10000] [--bin target/release/vigil]
"""
import argparse, json, os, re, signal, subprocess, sys, tempfile, time, urllib.request


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def zombies(ppid):
    n = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if rest[0] == "Z" and int(rest[1]) == ppid:
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--keep", type=int, default=20, help="supervisor.crash_reports_keep")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="vigil-soak-")
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write('[supervisor]\nrestart_initial_delay_ms = 1\nrestart_max_delay_secs = 0.001\n'
                f'crash_loop_crashes = 1000000\ncrash_reports_keep = {a.keep}\n'
                '[collectors]\ninterval_secs = 1\n[status]\nlisten = "127.0.0.1:0"\n')
    log = os.path.join(d, "vigil.log")
    data = os.path.join(d, "data")
    p = subprocess.Popen([a.bin, "run", "--config", cfg, "--data-dir", data, "--log-file", log],
                         stdin=subprocess.DEVNULL)
    addr = None
    for _ in range(500):
        time.sleep(0.01)
        if os.path.exists(log):
            m = re.search(r"Status endpoint listening\. addr=(\S+)", open(log).read())
            if m:
                addr = m.group(1)
                break
    if not addr:
        sys.exit("status endpoint never came up")

    def status():
        with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as r:
            return json.load(r)

    crash_dir = os.path.join(data, "crashes")
    samples = []  # (cycle, fds, rss KiB, threads, crash files, zombies)
    t0 = time.time()
    every = max(1, a.cycles // 20)
    for i in range(a.cycles):
        deadline = time.time() + 30
        while True:
            s = status()["collector"]
            if s["state"] == "running" and s["incarnation"] == i + 1 and s["pid"]:
                break
            if time.time() > deadline:
                sys.exit(f"cycle {i}: no running incarnation {i + 1}: {s}")
            time.sleep(0.002)
        os.kill(s["pid"], signal.SIGKILL)
        if i == 0 or (i + 1) % every == 0:
            # Let the report of this crash reach the disk before counting files.
            while status()["collector"]["pending_crash_reports"]:
                time.sleep(0.01)
            files = len([f for f in os.listdir(crash_dir) if not f.startswith(".")]) if os.path.isdir(crash_dir) else 0
            samples.append((i + 1, fds(p.pid), rss_kib(p.pid), threads(p.pid), files, zombies(p.pid)))
            print("cycle %6d  fds %3d  rss %6d KiB  threads %3d  crash files %4d  zombies %d" % samples[-1], flush=True)
    took = time.time() - t0
    final = status()
    p.send_signal(signal.SIGTERM)
    code = p.wait(timeout=30)
    first, last = samples[0], samples[-1]
    settled = samples[1]
    print(json.dumps({
        "cycles": a.cycles,
        "seconds": round(took, 1),
        "cycles_per_second": round(a.cycles / took, 1),
        "restarts": final["collector"]["restarts"],
        "fds": {"first": first[1], "max": max(s[1] for s in samples), "last": last[1]},
        "rss_kib": {"first": first[2], "after_first_5pct": settled[2], "max": max(s[2] for s in samples), "last": last[2]},
        "threads": {"first": first[3], "max": max(s[3] for s in samples), "last": last[3]},
        "crash_files": {"max": max(s[4] for s in samples), "last": last[4], "keep": a.keep},
        "zombies_max": max(s[5] for s in samples),
        "exit_code": code,
    }, indent=1))


if __name__ == "__main__":
    main()

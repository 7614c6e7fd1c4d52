#!/usr/bin/env python3
"""The supervisor under stalls (issue 11, CONTRACT §10): heartbeat round trip, /healthz
latency and SIGKILL -> ChildExited latency, each as p50/p99, in three runs of the real
`vigil run`:

  baseline   nothing in the way
  frozen     the data dir (spool, crash reports, module state) on a loop-mounted ext4
             frozen with fsfreeze for the whole run (the log is elsewhere, so its
             timestamps can be read; the log's own stall is covered by the tests)
  flood      8 local client processes requesting /metrics and /status back to back

In each run the collector is SIGKILLed --kills times; the exit event's time is the
microsecond timestamp of the supervisor's debug line "Exit event received." (stamped when
the event is handled, whatever the log's disk does) minus this script's time just before
kill(2), both CLOCK_REALTIME. Heartbeat RTTs are the supervisor's own measurements
(`/status` heartbeat.rtt_ms, one per ack at heartbeat_interval_secs = 0.1); /healthz is
requested every 20 ms by a separate process.

Needs root (mount, fsfreeze) for the frozen run; --skip-frozen leaves it out.

Usage: cargo build --release && python3 bench/stalls.py [--kills 40] [--bin target/release/vigil]
"""
import argparse, json, multiprocessing as mp, os, re, signal, subprocess, sys, tempfile, time
import http.client
from datetime import datetime, timezone


def ts_ns(line):
    stamp = line.split()[0]
    base, frac = stamp.rstrip("Z").split(".")
    secs = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return int(secs) * 1_000_000_000 + int(frac.ljust(9, "0"))


def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def get(addr, path, timeout=5):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def flood(addr, path, stop):
    while not stop.is_set():
        try:
            get(addr, path)
        except OSError:
            pass


def probe(addr, stop, out):
    lat = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            get(addr, "/healthz")
            lat.append((time.perf_counter() - t0) * 1000)
        except OSError:
            lat.append(5000.0)
        time.sleep(0.02)
    out.put(lat)


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def one_run(binary, kind, kills):
    d = tempfile.mkdtemp(prefix=f"vigil-stall-{kind}-")
    data = os.path.join(d, "data")
    mnt = None
    if kind == "frozen":
        img = os.path.join(d, "fs.img")
        with open(img, "wb") as f:
            f.truncate(64 << 20)
        sh("mkfs.ext4", "-q", "-F", img)
        mnt = os.path.join(d, "mnt")
        os.mkdir(mnt)
        sh("mount", "-o", "loop", img, mnt)
        data = os.path.join(mnt, "data")
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write('[agent]\nlog_level = "debug"\n[supervisor]\nrestart_initial_delay_ms = 1\n'
                'restart_max_delay_secs = 0.001\ncrash_loop_crashes = 100000\ncrash_reports_keep = 200\n'
                'heartbeat_interval_secs = 0.1\nheartbeat_timeout_secs = 5\n'
                '[status]\nlisten = "127.0.0.1:0"\n[collectors]\ninterval_secs = 1\n'
                '[collectors.time_drift]\nenabled = false\n')
    log = os.path.join(d, "vigil.log")
    p = subprocess.Popen([binary, "run", "--config", cfg, "--data-dir", data, "--log-file", log],
                         stdin=subprocess.DEVNULL)
    procs = []
    try:
        addr = None
        for _ in range(1000):
            time.sleep(0.01)
            if os.path.exists(log):
                m = re.search(r"Status endpoint listening\. addr=(\S+)", open(log).read())
                if m:
                    addr = m.group(1)
                    break
        if not addr:
            sys.exit("status endpoint never came up")

        def status():
            return json.loads(get(addr, "/status")[1])["collector"]

        while status()["state"] != "running":
            time.sleep(0.01)
        if mnt:
            sh("fsfreeze", "-f", mnt)
        stop = mp.Event()
        out = mp.Queue()
        procs.append(mp.Process(target=probe, args=(addr, stop, out)))
        if kind == "flood":
            for i in range(8):
                procs.append(mp.Process(target=flood, args=(addr, "/metrics" if i % 2 == 0 else "/status", stop)))
        for pr in procs:
            pr.start()
        time.sleep(0.5)

        rtts, events = [], []
        pos = os.path.getsize(log)
        for i in range(kills):
            # A running incarnation that has answered heartbeats for a while: RTT samples.
            t_end = time.time() + 0.5
            last = None
            while True:
                s = status()
                hb = s["heartbeat"]
                if s["state"] == "running" and hb["rtt_ms"] is not None:
                    if hb["last_ack_ms_ago"] is not None and (last is None or hb["last_ack_ms_ago"] < last):
                        rtts.append(hb["rtt_ms"])
                    last = hb["last_ack_ms_ago"]
                    if time.time() >= t_end:
                        pid = s["pid"]
                        break
                time.sleep(0.02)
            t0 = time.time_ns()
            os.kill(pid, signal.SIGKILL)
            got = None
            deadline = time.time() + 5
            while got is None and time.time() < deadline:
                with open(log) as f:
                    f.seek(pos)
                    for line in f:
                        if f"pid={pid}" in line and "Exit event received." in line:
                            got = ts_ns(line)
                time.sleep(0.002)
            if got is None:
                sys.exit(f"{kind}: kill {i}: no exit event for pid {pid}")
            events.append((got - t0) / 1e6)
            pos = os.path.getsize(log)
        pending = status().get("pending_crash_reports")
        stop.set()
        healthz = out.get(timeout=10)
        return {"kind": kind, "rtt": rtts, "healthz": healthz, "exit": events, "pending": pending}
    finally:
        if mnt:
            subprocess.run(["fsfreeze", "-u", mnt], stderr=subprocess.DEVNULL)
        for pr in procs:
            pr.terminate()
            pr.join()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if mnt:
            subprocess.run(["umount", mnt])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    ap.add_argument("--skip-frozen", action="store_true")
    a = ap.parse_args()
    kinds = ["baseline", "flood"] + ([] if a.skip_frozen else ["frozen"])
    results = [one_run(a.bin, k, a.kills) for k in kinds]
    print("| run | heartbeat RTT p50 / p99 (ms) | /healthz p50 / p99 (ms) | SIGKILL -> ChildExited p50 / p99 (ms) | samples (RTT, healthz, kills) |")
    print("|---|---|---|---|---|")
    for r in results:
        f = lambda xs: f"{pct(xs, 50):.2f} / {pct(xs, 99):.2f}"
        print(f"| {r['kind']} | {f(r['rtt'])} | {f(r['healthz'])} | {f(r['exit'])} | "
              f"{len(r['rtt'])}, {len(r['healthz'])}, {len(r['exit'])} |")
    for r in results:
        if r["kind"] == "frozen":
            print(f"\nfrozen: {r['pending']} crash reports were held in memory at the end of the run (one per kill)")


if __name__ == "__main__":
    main()

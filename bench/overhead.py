#!/usr/bin/env python3
"""Overhead of vigil next to Debian's prometheus-node-exporter, in the same run.

vigil: `vigil run` with collectors.interval_secs = INTERVAL; after CYCLES full collection
cycles (every enabled collector ran CYCLES times, counted from /status), report
  * CPU per cycle of the collector child and of the supervisor (utime+stime from
    /proc/PID/stat, in clock ticks, over the cycles), and both together;
  * RSS of supervisor + collector (VmRSS).
node exporter: started on a free loopback port with its default collectors, scraped CYCLES
times; CPU per scrape and RSS after the scrapes.

dns and time_drift are disabled for the CPU figure (they wait on the network; node exporter
does neither by default).

Usage: cargo build --release && python3 bench/overhead.py [--cycles 1000] [--interval 0.05]
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

TICK = os.sysconf("SC_CLK_TCK")

def cpu_secs(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime, stime

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def pss_kib(pid):
    # Proportional set size: pages shared by the two vigil processes (the same binary's
    # code) count half in each, so the sum is what the pair really occupies.
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="vigil-overhead-")
    port = free_port()
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write(f'[agent]\nlog_level = "warn"\n[collectors]\ninterval_secs = {a.interval}\n'
                '[collectors.dns]\nenabled = false\n[collectors.time_drift]\nenabled = false\n'
                f'[status]\nlisten = "127.0.0.1:{port}"\n')
    sup = subprocess.Popen([a.bin, "run", "--config", cfg, "--data-dir", os.path.join(d, "data"),
                            "--log-file", os.path.join(d, "vigil.log")], stdin=subprocess.DEVNULL)
    def status():
        return json.loads(get(f"http://127.0.0.1:{port}/status"))
    for _ in range(500):
        try:
            s = status()
            if s["collector"]["state"] == "running":
                break
        except Exception:
            pass
        time.sleep(0.02)
    def cycles(s):
        runs = [c["collections"] for c in s["collectors"] if c["state"] != "disabled"]
        return min(runs) if runs else 0
    s = status()
    child = s["collector"]["pid"]
    c0, s0, n0 = cpu_secs(child), cpu_secs(sup.pid), cycles(s)
    t0 = time.time()
    while True:
        s = status()
        n = cycles(s)
        if n - n0 >= a.cycles:
            break
        if s["collector"]["pid"] != child:
            sys.exit("the collector restarted during the benchmark")
        time.sleep(0.2)
    c1, s1 = cpu_secs(child), cpu_secs(sup.pid)
    done = n - n0
    vigil_rss = rss_kib(child) + rss_kib(sup.pid)
    vigil_pss = pss_kib(child) + pss_kib(sup.pid)
    busy_ms = sum(c["last_duration_ms"] or 0 for c in s["collectors"] if c["state"] != "disabled")
    per_child = (c1 - c0) / done * 1000
    per_sup = (s1 - s0) / done * 1000
    durations = {c["name"]: c["last_duration_ms"] for c in s["collectors"] if c["state"] != "disabled"}
    sup.send_signal(signal.SIGTERM); sup.wait(timeout=20)

    ne_bin = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    ne_port = free_port()
    ne = subprocess.Popen([ne_bin, f"--web.listen-address=127.0.0.1:{ne_port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            get(f"http://127.0.0.1:{ne_port}/metrics"); break
        except Exception:
            time.sleep(0.02)
    n0 = cpu_secs(ne.pid)
    for _ in range(a.cycles):
        get(f"http://127.0.0.1:{ne_port}/metrics")
    ne_cpu = (cpu_secs(ne.pid) - n0) / a.cycles * 1000
    ne_rss = rss_kib(ne.pid)
    ne_pss = pss_kib(ne.pid)
    ne.terminate(); ne.wait(timeout=10)

    print(f"cycles: {done} (interval {a.interval} s), node exporter scrapes: {a.cycles}")
    print(f"vigil collector CPU per cycle:   {per_child:.3f} ms")
    print(f"vigil supervisor CPU per cycle:  {per_sup:.3f} ms")
    print(f"vigil total CPU per cycle:       {per_child + per_sup:.3f} ms")
    print(f"vigil RSS (supervisor+collector): {vigil_rss / 1024:.1f} MiB")
    print(f"vigil PSS (supervisor+collector): {vigil_pss / 1024:.1f} MiB")
    print(f"sum of last collection wall times: {busy_ms:.3f} ms")
    print(f"node exporter CPU per scrape:    {ne_cpu:.3f} ms")
    print(f"node exporter RSS:               {ne_rss / 1024:.1f} MiB")
    print(f"node exporter PSS:               {ne_pss / 1024:.1f} MiB")
    print(f"ratio CPU vigil/node-exporter:   {(per_child + per_sup) / ne_cpu:.2f}" if ne_cpu else "")
    print(f"ratio RSS vigil/node-exporter:   {vigil_rss / ne_rss:.2f}" if ne_rss else "")
    print("last collection durations (ms):", json.dumps(durations))

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Overhead of vigil next to collectd and Debian's prometheus-node-exporter, in the same run.

vigil: `vigil run` with collectors.interval_secs = INTERVAL; after CYCLES full collection
cycles (every enabled collector ran CYCLES times, counted from /status), report
  * CPU per cycle of the collector child and of the supervisor (utime+stime from
    /proc/PID/stat, in clock ticks, over the cycles), and both together;
  * RSS of supervisor + collector (VmRSS).
vigil is measured twice: with all collectors, and with only the seed's ten (cpu, disk,
dns, fs, containers, load, mem, net, processes, time_drift; i.e. pressure, tcp, conntrack
and top_processes disabled). --seed-only / --all-only run just one of the two.
collectd (Debian collectd-core; write_prometheus needs libprotobuf-c1 and libmicrohttpd12):
bench/collectd.conf with BaseDir, Interval = INTERVAL and a free loopback port filled in,
run as `collectd -f -C FILE` for CYCLES intervals of wall time; CPU per interval (utime+
stime over the run / intervals elapsed) and RSS/PSS after the run. The number of reads
collectd really did (from the write_prometheus timestamps of load) is reported beside it.
node exporter: started on a free loopback port with its default collectors, scraped CYCLES
times; CPU per scrape and RSS after the scrapes.

dns and time_drift are disabled for the CPU figure (they wait on the network; node exporter
does neither by default).

The floor: bench/floor.c (built here with cc) reads the same files in a loop, nothing else,
and reports its CPU per cycle: what the kernel charges for producing the data (seed set, and
with `all` the later collectors' files too). vigil's CPU per cycle is reported as a multiple.

Containers: with --containers N,... the run is repeated with N Kubernetes-like pods made as
real cgroups (under kubepods/burstable/pod<uid>/, a pause and an app container each: three
directories per pod per hierarchy), removed afterwards; for N > 0 only vigil (seed), collectd
and the floor run (node exporter reads no cgroups).

Usage: cargo build --release && python3 bench/overhead.py [--cycles 600] [--interval 0.05]
       [--bin PATH] [--json FILE] [--seed-only | --all-only] [--containers 0,100,300]
Needs: apt-get install collectd-core libprotobuf-c1 libmicrohttpd12 prometheus-node-exporter gcc; root
(for the cgroups)
(and no collectd system service running: the script never uses /etc/collectd).
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

LATER = ["pressure", "tcp", "conntrack", "top_processes"]  # not in the seed's ten

def wait_for(fn, tries=500, delay=0.02):
    for _ in range(tries):
        try:
            r = fn()
            if r:
                return r
        except Exception:
            pass
        time.sleep(delay)
    return None

def run_vigil(a, d, label, disabled):
    port = free_port()
    cfg = os.path.join(d, f"vigil-{label}.toml")
    with open(cfg, "w") as f:
        f.write(f'[agent]\nlog_level = "warn"\n[collectors]\ninterval_secs = {a.interval}\n')
        for name in ["dns", "time_drift"] + disabled:
            f.write(f'[collectors.{name}]\nenabled = false\n')
        f.write(f'[status]\nlisten = "127.0.0.1:{port}"\n')
    sup = subprocess.Popen([a.bin, "run", "--config", cfg, "--data-dir", os.path.join(d, f"data-{label}"),
                            "--log-file", os.path.join(d, f"vigil-{label}.log")], stdin=subprocess.DEVNULL)
    try:
        def status():
            return json.loads(get(f"http://127.0.0.1:{port}/status"))
        if not wait_for(lambda: status()["collector"]["state"] == "running"):
            sys.exit(f"vigil ({label}) did not start; see {d}/vigil-{label}.log")
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
        wall = time.time() - t0
        done = n - n0
        enabled = [c["name"] for c in s["collectors"] if c["state"] != "disabled"]
        r = {
            "label": label, "cycles": done, "wall_secs": round(wall, 3), "enabled": enabled,
            "collector_cpu_ms": (c1 - c0) / done * 1000, "supervisor_cpu_ms": (s1 - s0) / done * 1000,
            "collector_rss_kib": rss_kib(child), "supervisor_rss_kib": rss_kib(sup.pid),
            "collector_pss_kib": pss_kib(child), "supervisor_pss_kib": pss_kib(sup.pid),
            "busy_ms": sum(c["last_duration_ms"] or 0 for c in s["collectors"] if c["state"] != "disabled"),
            "durations_ms": {c["name"]: c["last_duration_ms"] for c in s["collectors"] if c["state"] != "disabled"},
        }
        r["cpu_ms"] = r["collector_cpu_ms"] + r["supervisor_cpu_ms"]
        r["rss_kib"] = r["collector_rss_kib"] + r["supervisor_rss_kib"]
        r["pss_kib"] = r["collector_pss_kib"] + r["supervisor_pss_kib"]
        return r
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sup.kill(); sup.wait()

def load_ts(port):
    # write_prometheus puts the collection time (ms) after each value.
    for line in get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
        if line.startswith("collectd_load_shortterm"):
            return int(line.split()[2])
    return None

def run_collectd(a, d):
    exe = shutil.which("collectd") or "/usr/sbin/collectd"
    if not os.path.exists(exe):
        sys.exit("collectd not found: apt-get install collectd-core libprotobuf-c1 libmicrohttpd12")
    port = free_port()
    cd = os.path.join(d, "collectd"); os.makedirs(cd)
    tmpl = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "collectd.conf")).read()
    cfg = os.path.join(cd, "collectd.conf")
    with open(cfg, "w") as f:
        f.write(tmpl.replace("@BASEDIR@", cd).replace("@INTERVAL@", repr(a.interval)).replace("@PORT@", str(port)))
    log = os.path.join(cd, "stderr.log")
    with open(log, "wb") as err:
        p = subprocess.Popen([exe, "-f", "-C", cfg], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        if not wait_for(lambda: load_ts(port)):
            sys.exit(f"collectd did not start or serve load values; see {log}")
        ts0, c0, t0 = load_ts(port), cpu_secs(p.pid), time.time()
        time.sleep(a.cycles * a.interval)
        c1, t1, ts1 = cpu_secs(p.pid), time.time(), load_ts(port)
        intervals = (t1 - t0) / a.interval
        r = {"cycles": intervals, "wall_secs": round(t1 - t0, 3),
             "reads_done": round((ts1 - ts0) / 1000 / a.interval),
             "cpu_ms": (c1 - c0) / intervals * 1000,
             "rss_kib": rss_kib(p.pid), "pss_kib": pss_kib(p.pid)}
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()
    text = open(log, errors="replace").read()
    r["log_problems"] = [l for l in text.splitlines()
                         if re.search(r"error|fail|took too long|not|cannot|unable", l, re.I)
                         and "successfully loaded" not in l and "EXTERNAL_LOGGER" not in l]
    r["log"] = log
    return r

def run_node_exporter(a):
    ne_bin = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    ne_port = free_port()
    ne = subprocess.Popen([ne_bin, f"--web.listen-address=127.0.0.1:{ne_port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{ne_port}/metrics"))
        n0, t0 = cpu_secs(ne.pid), time.time()
        for _ in range(a.cycles):
            get(f"http://127.0.0.1:{ne_port}/metrics")
        return {"cycles": a.cycles, "wall_secs": round(time.time() - t0, 3),
                "cpu_ms": (cpu_secs(ne.pid) - n0) / a.cycles * 1000,
                "rss_kib": rss_kib(ne.pid), "pss_kib": pss_kib(ne.pid)}
    finally:
        ne.terminate(); ne.wait(timeout=10)

CGROUP = "/sys/fs/cgroup"

def cgroup_roots():
    """Where container cgroups go, and the two files vigil reads for each (v2, or v1)."""
    if os.path.exists(f"{CGROUP}/cgroup.controllers"):
        return [(CGROUP, ["cpu.stat", "memory.current"])]
    return [(f"{CGROUP}/cpuacct", ["cpuacct.usage"]), (f"{CGROUP}/memory", ["memory.usage_in_bytes"])]

class Pods:
    """N pods as real cgroups: kubepods/burstable/pod<uid>/{pause id, app id}."""
    def __init__(self, n):
        self.made, self.files = [], []
        if n == 0:
            return
        v2 = os.path.exists(f"{CGROUP}/cgroup.controllers")
        try:
            for root, files in cgroup_roots():
                base = os.path.join(root, "kubepods", "burstable")
                for d in (os.path.join(root, "kubepods"), base):
                    if not os.path.exists(d):
                        os.mkdir(d); self.made.append(d)
                    if v2:
                        open(os.path.join(os.path.dirname(d), "cgroup.subtree_control"), "w").write("+cpu +memory")
                if v2:
                    open(os.path.join(base, "cgroup.subtree_control"), "w").write("+cpu +memory")
                for i in range(n):
                    pod = os.path.join(base, f"pod{i:08x}-0000-4000-8000-{i:012x}")
                    os.mkdir(pod); self.made.append(pod)
                    if v2:
                        open(os.path.join(pod, "cgroup.subtree_control"), "w").write("+cpu +memory")
                    for kind in ("a", "b"):
                        c = os.path.join(pod, (f"{kind}{i:07x}" * 8)[:64])
                        os.mkdir(c); self.made.append(c)
                        self.files += [os.path.join(c, f) for f in files]
        except BaseException:
            self.remove(); raise
    def remove(self):
        for d in reversed(self.made):
            try:
                os.rmdir(d)
            except OSError as e:
                print(f"warning: cannot remove {d}: {e}", file=sys.stderr)
        self.made = []

def build_floor(d):
    exe = os.path.join(d, "floor")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")],
                   check=True)
    return exe

def run_floor(exe, mode, cycles, files):
    out = subprocess.run([exe, mode, str(cycles)] + files, check=True, capture_output=True, text=True).stdout
    return json.loads(out)

def ratio(x, y):
    return x / y if y else float("nan")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=600)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    ap.add_argument("--json", help="also write the results to this file")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seed-only", action="store_true", help="vigil only with the seed's ten collectors")
    g.add_argument("--all-only", action="store_true", help="vigil only with all collectors")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--containers", default="0,100,300", help="pod counts to run with (comma-separated)")
    a = ap.parse_args()

    started = time.time()
    d = tempfile.mkdtemp(prefix="vigil-overhead-")
    floor = build_floor(d)
    runs = []
    for n in [int(x) for x in a.containers.split(",")]:
        pods = Pods(n)
        try:
            runs.append(measure(a, d, floor, n, pods.files))
        finally:
            pods.remove()
    for r in runs:
        report(a, r)
    total = time.time() - started
    print(f"total run time: {total:.1f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"interval_secs": a.interval, "cycles": a.cycles, "run_secs": round(total, 1), "runs": runs},
                      f, indent=2)
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)

def measure(a, d, floor, pods, files):
    """One set of runs with `pods` pods (their cgroup `files`) on the host."""
    sub = os.path.join(d, f"pods-{pods}"); os.makedirs(sub)
    vigil = []
    if not a.seed_only and pods == 0:
        vigil.append(run_vigil(a, sub, "all", []))
    if not a.all_only:
        vigil.append(run_vigil(a, sub, "seed", LATER))
    cd = run_collectd(a, sub)
    ne = run_node_exporter(a) if pods == 0 else None
    floors = {"seed": run_floor(floor, "seed", 2000, files)}
    if pods == 0:
        floors["all"] = run_floor(floor, "all", 1000, files)
    for v in vigil:
        f = floors.get(v["label"])
        v["floor_cpu_ms"] = f["cpu_ms"] if f else None
        v["vs_floor"] = ratio(v["cpu_ms"], f["cpu_ms"]) if f else None
        v["ratios"] = {f"{k}_vs_{o}": ratio(v[f"{k}_kib" if k != "cpu" else "cpu_ms"],
                                           oo[f"{k}_kib" if k != "cpu" else "cpu_ms"])
                       for k in ("cpu", "rss", "pss") for o, oo in (("collectd", cd), ("node_exporter", ne)) if oo}
    if not a.keep:
        cd["log"] = None  # removed with the temp dir; --keep keeps it
    return {"pods": pods, "containers": 2 * pods, "cgroup_files": len(files),
            "vigil": vigil, "collectd": cd, "node_exporter": ne, "floor": floors}

def report(a, r):
    vigil, cd, ne, floors = r["vigil"], r["collectd"], r["node_exporter"], r["floor"]
    print(f"\n== {r['pods']} pods ({r['containers']} containers, {3 * r['pods']} cgroup directories per hierarchy); interval {a.interval} s, "
          f"{a.cycles} cycles each (vigil: full cycles from /status; collectd: intervals of wall time; "
          f"node exporter: scrapes)")
    rows = [(f"vigil {v['label']} ({len(v['enabled'])} collectors)", v) for v in vigil]
    rows += [("collectd", cd)] + ([("node exporter (per scrape)", ne)] if ne else [])
    print(f"{'':30} {'CPU ms/cycle':>12} {'RSS MiB':>8} {'PSS MiB':>8} {'cycles':>8} {'wall s':>7}"
          f" {'v/floor':>8} {'CPU v/cd':>9} {'CPU v/ne':>9} {'RSS v/cd':>9} {'RSS v/ne':>9} {'PSS v/cd':>9} {'PSS v/ne':>9}")
    for name, x in rows:
        line = (f"{name:30} {x['cpu_ms']:12.3f} {x['rss_kib'] / 1024:8.1f} {x['pss_kib'] / 1024:8.1f}"
                f" {x['cycles']:8.0f} {x['wall_secs']:7.1f}")
        if "label" in x:
            line += f" {x['vs_floor']:8.2f}" if x["vs_floor"] else f" {'':8}"
            line += "".join(f" {x['ratios'].get(f'{k}_vs_{o}', float('nan')):9.2f}" for k in ("cpu", "rss", "pss")
                            for o in ("collectd", "node_exporter"))
        print(line)
    for mode, f in floors.items():
        print(f"floor ({mode}): {f['cpu_ms']:.3f} ms per cycle (user {f['user_ms']:.3f}, system {f['system_ms']:.3f}; "
              f"{f['processes']} processes, {f['cgroup_files']} cgroup files)")
    for v in vigil:
        print(f"vigil {v['label']}: collector {v['collector_cpu_ms']:.3f} ms + supervisor "
              f"{v['supervisor_cpu_ms']:.3f} ms per cycle; RSS collector {v['collector_rss_kib'] / 1024:.1f} + "
              f"supervisor {v['supervisor_rss_kib'] / 1024:.1f} MiB; sum of last collection wall times "
              f"{v['busy_ms']:.3f} ms")
        print(f"  last collection durations (ms): {json.dumps({k: round(x or 0, 3) for k, x in v['durations_ms'].items()})}")
    print(f"collectd: {cd['reads_done']} reads of load done in {cd['cycles']:.0f} intervals "
          f"(from write_prometheus timestamps)" + (f"; log {cd['log']}" if a.keep else ""))
    for l in cd["log_problems"]:
        print(f"  collectd log: {l}")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Bounded memory (CONTRACT §10), measured on the real `vigil run`:

1. churn: real container cgroups (cgroup v1 `cpuacct`/`memory` `docker/<64 hex>`, or the v2
   `system.slice/docker-<hex>.scope`) made and removed by this script, a new set every few
   seconds. The supervisor's `/status` `series` and RSS must level off once the stale window
   has passed, not grow with every container that ever existed.
2. replay: a spool of --backlog-mib MiB written by this script (records in the format of
   actors/src/upload/spool.rs, MessagePack batches as docs/protocol.md specifies), replayed
   to a real `vigil receive`. The supervisor's peak RSS (VmHWM) must stay far below the
   backlog.

Needs root (cgroups). Usage:
  cargo build --release && sudo python3 bench/memory.py [--rounds 40] [--per-round 20] [--backlog-mib 256]
"""
import argparse, json, os, re, shutil, signal, socket, struct, subprocess, sys, tempfile, time, urllib.request, zlib

BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "vigil")


def status_of(addr):
    with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as r:
        return json.load(r)


def proc_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def start_agent(d, config, bin_path):
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write(config)
    log = os.path.join(d, "vigil.log")
    p = subprocess.Popen([bin_path, "run", "--config", cfg, "--data-dir", os.path.join(d, "data"), "--log-file", log],
                         stdin=subprocess.DEVNULL)
    for _ in range(1000):
        time.sleep(0.01)
        if os.path.exists(log):
            m = re.search(r"Status endpoint listening\. addr=(\S+)", open(log).read())
            if m:
                return p, m.group(1)
    p.kill()
    sys.exit("status endpoint never came up:\n" + open(log).read())


# ---- churn -------------------------------------------------------------------------------

def cgroup_dirs(cid):
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return [f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"]
    return [f"/sys/fs/cgroup/{c}/docker/{cid}" for c in ("cpuacct", "memory")]


def churn(a):
    d = tempfile.mkdtemp(prefix="vigil-churn-")
    config = ('[collectors]\ninterval_secs = 1\n[status]\nlisten = "127.0.0.1:0"\n')
    p, addr = start_agent(d, config, a.bin)
    alive, made, rows = [], 0, []
    try:
        for r in range(a.rounds):
            for cid in alive:
                for path in reversed(cgroup_dirs(cid)):
                    os.rmdir(path)
            alive = []
            for _ in range(a.per_round):
                cid = os.urandom(32).hex()
                for path in cgroup_dirs(cid):
                    os.makedirs(path, exist_ok=True)
                alive.append(cid)
                made += 1
            time.sleep(a.period)
            s = status_of(addr)
            rows.append((r + 1, made, s["series"], proc_kib(p.pid, "VmRSS")))
            print("round %3d  containers made %5d  series %6d  supervisor rss %6d KiB" % rows[-1], flush=True)
    finally:
        for cid in alive:
            for path in reversed(cgroup_dirs(cid)):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)
    window = max(3 * 1.0, 30.0)
    settled = [row for row in rows if row[0] * a.period > window + 10]
    return {
        "rounds": a.rounds, "containers_per_round": a.per_round, "seconds_per_round": a.period,
        "containers_made": made, "stale_window_s": window,
        "series": {"first": rows[0][2], "max_after_window": max((x[2] for x in settled), default=None), "last": rows[-1][2]},
        "rss_kib": {"first": rows[0][3], "max_after_window": max((x[3] for x in settled), default=None), "last": rows[-1][3]},
    }


# ---- replay ------------------------------------------------------------------------------

def mp_str(s):
    b = s.encode()
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return bytes([0xD9, n]) + b
    return b"\xda" + struct.pack(">H", n) + b


def mp_uint(v):
    if v < 128:
        return bytes([v])
    if v < 1 << 16:
        return b"\xcd" + struct.pack(">H", v)
    if v < 1 << 32:
        return b"\xce" + struct.pack(">I", v)
    return b"\xcf" + struct.pack(">Q", v)


def mp_map(n):
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


def mp_array(n):
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


def batch(agent, seq, samples, ts):
    out = [mp_map(6), mp_str("agent_id"), mp_str(agent), mp_str("sink"), mp_str("main"), mp_str("seq"), mp_uint(seq),
           mp_str("host"), mp_str("bench"), mp_str("samples"), mp_array(samples)]
    for i in range(samples):
        out += [mp_map(4), mp_str("name"), mp_str("bench_value"), mp_str("tags"), mp_map(1), mp_str("i"), mp_str(str(i)),
                mp_str("ts_ms"), mp_uint(ts), mp_str("value"), b"\xcb" + struct.pack(">d", float(seq))]
    out += [mp_str("crash_reports"), mp_array(0)]
    return b"".join(out)


def record(seq, payload):
    head = struct.pack("<IQ", len(payload), seq)
    crc = zlib.crc32(head + payload) & 0xFFFFFFFF
    return b"VSR1" + head + struct.pack("<I", crc) + payload


def replay(a):
    d = tempfile.mkdtemp(prefix="vigil-replay-")
    data = os.path.join(d, "data")
    spool = os.path.join(data, "spool", "main")
    os.makedirs(spool, mode=0o700)
    agent = "00" * 16
    with open(os.path.join(data, "agent_id"), "w") as f:
        f.write(agent)
    target = a.backlog_mib << 20
    written, seq, seg, seg_bytes = 0, 0, None, 0
    ts = int(time.time() * 1000) - 3_600_000
    while written < target:
        seq += 1
        rec = record(seq, batch(agent, seq, 2000, ts + seq))
        if seg is None or seg_bytes + len(rec) > 8 << 20:
            if seg:
                seg.close()
            seg = open(os.path.join(spool, f"{seq:020}.seg"), "wb")
            seg_bytes = 0
        seg.write(rec)
        seg_bytes += len(rec)
        written += len(rec)
    seg.close()
    out = os.path.join(d, "received.jsonl")
    port = socket.socket(); port.bind(("127.0.0.1", 0)); listen = "127.0.0.1:%d" % port.getsockname()[1]; port.close()
    rlog = open(os.path.join(d, "receive.log"), "w")
    recv = subprocess.Popen([a.bin, "receive", "--listen", listen, "--out", out], stdin=subprocess.DEVNULL, stderr=rlog)
    time.sleep(0.5)
    config = ('[collectors]\ninterval_secs = 10\n[status]\nlisten = "127.0.0.1:0"\n'
              f'[[upload]]\nname = "main"\nurl = "ws://{listen}/v1/ingest"\nspool_max_bytes = {2 * target}\n')
    t0 = time.time()
    p, addr = start_agent(d, config, a.bin)
    try:
        while True:
            s = status_of(addr)["uploads"][0]
            if s["acked_seq"] >= seq:
                break
            if time.time() - t0 > 900:
                sys.exit(f"replay did not finish: {s}")
            time.sleep(0.2)
        took = time.time() - t0
        peak = proc_kib(p.pid, "VmHWM")
        now = proc_kib(p.pid, "VmRSS")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        recv.kill(); recv.wait()
        shutil.rmtree(d, ignore_errors=True)
    return {"backlog_mib": round(written / (1 << 20), 1), "batches": seq, "samples": seq * 2000,
            "replay_seconds": round(took, 1), "supervisor_peak_rss_kib": peak, "supervisor_rss_after_kib": now,
            "peak_rss_over_backlog": round(peak * 1024 / written, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--period", type=float, default=3.0)
    ap.add_argument("--backlog-mib", type=int, default=256)
    ap.add_argument("--skip", choices=["churn", "replay"])
    ap.add_argument("--bin", default=BIN)
    a = ap.parse_args()
    result = {}
    if a.skip != "churn":
        result["churn"] = churn(a)
    if a.skip != "replay":
        result["replay"] = replay(a)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

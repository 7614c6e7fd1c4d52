#!/usr/bin/env python3
"""wire_bytes: WebSocket payload bytes per sample of a real agent's vigil sink (issue 15).

Runs `vigil receive` and `vigil run` (every collector but dns, at --interval, flushing every
--flush seconds) for --secs seconds, then divides the sink's /status `sent_bytes` by the
samples the receiver stored. Each batch in the samples form is also re-sized from the stored
lines: a MessagePack map per sample, which is what an older receiver would get.

    cargo build --release
    python3 bench/wire_bytes.py [--secs 60] [--interval 1] [--flush 10]

Reported in docs/performance.md.
"""
import argparse, json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mp_len_str(s):
    n = len(s.encode())
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


def mp_len_uint(v):
    return 1 if 0 <= v < 128 else 2 if v < 256 else 3 if v < 65536 else 5 if v < 2**32 else 9


def samples_form_len(line):
    """The samples-form MessagePack size of one stored batch (rmp-serde, structs as maps)."""
    n = 1 + sum(mp_len_str(k) for k in ["agent_id", "sink", "seq", "host", "samples", "crash_reports"])
    n += mp_len_str(line["agent_id"]) + mp_len_str(line["sink"]) + mp_len_uint(line["seq"]) + mp_len_str(line["host"])
    samples = line["samples"]
    n += 1 if len(samples) < 16 else 3 if len(samples) < 65536 else 5
    for s in samples:
        n += 1 + sum(mp_len_str(k) for k in ["name", "tags", "ts_ms", "value"])
        n += mp_len_str(s["name"]) + 1 + sum(mp_len_str(k) + mp_len_str(v) for k, v in s["tags"].items())
        n += mp_len_uint(s["ts_ms"]) + 9
    return n + 1  # crash_reports: [] (none in this run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=60)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--flush", type=float, default=10.0)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vigil"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="vigil-wire-")
    rport, sport = free_port(), free_port()
    out = os.path.join(d, "out.jsonl")
    recv = subprocess.Popen([a.bin, "receive", "--listen", f"127.0.0.1:{rport}", "--out", out],
                            stderr=open(os.path.join(d, "recv.log"), "w"))
    cfg = os.path.join(d, "vigil.toml")
    with open(cfg, "w") as f:
        f.write(f'[agent]\nlog_level = "warn"\n[collectors]\ninterval_secs = {a.interval}\n'
                f'[collectors.dns]\nenabled = false\n[status]\nlisten = "127.0.0.1:{sport}"\n'
                f'[[upload]]\nname = "main"\nurl = "ws://127.0.0.1:{rport}/v1/ingest"\n'
                f'flush_interval_secs = {a.flush}\n')
    sup = subprocess.Popen([a.bin, "run", "--config", cfg, "--data-dir", os.path.join(d, "data"),
                            "--log-file", os.path.join(d, "vigil.log")], stdin=subprocess.DEVNULL)
    try:
        time.sleep(a.secs)
        # A clean stop spools the rest; the sink's counters are read just before it.
        st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{sport}/status", timeout=5).read())
        up = st["uploads"][0]
        lines = [json.loads(l) for l in open(out)][: up["acked_seq"]]
        samples = sum(len(l["samples"]) for l in lines)
        if not samples:
            sys.exit(f"no samples arrived; see {d}")
        old = sum(samples_form_len(l) for l in lines)
        # sent_bytes may include batches sent and not yet acked: an upper bound per sample.
        print(f"{len(lines)} batches, {samples} samples ({samples / len(lines):.0f} per batch), "
              f"interval {a.interval} s, flush {a.flush} s")
        print(f"columns on a connection: {up['sent_bytes'] / samples:.2f} payload bytes per sample")
        print(f"samples form (an older receiver): {old / samples:.2f} bytes per sample")
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=20)
        recv.kill()
        recv.wait()


if __name__ == "__main__":
    main()

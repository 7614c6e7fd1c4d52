#!/usr/bin/python3
"""What one vigil agent costs its upstream, per sink type, against real peers on 127.0.0.1.

One `vigil run` agent with four [[upload]] sinks, so the same samples go to every sink in the
same run, each sink through a TCP relay of its own that counts the bytes in both directions
(HTTP headers, WebSocket framing and handshakes included; no TLS):

  vigil         native sink -> `vigil receive`            (WebSocket, MessagePack)
  prometheus    remote_write -> Debian prometheus          (--web.enable-remote-write-receiver)
  victoria      remote_write -> Debian victoria-metrics    (/api/v1/write)
  otlp          otlp -> tests/support/otlp_receiver.py     (OTLP/HTTP, protobuf + gzip)

and a second agent with no sink at all, scraped by the same Prometheus at GET /metrics through
a relay of its own (the pull model; there the agent is the HTTP server).

Counting, over a window that starts after the first batches and ends a whole number of flush
intervals later, both ends taken at a quiet moment (every relay idle, no request open, every
sink's acked_seq == last_seq), so no request is cut in two:
  * bytes up / down: what the relay forwarded agent->peer / peer->agent (for the scrape, up is
    the agent's HTTP responses);
  * samples: what the peer got, counted at the peer: batch lines of `vigil receive --out`,
    data points in the OTLP receiver's file, the samples of the range query `{host="fleet-bench"}[1d]`
    in Prometheus, the values of `/api/v1/export?match[]={host="fleet-bench"}` in
    VictoriaMetrics, sample lines of the /metrics bodies the relay saw for the scrape;
  * requests: HTTP request heads the relay parsed (agent->peer for push, Prometheus->agent for
    the scrape), or WebSocket binary messages agent->peer (one per batch) for the native sink;
  * series per collection: distinct (name, tags) per collection cycle in the native receiver's
    batches (a cycle = the samples whose ts_ms lie within half an interval of each other).

A second, optional run repeats it with collectors.interval_secs = --fast-interval (1 s), same
flush interval: ten times the samples per batch, the same number of requests.

Usage: /usr/bin/python3 bench/fleet.py [--bin target/release/vigil] [--duration 300]
           [--fast-duration 120] [--fast-interval 1] [--interval 10] [--flush 10]
           [--fleet 10000] [--json FILE] [--quick] [--keep]
"""
import argparse, bisect, gzip, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.parse, urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HOST = "fleet-bench"
SELF_PREFIXES = ("vigil_build_info", "vigil_uptime_", "vigil_collector_", "vigil_log_lines_",
                 "vigil_crash_reports_", "vigil_upload_")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_for(what, cond, timeout=60, step=0.1):
    t0 = time.monotonic()
    while True:
        try:
            if cond():
                return
        except Exception:
            pass
        if time.monotonic() - t0 > timeout:
            sys.exit(f"fleet.py: {what} never became ready")
        time.sleep(step)


# ---------------------------------------------------------------------------------------------
# The relay: a byte-counting TCP forwarder that also parses HTTP/1.1 and WebSocket framing.
# ---------------------------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}
        self.last_activity = time.monotonic()

    def add(self, key, n=1):
        self.c[key] = self.c.get(key, 0) + n

    def snapshot(self):
        with self.lock:
            return dict(self.c)


class Stream:
    """Parses one direction of one connection: HTTP/1.1 messages (requests when side is
    "c2s", responses when "s2c"), then WebSocket frames after an upgrade. Counters go to
    stats under keys prefixed with the side. Called with stats.lock held."""

    def __init__(self, side, stats, capture_bodies=False):
        self.side, self.stats = side, stats
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.capture = capture_bodies
        self.body = bytearray()
        self.headers = {}
        self.ws_opcode = 0

    def k(self, name):
        return f"{self.side}_{name}"

    def feed(self, data):
        self.stats.add(self.k("bytes"), len(data))
        self.buf += data
        while self.step():
            pass

    def take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def body_bytes(self, n):
        chunk = self.take(n)
        self.stats.add(self.k("body_bytes"), n)
        if self.capture:
            self.body += chunk

    def step(self):
        st = self.state
        if st == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = self.take(end + 4).decode("latin-1")
            self.stats.add(self.k("head_bytes"), end + 4)
            lines = head.split("\r\n")
            self.headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    self.headers[name.strip().lower()] = value.strip()
            first = lines[0].split(" ")
            self.body = bytearray()
            if self.side == "c2s":
                self.stats.add("requests")
                self.stats.add(f"request {first[0]} {first[1].split('?')[0]}")
                if self.headers.get("upgrade", "").lower() == "websocket":
                    self.state = "ws"  # the client sends frames next (it waits for the 101)
                    return True
            else:
                code = int(first[1])
                self.stats.add(f"status {code}")
                if code == 101:
                    self.stats.add("responses")
                    self.state = "ws"
                    return True
                if 100 <= code < 200:
                    return True  # an interim answer: the real one follows
                if code in (204, 304):
                    self.finish()
                    return True
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                self.state = "chunk_size"
            elif "content-length" in self.headers:
                self.remaining = int(self.headers["content-length"])
                self.state = "body"
                if self.remaining == 0:
                    self.finish()
            elif self.side == "c2s":
                self.finish()  # a request without a body
            else:
                self.state = "until_close"
            return True
        if st == "body":
            if not self.buf:
                return False
            n = min(self.remaining, len(self.buf))
            self.body_bytes(n)
            self.remaining -= n
            if self.remaining == 0:
                self.finish()
            return True
        if st == "chunk_size":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            line = self.take(end + 2)
            self.stats.add(self.k("chunk_framing_bytes"), end + 2)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                self.state = "trailer"
            else:
                self.remaining, self.state = size, "chunk_data"
            return True
        if st == "chunk_data":
            if not self.buf:
                return False
            n = min(self.remaining, len(self.buf))
            self.body_bytes(n)
            self.remaining -= n
            if self.remaining == 0:
                self.state = "chunk_crlf"
            return True
        if st == "chunk_crlf":
            if len(self.buf) < 2:
                return False
            self.take(2)
            self.stats.add(self.k("chunk_framing_bytes"), 2)
            self.state = "chunk_size"
            return True
        if st == "trailer":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            self.take(end + 2)
            self.stats.add(self.k("chunk_framing_bytes"), end + 2)
            if end == 0:
                self.finish()
            return True
        if st == "until_close":
            if not self.buf:
                return False
            self.body_bytes(len(self.buf))
            return True
        if st == "ws":
            if len(self.buf) < 2:
                return False
            b0, b1 = self.buf[0], self.buf[1]
            ln, hdr = b1 & 0x7F, 2
            if ln == 126:
                if len(self.buf) < 4:
                    return False
                ln, hdr = int.from_bytes(self.buf[2:4], "big"), 4
            elif ln == 127:
                if len(self.buf) < 10:
                    return False
                ln, hdr = int.from_bytes(self.buf[2:10], "big"), 10
            if b1 & 0x80:
                hdr += 4
            if len(self.buf) < hdr:
                return False
            self.take(hdr)
            opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
            self.stats.add(self.k("ws_frames"))
            self.stats.add(self.k("ws_header_bytes"), hdr)
            if opcode != 0:
                self.ws_opcode = opcode
            if fin:
                name = {1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}.get(
                    self.ws_opcode, f"op{self.ws_opcode}")
                self.stats.add(self.k(f"ws_{name}"))
            self.remaining = ln
            self.state = "ws_payload" if ln else "ws"
            return True
        if st == "ws_payload":
            if not self.buf:
                return False
            n = min(self.remaining, len(self.buf))
            self.take(n)
            self.stats.add(self.k("ws_payload_bytes"), n)
            self.remaining -= n
            if self.remaining == 0:
                self.state = "ws"
            return True
        raise AssertionError(st)

    def finish(self):
        self.state = "head"
        if self.side == "s2c":
            self.stats.add("responses")
            if self.capture:
                self.scrape_body(bytes(self.body))
        self.body = bytearray()

    def scrape_body(self, body):
        if self.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        total = own = 0
        for line in body.decode("utf-8", "replace").split("\n"):
            if line and not line.startswith("#"):
                total += 1
                if line.startswith(SELF_PREFIXES):
                    own += 1
        self.stats.add("scrape_bodies")
        self.stats.add("scrape_samples", total)
        self.stats.add("scrape_self_samples", own)
        self.stats.add("scrape_decoded_bytes", len(body))


class Relay:
    def __init__(self, name, upstream, capture_responses=False):
        self.name, self.upstream = name, upstream
        self.capture = capture_responses
        self.stats = Stats()
        self.open = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            try:
                u = socket.create_connection((host, int(port)), timeout=10)
                u.settimeout(None)
                for s in (c, u):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                c.close()
                continue
            with self.stats.lock:
                self.stats.add("connections")
                self.open += 1
                c2s = Stream("c2s", self.stats)
                s2c = Stream("s2c", self.stats, capture_bodies=self.capture)
            # Both pumps done: close this connection's two sockets (bound now, not late).
            done = threading.Barrier(2, action=lambda c=c, u=u: self.closed(c, u))
            threading.Thread(target=self.pump, args=(c, u, c2s, done), daemon=True).start()
            threading.Thread(target=self.pump, args=(u, c, s2c, done), daemon=True).start()

    def closed(self, a, b):
        with self.stats.lock:
            self.open -= 1
        a.close()
        b.close()

    def pump(self, src, dst, stream, done):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.stats.lock:
                    self.stats.last_activity = time.monotonic()
                    stream.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            done.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass

    def quiet_for(self):
        """Seconds since the last byte, or 0 while a request waits for its answer."""
        with self.stats.lock:
            c = self.stats.c
            if c.get("requests", 0) - c.get("responses", 0) > 0:
                return 0.0
            return time.monotonic() - self.stats.last_activity

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Peers and agents
# ---------------------------------------------------------------------------------------------

class Procs:
    def __init__(self):
        self.procs = []

    def start(self, argv, log, **kw):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=kw.pop("stdout", log),
                             stderr=log, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


class Peers:
    def __init__(self, d, procs, args, scrape_interval, scrape_target):
        self.d = d
        log = open(os.path.join(d, "peers.log"), "ab")
        # vigil receive
        self.native_out = os.path.join(d, "native.jsonl")
        port = free_port()
        self.native_addr = f"127.0.0.1:{port}"
        procs.start([args.bin, "receive", "--listen", self.native_addr, "--out", self.native_out], log)
        wait_for("vigil receive", lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True)
        # Prometheus: remote write receiver, and the scrape job for the scrape-only agent
        port = free_port()
        self.prom_addr = f"127.0.0.1:{port}"
        cfg = os.path.join(d, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\n")
            if scrape_target:
                f.write(f"scrape_configs:\n  - job_name: vigil\n    scrape_interval: {scrape_interval:g}s\n"
                        f"    scrape_timeout: {min(10.0, scrape_interval):g}s\n"
                        f"    static_configs:\n      - targets: [\"{scrape_target}\"]\n")
        procs.start(["/usr/bin/prometheus", f"--config.file={cfg}",
                     f"--storage.tsdb.path={os.path.join(d, 'prometheus')}",
                     f"--web.listen-address={self.prom_addr}", "--web.enable-remote-write-receiver",
                     "--log.level=error"], log)
        wait_for("prometheus", lambda: http(f"http://{self.prom_addr}/-/ready", 2)[0] == 200)
        # VictoriaMetrics single node
        port = free_port()
        self.vm_addr = f"127.0.0.1:{port}"
        procs.start(["/usr/bin/victoria-metrics", f"-httpListenAddr={self.vm_addr}",
                     f"-storageDataPath={os.path.join(d, 'victoria')}", "-retentionPeriod=1d",
                     "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=ERROR"], log)
        wait_for("victoria-metrics", lambda: http(f"http://{self.vm_addr}/health", 2)[0] == 200)
        # OTLP/HTTP receiver
        self.otlp_out = os.path.join(d, "otlp.jsonl")
        p = procs.start([sys.executable, os.path.join(REPO, "tests", "support", "otlp_receiver.py"),
                         "--listen", "127.0.0.1:0", "--out", self.otlp_out], log, stdout=subprocess.PIPE)
        line = p.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "listening":
            sys.exit(f"fleet.py: otlp_receiver.py said {line!r}")
        self.otlp_addr = line[1]

    # What each peer holds now.
    def native_count(self):
        samples, batches = 0, 0
        if os.path.exists(self.native_out):
            with open(self.native_out) as f:
                for line in f:
                    if line.endswith("\n"):
                        samples += len(json.loads(line)["samples"])
                        batches += 1
        return samples, batches

    def native_samples(self, first_batch, last_batch):
        out = []
        with open(self.native_out) as f:
            for i, line in enumerate(f):
                if first_batch <= i < last_batch:
                    out += json.loads(line)["samples"]
        return out

    def otlp_count(self):
        points, requests, body = 0, 0, 0
        if os.path.exists(self.otlp_out):
            with open(self.otlp_out) as f:
                for line in f:
                    if not line.endswith("\n"):
                        continue
                    r = json.loads(line)
                    if r.get("path") != "/v1/metrics" or "refused" in r:
                        continue
                    requests += 1
                    body += r["body_bytes"]
                    for rm in r.get("resource_metrics", []):
                        for sm in rm.get("scope_metrics", []):
                            for m in sm.get("metrics", []):
                                points += len(m.get("gauge", {}).get("data_points", []))
        return points, requests, body

    def prom_count(self):
        # A range selector answers every stored sample (count_over_time would drop __name__ and
        # collide series that differ only by it).
        q = urllib.parse.quote(f'{{host="{HOST}"}}[1d]')
        _, body = http(f"http://{self.prom_addr}/api/v1/query?query={q}")
        return sum(len(r["values"]) for r in json.loads(body)["data"]["result"])

    def vm_count(self):
        http(f"http://{self.vm_addr}/internal/force_flush")
        q = urllib.parse.quote(f'{{host="{HOST}"}}')
        _, body = http(f"http://{self.vm_addr}/api/v1/export?match[]={q}")
        return sum(len(json.loads(l)["values"]) for l in body.decode().splitlines() if l.strip())


def agent_config(status_port, interval, sinks):
    out = (f'[agent]\nhostname = "{HOST}"\nlog_level = "warn"\n'
           f'[status]\nlisten = "127.0.0.1:{status_port}"\n'
           f'[collectors]\ninterval_secs = {interval:g}\n'
           '[collectors.dns]\nenabled = false\n[collectors.time_drift]\nenabled = false\n')
    for name, typ, url, flush in sinks:
        out += (f'\n[[upload]]\nname = "{name}"\ntype = "{typ}"\nurl = "{url}"\n'
                f'flush_interval_secs = {flush:g}\n')
    return out


def start_agent(procs, args, d, name, interval, sinks):
    port = free_port()
    cfg = os.path.join(d, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(agent_config(port, interval, sinks))
    log = open(os.path.join(d, f"{name}.log"), "ab")
    procs.start([args.bin, "run", "--config", cfg, "--data-dir", os.path.join(d, f"{name}-data")], log)
    url = f"http://127.0.0.1:{port}/status"
    wait_for(f"agent {name}",
             lambda: json.loads(http(url, 2)[1])["collector"]["state"] == "running", timeout=30)
    return port, lambda: json.loads(http(url, 10)[1])


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

SINKS = [  # (sink name, type, peer label)
    ("vigil", "vigil", "vigil receive"),
    ("prometheus", "remote_write", "Prometheus 2.42"),
    ("victoria", "remote_write", "VictoriaMetrics"),
    ("otlp", "otlp", "OTLP/HTTP receiver"),
]


def run(args, interval, flush, duration, scrape, label):
    d = tempfile.mkdtemp(prefix=f"vigil-fleet-{label}-")
    procs = Procs()
    try:
        return run_in(args, d, procs, interval, flush, duration, scrape, label)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"kept {d}", file=sys.stderr)


def run_in(args, d, procs, interval, flush, duration, scrape, label):
    t_start = time.monotonic()
    relays = {}
    scrape_status_port = free_port() if scrape else None
    if scrape:
        relays["scrape"] = Relay("scrape", f"127.0.0.1:{scrape_status_port}", capture_responses=True)
    peers = Peers(d, procs, args, interval, relays["scrape"].addr if scrape else None)
    upstream = {"vigil": peers.native_addr, "prometheus": peers.prom_addr,
                "victoria": peers.vm_addr, "otlp": peers.otlp_addr}
    for name, _, _ in SINKS:
        relays[name] = Relay(name, upstream[name])
    urls = {"vigil": f"ws://{relays['vigil'].addr}/v1/ingest",
            "prometheus": f"http://{relays['prometheus'].addr}/api/v1/write",
            "victoria": f"http://{relays['victoria'].addr}/api/v1/write",
            "otlp": f"http://{relays['otlp'].addr}"}
    _, status = start_agent(procs, args, d, "push", interval,
                            [(n, t, urls[n], flush) for n, t, _ in SINKS])
    if scrape:
        # The scrape-only agent: no sink; its status port is where the scrape relay points.
        cfgd = os.path.join(d, "scrape.toml")
        with open(cfgd, "w") as f:
            f.write(agent_config(scrape_status_port, interval, []))
        procs.start([args.bin, "run", "--config", cfgd, "--data-dir", os.path.join(d, "scrape-data")],
                    open(os.path.join(d, "scrape.log"), "ab"))
    print(f"[{label}] peers and agents up in {time.monotonic() - t_start:.1f} s; "
          f"interval {interval:g} s, flush {flush:g} s, window {duration:g} s", file=sys.stderr)

    def warmed():
        ups = status()["uploads"]
        ok = len(ups) == len(SINKS) and all(u["acked_seq"] >= 2 for u in ups)
        if scrape:
            ok = ok and relays["scrape"].stats.snapshot().get("scrape_bodies", 0) >= 2
        return ok
    wait_for("the first batches", warmed, timeout=6 * max(flush, interval) + 60, step=0.5)

    def quiet_snapshot(not_before):
        """Waits for a moment with no traffic in flight anywhere, then reads every counter."""
        need = min(0.25, interval / 4)
        give_up = max(not_before, time.monotonic()) + 3 * max(flush, interval) + 60
        while True:
            now = time.monotonic()
            if now < not_before:
                time.sleep(min(0.2, not_before - now))
                continue
            if now > give_up:
                ups = [(u["name"], u["acked_seq"], u["last_seq"], u["last_error"])
                       for u in status()["uploads"]]
                sys.exit(f"fleet.py: no quiet moment; relays quiet for "
                         f"{ {k: round(r.quiet_for(), 2) for k, r in relays.items()} }, sinks {ups}")
            if all(r.quiet_for() >= need for r in relays.values()):
                s = status()
                if all(u["acked_seq"] == u["last_seq"] for u in s["uploads"]):
                    before = {k: r.stats.snapshot() for k, r in relays.items()}
                    t = time.monotonic()
                    snap = {"t": t, "status": s, "relays": before,
                            "native": peers.native_count(), "otlp": peers.otlp_count(),
                            "prom": peers.prom_count(), "vm": peers.vm_count()}
                    after = {k: r.stats.snapshot() for k, r in relays.items()}
                    if after == before:  # nothing moved while the peers were read
                        return snap
            time.sleep(0.05)

    s1 = quiet_snapshot(0)
    # End a whole number of flush (and scrape) intervals later: same phase, whole batches.
    period = max(flush, interval)
    k = max(1, round(duration / period))
    s2 = quiet_snapshot(s1["t"] + k * period)
    window = s2["t"] - s1["t"]
    print(f"[{label}] window {window:.1f} s", file=sys.stderr)

    def diff(name):
        a, b = s1["relays"][name], s2["relays"][name]
        return {key: b.get(key, 0) - a.get(key, 0) for key in set(a) | set(b)}

    # Series per collection, from the native receiver's batches in the window.
    samples = peers.native_samples(s1["native"][1], s2["native"][1])
    # A cycle starts at a ts_ms more than half an interval after the previous one.
    starts, last = [], None
    for t in sorted({x["ts_ms"] for x in samples}):
        if last is None or t - last > interval * 500:
            starts.append(t)
        last = t
    cycles = [(t, set()) for t in starts]
    for x in samples:
        i = bisect.bisect_right(starts, x["ts_ms"]) - 1
        cycles[i][1].add((x["name"], tuple(sorted(x["tags"].items()))))
    per_cycle = [len(c) for _, c in cycles]
    distinct = len({(x["name"], tuple(sorted(x["tags"].items()))) for x in samples})
    by_collector = {}
    for c in s2["status"]["collectors"]:
        if c["state"] != "disabled":
            c1 = next(x for x in s1["status"]["collectors"] if x["name"] == c["name"])
            by_collector[c["name"]] = c["samples"] - c1["samples"]

    rows = []
    for name, typ, peer in SINKS:
        r = diff(name)
        if name == "vigil":
            n = s2["native"][0] - s1["native"][0]
            reqs = r.get("c2s_ws_binary", 0)
            payload = r.get("c2s_ws_payload_bytes", 0)
            unit = "messages"
        else:
            n = {"prometheus": s2["prom"] - s1["prom"], "victoria": s2["vm"] - s1["vm"],
                 "otlp": s2["otlp"][0] - s1["otlp"][0]}[name]
            reqs = r.get("requests", 0)
            payload = r.get("c2s_body_bytes", 0)
            unit = "requests"
        up, down = r.get("c2s_bytes", 0), r.get("s2c_bytes", 0)
        rows.append({
            "sink": name, "type": typ, "peer": peer, "samples": n, "bytes_up": up,
            "bytes_down": down, "payload_bytes_up": payload, "requests": reqs, "unit": unit,
            "connections": r.get("connections", 0),
            "bytes_per_sample_up": up / n if n else None,
            "payload_bytes_per_sample_up": payload / n if n else None,
            "bytes_down_per_sample": down / n if n else None,
            "requests_per_min": reqs * 60 / window,
            "bytes_up_per_min": up * 60 / window,
            "bytes_down_per_min": down * 60 / window,
            "samples_per_request": n / reqs if reqs else None,
            "detail": {k: v for k, v in sorted(r.items()) if v},
        })
    if scrape:
        r = diff("scrape")
        n = r.get("scrape_samples", 0)
        up, down = r.get("s2c_bytes", 0), r.get("c2s_bytes", 0)
        reqs = r.get("requests", 0)
        rows.append({
            "sink": "scrape", "type": "GET /metrics", "peer": "Prometheus 2.42 scrape",
            "samples": n, "bytes_up": up, "bytes_down": down,
            "payload_bytes_up": r.get("s2c_body_bytes", 0), "requests": reqs, "unit": "scrapes",
            "connections": r.get("connections", 0),
            "bytes_per_sample_up": up / n if n else None,
            "payload_bytes_per_sample_up": r.get("s2c_body_bytes", 0) / n if n else None,
            "bytes_down_per_sample": down / n if n else None,
            "requests_per_min": reqs * 60 / window, "bytes_up_per_min": up * 60 / window,
            "bytes_down_per_min": down * 60 / window,
            "samples_per_request": n / reqs if reqs else None,
            "self_samples": r.get("scrape_self_samples", 0),
            "bytes_per_collector_sample_up":
                up / (n - r.get("scrape_self_samples", 0)) if n > r.get("scrape_self_samples", 0) else None,
            "detail": {k: v for k, v in sorted(r.items()) if v},
        })
    ups = {u["name"]: u for u in s2["status"]["uploads"]}
    # The native sink's WebSocket upgrade happened before the window: what a reconnect costs.
    hs = s1["relays"]["vigil"]
    handshake = {"up": hs.get("c2s_head_bytes", 0), "down": hs.get("s2c_head_bytes", 0),
                 "connections": hs.get("connections", 0)}
    return {
        "label": label, "interval_secs": interval, "flush_interval_secs": flush,
        "scrape_interval_secs": interval if scrape else None,
        "window_secs": window, "cycles": len(cycles),
        "series_per_collection": {"mean": sum(per_cycle) / len(per_cycle) if per_cycle else 0,
                                  "min": min(per_cycle, default=0), "max": max(per_cycle, default=0)},
        "distinct_series_in_window": distinct,
        "samples_by_collector": by_collector,
        "dropped_samples": {k: u["dropped_samples"] for k, u in ups.items()},
        "last_errors": {k: u["last_error"] for k, u in ups.items() if u["last_error"]},
        "native_handshake_bytes": handshake,
        "rows": rows,
        "wall_secs": time.monotonic() - t_start,
    }


def human(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000


def report(res, fleet):
    sp = res["series_per_collection"]
    print(f"\n## {res['label']}: collectors.interval_secs = {res['interval_secs']:g}, "
          f"flush_interval_secs = {res['flush_interval_secs']:g}, window {res['window_secs']:.0f} s, "
          f"{res['cycles']} collections")
    print(f"series per collection: {sp['mean']:.1f} (min {sp['min']}, max {sp['max']}); "
          f"distinct series in the window: {res['distinct_series_in_window']}")
    hdr = (f"{'sink':<11} {'peer':<23} {'samples':>8} {'up bytes':>10} {'down bytes':>10} "
           f"{'B/sample':>8} {'body B/s':>8} {'req/min':>7} {'smp/req':>7} {'conns':>5} "
           f"{'x' + str(fleet) + ' req/s':>12} {'x' + str(fleet) + ' up':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in res["rows"]:
        bps = f"{r['bytes_per_sample_up']:.2f}" if r["bytes_per_sample_up"] else "-"
        pbs = f"{r['payload_bytes_per_sample_up']:.2f}" if r["payload_bytes_per_sample_up"] else "-"
        spr = f"{r['samples_per_request']:.0f}" if r["samples_per_request"] else "-"
        print(f"{r['sink']:<11} {r['peer']:<23} {r['samples']:>8} {r['bytes_up']:>10} "
              f"{r['bytes_down']:>10} {bps:>8} {pbs:>8} {r['requests_per_min']:>7.2f} {spr:>7} "
              f"{r['connections']:>5} {r['requests_per_min'] * fleet / 60:>12.0f} "
              f"{human(r['bytes_up_per_min'] * fleet / 60) + '/s':>11}")
    counts = {r["sink"]: r["samples"] for r in res["rows"] if r["sink"] != "scrape"}
    if len(set(counts.values())) > 1:
        print(f"note: the push sinks' sample counts differ (flush phases): {counts}")
    for r in res["rows"]:
        if r["sink"] == "scrape":
            print(f"scrape: {r['self_samples']} of {r['samples']} sample lines are the agent's own "
                  f"vigil_collector_*/... figures; {r['bytes_per_collector_sample_up']:.1f} B per "
                  f"collector sample line")
    hs = res["native_handshake_bytes"]
    print(f"native sink WebSocket upgrade (once per connection): {hs['up']} B up, {hs['down']} B down")
    if any(res["dropped_samples"].values()) or res["last_errors"]:
        print(f"warning: dropped {res['dropped_samples']}, errors {res['last_errors']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "vigil"))
    ap.add_argument("--interval", type=float, default=10, help="collectors.interval_secs (default 10)")
    ap.add_argument("--flush", type=float, default=10, help="flush_interval_secs (default 10)")
    ap.add_argument("--duration", type=float, help="measured window, s (default 300; --quick 30)")
    ap.add_argument("--fast-interval", type=float, default=1, help="interval of the second run (1)")
    ap.add_argument("--fast-duration", type=float,
                    help="window of the second run, s; 0 skips it (default 120; --quick 20)")
    ap.add_argument("--no-scrape", action="store_true", help="leave out the /metrics scrape agent")
    ap.add_argument("--fleet", type=int, default=10000, help="agents to scale the figures to")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 s and 20 s windows (~1.5 min)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    a = ap.parse_args()
    if a.duration is None:
        a.duration = 30 if a.quick else 300
    if a.fast_duration is None:
        a.fast_duration = 20 if a.quick else 120
    a.bin = os.path.abspath(a.bin)
    for exe in (a.bin, "/usr/bin/prometheus", "/usr/bin/victoria-metrics"):
        if not os.access(exe, os.X_OK):
            sys.exit(f"fleet.py: {exe} is missing")
    t0 = time.monotonic()
    runs = [run(a, a.interval, a.flush, a.duration, not a.no_scrape, "default")]
    if a.fast_duration > 0:
        runs.append(run(a, a.fast_interval, a.flush, a.fast_duration, not a.no_scrape, "fast"))
    for r in runs:
        report(r, a.fleet)
    total = time.monotonic() - t0
    print(f"\ntotal {total:.0f} s; B/sample = wire bytes agent->upstream per sample delivered, "
          f"body B/s = the same without HTTP headers / WebSocket framing and handshakes")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"vigil": subprocess.run([a.bin, "--version"], capture_output=True,
                                               text=True).stdout.strip(),
                       "fleet": a.fleet, "total_secs": total, "runs": runs}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

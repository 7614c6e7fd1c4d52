#!/usr/bin/python3
"""otlp_receiver: an OTLP/HTTP (binary protobuf) receiver for the export tests, built on the
official message definitions of the PyPI package opentelemetry-proto and the standard library.

Usage: otlp_receiver.py --listen HOST:PORT --out FILE
                        [--fail-first N] [--fail-status STATUS] [--retry-after SECS]
                        [--reject-points K] [--verbose]

Serves POST /v1/metrics (ExportMetricsServiceRequest) and POST /v1/logs
(ExportLogsServiceRequest), Content-Type application/x-protobuf, the body gzip-compressed when
Content-Encoding is gzip (identity or no header: as is). Once bound it prints exactly
`listening HOST:PORT` on stdout (the real port when PORT is 0) and nothing more there.

- The first N requests to those two paths (counted across both) are answered STATUS (default
  503), with `Retry-After: SECS` when --retry-after is given, whatever their body; each appends
  {"path", "refused": STATUS, "content_encoding", "content_type", "body_bytes",
  "authorization"} to FILE and nothing else.
- Then: a Content-Type other than application/x-protobuf, or a Content-Encoding other than gzip
  or identity, is answered 415; a body that does not gunzip or decode, 400. Neither is written
  to FILE (--verbose tells them on stderr).
- An accepted request appends one JSON line to FILE before it is answered: the request as
  google.protobuf.json_format.MessageToDict(msg, preserving_proto_field_name=True) gives it
  (int64 fields such as time_unix_nano are strings there), plus "path", "content_encoding",
  "content_type", "authorization" (the header, or null) and "body_bytes" (the body's length as
  received, so compressed when it was). The answer is 200 with the serialized
  Export*ServiceResponse; with --reject-points K > 0 every metrics answer carries
  partial_success {rejected_data_points: K, error_message: "test rejects K"}.
- Error answers carry a google.rpc.Status as the OTLP specification asks.
- SIGTERM or SIGINT: exits 0.
"""
import argparse, gzip, json, signal, socket, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

PATHS = {
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse),
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest,
                 logs_service_pb2.ExportLogsServiceResponse),
}
# google.rpc.Code values used in error answers.
INVALID_ARGUMENT, UNAVAILABLE, RESOURCE_EXHAUSTED, UNKNOWN = 3, 14, 8, 2


def rpc_status(code, message):
    """A serialized google.rpc.Status {int32 code = 1; string message = 2;} (no details)."""
    msg = message.encode()
    out = bytes([0x08, code]) if code < 128 else b""
    n, length = len(msg), b""
    while True:
        b, n = n & 0x7F, n >> 7
        length += bytes([b | 0x80 if n else b])
        if not n:
            break
    return out + b"\x12" + length + msg


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.seen = 0  # requests to the OTLP paths so far
        self.out = open(args.out, "a", encoding="utf-8")

    def take_refusal(self):
        with self.lock:
            self.seen += 1
            return self.seen <= self.args.fail_first

    def record(self, line):
        text = json.dumps(line, sort_keys=True)
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as pooled HTTP clients expect
    server_version = "otlp-test-receiver"
    sys_version = ""

    def log_message(self, fmt, *args):
        if self.server.state.args.verbose:
            sys.stderr.write("otlp_receiver: %s\n" % (fmt % args))

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body=b"", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def fail(self, status, code, message):
        self.log_message("%s %s: %d %s", self.command, self.path, status, message)
        self.answer(status, rpc_status(code, message))

    def do_POST(self):
        state = self.server.state
        args = state.args
        path = self.path.split("?", 1)[0]
        try:
            raw = self.read_body()
        except (ValueError, OSError) as e:
            self.close_connection = True
            return self.fail(400, INVALID_ARGUMENT, "unreadable body: %s" % e)
        if path not in PATHS:
            return self.fail(404, UNKNOWN, "no such path %s" % path)
        encoding = self.headers.get("Content-Encoding")
        ctype = self.headers.get("Content-Type")
        meta = {
            "path": path,
            "content_encoding": encoding,
            "content_type": ctype,
            "body_bytes": len(raw),
            "authorization": self.headers.get("Authorization"),
        }
        if state.take_refusal():
            state.record(dict(meta, refused=args.fail_status))
            extra = [("Retry-After", args.retry_after)] if args.retry_after is not None else []
            code = RESOURCE_EXHAUSTED if args.fail_status == 429 else UNAVAILABLE
            self.log_message("%s %s: refused %d", self.command, path, args.fail_status)
            return self.answer(args.fail_status, rpc_status(code, "test refuses"), extra)
        media = (ctype or "").split(";", 1)[0].strip().lower()
        if media != "application/x-protobuf":
            return self.fail(415, INVALID_ARGUMENT, "unsupported content type %r" % ctype)
        enc = (encoding or "identity").strip().lower()
        if enc == "gzip":
            try:
                body = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as e:
                return self.fail(400, INVALID_ARGUMENT, "bad gzip body: %s" % e)
        elif enc == "identity":
            body = raw
        else:
            return self.fail(415, INVALID_ARGUMENT, "unsupported content encoding %r" % encoding)
        request_type, response_type = PATHS[path]
        msg = request_type()
        try:
            msg.ParseFromString(body)
        except (DecodeError, ValueError) as e:
            return self.fail(400, INVALID_ARGUMENT, "cannot decode %s: %s"
                             % (request_type.DESCRIPTOR.name, e))
        line = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        line.update(meta)
        state.record(line)
        response = response_type()
        if path == "/v1/metrics" and args.reject_points > 0:
            response.partial_success.rejected_data_points = args.reject_points
            response.partial_success.error_message = "test rejects %d" % args.reject_points
        self.answer(200, response.SerializeToString())

    def do_GET(self):
        self.fail(405, UNKNOWN, "POST only")

    do_PUT = do_DELETE = do_PATCH = do_GET


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description="OTLP/HTTP protobuf receiver for tests")
    p.add_argument("--listen", required=True, help="HOST:PORT, PORT 0 for any free one")
    p.add_argument("--out", required=True, help="file to append one JSON line per request to")
    p.add_argument("--fail-first", type=int, default=0, metavar="N")
    p.add_argument("--fail-status", type=int, default=503, metavar="STATUS")
    p.add_argument("--retry-after", default=None, metavar="SECS")
    p.add_argument("--reject-points", type=int, default=0, metavar="K")
    p.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = p.parse_args()

    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = Server((host, int(port)), Handler)
    server.state = State(args)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bound_host, bound_port = server.server_address[:2]
    shown = "[%s]" % bound_host if ":" in bound_host else bound_host
    print("listening %s:%d" % (shown, bound_port), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
        server.state.out.close()


if __name__ == "__main__":
    main()

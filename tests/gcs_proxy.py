"""A byte-counting HTTP proxy in front of the Cloud Storage emulator, for tests.

Run as its own process (GDAL holds the GIL while it fetches, so an in-process server
would stall)::

    python -m tests.gcs_proxy --upstream http://127.0.0.1:9023 --port 9024

Every request is forwarded to the upstream as it is (method, path, headers, body), and
the answer sent back as it came. ``GET /__proxy_stats`` answers, as JSON, the requests
seen and the response body bytes sent per object path (``/<bucket>/<object>``, the XML
API path that GDAL's ``/vsigs/`` reads) with each request's ``Range`` header, so a test
can check how much of an object a reader fetched.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

STATS_PATH = "/__proxy_stats"
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class _Stats:
    """What went through the proxy (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []

    def add(self, method: str, path: str, range_: str | None, status: int, size: int) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "range": range_,
                                  "status": status, "bytes": size})

    def as_json(self) -> bytes:
        with self.lock:
            return json.dumps({"requests": self.requests}).encode()


def make_handler(upstream: str, stats: _Stats) -> type[BaseHTTPRequestHandler]:
    """A request handler class forwarding to ``upstream`` (``http://host:port``)."""
    up = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass  # quiet

        def _forward(self) -> None:
            if self.path == STATS_PATH:
                body = stats.as_json()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=data, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            finally:
                conn.close()
            stats.add(self.command, self.path.split("?", 1)[0], self.headers.get("Range"),
                      resp.status, len(body) if self.command != "HEAD" else 0)

        def do_GET(self) -> None:
            self._forward()

        def do_HEAD(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def do_PUT(self) -> None:
            self._forward()

        def do_DELETE(self) -> None:
            self._forward()

        def do_PATCH(self) -> None:
            self._forward()

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve until killed."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port),
                                 make_handler(args.upstream, _Stats()))
    server.serve_forever()


if __name__ == "__main__":
    main()

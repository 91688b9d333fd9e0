"""A loopback Earth Engine endpoint for tests.

The real ``earthengine-api`` client talks to this server exactly as it talks to
``https://earthengine.googleapis.com``:

* ``ee.Initialize(..., url=server.url)`` builds its API resource from
  ``GET {url}/$discovery/rest?version=v1`` (the discovery document shipped in the wheel,
  ``ee/tests/cloud_api_discovery_document.json``, re-versioned to the version asked for) and
  then loads the algorithm signatures from ``GET {url}/v1/projects/{project}/algorithms``
  (``ee/tests/algorithms.json``).
* ``ee.data.computePixels`` posts ``{url}/v1/projects/{project}/image:computePixels`` with
  the serialised expression, ``fileFormat`` (``NPY`` for ``NUMPY_NDARRAY``, or
  ``GEO_TIFF``), ``bandIds`` and ``grid`` (``crsCode``, ``affineTransform``,
  ``dimensions``). The server does not evaluate the expression: it answers from the
  requested grid, every band value encoding the pixel centre, so tests can prove that the
  georeferencing is exact (see :func:`band_values`).

Faults are deterministic (every Nth call, or the first K attempts of each distinct
request, answer HTTP 429/503 with a Google-style error body), and every request is
recorded, with the number of computePixels requests in flight at once. Like Earth
Engine's per-project quota, the server can enforce a concurrency limit: a computePixels
request that arrives while ``max_concurrent`` others are in flight is answered HTTP 429
``RESOURCE_EXHAUSTED`` at once; :attr:`EEServer.max_in_flight` is the peak of requests
in flight that the server observed, refused ones included. ``POST /token`` is an OAuth
token endpoint for a service-account key whose ``token_uri`` points here, so
``google.auth.default()`` works without Google (:attr:`EEServer.grants`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import ee
import numpy as np

EE_TEST_DATA = Path(ee.__file__).resolve().parent / "tests"
DISCOVERY_DOC = EE_TEST_DATA / "cloud_api_discovery_document.json"
ALGORITHMS = EE_TEST_DATA / "algorithms.json"

#: Band names with fixed codes, so a band carries the same values in any request order.
CODED_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12",
    "DEM", "slope", "aspect", "curvature", "hillshade",
)

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_PROJECT_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/projects/(?P<project>[^/]+)/(?P<rest>.+)$")


def band_code(name: str) -> int:
    """The fixed code of a band: its index in :data:`CODED_BANDS`, else a stable hash."""
    if name in CODED_BANDS:
        return CODED_BANDS.index(name)
    return 100 + zlib.crc32(name.encode()) % 900


def band_values(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The float32 values the server returns for band ``name`` at pixel centres ``(x, y)``.

    Codes 0-3 (``B1``..``B4``) split the coordinates so that float32 holds them exactly:
    ``B1`` = x mod 1000, ``B2`` = y mod 1000 (metres within the kilometre),
    ``B3`` = floor(x / 1000), ``B4`` = floor(y / 1000) (kilometres). Every other band is
    ``code + (x mod 1000) / 1000 + (y mod 1000) / 10``, a different plane per band.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm, ym = np.mod(x, 1000.0), np.mod(y, 1000.0)
    code = band_code(name)
    if code == 0:
        out = xm
    elif code == 1:
        out = ym
    elif code == 2:
        out = np.floor(x / 1000.0)
    elif code == 3:
        out = np.floor(y / 1000.0)
    else:
        out = code + xm / 1000.0 + ym / 10.0
    return out.astype(np.float32)


def decode_xy(b1: np.ndarray, b2: np.ndarray, b3: np.ndarray, b4: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (float64) back from bands ``B1``..``B4``."""
    x = b3.astype(np.float64) * 1000.0 + b1.astype(np.float64)
    y = b4.astype(np.float64) * 1000.0 + b2.astype(np.float64)
    return x, y


@dataclass
class Faults:
    """Deterministic failures of computePixels calls.

    Attributes:
        status: HTTP status of a failed call (429 or 503 usually).
        every: When > 0, every ``every``-th computePixels call (counted from 1 over the
            server's life since the last :meth:`EEServer.reset`) fails; 1 = always.
        first_per_request: The first K attempts of each distinct request (same grid and
            bands) fail; later attempts succeed.
    """

    status: int = 429
    every: int = 0
    first_per_request: int = 0


@dataclass
class Recorded:
    """One request the server got."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def kind(self) -> str:
        """``discovery``, ``algorithms``, ``computePixels`` or the path's last segment."""
        if self.path.startswith("/$discovery"):
            return "discovery"
        m = _PROJECT_PATH.match(urlsplit(self.path).path)
        if not m:
            return "unknown"
        rest = m.group("rest")
        return rest.split(":")[-1] if ":" in rest else rest


@dataclass
class ServerConfig:
    """What the server answers; change it between tests with :meth:`EEServer.configure`.

    Attributes:
        faults: Deterministic failures of computePixels calls.
        latency_s: Seconds each computePixels call takes (to make overlaps observable).
        known_bands: When set, a band outside it answers HTTP 400 like Earth Engine does
            for a bad band name.
        masked: ``f(name, x, y) -> bool array``: pixels answered with ``nodata``.
        nodata: Value written for masked pixels.
        max_concurrent: When > 0, computePixels requests beyond this many in flight are
            refused with HTTP 429 RESOURCE_EXHAUSTED (the project's concurrency quota).
    """

    faults: Faults = field(default_factory=Faults)
    max_concurrent: int = 0
    latency_s: float = 0.0
    known_bands: tuple[str, ...] | None = None
    masked: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None = None
    nodata: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle + delayed ACKs add
        # ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._connection_closed(self.connection)

    def do_GET(self) -> None:
        self.server.owner._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.owner._handle(self, "POST")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: EEServer


class EEServer:
    """A threaded loopback Earth Engine endpoint on ``127.0.0.1`` (random free port).

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._algorithms = ALGORITHMS.read_bytes()
        self._discovery = DISCOVERY_DOC.read_text()
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EEServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="ee-loopback", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close kept-alive client connections (clients see a dead host)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def __enter__(self) -> EEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget recorded requests and counters (the configuration stays)."""
        with self._lock:
            self.requests: list[Recorded] = []
            self.grants: list[dict] = []
            self._calls = 0
            self._attempts: dict[str, int] = {}
            self._in_flight = 0
            self.max_in_flight = 0

    def configure(self, **changes: Any) -> None:
        """Replace fields of :class:`ServerConfig` (``faults=Faults(...)``, ``latency_s``...)."""
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.config, key):
                    raise AttributeError(f"ServerConfig has no field {key!r}")
                setattr(self.config, key, value)

    def pixel_requests(self, ok_only: bool = False) -> list[Recorded]:
        """The computePixels requests received (only the successful ones if ``ok_only``)."""
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if r.kind == "computePixels" and (not ok_only or r.status == 200)]

    # ------------------------------------------------------------------ handling
    def _handle(self, h: _Handler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        rec = Recorded(method, h.path, {k.lower(): v for k, v in h.headers.items()}, body,
                       started=time.monotonic())
        with self._lock:
            self.requests.append(rec)
        try:
            status, ctype, payload = self._route(method, h.path, body)
        except _Error as err:
            status, ctype, payload = err.status, "application/json", err.body()
        except Exception as exc:  # a server bug must show up as a 500, not a hang
            status, ctype, payload = 500, "application/json", _Error(500, repr(exc)).body()
        rec.status = status
        rec.ended = time.monotonic()
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        parts = urlsplit(path)
        if method == "GET" and parts.path == "/$discovery/rest":
            version = parse_qs(parts.query).get("version", ["v1"])[0]
            doc = self._discovery.replace("v1alpha", version)
            return 200, "application/json", doc.encode()
        if method == "POST" and parts.path == "/token":
            return self._token(body)
        m = _PROJECT_PATH.match(parts.path)
        if m is None:
            raise _Error(404, f"No such endpoint on the loopback server: {method} {path}")
        rest = m.group("rest")
        if method == "GET" and rest == "algorithms":
            return 200, "application/json", self._algorithms
        if method == "POST" and rest == "image:computePixels":
            return self._compute_pixels(body)
        raise _Error(404, f"The loopback server does not serve {method} {rest}")

    def _token(self, body: Any) -> tuple[int, str, bytes]:
        """An OAuth token endpoint: a service account's JWT grant -> an access token.

        The key file's ``token_uri`` may point here (``{url}/token``), so that
        ``google.auth.default()`` makes service-account credentials without Google. The
        grant's claims (``iss``, ``scope``...) are kept in :attr:`EEServer.grants`; the
        signature is not checked.
        """
        form = parse_qs(body.decode() if isinstance(body, bytes) else "")
        assertion = form.get("assertion", [""])[0]
        parts = assertion.split(".")
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"] or \
                len(parts) != 3:
            raise _Error(400, "invalid_grant: expected a JWT bearer assertion")
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        with self._lock:
            self.grants.append(claims)
            token = f"loopback-token-{len(self.grants)}"
        return 200, "application/json", json.dumps(
            {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}).encode()

    def _compute_pixels(self, body: Any) -> tuple[int, str, bytes]:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._calls += 1
            call = self._calls
            cfg = self.config
            over_quota = bool(cfg.max_concurrent) and self._in_flight > cfg.max_concurrent
            faults = cfg.faults
            key = json.dumps({"grid": (body or {}).get("grid"),
                              "bands": (body or {}).get("bandIds")}, sort_keys=True)
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
        try:
            if over_quota:
                raise _Error(429, f"Too many concurrent requests: the project's limit is "
                                  f"{cfg.max_concurrent}.")
            if cfg.latency_s:
                time.sleep(cfg.latency_s)
            if (faults.every and call % faults.every == 0) or attempt <= faults.first_per_request:
                message = ("Too many concurrent aggregations." if faults.status == 429
                           else "The service is currently unavailable.")
                raise _Error(faults.status, message)
            return _render(body, cfg)
        finally:
            with self._lock:
                self._in_flight -= 1


class _Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error": {"code": self.status, "message": self.message,
                                     "status": _STATUS_NAMES.get(self.status, "UNKNOWN")}}
                          ).encode()


def request_grid(body: dict) -> tuple[str, tuple[float, ...], int, int]:
    """``(crs, (a, b, c, d, e, f), width, height)`` of a computePixels request body."""
    grid = body.get("grid")
    if not grid:
        raise _Error(400, "The loopback server needs an explicit grid.")
    at = grid.get("affineTransform", {})
    dims = grid.get("dimensions", {})
    transform = (float(at.get("scaleX", 0.0)), float(at.get("shearX", 0.0)),
                 float(at.get("translateX", 0.0)), float(at.get("shearY", 0.0)),
                 float(at.get("scaleY", 0.0)), float(at.get("translateY", 0.0)))
    width, height = int(dims.get("width", 0)), int(dims.get("height", 0))
    if width <= 0 or height <= 0 or transform[0] == 0 or transform[4] == 0:
        raise _Error(400, f"Invalid grid: {grid}")
    return str(grid.get("crsCode")), transform, width, height


def _render(body: Any, cfg: ServerConfig) -> tuple[int, str, bytes]:
    if not isinstance(body, dict) or "expression" not in body:
        raise _Error(400, "Request body must hold an expression.")
    bands = body.get("bandIds")
    if not bands:
        raise _Error(400, "The loopback server needs explicit bandIds.")
    for name in bands:
        if cfg.known_bands is not None and name not in cfg.known_bands:
            raise _Error(400, f"Image.select: Pattern '{name}' did not match any bands.")
    crs, (a, b, c, d, e, f), width, height = request_grid(body)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = a * cols + b * rows + c
    y = d * cols + e * rows + f
    planes = []
    for name in bands:
        values = band_values(name, x, y)
        if cfg.masked is not None:
            values[np.asarray(cfg.masked(name, x, y), dtype=bool)] = np.float32(cfg.nodata)
        planes.append(values)
    fmt = body.get("fileFormat", "NPY")
    if fmt == "NPY":
        out = np.empty((height, width), dtype=[(n, "<f4") for n in bands])
        for name, values in zip(bands, planes):
            out[name] = values
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        return 200, "application/octet-stream", buf.getvalue()
    if fmt == "GEO_TIFF":
        from affine import Affine
        from rasterio.io import MemoryFile

        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=width, height=height, count=len(bands),
                          dtype="float32", crs=crs, transform=Affine(a, b, c, d, e, f)) as ds:
                ds.write(np.stack(planes))
                ds.descriptions = tuple(bands)
            return 200, "image/tiff", mem.read()
    raise _Error(400, f"The loopback server does not produce fileFormat {fmt!r}.")

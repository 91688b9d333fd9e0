"""Earth Engine imagery: a Sentinel-2 composite plus a DEM and its terrain derivatives.

The Earth Engine expression is built **once**, on the launcher (:func:`build_image`),
serialised to JSON and carried as a string inside the (pickled) source. Each worker
initialises the client in :meth:`EarthEngineSource.open` and deserialises the expression;
it is never rebuilt per element. Pixels come from ``ee.data.computePixels`` on exactly the
requested :class:`~pipelines.geo.grid.PixelGrid` (any projected CRS and transform), as a
NumPy structured array, split into row blocks (and band groups, and column blocks when
one row is too large) so that every request stays under Earth Engine's 48 MiB limit.

Quotas and retries:

* ``max_concurrency`` bounds the computePixels requests *one worker process* has in
  flight (a process-wide ``BoundedSemaphore`` shared by every copy of the source in that
  process). Earth Engine's concurrency quota is per Cloud project and shared by every
  worker, so size it as ``project quota / number of worker processes``.
* The client's own retries are switched off (``ee.data.setMaxRetries(0)``), because
  googleapiclient would otherwise retry 429/5xx with its own fixed, unconfigurable
  backoff. Instead HTTP 429 and 5xx answers (which ``ee`` surfaces as ``EEException``
  chained to a ``googleapiclient.errors.HttpError``), connection errors and timeouts are
  retried here ``max_retries`` times with jittered exponential backoff (Beam's
  ``FuzzedExponentialIntervals``), then raised as :class:`~pipelines.errors.SourceError`
  naming the grid and block, so that the pipeline can dead-letter the chunk. Other errors
  (HTTP 400: a bad band, a bad expression) are raised at once.

The ``ee`` client keeps its configuration in process-wide state, so one process talks to
one Earth Engine endpoint and project at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import httplib2
import numpy as np
import requests
from apache_beam.utils.retry import FuzzedExponentialIntervals
from rasterio.windows import Window

from pipelines.errors import BandError, ConfigError, SourceError
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import PixelGrid
from pipelines.sources.base import Raster, Source

if TYPE_CHECKING:
    import ee

logger = logging.getLogger(__name__)

#: Earth Engine's limit on the (uncompressed) size of one computePixels answer.
EE_REQUEST_LIMIT = 48 * 2**20
#: Default request budget: the limit minus a margin for the NPY header and rounding.
DEFAULT_REQUEST_BYTES = EE_REQUEST_LIMIT - 2**20
#: Earth Engine's limit on the width and height of one computePixels grid.
EE_MAX_DIMENSION = 32768
#: The default Cloud API endpoint and the high-volume one (for many small requests).
DEFAULT_ENDPOINT = "https://earthengine.googleapis.com"
HIGH_VOLUME_ENDPOINT = "https://earthengine-highvolume.googleapis.com"
#: Value the expression writes into masked pixels (``unmask``); read back as NaN.
NODATA = -1.0e30
_BYTES_PER_VALUE = 4  # float32

#: Sentinel-2 Scene Classification classes masked by ``cloud_mask="scl"``: cloud shadow,
#: cloud medium / high probability, thin cirrus, snow or ice.
SCL_MASKED_CLASSES = (3, 8, 9, 10, 11)
CLOUD_PROBABILITY_COLLECTION = "COPERNICUS/S2_CLOUD_PROBABILITY"

#: DEM choice -> (asset id, band, whether the asset is an ImageCollection to mosaic).
DEMS: dict[str, tuple[str, str, bool]] = {
    "glo30": ("COPERNICUS/DEM/GLO30", "DEM", True),
    "aw3d30": ("JAXA/ALOS/AW3D30/V3_2", "DSM", True),
    "srtm": ("USGS/SRTMGL1_003", "elevation", False),
    "3dep10": ("USGS/3DEP/10m", "elevation", False),
}
COMPOSITES = ("median", "mean", "mosaic", "greenest")

#: Every band this source can compute, and the default selection.
AVAILABLE_BANDS: tuple[str, ...] = bandreg.SENTINEL2_BANDS + bandreg.TERRAIN_BANDS
DEFAULT_BANDS: tuple[str, ...] = (*bandreg.SENTINEL2_BANDS, "DEM", "slope", "aspect",
                                  "curvature")

_RETRYABLE_MESSAGE = re.compile(
    r"too many|rate limit|quota exceeded|resource.?exhausted|service unavailable|"
    r"currently unavailable|internal error|backend error|deadline exceeded",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- configuration
def _parse_date(value: str, what: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"EEConfig.{what} {value!r} is not an ISO date; write it like '2021-06-01'."
        ) from None


@dataclass(frozen=True)
class EEConfig:
    """What to compute in Earth Engine and how to talk to it.

    Attributes:
        start: First day of the compositing window (ISO date, inclusive).
        end: End of the window (ISO date, exclusive, as in ``filterDate``).
        collection: Sentinel-2 surface-reflectance collection.
        cloud_mask: ``"scl"`` (mask scene-classification classes 3, 8, 9, 10, 11),
            ``"cloud_prob"`` (join ``COPERNICUS/S2_CLOUD_PROBABILITY`` by ``system:index``
            and mask probabilities >= ``max_cloud_prob``) or ``"none"``.
        max_cloud_prob: Cloud probability (0-100) from which a pixel is masked.
        dem: ``"glo30"`` (Copernicus GLO-30), ``"aw3d30"`` (ALOS AW3D30),
            ``"srtm"`` (SRTM 1 arc-second) or ``"3dep10"`` (USGS 3DEP 10 m).
        composite: How the masked scenes are combined: ``median``, ``mean``, ``mosaic``
            (most recent valid pixel on top) or ``greenest`` (each pixel's highest-NDVI
            scene, a vegetation baseline for a reference image).
        bbox: Optional ``(minlon, minlat, maxlon, maxlat)`` that limits the scenes
            considered (speeds up large windows; pixels are computed only where asked).
        project: Cloud project billed for the requests (None: the credentials' project).
        high_volume: Use the high-volume endpoint (for many concurrent small requests).
        endpoint: Explicit API base URL; overrides ``high_volume``.
        max_concurrency: computePixels requests in flight per worker *process*.
        max_retries: Retries of a request answered 429/5xx, or failing to connect.
        max_request_bytes: Budget of one request (float32 values, 4 bytes each), at most
            Earth Engine's 48 MiB limit.
        backoff_initial_s: Delay before the first retry; doubles each retry (jittered).
        backoff_max_s: Longest delay between two retries.
        connect_timeout_s: Time to open a connection before the endpoint counts as
            unreachable.
        read_timeout_s: Time to wait for an answer (computations can take minutes).
    """

    start: str
    end: str
    collection: str = "COPERNICUS/S2_SR_HARMONIZED"
    cloud_mask: Literal["scl", "cloud_prob", "none"] = "scl"
    max_cloud_prob: int = 40
    dem: Literal["glo30", "aw3d30", "srtm", "3dep10"] = "glo30"
    composite: str = "median"
    bbox: tuple[float, float, float, float] | None = None
    project: str | None = None
    high_volume: bool = False
    endpoint: str | None = None
    max_concurrency: int = 8
    max_retries: int = 6
    max_request_bytes: int = DEFAULT_REQUEST_BYTES
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 64.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        start, end = _parse_date(self.start, "start"), _parse_date(self.end, "end")
        if end <= start:
            raise ConfigError(
                f"Empty Earth Engine date window: end {self.end!r} is not after start "
                f"{self.start!r} (the end is exclusive). Give an end date after the start."
            )
        if self.cloud_mask not in ("scl", "cloud_prob", "none"):
            raise ConfigError(f"Unknown cloud_mask {self.cloud_mask!r}; use 'scl', "
                              f"'cloud_prob' or 'none'.")
        if not 0 <= self.max_cloud_prob <= 100:
            raise ConfigError(f"max_cloud_prob must be within 0-100, got {self.max_cloud_prob}.")
        if self.dem not in DEMS:
            raise ConfigError(f"Unknown dem {self.dem!r}; use one of {', '.join(DEMS)}.")
        if self.composite not in COMPOSITES:
            raise ConfigError(f"Unknown composite {self.composite!r}; use one of "
                              f"{', '.join(COMPOSITES)}.")
        if self.bbox is not None:
            if len(self.bbox) != 4 or not (self.bbox[0] < self.bbox[2]
                                           and self.bbox[1] < self.bbox[3]):
                raise ConfigError(f"bbox {self.bbox!r} must be (minlon, minlat, maxlon, maxlat) "
                                  f"with min < max.")
            object.__setattr__(self, "bbox", tuple(float(v) for v in self.bbox))
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {self.max_concurrency}.")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}.")
        if not _BYTES_PER_VALUE <= self.max_request_bytes <= EE_REQUEST_LIMIT:
            raise ConfigError(
                f"max_request_bytes must be within {_BYTES_PER_VALUE}-{EE_REQUEST_LIMIT} "
                f"(Earth Engine's 48 MiB limit), got {self.max_request_bytes}."
            )
        for name in ("backoff_initial_s", "backoff_max_s", "connect_timeout_s",
                     "read_timeout_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")

    @property
    def url(self) -> str:
        """The API base URL requests go to."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return HIGH_VOLUME_ENDPOINT if self.high_volume else DEFAULT_ENDPOINT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = list(self.bbox) if self.bbox else None
        return d


# --------------------------------------------------------------------------- the expression
def _sentinel2(config: EEConfig, names: Sequence[str]) -> ee.Image:
    import ee

    col = ee.ImageCollection(config.collection).filterDate(config.start, config.end)
    if config.bbox is not None:
        col = col.filterBounds(ee.Geometry.Rectangle(list(config.bbox)))
    if config.cloud_mask == "scl":
        classes = list(SCL_MASKED_CLASSES)

        def mask_scl(img: ee.Image) -> ee.Image:
            keep = img.select("SCL").remap(classes, [0] * len(classes), 1)
            return img.updateMask(keep)

        col = col.map(mask_scl)
    elif config.cloud_mask == "cloud_prob":
        probs = ee.ImageCollection(CLOUD_PROBABILITY_COLLECTION).filterDate(
            config.start, config.end)
        if config.bbox is not None:
            probs = probs.filterBounds(ee.Geometry.Rectangle(list(config.bbox)))
        joined = ee.Join.saveFirst("cloud_probability").apply(
            primary=col, secondary=probs,
            condition=ee.Filter.equals(leftField="system:index", rightField="system:index"),
        )
        threshold = config.max_cloud_prob

        def mask_prob(img: Any) -> ee.Image:
            img = ee.Image(img)
            prob = ee.Image(img.get("cloud_probability")).select("probability")
            return img.updateMask(prob.lt(threshold))

        col = ee.ImageCollection(joined).map(mask_prob)
    if config.composite == "greenest":
        # each pixel from its greenest clear scene: a vegetation baseline (qualityMosaic)
        def greenness(img: ee.Image) -> ee.Image:
            return img.addBands(img.normalizedDifference(["B8", "B4"]).rename("greenness"))

        image = col.map(greenness).qualityMosaic("greenness").select(list(names))
        return image.divide(10000).rename(list(names))
    col = col.select(list(names))
    if config.composite == "median":
        image = col.median()
    elif config.composite == "mean":
        image = col.mean()
    else:  # mosaic: the most recent valid pixel on top
        image = col.sort("system:time_start").mosaic()
    # Harmonized L2A digital numbers -> surface reflectance 0-1.
    return image.divide(10000).rename(list(names))


def _terrain(config: EEConfig, names: Sequence[str]) -> ee.Image:
    import ee

    asset, band, is_collection = DEMS[config.dem]
    if is_collection:
        col = ee.ImageCollection(asset).select(band)
        # A mosaic has no native projection: give it the tiles' one, so terrain kernels run
        # on the DEM's own pixels rather than on whatever grid is requested.
        dem = col.mosaic().setDefaultProjection(col.first().projection())
    else:
        dem = ee.Image(asset).select(band)
    dem = dem.toFloat()
    proj = dem.projection()
    layers = {"DEM": dem}
    if "slope" in names:
        layers["slope"] = ee.Terrain.slope(dem)
    if "aspect" in names:
        layers["aspect"] = ee.Terrain.aspect(dem)
    if "hillshade" in names:
        layers["hillshade"] = ee.Terrain.hillshade(dem, 315, 45)
    if "curvature" in names:
        # Zevenbergen-Thorne total curvature, -(d2z/dx2 + d2z/dy2) * 100: the 4-neighbour
        # Laplacian over the cell area (dx * dy, in m2), on the DEM's own pixels.
        laplacian = dem.convolve(ee.Kernel.laplacian4(normalize=False))
        area = ee.Image.pixelArea().reproject(proj)
        layers["curvature"] = laplacian.divide(area).multiply(-100)
    images = [layers[n].rename(n).resample("bilinear") for n in names]
    return ee.Image.cat(images)


def build_image(config: EEConfig, bands: Sequence[str]) -> ee.Image:
    """Build the Earth Engine image of ``bands`` (run on the launcher, once).

    Sentinel-2 bands are a cloud-masked composite over ``[start, end)`` in reflectance
    0-1; terrain bands come from the chosen DEM (metres, degrees, 1/100 m). Masked pixels
    hold :data:`NODATA`; every band is float32, in the order of ``bands``.

    Raises:
        BandError: a band is unknown or not computable by this source.
    """
    import ee

    names = bandreg.resolve(bands)
    bandreg.require(AVAILABLE_BANDS, names, "Earth Engine source")
    optical = [n for n in names if n in bandreg.SENTINEL2_BANDS]
    terrain = [n for n in names if n in bandreg.TERRAIN_BANDS]
    parts = []
    if optical:
        parts.append(_sentinel2(config, optical))
    if terrain:
        parts.append(_terrain(config, terrain))
    image = ee.Image.cat(parts).select(list(names))
    return image.toFloat().unmask(NODATA, False).toFloat()


# --------------------------------------------------------------------------- client plumbing
class _Transport:
    """An httplib2-style transport on a ``requests`` session with connect/read timeouts.

    ``ee.Initialize(http_transport=...)`` accepts it in place of the client's default one
    (which has no connect timeout). Connection failures become the built-in
    ``ConnectionError`` / ``TimeoutError`` so the retry logic recognises them.
    """

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int) -> None:
        self._timeout = (connect_timeout or None, read_timeout or None)
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2,
                                                pool_maxsize=max(10, pool_size))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request(self, uri: str, method: str = "GET", body: Any = None,
                headers: dict[str, str] | None = None, redirections: int | None = None,
                connection_type: Any = None) -> tuple[httplib2.Response, bytes]:
        try:
            resp = self._session.request(method, uri, data=body, headers=headers,
                                         timeout=self._timeout)
        except requests.exceptions.ConnectionError as exc:  # includes ConnectTimeout
            raise ConnectionError(f"cannot connect to {uri.split('?')[0]}: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            raise TimeoutError(f"no answer from {uri.split('?')[0]}: {exc}") from exc
        out = dict(resp.headers)
        out["status"] = str(resp.status_code)
        return httplib2.Response(out), resp.content

    def close(self) -> None:
        self._session.close()


_EE_LOCK = threading.Lock()
# What the process-wide ``ee`` client is initialised for, and the transport it uses.
_EE_CLIENT: dict[str, Any] = {"key": None, "transport": None}
_SEMAPHORES: dict[tuple, threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


def _client_key(config: EEConfig, credentials_factory: Callable[[], Any] | None) -> tuple:
    return (config.url, config.project, repr(credentials_factory), config.connect_timeout_s,
            config.read_timeout_s)


def initialize(config: EEConfig, credentials_factory: Callable[[], Any] | None = None) -> None:
    """Initialise the process-wide ``ee`` client for ``config`` (a no-op when it already is).

    Args:
        config: Gives the endpoint, project and timeouts.
        credentials_factory: Returns the credentials to use; None uses the Earth Engine
            stored credentials or application default credentials.

    Raises:
        SourceError: the endpoint is unreachable or refuses the credentials, or no
            credentials / project are available.
    """
    import ee

    key = _client_key(config, credentials_factory)
    with _EE_LOCK:
        if _EE_CLIENT["key"] == key and ee.data.is_initialized():
            return
        started = time.monotonic()
        transport = _Transport(config.connect_timeout_s, config.read_timeout_s,
                               config.max_concurrency)
        # Retries are ours (see the module docstring): one attempt per client call.
        ee.data.setMaxRetries(0)
        try:
            credentials = credentials_factory() if credentials_factory else "persistent"
            ee.Initialize(credentials=credentials, url=config.url, project=config.project,
                          http_transport=transport)
        except Exception as exc:  # ee raises EEException, OSError, HttpError, auth errors
            transport.close()
            _EE_CLIENT["key"] = None
            hint = ("Check the endpoint URL and the network." if isinstance(exc, OSError)
                    else "Run `earthengine authenticate` (or provide application default "
                         "credentials) and set EEConfig.project to a Cloud project "
                         "registered for Earth Engine.")
            raise SourceError(
                f"Cannot initialise Earth Engine at {config.url} (project "
                f"{config.project!r}): {type(exc).__name__}: {exc}. {hint}"
            ) from exc
        old = _EE_CLIENT["transport"]
        _EE_CLIENT.update(key=key, transport=transport)
        if old is not None:
            old.close()
        logger.info("Earth Engine client initialised at %s (project %s) in %.2f s",
                    config.url, config.project, time.monotonic() - started)


def _semaphore(config: EEConfig) -> threading.BoundedSemaphore:
    key = (config.url, config.project, config.max_concurrency)
    with _SEMAPHORES_LOCK:
        sem = _SEMAPHORES.get(key)
        if sem is None:
            sem = _SEMAPHORES[key] = threading.BoundedSemaphore(config.max_concurrency)
        return sem


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error: ``ee`` chains its EEException to an HttpError."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        resp = getattr(cur, "resp", None)
        status = getattr(resp, "status", None)
        if status is not None:
            return int(status)
        cur = cur.__cause__ or cur.__context__
    return None


def is_retryable(exc: BaseException) -> bool:
    """True for HTTP 429 and 5xx answers, connection failures and timeouts."""
    status = _http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(exc, ConnectionError | TimeoutError | requests.exceptions.RequestException):
        return True
    return bool(_RETRYABLE_MESSAGE.search(str(exc)))


# --------------------------------------------------------------------------- request planning
@dataclass(frozen=True)
class Block:
    """One computePixels request: a band group and a window of the grid.

    Attributes:
        bands: ``(start, stop)`` indices into the requested bands.
        window: The block's rows and columns in the grid.
    """

    bands: tuple[int, int]
    window: Window


def _split(n: int, most: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into the fewest near-equal pieces of at most ``most``."""
    pieces = max(1, math.ceil(n / most))
    bounds = [round(i * n / pieces) for i in range(pieces + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(pieces)]


def plan_blocks(width: int, height: int, n_bands: int, max_bytes: int,
                max_dim: int = EE_MAX_DIMENSION) -> list[Block]:
    """Split a ``n_bands x height x width`` float32 read into requests under ``max_bytes``.

    Rows are split first (whole rows, all bands), then bands into groups, and columns
    only when one row of one band is over budget. The blocks tile the grid exactly once.
    """
    if min(width, height, n_bands) < 1:
        raise ConfigError(f"Nothing to read: {n_bands} bands on a {width}x{height} grid.")
    budget = max_bytes // _BYTES_PER_VALUE  # values per request
    cols = max(1, min(width, max_dim, budget))
    group = max(1, min(n_bands, budget // cols))
    rows = max(1, min(height, max_dim, budget // (cols * group)))
    return [
        Block((b0, b1), Window(c0, r0, c1 - c0, r1 - r0))
        for b0, b1 in _split(n_bands, group)
        for r0, r1 in _split(height, rows)
        for c0, c1 in _split(width, cols)
    ]


def grid_request(grid: PixelGrid) -> dict:
    """The computePixels ``grid`` of a :class:`PixelGrid` (the exact affine transform)."""
    a, b, c, d, e, f = (float(v) for v in grid.transform)
    out: dict[str, Any] = {
        "dimensions": {"width": int(grid.width), "height": int(grid.height)},
        "affineTransform": {"scaleX": a, "shearX": b, "translateX": c,
                            "shearY": d, "scaleY": e, "translateY": f},
    }
    if re.fullmatch(r"(?i)epsg:\d+", grid.crs.strip()):
        out["crsCode"] = grid.crs.strip().upper()
    else:
        out["crsWkt"] = grid.crs
    return out


def _describe_grid(grid: PixelGrid) -> str:
    a, _, c, _, _, f = grid.transform
    return f"{grid.crs} {grid.width}x{grid.height} px of {a:g} m at ({c:.2f}, {f:.2f})"


# --------------------------------------------------------------------------- the source
class EarthEngineSource(Source):
    """Sentinel-2 composite + DEM terrain bands computed by Earth Engine.

    Constructing the source initialises Earth Engine on the launcher and builds the
    expression once; the pickled source carries only the configuration and the
    expression's JSON. :meth:`open` (a DoFn's ``setup``) initialises the client in the
    worker and deserialises the expression.

    Args:
        config: What to compute and how to reach Earth Engine.
        bands: The bands the expression provides (default: 12 Sentinel-2 bands, DEM,
            slope, aspect, curvature); reads may ask for any subset.
        credentials_factory: A picklable callable returning credentials (e.g. a service
            account's); None uses stored Earth Engine / application default credentials.
        expression_json: A previously built expression (from :attr:`expression_json`) to
            reuse instead of building one.

    Raises:
        BandError: a band is unknown or not computable in Earth Engine.
        SourceError: Earth Engine cannot be initialised (unreachable, no credentials).
    """

    kind = "earthengine"

    def __init__(self, config: EEConfig, bands: Sequence[str] = DEFAULT_BANDS,
                 credentials_factory: Callable[[], Any] | None = None,
                 expression_json: str | None = None) -> None:
        self.config = config
        self._bands = bandreg.resolve(bands)
        bandreg.require(AVAILABLE_BANDS, self._bands, "Earth Engine source")
        self.credentials_factory = credentials_factory
        if expression_json is None:
            initialize(config, credentials_factory)
            expression_json = _to_json(build_image(config, self._bands))
        self.expression_json: str = expression_json
        self._image: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_image"] = None  # no ee objects in the pickled state
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ interface
    @property
    def bands(self) -> tuple[str, ...]:
        return self._bands

    def open(self) -> None:
        """Initialise the ``ee`` client in this process and deserialise the expression."""
        import ee

        with self._lock:
            initialize(self.config, self.credentials_factory)
            if self._image is None:
                self._image = ee.Image(ee.deserializer.fromJSON(self.expression_json))

    def close(self) -> None:
        self._image = None

    def describe(self) -> dict:
        return {"kind": self.kind, "bands": list(self.bands), "config": self.config.to_dict(),
                "endpoint": self.config.url}

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        if (self._image is None
                or _EE_CLIENT["key"] != _client_key(self.config, self.credentials_factory)):
            self.open()  # first read, or another source switched the process's client
        blocks = plan_blocks(grid.width, grid.height, len(bands), self.config.max_request_bytes)
        data = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
        for block in blocks:
            b0, b1 = block.bands
            w = block.window
            rows = slice(int(w.row_off), int(w.row_off + w.height))
            cols = slice(int(w.col_off), int(w.col_off + w.width))
            data[b0:b1, rows, cols] = self._fetch(grid, block, bands[b0:b1], len(blocks))
        valid = np.asarray(~np.isnan(data).any(axis=0))
        logger.debug("Read %s: %d bands in %d request(s), %.1f%% valid", _describe_grid(grid),
                     len(bands), len(blocks), 100.0 * valid.mean())
        return Raster(data, valid, grid, bands)

    # ------------------------------------------------------------------ requests
    def _fetch(self, grid: PixelGrid, block: Block, bands: tuple[str, ...],
               n_blocks: int) -> np.ndarray:
        """One block, with retries; returns ``(len(bands), h, w)`` float32, NaN = masked."""
        import ee

        sub = grid.subgrid(block.window)
        params = {"expression": self._image, "fileFormat": "NUMPY_NDARRAY",
                  "bandIds": list(bands), "grid": grid_request(sub)}
        cfg = self.config
        delays: Iterator[float] = iter(FuzzedExponentialIntervals(
            cfg.backoff_initial_s, cfg.max_retries, factor=2, fuzz=0.5,
            max_delay_secs=cfg.backoff_max_s))
        semaphore = _semaphore(cfg)
        attempt = 0
        while True:
            attempt += 1
            try:
                with semaphore:
                    result = ee.data.computePixels(params)
                return _decode(result, bands, block.window)
            except Exception as exc:  # classified below; nothing is swallowed
                where = (f"grid {_describe_grid(grid)}, block rows {block.window.row_off}-"
                         f"{block.window.row_off + block.window.height} cols "
                         f"{block.window.col_off}-{block.window.col_off + block.window.width} "
                         f"bands {','.join(bands)} ({n_blocks} block(s))")
                status = _http_status(exc)
                reason = f"HTTP {status}: {exc}" if status else f"{type(exc).__name__}: {exc}"
                if not is_retryable(exc):
                    raise SourceError(f"Earth Engine refused {where}: {reason} (not retried)."
                                      ) from exc
                delay = next(delays, None)
                if delay is None:
                    raise SourceError(
                        f"Earth Engine failed {attempt} time(s) on {where}; last error "
                        f"{reason}. Lower max_concurrency, raise max_retries, or re-run the "
                        f"dead-lettered chunk later."
                    ) from exc
                logger.warning("Earth Engine %s on %s (attempt %d of %d); retrying in %.2f s",
                               reason, where, attempt, cfg.max_retries + 1, delay)
                time.sleep(delay)


def _to_json(image: Any) -> str:
    import ee

    return ee.serializer.toJSON(image)


def _decode(result: Any, bands: tuple[str, ...], window: Window) -> np.ndarray:
    """Structured (possibly masked) NPY answer -> ``(bands, h, w)`` float32 with NaN."""
    shape = (int(window.height), int(window.width))
    if getattr(result, "shape", None) != shape or result.dtype.names is None:
        raise SourceError(f"Earth Engine answered an array of shape "
                          f"{getattr(result, 'shape', None)} / fields "
                          f"{getattr(getattr(result, 'dtype', None), 'names', None)}; "
                          f"expected {shape} with fields {list(bands)}.")
    missing = [b for b in bands if b not in result.dtype.names]
    if missing:
        raise BandError(f"Earth Engine's answer lacks band(s) {', '.join(missing)}; it has "
                        f"{', '.join(result.dtype.names)}.")
    out = np.empty((len(bands), *shape), dtype=np.float32)
    mask: Any = np.ma.getmaskarray(result) if isinstance(result, np.ma.MaskedArray) else None
    nodata = np.float32(NODATA)
    for i, name in enumerate(bands):
        values = np.asarray(np.ma.getdata(result[name]), dtype=np.float32)
        bad = ~np.isfinite(values) | (values == nodata)
        if mask is not None:
            bad |= mask[name] if mask.dtype.names else mask
        out[i] = np.where(bad, np.float32(np.nan), values)
    return out

"""The Earth Engine imagery source: :class:`EarthEngineSource`.

The expression is built **once**, on the launcher
(:func:`~pipelines.sources.earthengine.expression.build_image`), serialised to JSON and
carried as a string inside the (pickled) source. Each worker initialises the client in
:meth:`EarthEngineSource.open` and deserialises the expression; it is never rebuilt per
element. A read is cut into blocks (:mod:`~pipelines.sources.earthengine.pixels`), fetched
side by side with ``ee.data.computePixels`` within the process's part of the job's
request budget (:mod:`~pipelines.sources.earthengine.budget`; the launcher sets the
part with :meth:`EarthEngineSource.for_workers`); what
:func:`~pipelines.sources.earthengine.client.is_retryable` accepts is retried
``max_retries`` times with jittered exponential backoff (Beam's
``FuzzedExponentialIntervals``), then raised as an exhausted
:class:`~pipelines.errors.TransientSourceError` naming the grid and block, so that the
pipeline dead-letters the chunk without retrying it again (one budget, not retries
multiplied). Other errors (HTTP 400 or 403: a bad band, a bad expression, no access) are
raised at once as a permanent :class:`~pipelines.errors.SourceError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from apache_beam.utils.retry import FuzzedExponentialIntervals

from pipelines.errors import ConfigError, RegionError, SourceError, TransientSourceError
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import WGS84, PixelGrid, Region
from pipelines.sources.base import Raster, Source, format_bounds
from pipelines.sources.earthengine.budget import BudgetShare, process_budget, split_budget
from pipelines.sources.earthengine.client import (
    client_is_for,
    http_status,
    initialize,
    is_overload,
    is_retryable,
)
from pipelines.sources.earthengine.config import AVAILABLE_BANDS, DEFAULT_BANDS, EEConfig
from pipelines.sources.earthengine.credentials import ApplicationDefault
from pipelines.sources.earthengine.expression import build_image, to_json
from pipelines.sources.earthengine.pixels import (
    Block,
    decode,
    describe_grid,
    grid_request,
    plan_blocks,
)

if TYPE_CHECKING:
    from pipelines.workers import WorkerLayout

logger = logging.getLogger(__name__)

__all__ = ["EarthEngineSource"]


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
        credentials_factory: A picklable callable returning credentials, called in each
            process that reads (see :mod:`~pipelines.sources.earthengine.credentials`);
            None uses stored Earth Engine / application default credentials.
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
        #: This process's part of the job's request budget (see :meth:`for_workers`).
        self.share: BudgetShare = split_budget(config)
        if expression_json is None:
            initialize(config, credentials_factory)
            expression_json = to_json(build_image(config, self._bands))
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

    def for_workers(self, layout: WorkerLayout) -> None:
        """Take this process's part of the budget, and credentials that work on the workers.

        Remote workers make application default credentials for themselves
        (:class:`~pipelines.sources.earthengine.credentials.ApplicationDefault`) unless a
        factory was given; a local-only factory (``--ee-token-env``) is refused there.

        Raises:
            ConfigError: the budget cannot be split over the layout's processes, or the
                credentials cannot reach remote workers.
        """
        factory = self.credentials_factory
        if layout.remote and getattr(factory, "local_only", False):
            raise ConfigError(
                f"--ee-token-env {getattr(factory, 'var', '')} reads the token from an "
                f"environment variable of each worker process, which only workers started "
                f"on this machine inherit; {layout.runner}'s workers do not ({layout.basis})."
                f" Drop --ee-token-env: remote workers authenticate with application default"
                f" credentials (on Dataflow the job's service account, "
                f"--service_account_email, registered for Earth Engine).")
        if layout.remote and factory is None:
            self.credentials_factory = ApplicationDefault()
        self.share = split_budget(self.config, layout)
        logger.info("Earth Engine budget of %d concurrent request(s) and %g/s for the job "
                    "(project %s): %s", self.config.max_concurrent_requests,
                    self.config.requests_per_second, self.config.project,
                    self.share.describe())

    def open(self) -> None:
        """Initialise the ``ee`` client in this process and deserialise the expression."""
        import ee

        with self._lock:
            initialize(self.config, self.credentials_factory, self.share.concurrency)
            if self._image is None:
                self._image = ee.Image(ee.deserializer.fromJSON(self.expression_json))

    def close(self) -> None:
        self._image = None

    def describe(self) -> dict:
        return {"kind": self.kind, "bands": list(self.bands), "config": self.config.describe(),
                "endpoint": self.config.url}

    def footprint(self) -> tuple[str, tuple[float, float, float, float]] | None:
        """``(WGS84, bbox)`` when the configuration limits the scenes to a bbox, else None."""
        bbox = self.config.bbox
        return (WGS84, bbox) if bbox is not None else None

    def check_covers(self, region: Region) -> None:
        """Refuse a region that the configured ``bbox`` does not overlap, before any read.

        Only scenes that intersect ``bbox`` are composited, so a region outside it would
        read no scene: every chunk empty (nodata), silently. As for the GeoTIFF source, a
        region that overlaps it is accepted; when part of it lies outside, a warning says
        how much (chunks there may find no scene and be nodata). Without a bbox the
        source covers the world and nothing is checked. Both are in lon/lat: a
        :class:`~pipelines.geo.grid.Region` is in WGS 84 whatever CRS it was given in.

        Args:
            region: The area of interest (an export region, a predict AOI).

        Raises:
            RegionError: ``region`` does not overlap ``bbox`` (naming both, and the fix).
        """
        bbox = self.config.bbox
        if bbox is None:
            return
        import shapely

        geom = region.geometry
        inside = geom.intersection(shapely.box(*bbox)).area
        if inside > 0:
            outside = 1.0 - inside / geom.area if geom.area else 0.0
            if outside > 1e-9:
                logger.warning(
                    "%.0f%% of the area of interest %r (lon/lat bounds %s) lies outside the "
                    "Earth Engine bbox %s: only scenes that intersect the bbox are used, so "
                    "chunks there may be nodata. Widen the bbox to cover the region.",
                    100 * outside, region.name, format_bounds(geom.bounds), format_bounds(bbox))
            return
        raise RegionError(
            f"The area of interest {region.name!r} (lon/lat bounds "
            f"{format_bounds(geom.bounds)}) lies outside the Earth Engine source's bbox "
            f"{format_bounds(bbox)} (minlon, minlat, maxlon, maxlat), which limits the scenes "
            f"read: every chunk would be empty. Widen or drop the bbox (source spec key "
            f"'bbox') to cover the region, or choose a region inside it.")

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        if (self._image is None
                or not client_is_for(self.config, self.credentials_factory)):
            self.open()  # first read, or another source switched the process's client
        blocks = plan_blocks(grid.width, grid.height, len(bands), self.config.max_request_bytes)
        data = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)

        def fetch(block: Block) -> None:
            b0, b1 = block.bands
            w = block.window
            rows = slice(int(w.row_off), int(w.row_off + w.height))
            cols = slice(int(w.col_off), int(w.col_off + w.width))
            data[b0:b1, rows, cols] = self._fetch(grid, block, bands[b0:b1], len(blocks))

        side_by_side = min(len(blocks), self.share.concurrency)
        if side_by_side > 1:  # the process's slots bound them with every other read
            with ThreadPoolExecutor(side_by_side, thread_name_prefix="ee-block") as pool:
                futures = [pool.submit(fetch, b) for b in blocks]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    for future in futures:  # the chunk failed: ask for no more blocks
                        future.cancel()
                    raise
        else:
            for block in blocks:
                fetch(block)
        valid = np.asarray(~np.isnan(data).any(axis=0))
        logger.debug("Read %s: %d bands in %d request(s), %.1f%% valid", describe_grid(grid),
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
        budget = process_budget(cfg, self.share)
        attempt = 0
        while True:
            attempt += 1
            try:
                with budget.request(retry=attempt > 1):
                    try:
                        result = ee.data.computePixels(params)
                    except Exception as exc:
                        budget.answered(overloaded=is_overload(exc))
                        raise
                    budget.answered(overloaded=False)
                return decode(result, bands, block.window)
            except Exception as exc:  # classified below; nothing is swallowed
                where = (f"grid {describe_grid(grid)}, block rows {block.window.row_off}-"
                         f"{block.window.row_off + block.window.height} cols "
                         f"{block.window.col_off}-{block.window.col_off + block.window.width} "
                         f"bands {','.join(bands)} ({n_blocks} block(s))")
                status = http_status(exc)
                reason = f"HTTP {status}: {exc}" if status else f"{type(exc).__name__}: {exc}"
                if not is_retryable(exc):
                    raise SourceError(f"Earth Engine refused {where}: {reason} (not retried)."
                                      ) from exc
                delay = next(delays, None)
                if delay is None:  # transient, but this request's budget is spent
                    raise TransientSourceError(
                        f"Earth Engine failed {attempt} time(s) on {where}; last error "
                        f"{reason}. Lower --ee-max-concurrent-requests (the project's quota "
                        f"may be shared), raise --ee-max-retries, or re-run the "
                        f"dead-lettered chunk later.", exhausted=True
                    ) from exc
                logger.warning("Earth Engine %s on %s (attempt %d of %d); retrying in %.2f s",
                               reason, where, attempt, cfg.max_retries + 1, delay)
                budget.wait(delay)

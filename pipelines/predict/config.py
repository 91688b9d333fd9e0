"""The predict command's configuration and its plain values: constants, config, one AOI.

Owns :class:`PredictConfig` (saved as ``predict_config.json`` beside the outputs), the
output names and encodings every other predict module shares, and :class:`SweepJob` (one
AOI of a sweep, as planned on the launcher).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines import fsio
from pipelines.errors import ConfigError
from pipelines.geo.grid import Region
from pipelines.sources.factory import check_window

#: Version tag of the sweep's records (done-records, run.json, COG tags).
FORMAT = "landslides-predict/1"
#: A sweep's run record, written last in each AOI's folder.
RUN = "run.json"
#: Dead letters: one JSON line per failed chunk and stage.
FAILED = "failed_chunks.jsonl"
#: The configuration, saved in the output folder before the run.
CONFIG = "predict_config.json"
#: Encodings of the probability COGs.
PROB_DTYPES = ("uint8", "float32")
#: ``uint8`` probabilities are ``p * PROB_SCALE`` rounded.
PROB_SCALE = 250.0
#: Nodata of ``uint8`` probabilities and of masks.
NODATA_U8 = 255


@dataclass(frozen=True)
class PredictConfig:
    """Everything a sweep needs; saved as ``predict_config.json`` beside the outputs.

    Attributes:
        model: Model artifact folder (local or ``gs://``).
        source: Source spec (see :mod:`pipelines.sources.factory`).
        out: Output folder, local or ``gs://``.
        aoi: Area of interest: a vector file or ``minlon,minlat,maxlon,maxlat``.
        point: ``"LAT,LON"``: map a square of half-side ``buffer_m`` around a place.
        buffer_m: Half-side in metres of the square around ``point`` or each event.
        events: CSV event catalogue (e.g. NASA's Global Landslide Catalog): one AOI per
            event, in ``out/<event_id>/``, with its own date window.
        days_before: Event window start, in days before each event's date.
        days_after: Event window end, in days after each event's date.
        start: Date window start (YYYY-MM-DD) for ``aoi``/``point``.
        end: Date window end.
        window: Window side in pixels (default: the artifact's patch size).
        overlap: Window overlap in [0, 1) (0.5 default: every pixel seen by 4 windows).
        chunk_size: Chunk side in pixels (a multiple of the stride keeps the halo tight).
        pixel_size: Metres (default: the artifact's, else 10).
        batch_size: Windows per model call.
        chunks_per_batch: Chunks per RunInference batch.
        threshold: Mask threshold (default: the artifact's decision threshold).
        min_area_m2: Drop landslide polygons smaller than this (after merging chunks).
        connectivity: Pixel connectivity of landslide polygons (4 or 8).
        prob_dtype: ``uint8`` (p * 250, 255 nodata) or ``float32`` (NaN nodata).
        merge_max_px: Write one merged COG per mosaic when it has at most this many pixels.
        retries: Read retries of a chunk (transient source errors) before dead-lettering.
        retry_delay_s: First retry delay; doubles each time.
        epsg: Force one projected CRS instead of per-UTM-zone chunks.
        stac: Write the STAC catalog.
        large_model: Share one model per machine across worker processes.
        overwrite: Replace the products of a sweep of other dates already in ``out``
            (refused by default: the mosaic, STAC and inventory would mix dates).
    """

    model: str
    source: dict[str, Any]
    out: str
    aoi: str | None = None
    point: str | None = None
    buffer_m: float = 1000.0
    events: str | None = None
    days_before: int = 0
    days_after: int = 90
    start: str | None = None
    end: str | None = None
    window: int | None = None
    overlap: float = 0.5
    chunk_size: int = 512
    pixel_size: float | None = None
    batch_size: int = 16
    chunks_per_batch: int = 1
    threshold: float | None = None
    min_area_m2: float = 200.0
    connectivity: int = 4
    prob_dtype: str = "uint8"
    merge_max_px: int = 50_000_000
    retries: int = 3
    retry_delay_s: float = 2.0
    epsg: int | None = None
    stac: bool = True
    large_model: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.events:
            check_window(self.start, self.end)
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"overlap must be in [0, 1) (0.5 = half a window), got "
                              f"{self.overlap!r}.")
        if self.window is not None and self.window < 8:
            raise ConfigError(f"window must be at least 8 pixels, got {self.window}.")
        if self.chunk_size < 8:
            raise ConfigError(f"chunk_size must be at least 8 pixels, got {self.chunk_size}.")
        if self.batch_size < 1 or self.chunks_per_batch < 1:
            raise ConfigError(f"batch_size ({self.batch_size}) and chunks_per_batch "
                              f"({self.chunks_per_batch}) must be >= 1.")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}.")
        if self.min_area_m2 < 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {self.min_area_m2}.")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity}.")
        if self.prob_dtype not in PROB_DTYPES:
            raise ConfigError(f"prob_dtype must be one of {', '.join(PROB_DTYPES)}, got "
                              f"{self.prob_dtype!r}.")
        if self.buffer_m <= 0:
            raise ConfigError(f"buffer_m must be positive, got {self.buffer_m}.")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ConfigError("retries and retry_delay_s must be >= 0.")
        if self.pixel_size is not None and self.pixel_size <= 0:
            raise ConfigError(f"pixel_size must be positive, got {self.pixel_size}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepJob:
    """One AOI of a sweep (a run has one, or one per event).

    Attributes:
        name: The event's name, or ``""`` for the one AOI of an ``aoi``/``point`` run.
        out: The AOI's output folder.
        region: The AOI.
        start: Date window start.
        end: Date window end.
        date: The event's date, or ``"start/end"``, as written in the inventory.
        source: Index of the AOI's source in the plan's sources (one per date window).
        n_chunks: Chunks planned for the AOI.
        area_km2: Area of the AOI's chunk regions.
        epsgs: The CRSs of its chunks.
        base_signature: Hash of the inputs every chunk of the AOI shares.
    """

    name: str
    out: str
    region: Region
    start: str | None
    end: str | None
    date: str
    source: int
    n_chunks: int
    area_km2: float
    epsgs: tuple[int, ...]
    base_signature: str

    @property
    def label(self) -> str:
        return self.name or self.region.name

    def path(self, *parts: str) -> str:
        return fsio.join(self.out, *parts)


__all__ = [
    "CONFIG",
    "FAILED",
    "FORMAT",
    "NODATA_U8",
    "PROB_DTYPES",
    "PROB_SCALE",
    "RUN",
    "PredictConfig",
    "SweepJob",
]

"""The options of ``landslides predict``: :class:`PredictConfig`, saved beside the outputs.

Each field is one option: its flag, default, help and checks are defined here and nowhere
else. A scan YAML's ``predict:`` block takes the fields marked ``yaml`` (the scan sets the
others itself), the Flex Template the ones marked ``template``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.precision import PRECISIONS
from pipelines.errors import ConfigError
from pipelines.options.fields import BBOX_OR_GCS, DATE, nested, option
from pipelines.options.source import SourceOptions

#: Encodings of the probability COGs.
PROB_DTYPES = ("uint8", "float32")
AOI = "area of interest (exactly one)"


@dataclass(frozen=True)
class PredictConfig:
    """Everything a sweep needs; saved as ``predict_config.json`` beside the outputs.

    Attributes:
        model: Model artifact folder (local or ``gs://``).
        source: Source spec (see :mod:`pipelines.sources.factory`); on the command line,
            the :class:`~pipelines.options.source.SourceOptions` flags.
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
        precision: Inference precision: ``fp32`` (the model as trained), ``bf16``
            (bfloat16 compute) or ``int8`` (the artifact's quantized TFLite model); the
            last two only on an artifact validated for them (``landslides
            validate-precision``), refused before any chunk runs otherwise.
        threshold: Mask threshold (default: the artifact's decision threshold).
        min_area_m2: Drop landslide polygons smaller than this (after merging chunks).
        connectivity: Pixel connectivity of landslide polygons (4 or 8).
        prob_dtype: ``uint8`` (p * 250, 255 nodata) or ``float32`` (NaN nodata).
        merge_max_px: Write one merged COG per mosaic when it has at most this many pixels.
        retries: Read retries of a chunk (transient source errors) before dead-lettering.
        retry_delay_s: First retry delay; doubles each time.
        epsg: Force one projected CRS in metres instead of per-UTM-zone chunks.
        stac: Write the STAC catalog.
        large_model: Share one model per machine across worker processes.
        overwrite: Replace the products of a sweep of other dates already in ``out``
            (refused by default: the mosaic, STAC and inventory would mix dates).
        explain: Also write a Grad-CAM heat map per chunk (``explain/<key>.tif``): each
            window's landslide probability summed over its predicted pixels, weighed at
            ``explain_layer``, blended like the probabilities (raw, float32, NaN nodata).
        explain_layer: The layer of ``explain`` (default: the U-Net's bottleneck).
    """

    model: str = option(help="Model artifact folder (local or gs://).", yaml=False, path=True,
                        label="Model artifact")
    source: dict[str, Any] = nested(SourceOptions, convert=SourceOptions.to_spec)
    out: str = option(help="Output folder (local or gs://).", yaml=False, path=True,
                      label="Output folder")
    aoi: str | None = option(None, "Vector file or minlon,minlat,maxlon,maxlat.", group=AOI,
                             yaml=False, regex=BBOX_OR_GCS, label="Area of interest")
    point: str | None = option(None, "LAT,LON: map a square around a place (see --buffer-m).",
                               group=AOI, yaml=False, regex=r"^-?[0-9.]+,-?[0-9.]+$")
    buffer_m: float = option(1000.0, "Half-side in metres of the square around --point or "
                             "each event (%(default)s). At least 10: metres, not degrees.",
                             units="m", yaml=False)
    events: str | None = option(None, "CSV event catalogue (e.g. NASA GLC: event_id, "
                                "event_date, latitude, longitude): one AOI per event in "
                                "out/<id>/.", group=AOI, yaml=False, path=True,
                                label="Event catalogue")
    days_before: int = option(0, "Event window start, days before each event date "
                              "(%(default)s): the window is [date - days_before, date + "
                              "days_after).", yaml=False)
    days_after: int = option(90, "Event window end, days after each event date "
                             "(%(default)s), exclusive: the window is [date - days_before, "
                             "date + days_after), so 1 reads the event's day alone.",
                             yaml=False)
    start: str | None = option(None, "Date window start, YYYY-MM-DD.", yaml=False, regex=DATE,
                               label="Start date")
    end: str | None = option(None, "Date window end, YYYY-MM-DD, exclusive: the day "
                             "itself is not read.", yaml=False, regex=DATE,
                             label="End date")
    window: int | None = option(None, "Window side in pixels (default: the model's).",
                                units="px")
    overlap: float = option(0.5, "Window overlap in [0, 1) (%(default)s).")
    chunk_size: int = option(512, "Chunk side in pixels (%(default)s).", units="px")
    pixel_size: float | None = option(None, "Metres (default: the model's, else 10).",
                                      units="m")
    batch_size: int = option(16, "Windows per model call (%(default)s).")
    chunks_per_batch: int = option(1, "Chunks per RunInference batch (%(default)s).")
    precision: str = option("fp32", "Inference precision: fp32, bf16 (bfloat16 compute) or "
                            "int8 (quantized, TFLite/XNNPACK); bf16 and int8 need an artifact "
                            "validated for them (`landslides validate-precision`).",
                            choices=PRECISIONS, label="Inference precision")
    threshold: float | None = option(None, "Mask threshold (default: the model's).",
                                     regex=r"^0?\.[0-9]+$")
    min_area_m2: float = option(200.0, "Smallest landslide polygon kept, m2 (%(default)s).",
                                flag="--min-area", units="m2")
    connectivity: int = option(4, "Pixel connectivity of polygons (%(default)s).",
                               choices=(4, 8))
    prob_dtype: str = option("uint8", "Probability COGs: uint8 (p*250, 255 nodata) or "
                             "float32 (NaN nodata).", choices=PROB_DTYPES,
                             label="Probability type")
    merge_max_px: int = option(50_000_000, "Also write one merged COG per mosaic up to this "
                               "many pixels.", label="Largest merged mosaic (px)")
    retries: int = option(3, "Read retries per chunk (%(default)s).")
    retry_delay_s: float = option(2.0, "First retry delay in seconds, doubling "
                                  "(%(default)s).", flag="--retry-delay", units="s")
    epsg: int | None = option(None, "Use one projected CRS instead of UTM zones.",
                              label="EPSG code")
    stac: bool = option(True, "Write the STAC catalog (default on).", label="STAC catalog")
    large_model: bool = option(False, "Share one model per machine across worker processes.")
    overwrite: bool = option(False, "Replace a sweep of other dates already in --out (refused "
                             "by default: their chunks would mix).")
    explain: bool = option(False, "Also write Grad-CAM heat maps per chunk (explain/<key>.tif "
                           "beside prob/): what drives each window's predicted landslides.",
                           label="Grad-CAM heat maps")
    explain_layer: str | None = option(None, "Layer weighed by --explain (default: the "
                                       "U-Net's bottleneck).", label="Grad-CAM layer")

    def __post_init__(self) -> None:
        from pipelines.sources.factory import check_window

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
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.precision!r}.")
        if self.prob_dtype not in PROB_DTYPES:
            raise ConfigError(f"prob_dtype must be one of {', '.join(PROB_DTYPES)}, got "
                              f"{self.prob_dtype!r}.")
        if self.buffer_m <= 0:
            raise ConfigError(f"buffer_m must be positive, got {self.buffer_m}.")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ConfigError("retries and retry_delay_s must be >= 0.")
        if self.explain_layer is not None and not self.explain:
            raise ConfigError(f"explain_layer {self.explain_layer!r} is set but explain is "
                              f"off: pass --explain too, or drop --explain-layer.")
        if self.pixel_size is not None and self.pixel_size <= 0:
            raise ConfigError(f"pixel_size must be positive, got {self.pixel_size}.")
        if self.epsg is not None:
            from pipelines.geo.grid import metric_crs

            metric_crs(self.epsg)  # pixel_size and the km2 figures are in its unit

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["PROB_DTYPES", "PredictConfig"]

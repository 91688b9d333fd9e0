"""The one Cloud-Optimized GeoTIFF writer, for local paths and ``gs://``.

Writes with GDAL's COG driver (tiled, compressed, internal overviews) into a local
temporary file, then publishes it atomically through :mod:`pipelines.fsio` (rename
locally, one object upload on Cloud Storage): a reader never sees a partial COG.

Quantised values (``uint8`` probabilities) carry GDAL's band scale and offset, so GDAL,
QGIS and rasterio users read ``value = stored * scale + offset``; :func:`band_scaling`
reads them back (and the ``scale`` tag of files written before the band scale was set).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling

from pipelines import fsio
from pipelines.errors import DataNotFoundError, InputError, OutputError
from pipelines.geo.grid import PixelGrid


@dataclass(frozen=True)
class CogProfile:
    """COG creation options.

    Attributes:
        compress: ``deflate`` (lossless, default), ``zstd``, ``lzw`` or ``none``.
        blocksize: Internal tile size in pixels.
        overview_resampling: ``average`` for continuous data, ``nearest``/``mode`` for classes.
        predictor: ``2`` for integers, ``3`` for floats, ``None`` to let GDAL choose.
        level: Compression level; deflate level 1 is much faster than GDAL's default 6
            for about the same size on imagery, so it is the default.
    """

    compress: str = "deflate"
    blocksize: int = 256
    overview_resampling: str = "average"
    predictor: int | None = None
    level: int | None = 1


CONTINUOUS = CogProfile()
CATEGORICAL = CogProfile(overview_resampling="nearest")


def write_cog(
    path: str,
    data: np.ndarray,
    grid: PixelGrid,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
    profile: CogProfile = CONTINUOUS,
    tags: dict[str, str] | None = None,
    overviews: bool = True,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
) -> str:
    """Write ``data`` (``(bands, h, w)`` or ``(h, w)``) on ``grid`` as a COG at ``path``.

    Args:
        path: Local path or ``gs://`` URL.
        data: The pixels; the dtype is kept.
        grid: Georeferencing; its shape must match ``data``.
        nodata: Value marking missing pixels (written to the file's metadata).
        band_names: Band descriptions, one per band.
        profile: Compression and overview options.
        tags: Dataset-level metadata tags.
        overviews: Build internal overviews (``False`` for tiny rasters).
        scales: GDAL band scale per band (``value = stored * scale + offset``), for
            quantised values; ``None`` leaves values as stored.
        offsets: GDAL band offset per band (default 0 where ``scales`` is given).

    Returns:
        ``path``.

    Raises:
        InputError: shape mismatch, or band names or scales not matching the band count.
        OutputError: the destination cannot be written.
    """
    arr = data[np.newaxis] if data.ndim == 2 else data
    if arr.ndim != 3 or arr.shape[1:] != grid.shape:
        raise InputError(f"Array of shape {data.shape} does not fit grid {grid.shape} for {path}.")
    if band_names is not None and len(band_names) != arr.shape[0]:
        raise InputError(f"{len(band_names)} band names for {arr.shape[0]} bands in {path}.")
    for what, values in (("scales", scales), ("offsets", offsets)):
        if values is not None and len(values) != arr.shape[0]:
            raise InputError(f"{len(values)} band {what} for {arr.shape[0]} bands in {path}.")
    opts = {
        "driver": "COG",
        "compress": profile.compress.upper(),
        "blocksize": profile.blocksize,
        "overview_resampling": profile.overview_resampling.upper(),
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }
    if not overviews:
        opts["overviews"] = "NONE"
    if profile.predictor is not None:
        opts["predictor"] = str(profile.predictor)
    if profile.level is not None and profile.compress.lower() in ("deflate", "zstd"):
        opts["level"] = profile.level
    try:
        with fsio.staged_output(path, suffix=".tif") as local, rasterio.open(
            local, "w", width=grid.width, height=grid.height, count=arr.shape[0],
            dtype=arr.dtype, crs=grid.crs, transform=grid.affine, nodata=nodata, **opts,
        ) as dst:
            dst.write(arr)
            if band_names:
                for i, name in enumerate(band_names, start=1):
                    dst.set_band_description(i, name)
            if tags:
                dst.update_tags(**tags)
            if scales is not None or offsets is not None:
                n = arr.shape[0]
                dst.scales = tuple(float(v) for v in (scales or [1.0] * n))
                dst.offsets = tuple(float(v) for v in (offsets or [0.0] * n))
    except rasterio.errors.RasterioIOError as exc:
        raise OutputError(f"Cannot write COG {path!r}: {exc}") from exc
    return path


def band_scaling(ds: rasterio.io.DatasetReader, band: int = 1) -> tuple[float, float]:
    """``(scale, offset)`` that turn ``band``'s stored values into physical values.

    GDAL's band scale and offset when set; else, for probability COGs written before this
    writer set them, the dataset's ``scale`` tag (offset 0); else ``(1.0, 0.0)``.
    """
    scale, offset = float(ds.scales[band - 1]), float(ds.offsets[band - 1])
    if (scale, offset) != (1.0, 0.0):
        return scale, offset
    legacy = ds.tags().get("scale")
    if legacy:
        try:
            return float(legacy), 0.0
        except ValueError:
            pass
    return 1.0, 0.0


def read_raster(path: str, window_grid: PixelGrid | None = None,
                resampling: Resampling = Resampling.nearest) -> tuple[np.ndarray, PixelGrid]:
    """Read a whole raster (or its part on ``window_grid``); returns ``(data, grid)``."""
    from rasterio.vrt import WarpedVRT

    with fsio.local_copy(path) as local, rasterio.open(local) as src:
        if window_grid is None:
            return src.read(), PixelGrid.from_affine(str(src.crs), src.transform,
                                                     src.width, src.height)
        with WarpedVRT(src, crs=window_grid.crs, transform=window_grid.affine,
                       width=window_grid.width, height=window_grid.height,
                       resampling=resampling) as vrt:
            return vrt.read(), window_grid


def is_gdal_error(exc: BaseException) -> bool:
    """True for errors raised by rasterio/GDAL (``RasterioError`` and GDAL's ``CPLE_*``)."""
    from rasterio.errors import RasterioError

    return isinstance(exc, RasterioError) or type(exc).__module__.startswith("rasterio")


def gdal_error_text(exc: BaseException) -> str:
    """The error's text with its cause, when the cause says more."""
    cause = exc.__cause__ or exc.__context__
    return f"{exc} ({cause})" if cause and str(cause) not in str(exc) else str(exc)


def open_dataset(local: str, path: str, what: str,
                 fail: Callable[[str], Exception]) -> rasterio.io.DatasetReader:
    """Open ``local`` (the GDAL-readable form of ``path``) with rasterio.

    A raster without georeferencing opens without a warning (callers check its CRS).

    Raises:
        DataNotFoundError: ``path`` is a URL that answers 404.
        Exception: ``fail(text)`` for any other GDAL error, so each caller names the file
            and the fix in its own words.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(local)
    except Exception as exc:
        if not is_gdal_error(exc):
            raise
        text = gdal_error_text(exc)
        if fsio.is_http(path) and "404" in text:
            raise DataNotFoundError(f"{what} URL {path!r} does not exist (HTTP 404).") from exc
        raise fail(text) from exc

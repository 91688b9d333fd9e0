"""Reading one GeoTIFF file onto a pixel grid: the arithmetic around GDAL's warper.

Which window of a grid a file can touch (:func:`window_of`), the warp options that make a
pixel's value independent of the chunk it is read in (:data:`TOLERANCE`,
:func:`warp_scales`), the resampling names (:func:`resampling_method`), which bands hold a
file's validity (:func:`mask_indexes`, :func:`value_bands`), and the fast path for files
already on the grid's lattice (:func:`aligned_offset`, :func:`read_aligned`), which reads
a window as is instead of warping and gives the warper's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.windows import Window

from pipelines.errors import ConfigError, SourceError
from pipelines.geo.cog import gdal_error_text, is_gdal_error
from pipelines.geo.grid import PixelGrid
from pipelines.sources.geotiff.files import FileInfo, crs_string

__all__ = ["TOLERANCE", "aligned_offset", "mask_indexes", "nans", "read_aligned",
           "resampling_method", "value_bands", "warp_scales", "window_of"]

#: Largest error, in source pixels, of GDAL's approximate coordinate transformer. GDAL's
#: default (0.125) makes a pixel's value depend on the window it is warped in; this keeps
#: reads of overlapping chunks consistent (nearest picks the same source pixel).
TOLERANCE = 1e-3

_RESAMPLING_NAMES = tuple(r.name for r in Resampling if r.value <= Resampling.q3.value)


def resampling_method(name: str) -> Resampling:
    """The GDAL resampling named ``name`` (case and spaces ignored).

    Raises:
        ConfigError: no resampling has that name.
    """
    try:
        return Resampling[str(name).strip().lower()]
    except KeyError:
        raise ConfigError(f"Unknown resampling {name!r}; use one of "
                          f"{', '.join(_RESAMPLING_NAMES)} (bilinear for continuous bands, "
                          f"nearest for classes).") from None


def aligned_offset(ds: Any, grid: PixelGrid) -> tuple[int, int] | None:
    """``(row, col)`` of ``grid``'s origin in ``ds``'s pixels when both share one lattice.

    Same CRS, same north-up pixel size and an integer pixel offset; otherwise ``None``
    (the file must be warped).
    """
    a, b, c, d, e, f = grid.transform
    t = ds.transform
    if b or d or t.b or t.d or ds.crs is None:
        return None
    if not (math.isclose(a, t.a, rel_tol=1e-9) and math.isclose(e, t.e, rel_tol=1e-9)):
        return None
    col, row = (c - t.c) / t.a, (f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    if crs_string(ds.crs) != grid.crs and rasterio.crs.CRS.from_user_input(grid.crs) != ds.crs:
        return None
    return round(row), round(col)


def nans(n_bands: int, grid: PixelGrid) -> np.ndarray:
    """``(n_bands, h, w)`` float32 NaN: a block with no valid pixel yet."""
    return np.full((n_bands, *grid.shape), np.nan, dtype=np.float32)


def window_of(grid: PixelGrid, bounds: np.ndarray) -> tuple[int, int, int, int]:
    """Rows/cols ``(r0, r1, c0, c1)`` of ``grid`` meeting ``bounds`` plus a 2-pixel margin.

    Warping only this window instead of the whole grid gives the same pixels (the warper
    computes each target pixel from its own centre) for a fraction of the work.
    """
    if not np.isfinite(bounds).all() or grid.transform[1] or grid.transform[3]:
        return 0, grid.height, 0, grid.width
    a, _, c, _, e, f = grid.transform
    xs = sorted(((bounds[0] - c) / a, (bounds[2] - c) / a))
    ys = sorted(((bounds[3] - f) / e, (bounds[1] - f) / e))
    c0 = max(0, math.floor(xs[0]) - 2)
    c1 = min(grid.width, math.ceil(xs[1]) + 2)
    r0 = max(0, math.floor(ys[0]) - 2)
    r1 = min(grid.height, math.ceil(ys[1]) + 2)
    return r0, r1, c0, c1


def warp_scales(file_res: np.ndarray, grid: PixelGrid) -> dict[str, str]:
    """GDAL's ``XSCALE``/``YSCALE`` warp options for a file read onto ``grid``'s pixels.

    GDAL widens the resampling kernel when downsampling, by a ratio it otherwise derives
    from each warp chunk's extent, so the same target pixel could get a different value
    depending on the window read. Fixing the ratio from the file's pixel size (measured in
    the grid's CRS, ``file_res``) and the grid's makes every pixel's value independent of
    the chunk it is read in.
    """
    fx, fy = (float(v) for v in file_res)
    gx, gy = abs(grid.transform[0]), abs(grid.transform[4])
    if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0 and gx and gy):
        return {}
    return {"XSCALE": repr(min(1.0, fx / gx)), "YSCALE": repr(min(1.0, fy / gy))}


def mask_indexes(ds: Any, indexes: Iterable[int]) -> list[int]:
    """The bands of ``indexes`` whose validity is a mask of the file, not its nodata value.

    An internal or sidecar mask (``rio cogeo --add-mask``, ``GDAL_TIFF_INTERNAL_MASK``) or
    an alpha band, as GDAL reports it (:attr:`~rasterio.io.DatasetReader.mask_flag_enums`):
    the warper leaves out the pixels they mask, so the fast path must too. Bands that are
    all valid or masked only by the nodata value are left out (a ``nodata`` override of
    the source replaces the file's value).
    """
    plain = {MaskFlags.all_valid, MaskFlags.nodata}
    flags = ds.mask_flag_enums
    return [i for i in indexes if not plain.intersection(flags[i - 1])]


def value_bands(ds: Any) -> list[int]:
    """Every band of ``ds`` except an alpha band: the bands ``mask_zero_pixels`` looks at."""
    return [i for i, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha]


def read_aligned(info: FileInfo, ds: Any, grid: PixelGrid, indexes: list[int],
                 offset: tuple[int, int], nodata: float | None,
                 all_zero: bool = False) -> np.ndarray:
    """Fast path: the file already lies on ``grid``'s lattice, so read a window as is.

    Same pixels as the warper gives on an aligned grid (every target pixel centre is a
    source pixel centre), without resampling work: a band equal to ``nodata`` is invalid
    in that band, and every band is invalid where the file's mask (:func:`mask_indexes`)
    masks the pixel or, with ``all_zero``, where all of the file's :func:`value_bands`
    are 0 (read too where they are not among ``indexes``).
    """
    row0, col0 = offset
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + grid.height, ds.height), min(col0 + grid.width, ds.width)
    if r1 <= r0 or c1 <= c0:
        return nans(len(indexes), grid)
    window = Window(c0, r0, c1 - c0, r1 - r0)
    zero_bands = value_bands(ds) if all_zero else []
    order = indexes + [i for i in zero_bands if i not in indexes]
    masked = mask_indexes(ds, indexes)
    try:
        raw = ds.read(order, window=window)
        masks = ds.read_masks(masked, window=window) if masked else None
    except Exception as exc:
        if not is_gdal_error(exc):
            raise
        raise SourceError(f"Cannot read raster {info.path!r} onto grid {grid.crs} "
                          f"{grid.bounds}: {gdal_error_text(exc)}") from exc
    stored = raw[:len(indexes)] if len(order) > len(indexes) else raw
    data = stored.astype(np.float32, copy=False)  # raw is ours: no second copy
    if nodata is not None:
        bad = stored == nodata if not np.isnan(nodata) else np.isnan(stored)
        if bad.any():
            np.copyto(data, np.nan, where=bad)
    invalid = np.zeros(data.shape[1:], dtype=bool)
    if zero_bands:
        invalid |= (raw[[order.index(i) for i in zero_bands]] == 0).all(axis=0)
    if masks is not None:
        invalid |= (masks == 0).any(axis=0)
    if invalid.any():
        np.copyto(data, np.nan, where=invalid)
    if data.shape[1:] == grid.shape:  # the window lies inside the file: no padding
        return data
    out = nans(len(indexes), grid)
    out[:, r0 - row0:r1 - row0, c0 - col0:c1 - col0] = data
    return out

"""Pixel metrics of one year: both layers walked tile by tile over a common grid.

Owns the common grid, the streaming confusion counts (memory bounded by one tile, not the
region) and the downsampled map of the confusion classes that the overlay figure draws.
The counts themselves are :func:`pipelines.geo.compare_metrics.pixel_counts`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import shapely
from pyproj import CRS
from rasterio.windows import Window
from shapely.geometry import box

from pipelines.compare.config import CompareConfig, _year_key
from pipelines.compare.inputs import Side, _union_bounds
from pipelines.compare.layers import Layer, RasterMask, _tiles
from pipelines.errors import InputError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.grid import PixelGrid
from pipelines.progress import Progress

logger = logging.getLogger(__name__)

#: Overview maps (overlay figures) are at most this many pixels on their long side.
OVERVIEW_PX = 1000


class ConfusionOverview:
    """A downsampled map of the confusion classes for the overlay figure.

    Each overview pixel covers ``factor`` x ``factor`` grid pixels and takes the most
    frequent landslide class among them (:data:`TP`, :data:`FN`, :data:`FP`), else
    :data:`NEG` when any pixel is valid, else :data:`NODATA`.
    """

    NEG, TP, FN, FP, NODATA = 0, 1, 2, 3, 255

    def __init__(self, grid: PixelGrid, max_px: int = OVERVIEW_PX) -> None:
        self.grid_full = grid
        self.factor = max(1, math.ceil(max(grid.width, grid.height) / max_px))
        f = self.factor
        self.classes = np.full((math.ceil(grid.height / f), math.ceil(grid.width / f)),
                               self.NODATA, dtype="uint8")

    @property
    def grid(self) -> PixelGrid:
        a, b, c, d, e, g = self.grid_full.transform
        f = self.factor
        return PixelGrid(self.grid_full.crs, (a * f, b, c, d, e * f, g),
                         self.classes.shape[1], self.classes.shape[0])

    def add(self, window: Window, ref: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> None:
        f = self.factor
        r0, c0 = int(window.row_off), int(window.col_off)
        if r0 % f or c0 % f:
            raise InputError(f"Window offsets {(r0, c0)} are not multiples of the overview "
                             f"factor {f}.")
        h, w = ref.shape
        H, W = math.ceil(h / f) * f, math.ceil(w / f) * f

        def blocks(a: np.ndarray) -> np.ndarray:
            p = np.zeros((H, W), dtype="int32")
            p[:h, :w] = a
            return p.reshape(H // f, f, W // f, f).sum(axis=(1, 3))

        counts = np.stack([blocks(ref & pred & valid), blocks(ref & ~pred & valid),
                           blocks(~ref & pred & valid)])
        cls = np.where(blocks(valid) > 0, self.NEG, self.NODATA).astype("uint8")
        hit = counts.sum(axis=0) > 0
        cls[hit] = (np.argmax(counts, axis=0) + 1)[hit]
        self.classes[r0 // f: r0 // f + cls.shape[0], c0 // f: c0 // f + cls.shape[1]] = cls


def common_grid(bounds: tuple[float, float, float, float], crs: str, resolution: float
                ) -> PixelGrid:
    """A north-up grid at ``resolution`` covering ``bounds``, snapped to multiples of it."""
    left, bottom, right, top = bounds
    x0 = math.floor(left / resolution) * resolution
    y1 = math.ceil(top / resolution) * resolution
    width = max(1, math.ceil((right - x0) / resolution - 1e-9))
    height = max(1, math.ceil((y1 - bottom) / resolution - 1e-9))
    return PixelGrid(crs, (resolution, 0.0, x0, 0.0, -resolution, y1), width, height)


def streaming_pixel_counts(reference: Layer, predicted: Layer, grid: PixelGrid,
                           aoi: shapely.Geometry | None = None, tile_size: int = 2048,
                           overview: ConfusionOverview | None = None,
                           label: str = "pixel metrics") -> cm.PixelCounts:
    """Confusion counts of two layers over ``grid``, one tile at a time.

    Each tile burns both layers (rasterising polygons, resampling rasters), excludes the
    pixels where a raster layer has no data or that lie outside ``aoi``, adds its counts
    and its share of ``overview``, and is released: memory is bounded by the tile.

    Args:
        reference: The reference layer.
        predicted: The predicted layer.
        grid: The common grid (projected CRS).
        aoi: Optional area of interest in ``grid.crs``; pixels whose centre is outside it
            are not counted.
        tile_size: Tile side in pixels.
        overview: Optional overview map to fill (the tile size is rounded to its factor).
        label: Progress label.

    Returns:
        The summed :class:`~pipelines.geo.compare_metrics.PixelCounts`.
    """
    from rasterio.features import geometry_mask

    crs = CRS.from_user_input(grid.crs)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    pixel_area = abs(grid.transform[0] * grid.transform[4]) * unit**2
    size = int(tile_size)
    if overview is not None:
        size = max(overview.factor, size // overview.factor * overview.factor)
    if aoi is not None:
        shapely.prepare(aoi)
    windows = list(_tiles(grid.height, grid.width, size))
    progress = Progress(len(windows), label, unit="tiles", logger=logger)
    total = cm.PixelCounts(pixel_area_m2=pixel_area)
    for window in windows:
        sub = grid.subgrid(window)
        tile_box = box(*sub.bounds)
        valid = np.ones(sub.shape, dtype=bool)
        if aoi is not None and not aoi.contains(tile_box):
            if not aoi.intersects(tile_box):
                progress.update()
                continue
            valid = geometry_mask([aoi], out_shape=sub.shape, transform=sub.affine, invert=True)
        # Rasters first: a tile where a raster side has no data at all is skipped unburnt.
        burnt: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        for i in sorted((0, 1), key=lambda k: not isinstance((reference, predicted)[k],
                                                              RasterMask)):
            burnt[i] = (reference, predicted)[i].burn(sub)
            v = burnt[i][1]
            if v is not None:
                valid &= v
            if not valid.any():
                break
        if not valid.any():
            progress.update()
            continue
        (ref, _), (pred, _) = burnt[0], burnt[1]
        total = total + cm.pixel_counts(ref, pred, valid, pixel_area)
        if overview is not None:
            overview.add(window, ref, pred, valid)
        progress.update()
    return total


def _pixel_metrics(ref: Side, pred: Side, crs: str, aoi: shapely.Geometry | None,
                   config: CompareConfig, overviews: dict, year: int | None) -> dict | None:
    bounds = aoi.bounds if aoi is not None else _union_bounds([ref.bounds, pred.bounds])
    if bounds is None:
        return None
    grid = common_grid(bounds, crs, config.resolution)
    ov = ConfusionOverview(grid)
    counts = streaming_pixel_counts(ref.layer, pred.layer, grid, aoi, config.tile_size, ov,
                                    label=f"pixel metrics {_year_key(year)}")
    overviews[year] = ov
    out = counts.metrics()
    out["grid"] = {"width": grid.width, "height": grid.height, "resolution_m": config.resolution,
                   "bounds": list(grid.bounds)}
    return out

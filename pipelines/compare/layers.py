"""The two kinds of landslide layer a comparison burns onto a grid: raster masks and polygons.

:class:`RasterMask` reads a mask made of one or more files (a COG, a VRT, chunk COGs):
their metadata, their landslide and valid pixels on any grid, and their polygons window by
window, merged back across window and file edges
(:func:`pipelines.geo.polygons.merge_across_edges`).
:class:`VectorMask` burns polygons onto any grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from pipelines import fsio
from pipelines.errors import CRSError, InputError
from pipelines.geo.cog import band_scaling
from pipelines.geo.grid import PixelGrid, to_crs
from pipelines.geo.inventory import rasterize, vectorize
from pipelines.geo.polygons import merge_across_edges
from pipelines.predict.config import PROB_BAND

#: Raster value meaning "no data" in a sweep's mask (besides the file's own nodata).
MASK_NODATA = 255


def _crs_label(crs: CRS | str | None) -> str:
    if crs is None:
        return "none"
    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_string()


def _refuse_non_mask(src: rasterio.io.DatasetReader, path: str) -> None:
    """Refuse a raster that is not a 0/1 mask although its values would pass as one.

    Raises:
        InputError: a scaled band (a quantised probability COG: stored 0..250 read as a
            mask marks every pixel above p = 0.004) or a nodata of 0 (0 is "not landslide":
            every such pixel would count as no data, and misses as unobserved).
    """
    scale, offset = band_scaling(src, 1)
    if (scale, offset) != (1.0, 0.0) or src.descriptions[0] == PROB_BAND:
        why = (f"its band is {PROB_BAND!r}" if src.descriptions[0] == PROB_BAND
               else f"its values are scaled: value = stored * {scale:g} + {offset:g}")
        raise InputError(
            f"Raster {path!r} looks like a probability map ({why}), not a mask: pass the "
            f"sweep's mask COG (mosaic/mask.tif or mask/*.tif, values 0/1).")
    if src.nodata is not None and src.nodata == 0:
        raise InputError(
            f"Raster {path!r} declares nodata = 0, which in a mask means 'not landslide': "
            f"every such pixel would count as unobserved. Mark no data with 255 instead "
            f"(`gdal_edit.py -a_nodata 255 {path}`, or `-unsetnodata` when it has none).")


@dataclass
class RasterFile:
    """Metadata of one raster mask file (opened lazily, one at a time)."""

    path: str
    local: str
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    nodata: float | None
    dtype: str

    @property
    def grid(self) -> PixelGrid:
        return PixelGrid(self.crs, self.transform[:6], self.width, self.height)  # type: ignore[arg-type]


def _bounds_in(bounds: tuple[float, float, float, float], src: str, dst: str
               ) -> tuple[float, float, float, float]:
    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return bounds
    return tuple(transform_bounds(src, dst, *bounds, densify_pts=21))  # type: ignore[return-value]


def _intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tiles(height: int, width: int, size: int) -> Iterator[Window]:
    """Windows of ``size`` x ``size`` covering the array, the last row/column partial."""
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Window(c, r, min(size, width - c), min(size, height - r))


class RasterMask:
    """A raster landslide mask made of one or more files (a COG, a VRT, chunk COGs).

    Values 1..254 are landslide, 0 is not, 255 and each file's nodata are no data.

    Args:
        files: The files' metadata (see :meth:`open`).
        crs: The CRS the comparison works in.
        kept: Polygons (in ``crs``) that limit the landslide pixels :meth:`burn` gives: the
            ones :meth:`vectorize` found that the comparison keeps (``--min-area`` drops the
            rest), so the pixel metrics score the same landslides as the object metrics.
            None: every landslide pixel.
    """

    def __init__(self, files: list[RasterFile], crs: str,
                 kept: gpd.GeoDataFrame | None = None) -> None:
        self.files = files
        self.crs = crs
        self.kept = VectorMask(kept) if kept is not None else None
        self.bounds_in_crs = [_bounds_in(f.grid.bounds, f.crs, crs) for f in files]
        # Which files meet a tile: an R-tree over the footprints (a sweep has many chunks).
        self._index = shapely.STRtree([box(*b) for b in self.bounds_in_crs])

    def files_meeting(self, bounds: tuple[float, float, float, float]) -> list[int]:
        """Positions of the files whose footprint overlaps ``bounds`` (in :attr:`crs`)."""
        hits = self._index.query(box(*bounds))
        return sorted(int(i) for i in hits if _intersects(self.bounds_in_crs[i], bounds))

    @classmethod
    def open(cls, paths: tuple[str, ...], stack: contextlib.ExitStack) -> list[RasterFile]:
        """Read the metadata of ``paths`` (remote files are copied locally for the run)."""
        files = []
        for p in paths:
            local = stack.enter_context(fsio.local_copy(p)) if fsio.is_remote(p) else p
            try:
                with rasterio.open(local) as src:
                    if src.crs is None:
                        raise CRSError(f"Raster {p!r} has no CRS: set one with "
                                       f"`gdal_edit.py -a_srs EPSG:nnnn {p}`.")
                    _refuse_non_mask(src, p)
                    files.append(RasterFile(p, local, _crs_label(src.crs), tuple(src.transform),
                                            src.width, src.height, src.nodata, src.dtypes[0]))
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(f"Cannot open the raster {p!r}: {exc}") from exc
        return files

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        b = np.array(self.bounds_in_crs)
        return (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())

    @staticmethod
    def classify(values: np.ndarray, nodata: float | None, path: str
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Landslide and valid masks of mask ``values`` read from ``path``.

        1..254 are landslide, 0 not, 255 and ``nodata`` no data (as are non-finite values).

        Raises:
            InputError: fractional values (a probability map passed as a mask), or values
                no mask holds (negative, above 255, non-integer: an undeclared nodata).
        """
        valid = np.isfinite(values) & (values != MASK_NODATA)
        if nodata is not None and np.isfinite(nodata):
            valid &= values != nodata
        frac = valid & (values > 0) & (values < 1)
        if frac.any():
            raise InputError(
                f"Raster {path!r} holds fractional values (e.g. {values[frac][0]:.3f}): it looks "
                f"like a probability map. Pass the sweep's mask COG (values 0/1) instead."
            )
        odd = valid & ((values < 0) | (values > MASK_NODATA) | (values != np.floor(values)))
        if odd.any():
            raise InputError(
                f"Raster {path!r} holds {values[odd][0]:g}, not a mask value (0 not landslide, "
                f"1..254 landslide, 255 no data): if it marks no data, declare it "
                f"(`gdal_edit.py -a_nodata {values[odd][0]:g} {path}`).")
        return valid & (values >= 1) & (values <= 254), valid

    def burn(self, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
        """Landslide and valid masks of this raster on ``grid`` (nearest neighbour)."""
        mask = np.zeros(grid.shape, dtype=bool)
        valid = np.zeros(grid.shape, dtype=bool)
        for i in self.files_meeting(grid.bounds):
            f = self.files[i]
            dst = np.full(grid.shape, np.nan, dtype="float32")
            with rasterio.open(f.local) as src:
                reproject(rasterio.band(src, 1), dst, src_transform=src.transform,
                          src_crs=src.crs, src_nodata=src.nodata, dst_transform=grid.affine,
                          dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.nearest,
                          init_dest_nodata=True)
            m, v = self.classify(dst, f.nodata, f.path)
            mask |= m
            valid |= v
        if self.kept is not None:
            mask &= self.kept.burn(grid)[0]
        return mask, valid

    def keeping(self, kept: gpd.GeoDataFrame) -> RasterMask:
        """The same files, their landslide pixels limited to ``kept`` (see ``kept``)."""
        return RasterMask(self.files, self.crs, kept)

    def vectorize(self, aoi: shapely.Geometry | None, block: int, connectivity: int,
                  valid: bool = False) -> gpd.GeoDataFrame:
        """Polygons of the landslide pixels, in :attr:`crs`, read window by window.

        Each file is read in ``block`` x ``block`` windows (only those meeting ``aoi``);
        polygons cut by a window or file edge are merged back with their neighbours.
        With ``valid``, the polygons of the valid (observed) pixels instead.
        """
        by_crs: dict[str, list[gpd.GeoDataFrame]] = {}
        piece = 0
        for f in self.files:
            aoi_native = to_crs(aoi, self.crs, f.crs) if aoi is not None else None
            grid = f.grid
            with rasterio.open(f.local) as src:
                for window in _tiles(f.height, f.width, block):
                    sub = grid.subgrid(window)
                    if aoi_native is not None and not aoi_native.intersects(box(*sub.bounds)):
                        continue
                    values = src.read(1, window=window).astype("float32", copy=False)
                    mask, ok = self.classify(values, f.nodata, f.path)
                    if valid:
                        mask = ok
                    if not mask.any():
                        continue
                    g = vectorize(mask, sub, min_area_m2=0.0, connectivity=connectivity)
                    g = g[["geometry"]].assign(piece=piece)
                    by_crs.setdefault(f.crs, []).append(g)
                    piece += 1
        parts = []
        for crs, frames in by_crs.items():
            pixel = min(min(abs(f.grid.affine.a), abs(f.grid.affine.e)) for f in self.files
                        if f.crs == crs)
            merged = merge_across_edges(pd.concat(frames, ignore_index=True), connectivity,
                                        tolerance=0.0, piece="piece",
                                        grid_size=pixel * 1e-6)[["geometry"]]
            parts.append(merged.to_crs(self.crs) if crs != self.crs else merged)
        if not parts:
            return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=self.crs), crs=self.crs)
        return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=self.crs)


class VectorMask:
    """Polygons burnt on demand onto any grid (pixel-centre rule)."""

    def __init__(self, gdf: gpd.GeoDataFrame) -> None:
        self.gdf = gdf

    @property
    def bounds(self) -> tuple[float, float, float, float] | None:
        return tuple(self.gdf.total_bounds) if len(self.gdf) else None  # type: ignore[return-value]

    def burn(self, grid: PixelGrid) -> tuple[np.ndarray, None]:
        if len(self.gdf) == 0:
            return np.zeros(grid.shape, dtype=bool), None
        idx = self.gdf.sindex.query(box(*grid.bounds), predicate="intersects")
        if idx.size == 0:
            return np.zeros(grid.shape, dtype=bool), None
        return rasterize(self.gdf.iloc[np.sort(idx)], grid) > 0, None


Layer = RasterMask | VectorMask

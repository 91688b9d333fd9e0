"""Compare landslide inventories: pixel and object metrics, statistics, maps and a report.

``landslides compare --reference R [--predicted P] [--aoi AOI] [--years 2013-2019] --out DIR``

``R`` and ``P`` are vector inventories (anything :func:`~pipelines.geo.inventory.read_inventory`
reads) or rasters: a sweep's mask COG, a VRT mosaic, or a glob of chunk COGs
(``.../mask/*.tif``). Either may hold ``{year}``, filled from ``--years``. A raster is
landslide where its value is in 1..254; 0 is no landslide; 255 and the file's nodata are no
data, excluded from the pixel metrics.

What happens, per year:

1. Every input is read in its own CRS, then reprojected to one projected CRS (``--epsg``,
   else the reference's if it is projected in metres, else the UTM zone of the AOI or data
   centroid) and clipped to the AOI. Rasters are vectorised file by file and window by
   window; polygons cut by window or chunk edges are merged again.
2. **Pixel metrics** (both sides present): a common grid at ``resolution`` over the AOI (or
   the union of both extents) is walked in ``tile_size`` tiles; each tile rasterises /
   resamples both sides, adds its confusion counts and its share of the overview map, and
   is dropped: memory is bounded by one tile, not the region.
3. **Object metrics** and **statistics** on the polygons
   (:mod:`pipelines.geo.compare_metrics`).

Then the multi-temporal table and correlations, the figures (:mod:`pipelines.report`) and
the outputs: ``metrics.json``, ``stats.csv``, ``matches.csv``, ``compare_config.json``,
``figures/*.png`` and ``report.html``, written locally and published atomically through
:mod:`pipelines.fsio` (so ``--out`` may be ``gs://``).

Bad input does not stop the report: a missing year on one side, an empty inventory, an AOI
that misses one input are recorded in ``metrics.json`` (``problems``) and in the report,
and the rest is computed. Only when nothing at all could be computed does
:func:`compare_cli` fail (after writing the report).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import box

from pipelines import errors, fsio
from pipelines.errors import ConfigError, CRSError, DataNotFoundError, InputError, RegionError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.grid import WGS84, PixelGrid, Region, load_region, to_crs, utm_epsg
from pipelines.geo.inventory import area_m2, rasterize, read_inventory, vectorize
from pipelines.progress import Progress

logger = logging.getLogger(__name__)

#: Extensions read as rasters (everything else is read as a vector inventory).
RASTER_EXTS = (".tif", ".tiff", ".vrt", ".img", ".jp2")
#: Raster value meaning "no data" in a sweep's mask (besides the file's own nodata).
MASK_NODATA = 255
#: Roles of the two inputs.
SIDES = ("reference", "predicted")
#: Overview maps (overlay figures) are at most this many pixels on their long side.
OVERVIEW_PX = 1000
#: Density maps are this many cells on their long side.
DENSITY_CELLS = 200
METRICS_VERSION = 1


# --------------------------------------------------------------------------- configuration
def parse_years(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"2013-2019"``, ``"2013,2015"`` or a mix (``"2013-2015,2018"``).

    Raises:
        ConfigError: a malformed list or range, or a year outside 1900..2100.
    """
    if text is None or str(text).strip() == "":
        return None
    years: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{4})\s*(?:-\s*(\d{4}))?", part)
        if not m:
            raise ConfigError(
                f"Bad year list {text!r} (at {part!r}): give a range '2013-2019', a list "
                f"'2013,2015' or both '2013-2015,2018'."
            )
        y0 = int(m.group(1))
        y1 = int(m.group(2) or y0)
        if y1 < y0:
            raise ConfigError(f"Bad year range {part!r} in {text!r}: the first year must come "
                              f"first (e.g. 2013-2019).")
        years.update(range(y0, y1 + 1))
    return tuple(sorted(years))


@dataclass(frozen=True)
class CompareConfig:
    """Configuration of one comparison, validated on creation and saved beside the outputs.

    Attributes:
        reference: Reference inventory: vector file, raster, or a glob of chunk COGs; may
            hold ``{year}``.
        out: Output folder (local or ``gs://``).
        predicted: Predicted inventory (same forms); ``None`` for statistics only.
        aoi: Area of interest (vector file or ``minlon,minlat,maxlon,maxlat``); ``None`` uses
            the union of the inputs' extents.
        years: Years to fill ``{year}`` with; required when a path holds ``{year}``.
        resolution: Pixel size in metres of the common grid of the pixel metrics.
        min_overlap: Object-matching threshold in (0, 1].
        match: ``"overlap"`` (share of each polygon's area) or ``"iou"``.
        min_area: Drop polygons (both sides, vectorised rasters too) smaller than this (m2).
        background: Raster drawn under the overlay maps (hillshade or RGB imagery).
        epsg: Projected CRS to compare in (default: chosen from the inputs).
        tile_size: Tile side in pixels for the streaming pixel metrics and the raster
            vectorisation (memory ~ 10 bytes per pixel of one tile).
        connectivity: Pixel connectivity (4 or 8) when vectorising raster inputs.
        bins_per_decade: Log bins per decade of the frequency-area distributions.
        a_min: Lower bound (m2) of the power-law tail fit (default: the rollover).
        kde_bandwidth_m: Kernel width (m) of the density maps (default: 1/25 of the extent).
        figures: Draw the PNG figures (False: metrics, tables and the report only).
        observed_only: When the predicted side of a year is a raster with nodata (a sweep's
            mask mosaic: nodata under clouds or outside the imagery), match and count only
            the reference landslides at least half inside its observed (valid) pixels, so a
            landslide no image could show is neither a miss nor a count the prediction had
            to reach. Pixel metrics are always limited to valid pixels of raster inputs.
        notes: Sentences the report shows about the comparison (e.g. which areas and
            years the model was trained on).
    """

    reference: str
    out: str
    predicted: str | None = None
    aoi: str | None = None
    years: tuple[int, ...] | None = None
    resolution: float = 5.0
    min_overlap: float = 0.1
    match: str = "overlap"
    min_area: float = 0.0
    background: str | None = None
    epsg: int | None = None
    tile_size: int = 2048
    connectivity: int = 4
    bins_per_decade: int = 10
    a_min: float | None = None
    kde_bandwidth_m: float | None = None
    figures: bool = True
    observed_only: bool = True
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.reference or not str(self.reference).strip():
            raise ConfigError("reference is required: a vector inventory or a raster mask.")
        if not self.out or not str(self.out).strip():
            raise ConfigError("out is required: the folder for metrics.json and the report.")
        if isinstance(self.years, str):
            object.__setattr__(self, "years", parse_years(self.years))
        elif self.years is not None:
            object.__setattr__(self, "years", tuple(sorted({int(y) for y in self.years})))
        if self.years is not None and not self.years:
            object.__setattr__(self, "years", None)
        for y in self.years or ():
            if not 1900 <= y <= 2100:
                raise ConfigError(f"Year {y} is outside 1900..2100.")
        for name in ("reference", "predicted"):
            path = getattr(self, name)
            if path is not None and "{year}" in path and not self.years:
                raise ConfigError(
                    f"The {name} path {path!r} holds {{year}} but no years were given: pass "
                    f"--years (e.g. 2013-2019 or 2013,2015)."
                )
        _positive("resolution", self.resolution, "metres, e.g. 5")
        if not 0.0 < float(self.min_overlap) <= 1.0:
            raise ConfigError(f"min_overlap must be in (0, 1], got {self.min_overlap!r} "
                              f"(e.g. 0.1 = a tenth of the landslide's area).")
        if self.match not in cm.CRITERIA:
            raise ConfigError(f"match must be one of {cm.CRITERIA}, got {self.match!r}.")
        if not (self.min_area >= 0 and math.isfinite(self.min_area)):
            raise ConfigError(f"min_area must be >= 0 m2, got {self.min_area!r}.")
        if int(self.tile_size) < 64:
            raise ConfigError(f"tile_size must be at least 64 pixels, got {self.tile_size!r}.")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity!r}.")
        if not 1 <= int(self.bins_per_decade) <= 100:
            raise ConfigError(f"bins_per_decade must be in 1..100, got {self.bins_per_decade!r}.")
        if self.a_min is not None:
            _positive("a_min", self.a_min, "m2")
        if self.kde_bandwidth_m is not None:
            _positive("kde_bandwidth_m", self.kde_bandwidth_m, "metres")
        if self.epsg is not None:
            try:
                crs = CRS.from_epsg(int(self.epsg))
            except Exception as exc:
                raise CRSError(f"Unknown EPSG code {self.epsg!r}: give e.g. 32645.") from exc
            if not _is_metric(crs):
                raise CRSError(f"EPSG:{self.epsg} is not a projected CRS in metres: give a UTM "
                               f"zone (e.g. 32645) or leave --epsg out.")

    @property
    def mode(self) -> str:
        return "comparison" if self.predicted else "stats-only"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["years"] = list(self.years) if self.years else None
        return d


def _positive(name: str, value: float, unit: str) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number of {unit}, got {value!r}.")


def _is_metric(crs: CRS) -> bool:
    return bool(crs.is_projected and crs.axis_info
                and math.isclose(crs.axis_info[0].unit_conversion_factor, 1.0))


def _crs_label(crs: CRS | str | None) -> str:
    if crs is None:
        return "none"
    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_string()


# --------------------------------------------------------------------------- problems
@dataclass
class Problems:
    """Warnings and errors met on the way; they go to metrics.json and the report."""

    items: list[dict] = field(default_factory=list)

    def add(self, level: str, message: str, side: str | None = None, year: int | None = None,
            exc: BaseException | None = None) -> None:
        log = logger.error if level == "error" else logger.warning
        where = " ".join(str(v) for v in (side, year) if v is not None)
        log("%s%s", f"[{where}] " if where else "", message)
        self.items.append({"level": level, "side": side, "year": year, "message": message,
                           "type": type(exc).__name__ if exc is not None else None})

    def errors(self) -> list[dict]:
        return [p for p in self.items if p["level"] == "error"]


# --------------------------------------------------------------------------- inputs
def _is_raster_path(path: str) -> bool:
    return str(path).lower().endswith(RASTER_EXTS)


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


@dataclass(frozen=True)
class ResolvedInput:
    """One side of one year: the file(s) to read and how to read them."""

    role: str
    year: int | None
    template: str
    paths: tuple[str, ...]
    kind: str  # "vector" or "raster"

    @property
    def label(self) -> str:
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{self.template} ({len(self.paths)} files)"


def resolve_input(template: str, year: int | None, role: str = "reference") -> ResolvedInput:
    """Fill ``{year}`` in ``template`` and find the file(s) it names.

    Raises:
        DataNotFoundError: no such file (the message names the template and the year).
        InputError: a glob that matches vector files (globs are for chunk COGs only).
    """
    path = template.replace("{year}", str(year)) if year is not None else template
    at = f" ({role} template {template!r}, year {year})" if "{year}" in template else ""
    if _has_glob(path):
        paths = fsio.glob(path)
        if not paths:
            raise DataNotFoundError(f"No file matches {path!r}{at}. Check the path and the "
                                    f"year; a sweep writes its chunk masks as .../mask/*.tif.")
        not_raster = [p for p in paths if not _is_raster_path(p)]
        if not_raster:
            raise InputError(
                f"The glob {path!r} matches non-raster files ({not_raster[:3]}): globs are for "
                f"chunk mask COGs (*.tif); give a vector inventory as one file."
            )
        return ResolvedInput(role, year, template, tuple(paths), "raster")
    if not fsio.exists(path):
        raise DataNotFoundError(
            f"{role.capitalize()} {path!r} does not exist{at}. Check the path (vector file, "
            f"mask COG, VRT mosaic, or a glob of chunk COGs)."
        )
    return ResolvedInput(role, year, template, (path,),
                         "raster" if _is_raster_path(path) else "vector")


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
    """

    def __init__(self, files: list[RasterFile], crs: str) -> None:
        self.files = files
        self.crs = crs
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
    def _classify(values: np.ndarray, nodata: float | None, path: str
                  ) -> tuple[np.ndarray, np.ndarray]:
        valid = np.isfinite(values) & (values != MASK_NODATA)
        if nodata is not None and np.isfinite(nodata):
            valid &= values != nodata
        frac = valid & (values > 0) & (values < 1)
        if frac.any():
            raise InputError(
                f"Raster {path!r} holds fractional values (e.g. {values[frac][0]:.3f}): it looks "
                f"like a probability map. Pass the sweep's mask COG (values 0/1) instead."
            )
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
            m, v = self._classify(dst, f.nodata, f.path)
            mask |= m
            valid |= v
        return mask, valid

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
                    mask, ok = self._classify(values, f.nodata, f.path)
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
            merged = merge_across_edges(pd.concat(frames, ignore_index=True), connectivity)
            parts.append(merged.to_crs(self.crs) if crs != self.crs else merged)
        if not parts:
            return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=self.crs), crs=self.crs)
        return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=self.crs)


def merge_across_edges(gdf: gpd.GeoDataFrame, connectivity: int = 4) -> gpd.GeoDataFrame:
    """Union polygons of different pieces (windows, chunks) that continue across an edge.

    Polygons of one piece never share an edge (they are distinct connected regions), so
    only pairs from different pieces (column ``piece``) that share an edge (4-connectivity)
    or at least a point (8-connectivity) are joined, transitively.

    Returns:
        Geometry-only frame, one row per landslide.
    """
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    n = len(geoms)
    if n == 0:
        return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=gdf.crs), crs=gdf.crs)
    piece = gdf["piece"].to_numpy()
    left, right = gdf.sindex.query(geoms, predicate="intersects")
    sel = (left < right) & (piece[left] != piece[right])
    left, right = left[sel], right[sel]
    if connectivity == 4 and left.size:
        shared = shapely.length(shapely.intersection(geoms[left], geoms[right])) > 0
        left, right = left[shared], right[shared]
    if left.size == 0:
        out = geoms
    else:
        graph = coo_matrix((np.ones(left.size), (left, right)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        sizes = np.bincount(labels)
        out_list = [g for g, lab in zip(geoms, labels) if sizes[lab] == 1]
        for lab in np.flatnonzero(sizes > 1):
            out_list.append(shapely.union_all(geoms[labels == lab]))
        out = np.asarray(out_list, dtype=object)
    return gpd.GeoDataFrame(geometry=gpd.GeoSeries(out, crs=gdf.crs), crs=gdf.crs)


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


# --------------------------------------------------------------------------- pixel metrics
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


# --------------------------------------------------------------------------- loading
@dataclass
class Side:
    """One inventory of one year, in the common CRS, clipped to the AOI."""

    role: str
    year: int | None
    source: ResolvedInput
    gdf: gpd.GeoDataFrame
    layer: Layer
    report: dict
    bounds: tuple[float, float, float, float] | None


def _native(res: ResolvedInput, stack: contextlib.ExitStack) -> tuple[object, str, dict]:
    """Read a side in its own CRS: (GeoDataFrame or raster files, crs label, report)."""
    if res.kind == "vector":
        gdf = read_inventory(res.paths[0])
        rep = gdf.attrs["report"].to_dict()
        return gdf, _crs_label(gdf.crs), {"kind": "vector", **rep}
    files = RasterMask.open(res.paths, stack)
    crss = sorted({f.crs for f in files})
    return files, crss[0], {"kind": "raster", "path": res.label, "n_files": len(files),
                            "crs": crss}


def _choose_crs(config: CompareConfig, natives: dict, region: Region | None) -> tuple[str, str]:
    """The projected CRS (in metres) to compare in, and why it was chosen.

    ``--epsg`` if given; else the reference's CRS (first year) if projected in metres; else
    the UTM zone of the AOI centroid; else the prediction's CRS if projected in metres; else
    the UTM zone of the data's centre.
    """
    if config.epsg:
        return f"EPSG:{int(config.epsg)}", "given with --epsg"
    ordered = sorted(natives.items(), key=lambda kv: (kv[0][1] or 0, SIDES.index(kv[0][0])))
    for role in SIDES:
        if role == "predicted" and region is not None:
            break
        for (r, _), (_, crs, _) in ordered:
            if r == role:
                if _is_metric(CRS.from_user_input(crs)):
                    return crs, f"the {role} inventory's CRS"
                break
        if role == "reference" and region is not None:
            c = region.geometry.centroid
            return f"EPSG:{utm_epsg(c.x, c.y)}", "the UTM zone of the AOI centroid"
    for _, (obj, crs, _) in ordered:
        if isinstance(obj, gpd.GeoDataFrame) and len(obj):
            b = tuple(obj.total_bounds)
        elif isinstance(obj, list) and obj:
            b = obj[0].grid.bounds
        else:
            continue
        lon, lat = to_crs(box(*b), crs, WGS84).centroid.coords[0]
        return f"EPSG:{utm_epsg(lon, lat)}", "the UTM zone of the data's centre"
    return "EPSG:3857", "no data to choose from"


def _to_common(role: str, year: int | None, res: ResolvedInput, native: object,
               native_crs: str, report: dict, crs: str, aoi: shapely.Geometry | None,
               config: CompareConfig) -> Side:
    """Reproject, clip to the AOI and filter one side; RegionError if it misses the AOI."""
    if native_crs != crs:
        logger.info("reprojecting %s %s from %s to %s", role, res.label, native_crs, crs)
        report["reprojected_from"] = native_crs
    if isinstance(native, gpd.GeoDataFrame):
        gdf = native.to_crs(crs) if native_crs != crs else native
        bounds = tuple(gdf.total_bounds) if len(gdf) else None
        if aoi is not None and bounds is not None and not aoi.intersects(box(*bounds)):
            raise RegionError(
                f"The area of interest does not intersect the {role} inventory {res.label!r} "
                f"(its extent {tuple(round(v) for v in bounds)} in {crs}): check --aoi, or "
                f"the inventory's year and CRS."
            )
        layer_gdf = gdf
    else:
        files = native  # list[RasterFile]
        rm = RasterMask(files, crs)  # type: ignore[arg-type]
        bounds = rm.bounds
        if aoi is not None and not aoi.intersects(box(*bounds)):
            raise RegionError(
                f"The area of interest does not intersect the {role} raster {res.label!r} "
                f"(its extent {tuple(round(v) for v in bounds)} in {crs}): check --aoi."
            )
        gdf = rm.vectorize(aoi, config.tile_size, config.connectivity)
        report["n_vectorised"] = len(gdf)
        layer_gdf = None
    geom_col = gdf.geometry.name
    if aoi is not None and len(gdf):
        gdf = gpd.clip(gdf, aoi, keep_geom_type=True).reset_index(drop=True)
        report["n_in_aoi"] = len(gdf)
    gdf = gdf.reset_index(drop=True)
    gdf["area_m2"] = area_m2(gdf).to_numpy() if len(gdf) else np.zeros(0)
    if config.min_area > 0 and len(gdf):
        small = gdf["area_m2"] < config.min_area
        report["n_below_min_area"] = int(small.sum())
        gdf = gdf[~small].reset_index(drop=True)
    report["n_compared"] = len(gdf)
    gdf = gdf.set_geometry(geom_col)
    if layer_gdf is not None:  # vectors are burnt as compared (clipped, filtered)
        layer: Layer = VectorMask(gdf)
        bounds = tuple(gdf.total_bounds) if len(gdf) else None
    else:
        layer = rm
    return Side(role, year, res, gdf, layer, report, bounds)


def _union_bounds(bounds: list[tuple[float, float, float, float] | None]
                  ) -> tuple[float, float, float, float] | None:
    b = [v for v in bounds if v is not None]
    if not b:
        return None
    a = np.asarray(b)
    return (a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max())


# --------------------------------------------------------------------------- run
def _year_key(year: int | None) -> str:
    return "all" if year is None else str(year)


def run_compare(config: CompareConfig) -> dict:
    """Compare (or describe) the inventories of ``config`` and write every output.

    Args:
        config: The validated configuration.

    Returns:
        The metrics dict written to ``metrics.json``. Its ``status`` is ``"ok"``,
        ``"partial"`` (some inputs or years failed: see ``problems``) or ``"failed"``
        (nothing could be computed; the report still says why).

    Raises:
        ConfigError, RegionError, CRSError: the AOI or the configuration itself is unusable.
        OutputError: the outputs cannot be written.
    """
    from pipelines import report as rpt

    problems = Problems()
    region = load_region(config.aoi) if config.aoi else None
    years: tuple[int | None, ...] = config.years or (None,)
    templates = {"reference": config.reference, "predicted": config.predicted}
    roles = [r for r in SIDES if templates[r]]
    missing: dict[str, list] = {r: [] for r in roles}
    inputs_report: dict[str, dict] = {r: {} for r in roles}

    with contextlib.ExitStack() as stack:
        # 1. Resolve and read every input in its own CRS.
        natives: dict[tuple[str, int | None], tuple[ResolvedInput, object, str, dict]] = {}
        for year in years:
            for role in roles:
                try:
                    res = resolve_input(str(templates[role]), year, role)
                    natives[(role, year)] = (res, *_native(res, stack))
                except DataNotFoundError as exc:
                    missing[role].append(year)
                    other = [r for r in roles if r != role]
                    tail = (f" {year} is reported from the {other[0]} inventory alone."
                            if other and year is not None else "")
                    problems.add("warning" if other else "error", f"{exc}{tail}", role, year,
                                 exc)
                except errors.LandslideError as exc:
                    problems.add("error", str(exc), role, year, exc)
        for role in roles:
            if config.years and len(missing[role]) == len(years):
                problems.add("error", f"no {role} file was found for any year: check the "
                             f"template {templates[role]!r}", role)
        flat = {k: (v[1], v[2], v[3]) for k, v in natives.items()}
        crs, crs_reason = _choose_crs(config, flat, region)
        logger.info("comparing in %s (%s)", crs, crs_reason)
        aoi = to_crs(region.geometry, WGS84, crs) if region is not None else None

        # 2. Common CRS, AOI clip, area filter.
        sides: dict[tuple[str, int | None], Side] = {}
        for (role, year), (res, native, native_crs, rep) in natives.items():
            try:
                side = _to_common(role, year, res, native, native_crs, rep, crs, aoi, config)
            except errors.LandslideError as exc:
                problems.add("error", str(exc), role, year, exc)
                inputs_report[role][_year_key(year)] = {**rep, "error": str(exc)}
                continue
            sides[(role, year)] = side
            inputs_report[role][_year_key(year)] = side.report
            if rep.get("n_invalid_repaired"):
                problems.add("warning", f"{rep['n_invalid_repaired']} invalid geometries "
                             f"repaired in {res.label}", role, year)
            if len(side.gdf) == 0:
                problems.add("warning", f"the {role} inventory {res.label} holds no landslides"
                             f"{' inside the AOI' if aoi is not None else ''}", role, year)

        # 2b. Where a raster prediction had no imagery, reference landslides are unobservable.
        observed_refs = _observed_references(sides, years, aoi, config) \
            if config.observed_only else {}
        for year, side in observed_refs.items():
            n_out = side.report["n_unobserved"]
            inputs_report["reference"][_year_key(year)]["n_unobserved"] = n_out
            if n_out:
                logger.info("%s: %d reference landslide(s) lie mostly where the prediction "
                            "had no valid imagery; they are not matched or counted",
                            _year_key(year), n_out)

        # 3. Density area.
        if region is not None:
            area_km2 = float(area_m2(gpd.GeoSeries([region.geometry], crs=WGS84)).iloc[0]) / 1e6
            density = {"basis": "aoi", "area_km2": area_km2}
        else:
            ext = _union_bounds([s.bounds for s in sides.values()])
            area_km2 = ((ext[2] - ext[0]) * (ext[3] - ext[1]) / 1e6) if ext else 0.0
            density = {"basis": "extent (bounding box of all inputs, all years)",
                       "area_km2": area_km2, "bounds": list(ext) if ext else None}

        # 4. Per-year metrics and statistics.
        per_year: dict[str, dict] = {}
        stats: dict[str, dict[int | None, dict]] = {r: {} for r in roles}
        overviews: dict[int | None, ConfusionOverview] = {}
        matches_all: list[pd.DataFrame] = []
        for year in years:
            entry: dict = {"pixel": None, "object": None, "stats": {}}
            for role in roles:
                s = sides.get((role, year))
                if role == "reference" and year in observed_refs:
                    s = observed_refs[year]
                if s is not None:
                    st = cm.inventory_stats(s.gdf["area_m2"].to_numpy(), area_km2,
                                            config.bins_per_decade, config.a_min)
                    stats[role][year] = st
                    entry["stats"][role] = st
            ref, pred = sides.get(("reference", year)), sides.get(("predicted", year))
            if ref is not None and pred is not None:
                try:
                    entry["pixel"] = _pixel_metrics(ref, pred, crs, aoi, config, overviews, year)
                except errors.LandslideError as exc:
                    problems.add("error", f"pixel metrics failed: {exc}", None, year, exc)
                if entry["pixel"] is None and ref.bounds is None and pred.bounds is None:
                    problems.add("warning", "both inventories are empty and no AOI was given: "
                                 "no grid for pixel metrics", None, year)
                ref_obj = observed_refs.get(year, ref)
                obj, matches = cm.object_metrics(ref_obj.gdf, pred.gdf, config.min_overlap,
                                                 config.match)
                entry["object"] = obj
                if len(matches):
                    matches_all.append(matches.assign(year=_year_key(year)))
            if entry["stats"]:
                per_year[_year_key(year)] = entry

        multi = None
        if "reference" in stats and (stats["reference"] or stats.get("predicted")):
            multi = cm.multitemporal(
                {y: s for y, s in stats["reference"].items() if y is not None},
                {y: s for y, s in stats["predicted"].items() if y is not None}
                if "predicted" in stats else None)
        status = ("failed" if not per_year else "partial" if problems.errors() else "ok")
        if status == "failed":
            problems.add("error", "nothing could be computed: no input could be read inside "
                         "the area of interest (see the problems above)")

        metrics: dict = {
            "version": METRICS_VERSION,
            "status": status,
            "mode": config.mode,
            "crs": crs,
            "crs_reason": crs_reason,
            "resolution_m": config.resolution,
            "aoi": config.aoi,
            "density_area": density,
            "years": per_year,
            "multitemporal": multi if config.years else None,
            "inputs": inputs_report,
            "missing_years": {r: [_year_key(y) for y in v] for r, v in missing.items()},
            "problems": problems.items,
        }
        _write_outputs(config, metrics, stats, sides, overviews, matches_all, aoi, crs,
                       problems, rpt)
    return metrics


#: Share of a reference landslide's area that must be observed for it to be scored.
OBSERVED_SHARE = 0.5


def _observed_references(sides: dict, years: Sequence[int | None], aoi: shapely.Geometry | None,
                         config: CompareConfig) -> dict[int | None, Side]:
    """Per year with a raster prediction: the reference limited to observed landslides.

    Returns ``{year: reference side with only landslides >= OBSERVED_SHARE inside the
    prediction's valid pixels}``; its report's ``n_unobserved`` counts those left out.
    """
    out: dict[int | None, Side] = {}
    for year in years:
        ref, pred = sides.get(("reference", year)), sides.get(("predicted", year))
        if ref is None or pred is None or not isinstance(pred.layer, RasterMask) \
                or not len(ref.gdf):
            continue
        seen = pred.layer.vectorize(aoi, config.tile_size, config.connectivity, valid=True)
        observed = shapely.union_all(seen.geometry.to_numpy()) if len(seen) else None
        geoms = ref.gdf.geometry.to_numpy()
        if observed is None:
            share = np.zeros(len(geoms))
        else:
            shapely.prepare(observed)
            inter = shapely.area(shapely.intersection(geoms, observed))
            share = inter / np.maximum(shapely.area(geoms), 1e-9)
        keep = share >= OBSERVED_SHARE
        gdf = ref.gdf[keep].reset_index(drop=True)
        report = {**ref.report, "n_unobserved": int((~keep).sum())}
        out[year] = Side(ref.role, ref.year, ref.source, gdf, VectorMask(gdf), report,
                         tuple(gdf.total_bounds) if len(gdf) else None)
    return out


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


# --------------------------------------------------------------------------- outputs
STATS_COLUMNS = ("inventory", "year", "source", "count", "total_area_m2", "min_area_m2",
                 "max_area_m2", "mean_area_m2", "median_area_m2", "density_per_km2",
                 "density_area_km2", "density_area_basis", "rollover_m2", "beta", "beta_se",
                 "a_min_m2", "n_tail", "n_read", "n_invalid_repaired", "notes")


def stats_rows(metrics: dict) -> list[dict]:
    """One row per inventory kind and year, as written to ``stats.csv``."""
    rows = []
    dens = metrics["density_area"]
    for ykey, entry in metrics["years"].items():
        for role, st in entry["stats"].items():
            rep = metrics["inputs"].get(role, {}).get(ykey, {})
            row = {k: st.get(k) for k in STATS_COLUMNS if k in st}
            row.update({
                "inventory": role, "year": ykey, "source": rep.get("path"),
                "density_area_km2": dens["area_km2"], "density_area_basis": dens["basis"],
                "n_read": rep.get("n_read"), "n_invalid_repaired": rep.get("n_invalid_repaired"),
                "notes": "; ".join(st.get("notes", [])),
            })
            rows.append({k: row.get(k) for k in STATS_COLUMNS})
    return rows


def _density_maps(sides: dict, years: list, crs: str, bounds: tuple | None,
                  config: CompareConfig) -> tuple[dict, dict]:
    """KDE maps ``{year: {role: array}}`` over ``bounds`` and their parameters."""
    if bounds is None:
        return {}, {}
    w, h = bounds[2] - bounds[0], bounds[3] - bounds[1]
    side = max(w, h, 1.0)
    cell = max(side / DENSITY_CELLS, config.resolution)
    bw = config.kde_bandwidth_m or max(side / 25.0, 2 * cell)
    maps: dict = {}
    for year in years:
        for role in SIDES:
            s = sides.get((role, year))
            if s is None:
                continue
            c = shapely.centroid(s.gdf.geometry.values) if len(s.gdf) else np.array([])
            x = shapely.get_x(c) if len(c) else np.zeros(0)
            y = shapely.get_y(c) if len(c) else np.zeros(0)
            maps.setdefault(year, {})[role] = cm.kde_density(x, y, bounds, cell, bw)
    return maps, {"cell_m": cell, "bandwidth_m": bw, "bounds": list(bounds), "crs": crs}


def _write_outputs(config: CompareConfig, metrics: dict, stats: dict, sides: dict,
                   overviews: dict, matches_all: list, aoi: shapely.Geometry | None, crs: str,
                   problems: Problems, rpt) -> None:
    """Write every output into a local staging folder, then publish it to ``config.out``."""
    years = [None if k == "all" else int(k) for k in metrics["years"]]
    with tempfile.TemporaryDirectory(prefix="landslides-compare-") as stage:
        figdir = Path(stage, "figures")
        figdir.mkdir()
        figures: dict[str, list[dict]] = {"overlay": [], "density": [], "other": []}

        def fig(kind: str, name: str, title: str, draw) -> None:
            if not config.figures:
                return
            path = figdir / name
            try:
                draw(str(path))
            except Exception as exc:  # one bad figure must not lose the report
                problems.add("warning", f"figure {name} failed: {exc}")
                return
            figures[kind].append({"path": f"figures/{name}", "title": title})

        # Overlay maps of true positives, misses and false alarms.
        for year in years:
            ov = overviews.get(year)
            if ov is None:
                continue
            bg = None
            if config.background and config.figures:
                try:
                    bg = _read_background(config.background, ov.grid)
                except (errors.LandslideError, rasterio.errors.RasterioError, OSError) as exc:
                    problems.add("warning", f"background {config.background!r} not drawn: {exc}")
            pix = metrics["years"][_year_key(year)]["pixel"]
            fig("overlay", f"overlay_{_year_key(year)}.png",
                f"True positives, misses and false alarms ({_year_key(year)})",
                lambda p, ov=ov, bg=bg, pix=pix, y=year: rpt.overlay_figure(
                    ov.classes, ov.grid.bounds, p, background=bg, metrics=pix,
                    title=f"{_year_key(y)}: reference vs prediction", crs=crs))

        # Density maps, one colour scale for all.
        ext = aoi.bounds if aoi is not None else _union_bounds([s.bounds for s in sides.values()])
        maps, kde = _density_maps(sides, years, crs, ext, config)
        metrics["density_maps"] = kde or None
        vmax = max((float(a.max()) for m in maps.values() for a in m.values() if a.size),
                   default=0.0)
        for year, m in maps.items():
            fig("density", f"density_{_year_key(year)}.png",
                f"Landslide density ({_year_key(year)})",
                lambda p, m=m, y=year: rpt.density_figure(
                    m, ext, p, vmax=vmax, bandwidth_m=kde["bandwidth_m"],
                    title=f"Landslide density, {_year_key(y)} (landslides/km²)", aoi=aoi,
                    crs=crs))

        # Frequency-area distributions, matched-area scatter, trends.
        if any(stats.values()):
            fig("other", "frequency_area.png", "Frequency-area distributions",
                lambda p: rpt.fad_figure(stats, p))
        matches = (pd.concat(matches_all, ignore_index=True) if matches_all
                   else pd.DataFrame(columns=["year", "ref", "pred", "ref_area_m2",
                                              "pred_area_m2", "iou", "n_pieces"]))
        if len(matches):
            fig("other", "area_scatter.png", "Matched landslide areas",
                lambda p: rpt.scatter_figure(matches, p))
        if metrics.get("multitemporal") and len(metrics["multitemporal"]["rows"]) >= 2:
            fig("other", "trends.png", "Trends across years",
                lambda p: rpt.trends_figure(metrics["multitemporal"], p))
        metrics["figures"] = figures

        rows = stats_rows(metrics)
        outputs = {
            "compare_config.json": json.dumps(config.to_dict(), indent=2).encode("utf-8"),
            "stats.csv": fsio.csv_bytes(rows, STATS_COLUMNS),
            "matches.csv": matches[["year", "ref", "pred", "ref_area_m2", "pred_area_m2",
                                    "iou", "n_pieces"]].to_csv(index=False).encode("utf-8"),
        }
        metrics["outputs"] = sorted([*outputs, "metrics.json", "report.html",
                                     *[f["path"] for v in figures.values() for f in v]])
        outputs["metrics.json"] = json.dumps(_jsonable(metrics), indent=2,
                                             sort_keys=False).encode("utf-8")
        outputs["report.html"] = rpt.render_html(metrics, rows, config.to_dict()).encode("utf-8")
        for name, data in outputs.items():
            Path(stage, name).write_bytes(data)

        # Publish: figures first, report last, so the report never links missing files.
        fsio.makedirs(config.out)
        order = [f["path"] for v in figures.values() for f in v] + [
            "compare_config.json", "stats.csv", "matches.csv", "metrics.json", "report.html"]
        for rel in order:
            fsio.put_file(os.path.join(stage, rel), fsio.join(config.out, *rel.split("/")))
    logger.info("comparison written to %s (status %s)", config.out, metrics["status"])


def _read_background(path: str, grid: PixelGrid) -> np.ndarray:
    """The background raster on ``grid``: ``(h, w)`` grey or ``(h, w, 3)`` RGB in 0..1."""
    from pipelines.geo.cog import read_raster

    if not fsio.exists(path):
        raise DataNotFoundError(f"Background raster {path!r} does not exist.")
    data, _ = read_raster(path, window_grid=grid, resampling=Resampling.average)
    data = data.astype("float64")
    data[~np.isfinite(data)] = np.nan
    bands = data[:3] if data.shape[0] >= 3 else data[:1]
    out = np.empty_like(bands)
    for i, b in enumerate(bands):
        ok = np.isfinite(b) & (b != 0)
        lo, hi = (np.percentile(b[ok], [2, 98]) if ok.any() else (0.0, 1.0))
        out[i] = np.clip((b - lo) / max(hi - lo, 1e-12), 0, 1)
        out[i][~ok] = np.nan
    return out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)


def _jsonable(obj):
    """Convert numpy scalars/arrays and non-finite floats for strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- CLI
def compare_cli(reference: str, out: str, predicted: str | None = None,
                aoi: str | None = None, years: str | None = None, resolution: float = 5.0,
                min_overlap: float = 0.1, match: str = "overlap", min_area: float = 0.0,
                background: str | None = None, epsg: int | None = None,
                tile_size: int = 2048, connectivity: int = 4, bins_per_decade: int = 10,
                a_min: float | None = None, kde_bandwidth: float | None = None,
                figures: bool = True, observed_only: bool = True) -> int:
    """``landslides compare``: run :func:`run_compare` from command-line values.

    Returns:
        0 when every requested inventory of every year was read and compared; 1 when the
        report was written but is incomplete: an inventory could not be read (missing,
        truncated, unusable) or a year lacks one side (the report and metrics.json say
        which; status ``partial``).

    Raises:
        LandslideError: bad configuration, or nothing could be computed (the report and
            metrics.json are written first and say why).
    """
    config = CompareConfig(
        reference=reference, out=out, predicted=predicted, aoi=aoi, years=parse_years(years),
        resolution=resolution, min_overlap=min_overlap, match=match, min_area=min_area,
        background=background, epsg=epsg, tile_size=tile_size, connectivity=connectivity,
        bins_per_decade=bins_per_decade, a_min=a_min, kde_bandwidth_m=kde_bandwidth,
        figures=figures, observed_only=observed_only,
    )
    metrics = run_compare(config)
    errs = [p for p in metrics["problems"] if p["level"] == "error"]
    if metrics["status"] == "failed":
        first = next((p for p in errs if p.get("type")), None)
        cls = getattr(errors, first["type"], InputError) if first else InputError
        if not (isinstance(cls, type) and issubclass(cls, errors.LandslideError)):
            cls = InputError
        detail = "; ".join(p["message"] for p in errs)
        raise cls(f"Nothing could be compared: {detail}. The report is in {out}.")
    for p in errs:
        logger.error("%s", p["message"])
    missing = {role: years for role, years in metrics["missing_years"].items() if years}
    if missing:
        logger.error("Missing inventories (%s): the comparison is incomplete; see %s.",
                     "; ".join(f"{r} {', '.join(y)}" for r, y in missing.items()), out)
    return 1 if errs or missing else 0


__all__ = [
    "CompareConfig",
    "ConfusionOverview",
    "RasterMask",
    "ResolvedInput",
    "VectorMask",
    "common_grid",
    "compare_cli",
    "merge_across_edges",
    "parse_years",
    "resolve_input",
    "run_compare",
    "stats_rows",
    "streaming_pixel_counts",
]

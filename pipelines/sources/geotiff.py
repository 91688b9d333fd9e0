"""GeoTIFF / COG sources: imagery files, DEM-derived terrain, and stacks of sources.

:class:`GeoTIFFSource` reads one raster or a mosaic of many (local paths, ``gs://``
objects, ``http(s)://`` URLs or glob patterns) onto any :class:`PixelGrid`. Every file whose
footprint meets the grid is warped onto it with rasterio's :class:`~rasterio.vrt.WarpedVRT`
(GDAL's warper: nodata is excluded from the resampling kernel, pixels outside the file stay
empty), and the first file, in sorted path order, with a valid value wins per pixel.

Values come back as float32 in physical units (``physical = stored * scale``), NaN where
invalid, with a ``valid`` mask that is True where every requested band is valid.

Scaling with ``scale="auto"``: integer files use the band registry's scale (``1e-4`` for
Sentinel-2 reflectance, ``1`` for a DEM); float files use ``1.0``, because float digital
numbers (e.g. Sentinel-2 DNs 0..10000 stored as float64) cannot be told apart safely from
float reflectance. Pass ``scale=1e-4`` explicitly for such files; a warning is logged when
"auto" meets float reflectance far above its plausible range.

:class:`TerrainSource` reads a DEM with the same machinery on the grid grown by one pixel,
derives slope/aspect/curvature/hillshade with :mod:`pipelines.geo.terrain` and crops the
extra pixel, so the edge pixels of a chunk are exact. :class:`StackSource` puts the bands of
several sources side by side.

All three are picklable configuration objects: open datasets and downloaded copies live
only between :meth:`open` and :meth:`close` (Beam calls them in a DoFn's ``setup`` and
``teardown``) and are never pickled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from pipelines import fsio
from pipelines.errors import (
    BandError,
    ConfigError,
    CRSError,
    DataNotFoundError,
    RegionError,
    SourceError,
)
from pipelines.geo import bands as bandreg
from pipelines.geo import terrain
from pipelines.geo.cog import gdal_error_text, is_gdal_error, open_dataset
from pipelines.geo.grid import WGS84, PixelGrid, Region
from pipelines.sources.base import Raster, Source

log = logging.getLogger(__name__)

__all__ = ["GeoTIFFSource", "StackSource", "TerrainSource", "parse_band_map"]

#: Files a glob may match that are sidecars of a raster, not rasters themselves.
SIDECAR_SUFFIXES = (".tfw", ".tfwx", ".wld", ".aux.xml", ".ovr", ".msk", ".prj", ".xml",
                    ".jgw", ".pgw", ".cpg", ".dbf", ".shp", ".shx", ".json", ".txt")

#: Largest error, in source pixels, of GDAL's approximate coordinate transformer. GDAL's
#: default (0.125) makes a pixel's value depend on the window it is warped in; this keeps
#: reads of overlapping chunks consistent (nearest picks the same source pixel) at ~no cost.
TOLERANCE = 1e-3

#: Datasets kept open at once per source (least recently used ones are closed).
MAX_OPEN_FILES = 64

_GLOB_CHARS = ("*", "?", "[")

#: Conventional names used to build an example ``band_map`` for undescribed files.
_EXAMPLE_ORDER = ("B4", "B3", "B2", "B8", "B11", "B12", "B5", "B6", "B7", "B8A", "B1", "B9")


# --------------------------------------------------------------------------- band maps
def parse_band_map(text: str) -> dict[str, int | str]:
    """Parse a CLI band map such as ``"B4=1,B3=2,B2=3,B8=4"``.

    Each entry is ``NAME=REF``: ``NAME`` is a band name (aliases such as ``red`` are
    canonicalised), ``REF`` a 1-based band index or a band description in the file.

    Returns:
        ``{canonical band name: index or description}`` in the given order.

    Raises:
        BandError: an entry is malformed, a name is unknown or repeated, or an index < 1.
    """
    example = "'B4=1,B3=2,B2=3,B8=4'"
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    if not entries:
        raise BandError(f"Empty band map {text!r}; give NAME=INDEX pairs, e.g. {example}.")
    out: dict[str, int | str] = {}
    for entry in entries:
        name, sep, ref = entry.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise BandError(f"Bad band map entry {entry!r} in {text!r}: expected NAME=INDEX "
                            f"or NAME=DESCRIPTION, e.g. {example}.")
        out_name = bandreg.canonical(name.strip())
        if out_name in out:
            raise BandError(f"Band {out_name} appears twice in the band map {text!r}.")
        ref = ref.strip()
        out[out_name] = int(ref) if ref.lstrip("+-").isdigit() else ref
    checked = _normalise_band_map(out)
    assert checked is not None  # out is not empty
    return checked


def _normalise_band_map(band_map: Mapping[str, int | str] | str | None
                        ) -> dict[str, int | str] | None:
    """Validate a band map and canonicalise its names."""
    if band_map is None:
        return None
    if isinstance(band_map, str):
        return parse_band_map(band_map)
    if not isinstance(band_map, Mapping) or not band_map:
        raise BandError(f"band_map must be a non-empty mapping {{band name: 1-based index or "
                        f"description}}, got {band_map!r}; e.g. {{'B4': 1, 'B3': 2}}.")
    out: dict[str, int | str] = {}
    for name, ref in band_map.items():
        canon = bandreg.canonical(str(name))
        if canon in out:
            raise BandError(f"Band {canon} is mapped twice in band_map {dict(band_map)!r}.")
        if isinstance(ref, bool) or not isinstance(ref, int | str | np.integer):
            raise BandError(f"band_map[{name!r}] = {ref!r}: give a 1-based band index or a "
                            f"band description.")
        if isinstance(ref, int | np.integer):
            if int(ref) < 1:
                raise BandError(f"band_map[{name!r}] = {ref}: band indexes start at 1 "
                                f"(GDAL convention).")
            out[canon] = int(ref)
        else:
            if not ref.strip():
                raise BandError(f"band_map[{name!r}] is an empty description.")
            out[canon] = ref.strip()
    return out


def _example_band_map(count: int) -> str:
    if count == 1:
        return "'DEM=1'"
    names = list(_EXAMPLE_ORDER[:count])
    return "'" + ",".join(f"{n}={i}" for i, n in enumerate(names, start=1)) + "'"


def _description_index() -> dict[str, str]:
    """Lower-cased registry descriptions (as written by some tools) -> canonical names."""
    return {b.description.lower(): name for name, b in bandreg.REGISTRY.items()}


def _canonical_description(desc: str) -> str | None:
    """The canonical band named by a file's band description, or None if it names none."""
    try:
        return bandreg.canonical(desc)
    except BandError:
        return _description_index().get(desc.strip().lower())


# --------------------------------------------------------------------------- file metadata
@dataclass(frozen=True)
class _FileInfo:
    """What a scan learns about one file; plain data, pickled with the source."""

    path: str
    crs: str
    bounds: tuple[float, float, float, float]
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    band_index: tuple[tuple[str, int], ...]

    def index(self, band: str) -> int:
        return dict(self.band_index)[band]

    @property
    def is_integer(self) -> bool:
        return bool(np.issubdtype(np.dtype(self.dtype), np.integer))


def _crs_string(crs: rasterio.crs.CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB_CHARS)


def _is_sidecar(path: str) -> bool:
    return path.lower().endswith(SIDECAR_SUFFIXES)


def _expand(paths: Sequence[str]) -> list[str]:
    """Expand glob patterns, drop sidecar files they match, dedupe and sort."""
    out: list[str] = []
    for p in paths:
        if _is_glob(p) and not fsio.is_http(p):
            matches = [m for m in fsio.glob(p) if not _is_sidecar(m)]
            if not matches:
                raise DataNotFoundError(f"No raster matches the pattern {p!r}; check the folder "
                                        f"and the pattern (e.g. 'tiles/*.tif').")
            out.extend(matches)
        else:
            out.append(p)
    return sorted(dict.fromkeys(out))


_RESAMPLING_NAMES = tuple(r.name for r in Resampling if r.value <= Resampling.q3.value)


def _resampling(name: str) -> Resampling:
    try:
        return Resampling[str(name).strip().lower()]
    except KeyError:
        raise ConfigError(f"Unknown resampling {name!r}; use one of "
                          f"{', '.join(_RESAMPLING_NAMES)} (bilinear for continuous bands, "
                          f"nearest for classes).") from None


# --------------------------------------------------------------------------- GeoTIFF source
class GeoTIFFSource(Source):
    """One GeoTIFF/COG or a mosaic of many, read onto any grid.

    Args:
        paths: A path or a list of paths: local files, ``gs://`` objects, ``http(s)://``
            URLs, or glob patterns (expanded with :func:`pipelines.fsio.glob`; sidecar
            files such as ``.tfw`` or ``.aux.xml`` are skipped). The expanded list is
            de-duplicated and sorted, which fixes the mosaic priority: the first file with
            a valid value wins per pixel.
        band_map: ``{band name: 1-based index or band description}``, or a string
            ``"B4=1,B3=2,B2=3,B8=4"``. Without it every band's description must name a
            known band (descriptions naming no known band are ignored).
        scale: ``physical = stored * scale``. ``"auto"``: integer files use the band
            registry's scale (and offset), float files 1.0 (float DNs are not guessed:
            pass ``scale=1e-4`` for Sentinel-2 DNs stored as floats).
        nodata: Stored value marking missing data, overriding each file's nodata (per band:
            a pixel whose band equals it is invalid in that band). NaN is always invalid.
        resampling: Any GDAL resampling name; ``bilinear`` (default) for continuous bands,
            ``nearest`` for classes or exact sampling.
        mask_zero_pixels: Treat pixels where *all* bands of a file are 0 as invalid (files
            whose empty areas are zeros without a nodata flag).

    The first use of :attr:`bands`, :meth:`footprint` or :meth:`read` scans every file's
    header once (for ``gs://`` objects this downloads them); the result is plain data that
    is pickled with the source, so touch :attr:`bands` on the launcher and workers will not
    scan again.

    Raises:
        ConfigError: bad ``scale``, ``nodata`` or ``resampling``.
        BandError: a malformed ``band_map``.
        DataNotFoundError: a glob pattern matches nothing.
    """

    kind = "geotiff"

    def __init__(
        self,
        paths: str | Sequence[str],
        band_map: Mapping[str, int | str] | str | None = None,
        scale: float | Literal["auto"] = "auto",
        nodata: float | None = None,
        resampling: str = "bilinear",
        mask_zero_pixels: bool = False,
    ) -> None:
        given = [str(paths)] if isinstance(paths, str | os.PathLike) else [str(p) for p in paths]
        if not given or any(not p.strip() for p in given):
            raise ConfigError(f"GeoTIFF source needs at least one path, got {paths!r}.")
        if scale != "auto":
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                scale = float("nan")
            if not math.isfinite(scale) or scale <= 0:
                raise ConfigError(f"scale must be 'auto' or a positive number "
                                  f"(e.g. 1e-4 for Sentinel-2 DNs), got {scale!r}.")
        if nodata is not None:
            try:
                nodata = float(nodata)
            except (TypeError, ValueError):
                raise ConfigError(f"nodata must be a number, got {nodata!r}.") from None
        _resampling(resampling)
        self.paths: tuple[str, ...] = tuple(given)
        self.band_map = _normalise_band_map(band_map)
        self.scale: float | str = scale
        self.nodata = nodata
        self.resampling = str(resampling).strip().lower()
        self.mask_zero_pixels = bool(mask_zero_pixels)
        # Plain-data cache filled by the first scan; pickled with the source.
        self._files: list[_FileInfo] | None = None
        self._bounds_in: dict[str, np.ndarray] = {}
        self._res_in: dict[str, np.ndarray] = {}
        self._warned_scale = False
        self._init_runtime()

    # ---- runtime state (never pickled)
    def _init_runtime(self) -> None:
        self._lock = threading.RLock()
        self._handles: OrderedDict[str, rasterio.io.DatasetReader] = OrderedDict()
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._local: dict[str, str] = {}
        self._opened = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_handles", "_tmpdir", "_local", "_opened"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"GeoTIFFSource(paths={list(self.paths)!r}, band_map={self.band_map!r})"

    def open(self) -> None:
        """Start a reading session (once per worker). Idempotent.

        Until :meth:`close`, datasets stay open between reads (at most
        :data:`MAX_OPEN_FILES`) and each ``gs://`` object is downloaded once, when first
        needed, into a temporary folder.
        """
        with self._lock:
            self._opened = True

    def close(self) -> None:
        """Close every open dataset and remove downloaded copies. Idempotent."""
        with self._lock:
            for ds in self._handles.values():
                with contextlib.suppress(Exception):
                    ds.close()
            self._handles.clear()
            self._local.clear()
            if self._tmpdir is not None:
                with contextlib.suppress(OSError):
                    self._tmpdir.cleanup()
                self._tmpdir = None
            self._opened = False

    # ---- file access
    def _local_path(self, path: str) -> str:
        """A path GDAL can open: local as is, http(s) through /vsicurl/, gs:// downloaded."""
        if path in self._local:
            return self._local[path]
        if fsio.is_remote(path) and self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="landslides-geotiff-")
        local = fsio.gdal_readable(
            path, self._tmpdir.name if self._tmpdir else "", "Raster",
            "check the path (glob patterns such as 'tiles/*.tif' are accepted)")
        if fsio.is_remote(path):
            self._local[path] = local
        return local

    def _dataset(self, path: str) -> rasterio.io.DatasetReader:
        """The open dataset of ``path`` (opened once and kept until :meth:`close`)."""
        ds = self._handles.get(path)
        if ds is not None:
            self._handles.move_to_end(path)
            return ds
        ds = open_dataset(self._local_path(path), path, "Raster", lambda text: SourceError(
            f"Cannot read raster {path!r}: {text}. Is it a valid GeoTIFF/COG?"))
        self._handles[path] = ds
        while len(self._handles) > MAX_OPEN_FILES:  # large mosaics: bound open descriptors
            _, oldest = self._handles.popitem(last=False)
            oldest.close()
        return ds

    # ---- scanning
    def _scan(self) -> list[_FileInfo]:
        """Expand the paths and read every file's metadata once (cached, picklable)."""
        if self._files is not None:
            return self._files
        with self._lock:
            if self._files is not None:
                return self._files
            files = [self._scan_file(p) for p in _expand(self.paths)]
            names = [n for n, _ in files[0].band_index]
            for info in files[1:]:
                other = [n for n, _ in info.band_index]
                if set(other) != set(names):
                    raise BandError(
                        f"Files disagree on their bands: {files[0].path!r} has "
                        f"{', '.join(names)} but {info.path!r} has {', '.join(other)}. "
                        f"Mosaic only files with the same bands, or pass a band_map that "
                        f"all of them satisfy.")
            crs0 = files[0].crs
            if any(f.crs != crs0 for f in files[1:]):
                log.info("Mosaic of %d files in several CRSs (first: %s).", len(files), crs0)
            self._files = files
            log.debug("Scanned %d file(s) for %s: bands %s", len(files), self.kind, names)
            return files

    def _scan_file(self, path: str) -> _FileInfo:
        ds = self._dataset(path)
        if ds.crs is None:
            raise CRSError(f"Raster {path!r} has no CRS; assign one (e.g. gdal_edit.py -a_srs "
                           f"EPSG:32645 {Path(path).name}) or use a georeferenced copy.")
        descriptions = tuple(ds.descriptions)
        info = _FileInfo(path=path, crs=_crs_string(ds.crs), bounds=tuple(ds.bounds),
                         transform=tuple(ds.transform)[:6], width=ds.width,
                         height=ds.height, count=ds.count, dtype=ds.dtypes[0],
                         nodata=ds.nodata,
                         band_index=tuple(self._band_index(path, ds.count,
                                                           descriptions).items()))
        if not self._opened:
            # Scanning outside open()/close() (e.g. on the launcher): keep neither handles
            # nor downloaded copies.
            self._handles.pop(path, None)
            ds.close()
            local = self._local.pop(path, None)
            if local:
                with contextlib.suppress(OSError):
                    os.unlink(local)
        return info

    def _band_index(self, path: str, count: int,
                    descriptions: tuple[str | None, ...]) -> dict[str, int]:
        if self.band_map is not None:
            out: dict[str, int] = {}
            for name, ref in self.band_map.items():
                if isinstance(ref, int):
                    if ref > count:
                        raise BandError(f"band_map maps {name} to band {ref}, but {path!r} has "
                                        f"only {count} band(s).")
                    out[name] = ref
                    continue
                hits = [i for i, d in enumerate(descriptions, start=1)
                        if d and d.strip().lower() == ref.lower()]
                if not hits:
                    raise BandError(f"band_map maps {name} to the description {ref!r}, which no "
                                    f"band of {path!r} has (its descriptions: "
                                    f"{[d for d in descriptions]}).")
                out[name] = hits[0]
            return out
        if any(not d for d in descriptions):
            raise BandError(
                f"Raster {path!r} has {count} band(s) without descriptions, so their names are "
                f"unknown. Pass a band map naming them, e.g. band_map="
                f"{_example_band_map(count)} (CLI: --band-map {_example_band_map(count)}).")
        out = {}
        for i, desc in enumerate(descriptions, start=1):
            known = _canonical_description(str(desc))
            if known is None:
                log.debug("Band %d of %s (%r) names no known band; ignored.", i, path, desc)
                continue
            if known in out:
                raise BandError(f"Bands {out[known]} and {i} of {path!r} both describe "
                                f"{known}; pass a band_map to choose one.")
            out[known] = i
        if not out:
            raise BandError(f"No band description of {path!r} ({list(descriptions)}) names a "
                            f"known band; pass a band map, e.g. {_example_band_map(count)}.")
        return out

    # ---- Source API
    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self._scan()[0].band_index)

    @property
    def files(self) -> tuple[str, ...]:
        """The expanded, sorted file list (the mosaic priority order)."""
        return tuple(f.path for f in self._scan())

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "paths": list(self.paths),
            "files": list(self.files),
            # what was read: a file replaced at the same path changes the run's signature
            "fingerprints": [fsio.fingerprint(f) for f in self.files],
            "bands": list(self.bands),
            "band_map": dict(self.band_map) if self.band_map else None,
            "scale": self.scale,
            "nodata": self.nodata,
            "resampling": self.resampling,
            "mask_zero_pixels": self.mask_zero_pixels,
        }

    def footprint(self) -> tuple[str, tuple[float, float, float, float]]:
        """``(crs, bounds)``: the union of the files' bounds, in the first file's CRS."""
        files = self._scan()
        crs = files[0].crs
        b = self._bounds_in_crs(crs)
        b = b[np.isfinite(b).all(axis=1)]
        return crs, (float(b[:, 0].min()), float(b[:, 1].min()),
                     float(b[:, 2].max()), float(b[:, 3].max()))

    def _bounds_in_crs(self, crs: str) -> np.ndarray:
        """``(n_files, 4)`` bounds of every file in ``crs`` (inf where not transformable)."""
        cached = self._bounds_in.get(crs)
        if cached is not None:
            return cached
        rows = []
        for f in self._scan():
            if f.crs == crs:
                rows.append(f.bounds)
                continue
            try:
                b = transform_bounds(f.crs, crs, *f.bounds, densify_pts=21)
            except (RasterioError, ValueError):  # PROJ cannot map it: treat as unknown
                b = (-math.inf, -math.inf, math.inf, math.inf)
            if not all(math.isfinite(v) for v in b):
                b = (-math.inf, -math.inf, math.inf, math.inf)
            rows.append(b)
        arr = np.asarray(rows, dtype=np.float64)
        self._bounds_in[crs] = arr
        return arr

    def _res_in_crs(self, crs: str) -> np.ndarray:
        """``(n_files, 2)`` pixel sizes of every file near its centre, in ``crs`` units."""
        cached = self._res_in.get(crs)
        if cached is not None:
            return cached
        rows = []
        transformers: dict[str, Transformer] = {}
        for f in self._scan():
            t = Affine(*f.transform)
            pts = [t @ (f.width / 2 + dc, f.height / 2 + dr) for dc, dr in ((0, 0), (1, 0), (0, 1))]
            if f.crs != crs:
                try:
                    if f.crs not in transformers:
                        transformers[f.crs] = Transformer.from_crs(f.crs, crs, always_xy=True)
                    xs, ys = transformers[f.crs].transform([p[0] for p in pts],
                                                           [p[1] for p in pts])
                    pts = list(zip(xs, ys))
                except (ProjError, ValueError):
                    rows.append((math.nan, math.nan))
                    continue
            rows.append((math.dist(pts[0], pts[1]), math.dist(pts[0], pts[2])))
        arr = np.asarray(rows, dtype=np.float64)
        self._res_in[crs] = arr
        return arr

    def _hits(self, grid: PixelGrid) -> np.ndarray:
        """Boolean per file: its footprint meets ``grid`` (unknown footprints count as yes)."""
        b = self._bounds_in_crs(grid.crs)
        gx0, gy0, gx1, gy1 = grid.bounds
        return (b[:, 0] < gx1) & (b[:, 2] > gx0) & (b[:, 1] < gy1) & (b[:, 3] > gy0)

    def covers(self, grid: PixelGrid) -> bool:
        """True when at least one file's footprint overlaps ``grid``."""
        return bool(self._hits(grid).any())

    def coverage(self, grid: PixelGrid) -> float:
        """Fraction of ``grid``'s area inside the union of the files' bounding boxes."""
        b = self._bounds_in_crs(grid.crs)
        b = b[np.isfinite(b).all(axis=1)]
        g = box(*grid.bounds)
        if not len(b) or g.area == 0:
            return 0.0
        union = shapely.union_all(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]))
        return float(union.intersection(g).area / g.area)

    def check_covers(self, region: Region) -> None:
        """Raise :class:`RegionError` when ``region`` lies entirely outside the data.

        Raises:
            RegionError: naming the region's bounds and the data's bounds.
        """
        geom = region.geometry
        b = self._bounds_in_crs(WGS84)
        finite = b[np.isfinite(b).all(axis=1)]
        if len(finite) < len(b):
            return  # some footprint cannot be expressed in lon/lat: do not reject early
        boxes = shapely.box(finite[:, 0], finite[:, 1], finite[:, 2], finite[:, 3])
        if shapely.intersects(boxes, geom).any():
            return
        crs, native = self.footprint()
        data_ll = (float(finite[:, 0].min()), float(finite[:, 1].min()),
                   float(finite[:, 2].max()), float(finite[:, 3].max()))
        raise RegionError(
            f"The area of interest {region.name!r} (lon/lat bounds "
            f"{_fmt_bounds(geom.bounds)}) lies outside the data of {self.kind} source "
            f"({len(b)} file(s), lon/lat bounds {_fmt_bounds(data_ll)}; "
            f"{_fmt_bounds(native)} in {crs}). Choose a region inside the data or add files "
            f"that cover it.")

    # ---- reading
    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        with self._lock:
            if not self._opened:
                self.open()
            files = self._scan()
            fb = self._bounds_in_crs(grid.crs)
            out: np.ndarray | None = None  # allocated unless one file fills the whole grid
            valid = np.zeros(grid.shape, dtype=bool)
            res_in = self._res_in_crs(grid.crs)
            for info, hit, bounds, res in zip(files, self._hits(grid), fb, res_in):
                if not hit:
                    continue
                r0, r1, c0, c1 = _window_of(grid, bounds)
                if r1 <= r0 or c1 <= c0:
                    continue
                # Warp only the box around pixels that earlier files left empty.
                todo = ~valid[r0:r1, c0:c1]
                rows, cols = np.flatnonzero(todo.any(axis=1)), np.flatnonzero(todo.any(axis=0))
                if not len(rows):
                    continue
                r0, r1, c0, c1 = r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1
                sub = grid.subgrid(Window(c0, r0, c1 - c0, r1 - r0))
                data = self._warp(info, sub, bands, _scales(res, grid))
                take = np.isfinite(data).all(axis=0)
                if out is None and sub.shape == grid.shape:
                    out, valid = data, take  # the first file read spans the grid: no copy
                    if not take.all():
                        np.copyto(out, np.nan, where=~take)  # NaN in any band: all bands
                    if valid.all():
                        break
                    continue
                if out is None:
                    out = _nans(len(bands), grid)
                done = valid[r0:r1, c0:c1]  # a view: updated in place below
                take &= ~done
                if take.all():  # one file fills the window: a plain slice copy
                    out[:, r0:r1, c0:c1] = data
                    done[...] = True
                elif take.any():
                    np.copyto(out[:, r0:r1, c0:c1], data, where=take)  # per pixel, all bands
                    done |= take
                if valid.all():
                    break
            if out is None:
                out = _nans(len(bands), grid)
            return Raster(out, valid, grid, bands)

    def _warp(self, info: _FileInfo, grid: PixelGrid, bands: tuple[str, ...],
              scales: dict[str, str]) -> np.ndarray:
        """``info``'s bands warped onto ``grid``: float32 physical units, NaN invalid."""
        ds = self._dataset(info.path)
        nodata = self.nodata if self.nodata is not None else info.nodata
        extra: dict[str, Any] = dict(scales)
        zero_check = False
        if self.mask_zero_pixels and nodata is None:
            # GDAL treats a pixel as nodata only when *all* bands equal it: exactly "all 0".
            nodata, extra["UNIFIED_SRC_NODATA"] = 0.0, "YES"
        else:
            extra["UNIFIED_SRC_NODATA"] = "NO"  # per-band nodata
            zero_check = self.mask_zero_pixels and nodata != 0
        indexes = [info.index(b) for b in bands]
        offset = _aligned_offset(ds, grid)
        if offset is not None:
            data = self._read_aligned(info, ds, grid, indexes, offset, nodata,
                                      unified=extra["UNIFIED_SRC_NODATA"] == "YES")
            return self._finish(info, bands, data, zero_check)
        try:
            with WarpedVRT(ds, crs=grid.crs, transform=grid.affine, width=grid.width,
                           height=grid.height, resampling=_resampling(self.resampling),
                           src_nodata=nodata, nodata=float("nan"), dtype="float32",
                           tolerance=TOLERANCE, **extra) as vrt:
                data = vrt.read(indexes, out_dtype="float32")
        except Exception as exc:
            if not is_gdal_error(exc):
                raise
            raise SourceError(f"Cannot read raster {info.path!r} onto grid {grid.crs} "
                              f"{grid.bounds}: {gdal_error_text(exc)}") from exc
        return self._finish(info, bands, data, zero_check)

    def _read_aligned(self, info: _FileInfo, ds: Any, grid: PixelGrid, indexes: list[int],
                      offset: tuple[int, int], nodata: float | None,
                      unified: bool) -> np.ndarray:
        """Fast path: the file already lies on ``grid``'s lattice, so read a window as is.

        Same pixels as the warper gives on an aligned grid (every target pixel centre is a
        source pixel centre), without resampling work.
        """
        row0, col0 = offset
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + grid.height, ds.height), min(col0 + grid.width, ds.width)
        if r1 <= r0 or c1 <= c0:
            return _nans(len(indexes), grid)
        try:
            raw = ds.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
        except Exception as exc:
            if not is_gdal_error(exc):
                raise
            raise SourceError(f"Cannot read raster {info.path!r} onto grid {grid.crs} "
                              f"{grid.bounds}: {gdal_error_text(exc)}") from exc
        data = raw.astype(np.float32, copy=False)  # raw is ours: no second copy
        if nodata is not None:
            bad = raw == nodata if not np.isnan(nodata) else np.isnan(raw)
            if unified:
                bad = bad.all(axis=0)
            if bad.any():
                np.copyto(data, np.nan, where=bad)
        if data.shape[1:] == grid.shape:  # the window lies inside the file: no padding
            return data
        out = _nans(len(indexes), grid)
        out[:, r0 - row0:r1 - row0, c0 - col0:c1 - col0] = data
        return out

    def _finish(self, info: _FileInfo, bands: tuple[str, ...], data: np.ndarray,
                zero_check: bool) -> np.ndarray:
        if zero_check:
            data[:, (data == 0).all(axis=0)] = np.nan
        for k, band in enumerate(bands):
            if self.scale == "auto":
                if info.is_integer:
                    spec = bandreg.get(band)
                    if spec.scale != 1.0:
                        data[k] *= np.float32(spec.scale)
                    if spec.offset != 0.0:
                        data[k] += np.float32(spec.offset)
                else:
                    self._warn_float_scale(info, band, data[k])
            elif self.scale != 1.0:
                data[k] *= np.float32(self.scale)
        return data

    def _warn_float_scale(self, info: _FileInfo, band: str, values: np.ndarray) -> None:
        if self._warned_scale or not np.isfinite(values).any():
            return
        hi = bandreg.get(band).valid_range[1]
        vmax = float(np.nanmax(values))
        if bandreg.get(band).unit == "reflectance" and vmax > hi:
            self._warned_scale = True
            log.warning(
                "Band %s of %s is float with values up to %g, far above reflectance; "
                "scale='auto' keeps float values as they are. If these are digital numbers, "
                "pass scale=1e-4 (CLI: --scale 1e-4).", band, info.path, vmax)


def _aligned_offset(ds: Any, grid: PixelGrid) -> tuple[int, int] | None:
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
    if _crs_string(ds.crs) != grid.crs and rasterio.crs.CRS.from_user_input(grid.crs) != ds.crs:
        return None
    return round(row), round(col)


def _nans(n_bands: int, grid: PixelGrid) -> np.ndarray:
    """``(n_bands, h, w)`` float32 NaN: a block with no valid pixel yet."""
    return np.full((n_bands, *grid.shape), np.nan, dtype=np.float32)


def _window_of(grid: PixelGrid, bounds: np.ndarray) -> tuple[int, int, int, int]:
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


def _scales(file_res: np.ndarray, grid: PixelGrid) -> dict[str, str]:
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


def _fmt_bounds(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


# --------------------------------------------------------------------------- terrain
class TerrainSource(Source):
    """A DEM and the terrain products derived from it, on any projected grid.

    The DEM is read with :class:`GeoTIFFSource` (band 1 as ``DEM``, bilinear) on the target
    grid grown by one pixel; slope, aspect, curvature and hillshade come from
    :func:`pipelines.geo.terrain.terrain_products` at the grid's pixel size and the extra
    pixel is cropped, so edge pixels are computed from their real neighbours.

    Args:
        dem: DEM path(s) or glob pattern(s), as for :class:`GeoTIFFSource`.
        nodata: Elevation value marking missing data, overriding the file's nodata (e.g. 0
            for DEMs that are 0 outside their area).
        z_factor: Multiplier of elevations (e.g. 0.3048 for feet).
    """

    kind = "dem"

    def __init__(self, dem: str | Sequence[str], nodata: float | None = None,
                 z_factor: float = 1.0) -> None:
        self.z_factor = terrain._check_z_factor(z_factor)
        self.dem = GeoTIFFSource(dem, band_map={"DEM": 1}, nodata=nodata, resampling="bilinear")

    @property
    def bands(self) -> tuple[str, ...]:
        return bandreg.TERRAIN_BANDS

    def open(self) -> None:
        self.dem.open()

    def close(self) -> None:
        self.dem.close()

    def describe(self) -> dict:
        return {"kind": self.kind, "bands": list(self.bands), "dem": list(self.dem.paths),
                "files": list(self.dem.files),
                "fingerprints": [fsio.fingerprint(f) for f in self.dem.files],
                "nodata": self.dem.nodata,
                "z_factor": self.z_factor, "scale": self.dem.scale}

    def footprint(self) -> tuple[str, tuple[float, float, float, float]]:
        return self.dem.footprint()

    def covers(self, grid: PixelGrid) -> bool:
        return self.dem.covers(grid)

    def coverage(self, grid: PixelGrid) -> float:
        return self.dem.coverage(grid)

    def check_covers(self, region: Region) -> None:
        self.dem.check_covers(region)

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        products = [b for b in bands if b != "DEM"]
        if not products:
            return self.dem.read(grid, bands)
        a, b, _, d, e, _ = grid.transform
        if b or d:
            raise CRSError(f"Terrain needs a north-up grid; got transform {grid.transform}.")
        if rasterio.crs.CRS.from_user_input(grid.crs).is_geographic:
            raise CRSError(f"Terrain needs a projected grid in metres, got {grid.crs}; read "
                           f"onto a UTM grid (see pipelines.geo.grid.utm_epsg).")
        halo = grid.buffered(1)
        dem = self.dem.read(halo, ("DEM",)).data[0]
        derived = terrain.terrain_products(dem, (abs(a), abs(e)), products, self.z_factor)
        layers = {"DEM": dem[1:-1, 1:-1], **{p: v[1:-1, 1:-1] for p, v in derived.items()}}
        data = np.stack([layers[name] for name in bands], dtype=np.float32)
        valid = np.asarray(np.isfinite(data).all(axis=0))
        if not valid.all():
            np.copyto(data, np.nan, where=~valid)
        return Raster(data, valid, grid, bands)


# --------------------------------------------------------------------------- stacks
class StackSource(Source):
    """The bands of several sources side by side (e.g. Sentinel-2 GeoTIFFs + terrain).

    A band provided by several sources is read from the first one that has it. A read is
    split per source, the parts are stacked in the requested order and the valid masks are
    AND-ed.

    Args:
        sources: The sources, in priority order.
    """

    kind = "stack"

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)
        if not self.sources:
            raise ConfigError("A stack needs at least one source.")
        for s in self.sources:
            if not isinstance(s, Source):
                raise ConfigError(f"StackSource takes Source objects, got {s!r}.")

    @property
    def bands(self) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for s in self.sources:
            out.update(dict.fromkeys(s.bands))
        return tuple(out)

    def owner(self, band: str) -> Source:
        """The source a band is read from (the first one providing it)."""
        for s in self.sources:
            if band in s.bands:
                return s
        raise BandError(f"No source of the stack provides band {band}.")

    def open(self) -> None:
        for s in self.sources:
            s.open()

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def describe(self) -> dict:
        return {"kind": self.kind, "bands": list(self.bands),
                "sources": [s.describe() for s in self.sources]}

    def covers(self, grid: PixelGrid) -> bool:
        """True when every part that can tell overlaps ``grid``."""
        return all(s.covers(grid) for s in self.sources if hasattr(s, "covers"))

    def check_covers(self, region: Region) -> None:
        for s in self.sources:
            check = getattr(s, "check_covers", None)
            if check is not None:
                check(region)

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        groups: dict[int, list[str]] = {}
        for band in bands:
            groups.setdefault(id(self.owner(band)), []).append(band)
        layers: dict[str, np.ndarray] = {}
        valid: np.ndarray = np.ones(grid.shape, dtype=bool)
        for s in self.sources:
            names = groups.get(id(s))
            if not names:
                continue
            part = s.read(grid, names)
            valid &= part.valid
            layers.update({n: part.band(n) for n in names})
        data = np.stack([layers[b] for b in bands], dtype=np.float32)  # a new array
        if not valid.all():
            np.copyto(data, np.nan, where=~valid)
        return Raster(data, valid, grid, bands)

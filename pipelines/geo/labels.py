"""Label rasters: integer class rasters mapped to training labels on any pixel grid.

Besides vector inventories, training labels may come as a raster of integer codes, e.g.
``0`` unlabelled, ``1`` not landslide, ``2`` landslide. A :class:`LabelMap` says what each
raw value means; :class:`LabelRaster` reads the file onto a chunk's
:class:`~pipelines.geo.grid.PixelGrid` and applies the map, giving the uint8 labels that
:func:`pipelines.geo.patches.cut_patches` and the TFRecord schema expect:

* ``0``: background (not landslide), ``1``: landslide, ``2..254``: further class ids;
* ``255`` (:data:`~pipelines.geo.patches.IGNORE`): no label, never scored by any loss or
  metric. A pixel is ignored when its raw value is mapped to ``ignore``, when its raw value
  is *not mapped at all*, when it equals the raster's nodata, or when it lies outside the
  raster. Unmapped values are ignored rather than guessed: a code nobody described is not
  evidence of "no landslide".

The raster is warped with rasterio's :class:`~rasterio.vrt.WarpedVRT` and nearest-neighbour
resampling (class codes must not be averaged). A mosaic of label tiles can be given as one
GDAL VRT (``gdalbuildvrt labels.vrt tiles/*.tif``). Paths may be local, ``gs://`` objects
(downloaded once per :meth:`LabelRaster.open`) or ``http(s)://`` URLs (read through
``/vsicurl/``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from pipelines import fsio
from pipelines.errors import (
    ConfigError,
    CRSError,
    InputError,
    RegionError,
    SourceError,
)
from pipelines.geo.cog import is_gdal_error, open_dataset
from pipelines.geo.grid import WGS84, PixelGrid, Region
from pipelines.geo.patches import IGNORE

log = logging.getLogger(__name__)

#: Class id of background (not landslide) pixels.
BACKGROUND = 0
#: Class id of landslide pixels (binary labels).
LANDSLIDE = 1
#: Class names accepted in a label map, and the class id each stands for.
CLASS_NAMES: dict[str, int] = {
    "landslide": LANDSLIDE,
    "background": BACKGROUND,
    "not_landslide": BACKGROUND,
    "non_landslide": BACKGROUND,
    "ignore": IGNORE,
}
#: Name written by :meth:`LabelMap.to_dict` for a class id (other ids are written as ints).
_CANONICAL = {LANDSLIDE: "landslide", BACKGROUND: "background", IGNORE: "ignore"}
_EXAMPLE = "0=ignore,1=background,2=landslide"
#: Warper error threshold in pixels (GDAL's default of 0.125 px would move class edges).
_TOLERANCE = 1e-3
_INT_RE = re.compile(r"^[+-]?\d+$")


def _parse_raw(text: str, item: str) -> int:
    text = text.strip()
    if not _INT_RE.match(text):
        raise ConfigError(
            f"Bad label map item {item!r}: the raw raster value {text!r} is not an integer. "
            f"Write RAW=CLASS with an integer raster value, e.g. '{_EXAMPLE}'."
        )
    return int(text)


def _parse_class(value: object, item: str) -> int:
    """A class name or id -> class id (0..254, or 255 for ignore)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int | np.integer):
        cls = int(value)
    else:
        text = str(value).strip()
        name = text.lower().replace("-", "_").replace(" ", "_")
        if name in CLASS_NAMES:
            return CLASS_NAMES[name]
        if not _INT_RE.match(text):
            raise ConfigError(
                f"Bad label map item {item!r}: unknown class {str(value).strip()!r}. Use one of "
                f"{', '.join(CLASS_NAMES)}, or an integer class id 0..{IGNORE - 1} "
                f"({IGNORE} = ignore), e.g. '{_EXAMPLE}' or '3=2'."
            )
        cls = int(text)
    if not 0 <= cls <= IGNORE:
        raise ConfigError(
            f"Bad label map item {item!r}: class id {cls} is outside 0..{IGNORE} "
            f"(0 background, 1 landslide, 2..{IGNORE - 1} more classes, {IGNORE} ignore), "
            f"e.g. '3=2' or '{_EXAMPLE}'."
        )
    return cls


@dataclass(frozen=True)
class LabelMap:
    """What the raw values of a label raster mean.

    Raw values not listed are **ignored** (class 255), as are the raster's nodata and the
    pixels outside it.

    Attributes:
        values: ``((raw value, class id), ...)`` sorted by raw value. Class ids: 0
            background (not landslide), 1 landslide, 2..254 further classes of a multi-class
            model, 255 ignore.
    """

    values: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        pairs = []
        seen: set[int] = set()
        for raw, cls in self.values:
            item = f"{raw}={cls}"
            if isinstance(raw, bool) or not isinstance(raw, int | np.integer):
                raise ConfigError(f"Bad label map item {item!r}: raw values must be integers.")
            raw = int(raw)
            if raw in seen:
                raise ConfigError(
                    f"Raw value {raw} is mapped twice in the label map; give each raster "
                    f"value one class, e.g. '{_EXAMPLE}'."
                )
            seen.add(raw)
            pairs.append((raw, _parse_class(cls, item)))
        if not any(cls != IGNORE for _, cls in pairs):
            raise ConfigError(
                f"The label map {self.to_text(pairs)!r} gives no raster value a class: every "
                f"pixel would be ignored. Map at least one value to landslide or background, "
                f"e.g. '{_EXAMPLE}'."
            )
        object.__setattr__(self, "values", tuple(sorted(pairs)))

    # ---- construction
    @classmethod
    def parse(cls, text: str) -> LabelMap:
        """Parse ``RAW=CLASS`` items separated by commas.

        ``CLASS`` is a name (``landslide``, ``background``/``not_landslide``, ``ignore``)
        or an integer class id (``3=2``: raw value 3 is class 2 of a multi-class model).

        Args:
            text: E.g. ``"0=ignore,1=background,2=landslide"``.

        Raises:
            ConfigError: naming the bad item and showing the expected form.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"Empty label map {text!r}: give RAW=CLASS items, e.g. "
                              f"'{_EXAMPLE}'.")
        pairs: list[tuple[int, int]] = []
        for item in text.split(","):
            item = item.strip()
            if not item:
                raise ConfigError(f"Empty item in the label map {text!r}: remove the extra "
                                  f"comma (expected e.g. '{_EXAMPLE}').")
            if item.count("=") != 1:
                raise ConfigError(
                    f"Bad label map item {item!r} in {text!r}: expected RAW=CLASS, "
                    f"e.g. '{_EXAMPLE}'."
                )
            raw, value = item.split("=")
            pairs.append((_parse_raw(raw, item), _parse_class(value, item)))
        return cls(tuple(pairs))

    @classmethod
    def from_dict(cls, d: Mapping[Any, Any]) -> LabelMap:
        """The map of :meth:`to_dict` (``{"2": "landslide", "3": 2, ...}``; names or ids)."""
        if not isinstance(d, Mapping) or not d:
            raise ConfigError(f"A label map must be a non-empty mapping of raw value to class, "
                              f"got {d!r}.")
        pairs = []
        for raw, value in d.items():
            item = f"{raw}={value}"
            raw_int = raw if isinstance(raw, int) and not isinstance(raw, bool) else \
                _parse_raw(str(raw), item)
            pairs.append((raw_int, _parse_class(value, item)))
        return cls(tuple(pairs))

    # ---- description
    def to_dict(self) -> dict[str, str | int]:
        """JSON-ready ``{raw value: class}``; classes 0, 1 and 255 by name, others as ints."""
        return {str(raw): _CANONICAL.get(cls, cls) for raw, cls in self.values}

    @staticmethod
    def to_text(pairs: Any) -> str:
        return ",".join(f"{raw}={_CANONICAL.get(c, c)}" for raw, c in pairs)

    def __str__(self) -> str:
        return self.to_text(self.values)

    @property
    def classes(self) -> tuple[int, ...]:
        """The class ids (not 255) this map produces, sorted."""
        return tuple(sorted({c for _, c in self.values if c != IGNORE}))

    # ---- application
    def apply(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Map raw values to uint8 class ids; unmapped values and invalid pixels -> 255.

        Vectorised: a 256- or 65,536-entry lookup table for 8- and 16-bit rasters, a sorted
        search for wider integers.

        Args:
            raw: Integer array of raw values, any shape.
            valid: Optional bool array of the same shape; False pixels become 255.

        Raises:
            InputError: for a non-integer array.
        """
        a = np.asarray(raw)
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"Label values must be integers, got {a.dtype} values.")
        info = np.iinfo(a.dtype)
        if a.dtype.itemsize <= 2:
            lut = np.full(int(info.max) - int(info.min) + 1, IGNORE, np.uint8)
            for value, cls in self.values:
                if info.min <= value <= info.max:
                    lut[value - int(info.min)] = cls
            out = lut[a] if info.min == 0 else lut[a.astype(np.int32) - int(info.min)]
        else:
            inside = [(v, c) for v, c in self.values if info.min <= v <= info.max]
            keys = np.array([v for v, _ in inside], dtype=a.dtype)
            classes = np.array([c for _, c in inside], dtype=np.uint8)
            if not len(keys):
                out = np.full(a.shape, IGNORE, np.uint8)
            else:
                pos = np.minimum(np.searchsorted(keys, a), len(keys) - 1)
                out = np.where(keys[pos] == a, classes[pos], np.uint8(IGNORE)).astype(np.uint8)
        if valid is not None:
            out[~np.asarray(valid, dtype=bool)] = IGNORE
        return out


# --------------------------------------------------------------------------- rasters
@dataclass(frozen=True)
class LabelRasterInfo:
    """What :func:`check_label_raster` found out about a label raster.

    Attributes:
        path: The raster's path as given.
        crs: Its CRS (``EPSG:nnnn`` or WKT).
        dtype: The label band's data type (an integer type).
        nodata: Its nodata value, or ``None``.
        width: Columns.
        height: Rows.
        bounds: ``(left, bottom, right, top)`` in ``crs``.
        bounds_wgs84: The same footprint in longitude/latitude (densified edges).
    """

    path: str
    crs: str
    dtype: str
    nodata: float | None
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    bounds_wgs84: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "crs": self.crs, "dtype": self.dtype, "nodata": self.nodata,
                "width": self.width, "height": self.height, "bounds": list(self.bounds),
                "bounds_wgs84": list(self.bounds_wgs84)}


def _crs_label(crs: rasterio.crs.CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


@dataclass
class LabelRaster:
    """A label raster and its value map: a picklable configuration with an open dataset.

    Beam DoFns keep one per worker: :meth:`open` in ``setup``, :meth:`read` per chunk,
    :meth:`close` in ``teardown``. Only ``path``, ``label_map`` and ``band`` are pickled;
    the open dataset and any downloaded copy are not. :meth:`read` opens the file on first
    use when :meth:`open` was not called. Reads are serialised by a lock (one GDAL handle).

    Attributes:
        path: Local path, ``gs://`` object or ``http(s)://`` URL of a GeoTIFF/COG/VRT.
        label_map: What the raw values mean (text or :meth:`LabelMap.to_dict` forms are
            converted to a :class:`LabelMap`).
        band: 1-based band of the labels.
    """

    path: str
    label_map: LabelMap
    band: int = 1
    _ds: Any = field(default=None, init=False, repr=False, compare=False)
    _tmpdir: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if isinstance(self.label_map, str):
            self.label_map = LabelMap.parse(self.label_map)
        elif isinstance(self.label_map, Mapping):
            self.label_map = LabelMap.from_dict(self.label_map)
        if isinstance(self.band, bool) or not isinstance(self.band, int) or self.band < 1:
            raise ConfigError(f"The label band must be a 1-based band index, got {self.band!r}.")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "label_map": self.label_map, "band": self.band}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ds = None
        self._tmpdir = None
        self._lock = threading.Lock()

    def __enter__(self) -> LabelRaster:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready configuration (for manifests)."""
        return {"path": self.path, "band": self.band, "map": self.label_map.to_dict()}

    # ---- file access
    def _gdal_path(self) -> str:
        """A path GDAL can open: local as is, http(s) through /vsicurl/, gs:// downloaded."""
        if fsio.is_remote(self.path):
            self._tmpdir = tempfile.TemporaryDirectory(prefix="landslides-labels-")
        return fsio.gdal_readable(self.path, self._tmpdir.name if self._tmpdir else "",
                                  "Label raster", "check the path (a mosaic of label tiles can "
                                  "be one .vrt file)")

    def open(self) -> LabelRaster:
        """Open the dataset (and download a ``gs://`` object) once; idempotent.

        Raises:
            DataNotFoundError: the file or object does not exist.
            InputError: it is not a readable raster, has no such band, or is not integer.
            CRSError: it has no CRS.
        """
        with self._lock:
            if self._ds is None:
                self._ds = self._open_checked()
        return self

    def close(self) -> None:
        """Close the dataset and remove any downloaded copy; idempotent."""
        with self._lock:
            if self._ds is not None:
                with contextlib.suppress(Exception):
                    self._ds.close()
                self._ds = None
            if self._tmpdir is not None:
                with contextlib.suppress(OSError):
                    self._tmpdir.cleanup()
                self._tmpdir = None

    def _open_checked(self) -> Any:
        ds = open_dataset(self._gdal_path(), self.path, "Label raster", lambda text: InputError(
            f"Cannot open the label raster {self.path!r}: {text}. Is it a GeoTIFF/COG (or a "
            f"GDAL VRT)? Re-export it, e.g. `gdal_translate -of COG in out.tif`."))
        try:
            self._check_dataset(ds)
        except Exception:
            ds.close()
            raise
        return ds

    def _check_dataset(self, ds: Any) -> None:
        if self.band > ds.count:
            raise InputError(f"The label raster {self.path!r} has {ds.count} band(s); label "
                             f"band {self.band} does not exist. Pick a band in 1..{ds.count}.")
        dtype = ds.dtypes[self.band - 1]
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise InputError(
                f"The label raster {self.path!r} holds {dtype} values; label rasters must hold "
                f"integer class codes. Convert it, e.g. `gdal_translate -ot UInt16 "
                f"{self.path} labels.tif` (after rounding codes stored as floats)."
            )
        if ds.crs is None:
            raise CRSError(f"The label raster {self.path!r} has no CRS; assign one, e.g. "
                           f"`gdal_edit.py -a_srs EPSG:4326 {self.path}`.")

    def info(self) -> LabelRasterInfo:
        """The raster's CRS, type, nodata, size and footprint (opens it if needed)."""
        self.open()
        with self._lock:
            ds = self._ds
            crs = _crs_label(ds.crs)
            bounds = tuple(float(v) for v in ds.bounds)
            try:
                ll = transform_bounds(ds.crs, WGS84, *bounds, densify_pts=21)
            except (RasterioError, ValueError):  # PROJ cannot map it to lon/lat
                ll = (-math.inf, -math.inf, math.inf, math.inf)
            if not all(math.isfinite(v) for v in ll):
                ll = (-math.inf, -math.inf, math.inf, math.inf)
            nodata = ds.nodatavals[self.band - 1]
            return LabelRasterInfo(
                self.path, crs, ds.dtypes[self.band - 1],
                None if nodata is None else float(nodata), int(ds.width), int(ds.height),
                bounds, tuple(float(v) for v in ll))  # type: ignore[arg-type]

    # ---- reading
    def read_raw(self, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
        """The raw values on ``grid`` (nearest neighbour) and where they are valid.

        Returns:
            ``(values, valid)``: ``(h, w)`` arrays of the raster's integer type and bool;
            ``valid`` is False outside the raster and where it holds its nodata value.

        Raises:
            SourceError: GDAL fails while warping.
        """
        self.open()
        with self._lock:
            ds = self._ds
            nodata = ds.nodatavals[self.band - 1]
            # without a nodata value the warper marks pixels outside the file in an alpha band
            extra: dict[str, Any] = {"add_alpha": True} if nodata is None else {}
            try:
                with WarpedVRT(ds, crs=grid.crs, transform=grid.affine, width=grid.width,
                               height=grid.height, resampling=Resampling.nearest,
                               tolerance=_TOLERANCE, **extra) as vrt:
                    values = vrt.read(self.band)
                    valid = vrt.read_masks(self.band) > 0
            except Exception as exc:
                if not is_gdal_error(exc):
                    raise
                raise SourceError(f"Cannot read the label raster {self.path!r} onto grid "
                                  f"{grid.crs} {grid.bounds}: {exc}") from exc
        return values, valid

    def read(self, grid: PixelGrid) -> np.ndarray:
        """The labels on ``grid``: uint8 ``(h, w)`` class ids, 255 where ignored.

        Pixels outside the raster, equal to its nodata, or holding a raw value the map
        does not list (or maps to ``ignore``) are 255.
        """
        values, valid = self.read_raw(grid)
        return self.label_map.apply(values, valid)


def read_label_raster(path: str, grid: PixelGrid, label_map: LabelMap | str,
                      band: int = 1) -> np.ndarray:
    """Read a label raster onto ``grid`` and map its values (opens and closes the file).

    Args:
        path: Local path, ``gs://`` object or ``http(s)://`` URL of an integer raster.
        grid: The target grid (any CRS; nearest-neighbour resampling).
        label_map: A :class:`LabelMap` or its text form (``"0=ignore,1=background,..."``).
        band: 1-based band holding the labels.

    Returns:
        uint8 ``(grid.height, grid.width)`` class ids; 255 (ignore) outside the raster, on
        its nodata and on values the map does not list.

    Raises:
        DataNotFoundError: the file does not exist.
        InputError: it is unreadable or not an integer raster.
    """
    with LabelRaster(path, label_map, band) as raster:  # type: ignore[arg-type]
        return raster.read(grid)


def check_label_raster(path: str, region: Region | None = None,
                       label_map: LabelMap | str | None = None,
                       band: int = 1) -> LabelRasterInfo:
    """Validate a label raster before launching: readable, integer, CRS, covers the region.

    Only metadata is read (on ``gs://`` the object is downloaded once).

    Args:
        path: The label raster.
        region: Area of interest (WGS 84) the raster's footprint must intersect.
        label_map: Optional map, checked for syntax (the raster's values are not scanned).
        band: 1-based band holding the labels.

    Returns:
        The raster's :class:`LabelRasterInfo`.

    Raises:
        DataNotFoundError: the file does not exist.
        InputError: unreadable, no such band, non-integer values.
        CRSError: no CRS.
        RegionError: its footprint does not meet the region.
        ConfigError: a bad label map.
    """
    lm = LabelMap.parse(label_map) if isinstance(label_map, str) else label_map
    with LabelRaster(path, lm or LabelMap(((1, LANDSLIDE),)), band) as raster:
        info = raster.info()
    if region is not None and all(math.isfinite(v) for v in info.bounds_wgs84):
        geom = region.geometry
        if not shapely.box(*info.bounds_wgs84).intersects(geom):
            def fmt(b: tuple[float, ...]) -> str:
                return "(" + ", ".join(f"{v:.5f}" for v in b) + ")"
            raise RegionError(
                f"The label raster {path!r} (lon/lat bounds {fmt(info.bounds_wgs84)}) does not "
                f"cover the area of interest {region.name!r} (lon/lat bounds "
                f"{fmt(geom.bounds)}): choose a region inside the labels or other labels."
            )
    return info

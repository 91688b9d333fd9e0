"""The GeoTIFF / COG imagery source: :class:`GeoTIFFSource`.

:class:`GeoTIFFSource` reads one raster or a mosaic of many (local paths, ``gs://``
objects, ``http(s)://`` URLs or glob patterns) onto any :class:`PixelGrid`. Every file whose
footprint meets the grid is warped onto it with rasterio's :class:`~rasterio.vrt.WarpedVRT`
(GDAL's warper: nodata and the pixels a file's mask or alpha band masks are excluded from
the resampling kernel, pixels outside the file stay empty), and the first file, in the
order given (each glob pattern's matches sorted), with a valid value wins per pixel.

Values come back as float32 in physical units (``physical = stored * scale + offset``),
NaN where invalid, with a ``valid`` mask that is True where every requested band is valid.

Scaling with ``scale="auto"``: a band whose file declares GDAL's scale/offset (e.g.
``1e-4``/``-0.1`` for Sentinel-2 L2A of processing baseline 04.00, ``0.1`` for a DEM in
decimetres) uses them; otherwise integer files use the band registry's scale (``1e-4``
for Sentinel-2 reflectance, ``1`` for a DEM) and float files ``1.0``, because float
digital numbers (e.g. Sentinel-2 DNs 0..10000 stored as float64) cannot be told apart
safely from float reflectance. Pass ``scale=1e-4`` explicitly for such files; a warning is
logged when "auto" meets float reflectance far above its plausible range.

``gs://`` objects are read by range through GDAL's ``/vsigs/`` (see
:func:`pipelines.fsio.gdal_gs_options`): a read fetches the file's header and the tiles
of its window, not the whole object. Only when GDAL cannot read an existing object (no
credentials it knows) is the object downloaded whole, with a warning.

The source is a picklable configuration object: open datasets and downloaded copies live
only between :meth:`~GeoTIFFSource.open` and :meth:`~GeoTIFFSource.close` (Beam calls them
in a DoFn's ``setup`` and ``teardown``) and are never pickled. Its helpers live beside it:
band maps in :mod:`~pipelines.sources.geotiff.band_map`, the file catalogue in
:mod:`~pipelines.sources.geotiff.files`, the pixel arithmetic of one read in
:mod:`~pipelines.sources.geotiff.warp`.
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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import shapely
from rasterio.vrt import WarpedVRT
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
from pipelines.geo.cog import band_scaling, gdal_error_text, is_gdal_error, open_dataset
from pipelines.geo.grid import WGS84, PixelGrid, Region
from pipelines.sources.base import Raster, Source, format_bounds
from pipelines.sources.geotiff.band_map import band_index, normalise_band_map
from pipelines.sources.geotiff.cache import READS
from pipelines.sources.geotiff.files import (
    FileInfo,
    bounds_in_crs,
    content_stamp,
    crs_string,
    expand_paths,
    res_in_crs,
)
from pipelines.sources.geotiff.warp import (
    TOLERANCE,
    aligned_offset,
    mask_indexes,
    nans,
    read_aligned,
    resampling_method,
    value_bands,
    warp_scales,
    window_of,
)

log = logging.getLogger(__name__)

__all__ = ["MAX_OPEN_FILES", "GeoTIFFSource"]

#: Datasets kept open at once per source (least recently used ones are closed).
MAX_OPEN_FILES = 64


class GeoTIFFSource(Source):
    """One GeoTIFF/COG or a mosaic of many, read onto any grid.

    Args:
        paths: A path or a list of paths: local files, ``gs://`` objects, ``http(s)://``
            URLs, or glob patterns (expanded with :func:`pipelines.fsio.glob`; sidecar
            files such as ``.tfw`` or ``.aux.xml`` are skipped). The order given is the
            mosaic priority: the first file with a valid value wins per pixel (list the
            most recent image first to keep its pixels); a pattern's matches are sorted
            where it stands, and a file listed twice keeps its first place.
        band_map: ``{band name: 1-based index or band description}``, or a string
            ``"B4=1,B3=2,B2=3,B8=4"``. Without it every band's description must name a
            known band (descriptions naming no known band are ignored).
        scale: ``physical = stored * scale``, whatever the files declare. ``"auto"``: the
            scale and offset a file declares for a band (GDAL's band scale/offset, e.g.
            ``1e-4``/``-0.1`` for Sentinel-2 L2A baseline 04.00), else for integer files
            the band registry's scale (and offset), for float files 1.0 (float DNs are
            not guessed: pass ``scale=1e-4`` for Sentinel-2 DNs stored as floats).
        nodata: Stored value marking missing data, overriding each file's nodata (per band:
            a pixel whose band equals it is invalid in that band). NaN is always invalid.
        resampling: Any GDAL resampling name; ``bilinear`` (default) for continuous bands,
            ``nearest`` for classes or exact sampling.
        mask_zero_pixels: Treat pixels where *all* bands of a file are 0 as invalid (files
            whose empty areas are zeros without a nodata flag), whichever bands are read
            (an alpha band is not looked at).

    Pixels that a file's internal or sidecar mask or its alpha band masks are invalid, on
    any grid.

    The first use of :attr:`bands`, :meth:`footprint` or :meth:`read` scans every file's
    header once (for ``gs://`` objects a few range requests); the result is plain data that
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
        resampling_method(resampling)
        self.paths: tuple[str, ...] = tuple(given)
        self.band_map = normalise_band_map(band_map)
        self.scale: float | str = scale
        self.nodata = nodata
        self.resampling = str(resampling).strip().lower()
        self.mask_zero_pixels = bool(mask_zero_pixels)
        # Plain-data cache filled by the first scan; pickled with the source.
        self._files: list[FileInfo] | None = None
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
        :data:`MAX_OPEN_FILES`); a ``gs://`` object GDAL cannot read by range is downloaded
        once, when first needed, into a temporary folder.
        """
        with self._lock:
            if not self._opened:
                READS.session_started()
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
            if self._opened:
                READS.session_ended()  # the last source closed empties the read cache
            self._opened = False

    # ---- file access
    def _env(self) -> contextlib.AbstractContextManager:
        """GDAL's configuration for reading this source's files (``/vsigs/`` for gs://)."""
        if any(fsio.is_gs(p) for p in self.paths):
            return rasterio.Env(**fsio.gdal_gs_options())
        return contextlib.nullcontext()

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
        ds = self._open_ranged(path) if fsio.is_gs(path) and path not in self._local else None
        if ds is None:
            ds = open_dataset(self._local_path(path), path, "Raster", lambda text: SourceError(
                f"Cannot read raster {path!r}: {text}. Is it a valid GeoTIFF/COG?"))
        self._handles[path] = ds
        while len(self._handles) > MAX_OPEN_FILES:  # large mosaics: bound open descriptors
            _, oldest = self._handles.popitem(last=False)
            oldest.close()
        return ds

    def _open_ranged(self, path: str) -> rasterio.io.DatasetReader | None:
        """``path`` (gs://) opened through ``/vsigs/``; ``None`` when GDAL cannot read it.

        Raises:
            DataNotFoundError: the object does not exist.
        """
        try:
            return open_dataset(fsio.vsigs(path), path, "Raster", SourceError)
        except SourceError as exc:
            if not fsio.exists(path):
                raise DataNotFoundError(
                    f"Raster object {path!r} does not exist; check the bucket and the object "
                    f"name.") from exc
            log.warning("GDAL cannot read %s by range (%s); downloading it whole instead. "
                        "Give GDAL credentials (GOOGLE_APPLICATION_CREDENTIALS, or run on a "
                        "Google Cloud worker) to read only the windows needed.", path, exc)
            return None

    # ---- scanning
    def _scan(self) -> list[FileInfo]:
        """Expand the paths and read every file's metadata once (cached, picklable)."""
        if self._files is not None:
            return self._files
        with self._lock, self._env():
            if self._files is not None:
                return self._files
            files = [self._scan_file(p) for p in expand_paths(self.paths)]
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

    def _scan_file(self, path: str) -> FileInfo:
        ds = self._dataset(path)
        if ds.crs is None:
            raise CRSError(f"Raster {path!r} has no CRS; assign one (e.g. gdal_edit.py -a_srs "
                           f"EPSG:32645 {Path(path).name}) or use a georeferenced copy.")
        descriptions = tuple(ds.descriptions)
        info = FileInfo(path=path, crs=crs_string(ds.crs), bounds=tuple(ds.bounds),
                         transform=tuple(ds.transform)[:6], width=ds.width,
                         height=ds.height, count=ds.count, dtype=ds.dtypes[0],
                         nodata=ds.nodata,
                         band_index=tuple(band_index(self.band_map, path, ds.count,
                                                     descriptions).items()),
                         stamp=content_stamp(path),
                         scaling=tuple(band_scaling(ds, i) for i in range(1, ds.count + 1)))
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

    # ---- Source API
    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self._scan()[0].band_index)

    @property
    def files(self) -> tuple[str, ...]:
        """The expanded file list, in mosaic priority order (the first valid pixel wins)."""
        return tuple(f.path for f in self._scan())

    def declared_scaling(self) -> dict[str, list[list[float]]]:
        """``{file: [[scale, offset] per band]}`` of the files that declare GDAL scaling.

        Part of :meth:`describe`: with ``scale="auto"`` these decide the values read, so
        a run's signature changes with them (files declaring none add nothing).
        """
        return {f.path: [list(s) for s in f.scaling] for f in self._scan()
                if f.declares_scaling}

    def describe(self) -> dict:
        scaling = self.declared_scaling()
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
            **({"declared_scaling": scaling} if scaling else {}),
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
        arr = bounds_in_crs(self._scan(), crs)
        self._bounds_in[crs] = arr
        return arr

    def _res_in_crs(self, crs: str) -> np.ndarray:
        """``(n_files, 2)`` pixel sizes of every file near its centre, in ``crs`` units."""
        cached = self._res_in.get(crs)
        if cached is not None:
            return cached
        arr = res_in_crs(self._scan(), crs)
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
            f"{format_bounds(geom.bounds)}) lies outside the data of {self.kind} source "
            f"({len(b)} file(s), lon/lat bounds {format_bounds(data_ll)}; "
            f"{format_bounds(native)} in {crs}). Choose a region inside the data or add files "
            f"that cover it.")

    # ---- reading
    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        with self._lock, self._env():
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
                r0, r1, c0, c1 = window_of(grid, bounds)
                if r1 <= r0 or c1 <= c0:
                    continue
                # Warp only the box around pixels that earlier files left empty.
                todo = ~valid[r0:r1, c0:c1]
                rows, cols = np.flatnonzero(todo.any(axis=1)), np.flatnonzero(todo.any(axis=0))
                if not len(rows):
                    continue
                r0, r1, c0, c1 = r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1
                sub = grid.subgrid(Window(c0, r0, c1 - c0, r1 - r0))
                data = self._cached_warp(info, sub, bands, warp_scales(res, grid))
                take = np.isfinite(data).all(axis=0)
                if out is None and sub.shape == grid.shape:
                    out, valid = data, take  # the first file read spans the grid: no copy
                    if not take.all():
                        np.copyto(out, np.nan, where=~take)  # NaN in any band: all bands
                    if valid.all():
                        break
                    continue
                if out is None:
                    out = nans(len(bands), grid)
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
                out = nans(len(bands), grid)
            return Raster(out, valid, grid, bands)

    def _cached_warp(self, info: FileInfo, grid: PixelGrid, bands: tuple[str, ...],
                     scales: dict[str, str]) -> np.ndarray:
        """:meth:`_warp` through the process's read cache (:mod:`.cache`).

        The key holds everything the result depends on: the file, its content stamp and
        declared scaling, the grid, the bands, the warp options and this source's reading
        settings. Sources reading the same file the same way (a stack's references over the
        same years, an export's years of one chunk) share the decoded pixels.
        """
        key = None if info.stamp is None else (
            type(self).__name__, info.path, info.stamp, info.band_index, info.nodata,
            info.scaling, grid, bands, tuple(sorted(scales.items())), self.scale, self.nodata,
            self.resampling, self.mask_zero_pixels)
        return READS.get_or_read(key, lambda: self._warp(info, grid, bands, scales), grid)

    def _warp(self, info: FileInfo, grid: PixelGrid, bands: tuple[str, ...],
              scales: dict[str, str]) -> np.ndarray:
        """``info``'s bands warped onto ``grid``: float32 physical units, NaN invalid."""
        ds = self._dataset(info.path)
        nodata = self.nodata if self.nodata is not None else info.nodata
        indexes = [info.index(b) for b in bands]
        # "all bands 0" looks at every band of the file, whichever are read
        all_zero = self.mask_zero_pixels and nodata != 0
        offset = aligned_offset(ds, grid)
        if offset is not None:
            data = read_aligned(info, ds, grid, indexes, offset, nodata, all_zero=all_zero)
            return self._finish(info, bands, data)
        extra: dict[str, Any] = dict(scales)
        extra["UNIFIED_SRC_NODATA"] = "NO"  # per-band nodata
        zero_bands: list[int] = []
        if all_zero and nodata is None and not mask_indexes(ds, range(1, ds.count + 1)):
            # GDAL treats a pixel as nodata only when *all* bands equal it: exactly "all 0",
            # left out of the resampling kernel. (A unified nodata makes the warper ignore
            # a file's mask, so files with one are checked after the warp instead.)
            nodata, extra["UNIFIED_SRC_NODATA"] = 0.0, "YES"
        elif all_zero:
            zero_bands = value_bands(ds)
        order = indexes + [i for i in zero_bands if i not in indexes]
        try:
            with WarpedVRT(ds, crs=grid.crs, transform=grid.affine, width=grid.width,
                           height=grid.height, resampling=resampling_method(self.resampling),
                           src_nodata=nodata, nodata=float("nan"), dtype="float32",
                           tolerance=TOLERANCE, **extra) as vrt:
                data = vrt.read(order, out_dtype="float32")
        except Exception as exc:
            if not is_gdal_error(exc):
                raise
            raise SourceError(f"Cannot read raster {info.path!r} onto grid {grid.crs} "
                              f"{grid.bounds}: {gdal_error_text(exc)}") from exc
        if zero_bands:
            zero = (data[[order.index(i) for i in zero_bands]] == 0).all(axis=0)
            if len(order) > len(indexes):
                data = data[:len(indexes)].copy()
            data[:, zero] = np.nan
        return self._finish(info, bands, data)

    def _scaling(self, info: FileInfo, band: str) -> tuple[float, float] | None:
        """``(scale, offset)`` turning ``band``'s stored values into physical units.

        An explicit ``scale`` wins; with ``"auto"`` the scale/offset the file declares,
        else the band registry's for an integer file. None for a float file that declares
        none: its values are kept as stored.
        """
        if self.scale != "auto":
            return float(self.scale), 0.0
        declared = info.declared_scaling(band)
        if declared is not None:
            return declared
        if info.is_integer:
            spec = bandreg.get(band)
            return spec.scale, spec.offset
        return None

    def _finish(self, info: FileInfo, bands: tuple[str, ...], data: np.ndarray) -> np.ndarray:
        """Scale ``data`` (the stored values of ``bands``, NaN invalid) in place."""
        for k, band in enumerate(bands):
            scaling = self._scaling(info, band)
            if scaling is None:
                self._warn_float_scale(info, band, data[k])
                continue
            scale, offset = scaling
            if scale != 1.0:
                data[k] *= np.float32(scale)
            if offset != 0.0:
                data[k] += np.float32(offset)
        return data

    def _warn_float_scale(self, info: FileInfo, band: str, values: np.ndarray) -> None:
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

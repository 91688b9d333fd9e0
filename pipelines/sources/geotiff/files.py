"""The file catalogue of a GeoTIFF source: which files it reads and where they lie.

:func:`expand_paths` turns the given paths and glob patterns into the file list in the
mosaic priority order (the order given; each pattern's matches sorted), :class:`FileInfo`
is what one header scan learns about a file (plain data, pickled with the source), and
:func:`bounds_in_crs` / :func:`res_in_crs` express every file's footprint and pixel size in
the CRS of the grid being read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from pipelines import fsio
from pipelines.errors import DataNotFoundError

__all__ = ["SIDECAR_SUFFIXES", "FileInfo", "bounds_in_crs", "crs_string", "expand_paths",
           "res_in_crs"]

#: Files a glob may match that are sidecars of a raster, not rasters themselves.
SIDECAR_SUFFIXES = (".tfw", ".tfwx", ".wld", ".aux.xml", ".ovr", ".msk", ".prj", ".xml",
                    ".jgw", ".pgw", ".cpg", ".dbf", ".shp", ".shx", ".json", ".txt")

_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class FileInfo:
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
    #: What identifies the file's content (:func:`content_stamp`); None where it is not
    #: known without reading it (remote objects), so its reads are never cached.
    stamp: str | None = None
    #: ``(scale, offset)`` of every band of the file, in band order, as GDAL declares
    #: them (:func:`pipelines.geo.cog.band_scaling`); ``(1.0, 0.0)`` where none is set.
    scaling: tuple[tuple[float, float], ...] = ()

    def index(self, band: str) -> int:
        """The 1-based index of ``band`` in the file."""
        return dict(self.band_index)[band]

    def declared_scaling(self, band: str) -> tuple[float, float] | None:
        """``(scale, offset)`` the file declares for ``band``; None where it declares none.

        ``physical = stored * scale + offset`` (GDAL's convention), e.g. ``(1e-4, -0.1)``
        for Sentinel-2 L2A of processing baseline 04.00 or later.
        """
        i = self.index(band) - 1
        if i >= len(self.scaling) or self.scaling[i] == (1.0, 0.0):
            return None
        return self.scaling[i]

    @property
    def declares_scaling(self) -> bool:
        """True when any band of the file declares a scale or offset."""
        return any(s != (1.0, 0.0) for s in self.scaling)

    @property
    def is_integer(self) -> bool:
        """True when the file stores integers (scaled by the band registry)."""
        return bool(np.issubdtype(np.dtype(self.dtype), np.integer))


def content_stamp(path: str) -> str | None:
    """What identifies a local file's content without reading it.

    Its size, inode and modification and change times (ns); a file rewritten or replaced
    at the same path gets another stamp. None for a remote object or a path that cannot
    be stat'ed.
    """
    if fsio.is_remote(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def crs_string(crs: rasterio.crs.CRS) -> str:
    """``EPSG:n`` when ``crs`` has an EPSG code, its WKT otherwise."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB_CHARS)


def _is_sidecar(path: str) -> bool:
    return path.lower().endswith(SIDECAR_SUFFIXES)


def expand_paths(paths: Sequence[str]) -> list[str]:
    """The files of ``paths`` in mosaic priority order (the first valid pixel wins).

    Explicit paths keep the order they are given in (a caller lists the most recent year
    first to keep its pixels); a glob pattern's matches are sorted, where it stands in the
    list, and the sidecar files it matches are dropped. A file listed twice keeps its first
    place.

    Raises:
        DataNotFoundError: a glob pattern matches no raster.
    """
    out: list[str] = []
    for p in paths:
        if _is_glob(p) and not fsio.is_http(p):
            matches = sorted(m for m in fsio.glob(p) if not _is_sidecar(m))
            if not matches:
                raise DataNotFoundError(f"No raster matches the pattern {p!r}; check the folder "
                                        f"and the pattern (e.g. 'tiles/*.tif').")
            out.extend(matches)
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def bounds_in_crs(files: Sequence[FileInfo], crs: str) -> np.ndarray:
    """``(n_files, 4)`` bounds of every file in ``crs`` (inf where not transformable)."""
    rows = []
    for f in files:
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
    return np.asarray(rows, dtype=np.float64)


def res_in_crs(files: Sequence[FileInfo], crs: str) -> np.ndarray:
    """``(n_files, 2)`` pixel sizes of every file near its centre, in ``crs`` units."""
    rows = []
    transformers: dict[str, Transformer] = {}
    for f in files:
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
    return np.asarray(rows, dtype=np.float64)

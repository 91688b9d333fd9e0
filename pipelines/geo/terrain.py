"""Terrain derivatives of a DEM: slope, aspect, curvature and hillshade.

All four use the 3 x 3 neighbourhood of each cell::

    a b c        z1 z2 z3
    d e f   =    z4 z5 z6      (row 0 is the northern row, column 0 the western one)
    g h i        z7 z8 z9

* slope and aspect use Horn's (1981) weighted gradient, exactly as ``gdaldem``:
  ``dz/dx = ((c + 2f + i) - (a + 2d + g)) / (8 dx)`` (eastwards) and
  ``dz/dy = ((a + 2b + c) - (g + 2h + i)) / (8 dy)`` (northwards).
* curvature is Zevenbergen & Thorne's (1987) general curvature in the ArcGIS convention,
  ``-2 (D + E) * 100`` with ``D = ((z4 + z6) / 2 - z5) / dx**2`` and
  ``E = ((z2 + z8) / 2 - z5) / dy**2``: units of 1/100 (elevation unit) per metre,
  positive on convex (dome) cells, negative on concave (bowl) cells.
* hillshade is ``gdaldem hillshade``'s formula: ``1 + 254 * max(0, cos i)``, with ``i`` the
  angle between the surface normal and the sun, so values lie in [1, 255].

Inputs are 2-D arrays with NaN marking nodata; outputs are float32 of the same shape, NaN
wherever the 3 x 3 neighbourhood is not fully valid, including the outer 1-pixel border
(callers read with a halo and crop). Everything is vectorised numpy on array slices.

:func:`write_terrain` turns a DEM file (local or ``gs://``) into one COG per product.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from pipelines import fsio
from pipelines.errors import (
    ConfigError,
    CRSError,
    DataNotFoundError,
    InputError,
    NoDataError,
)
from pipelines.geo.cog import CATEGORICAL, CONTINUOUS, gdal_error_text, write_cog
from pipelines.geo.grid import PixelGrid

log = logging.getLogger(__name__)

PRODUCTS = ("slope", "aspect", "curvature", "hillshade")

#: Units written into each product's COG metadata.
UNITS = {
    "slope": "degrees",
    "aspect": "degrees clockwise from north (direction the slope faces)",
    "curvature": "1/100 per metre (Zevenbergen-Thorne general curvature, positive = convex)",
    "hillshade": "shade 1-255 (gdaldem formula)",
}

#: Nodata value of the written COGs.
OUT_NODATA = -9999.0

#: DEMs with more pixels than this are processed in row blocks.
MAX_WHOLE_PIXELS = 4_000_000  # measured: row blocks are faster and leaner even at 16 Mpx

#: Pixels per row block in block mode (bounds the float64 temporaries to a few 100 MB).
BLOCK_PIXELS = 4_000_000

#: Metres per degree used for geographic DEMs (longitude scaled by cos(latitude)).
M_PER_DEG_LON = 111_320.0
M_PER_DEG_LAT = 110_574.0

Res = float | tuple[float | np.ndarray, float]


# ----------------------------------------------------------------------------- validation
def _check_products(products: Iterable[str] | str) -> tuple[str, ...]:
    """Normalise ``products`` (names or a comma string) and reject unknown or empty lists."""
    if isinstance(products, str):
        products = products.split(",")
    names = tuple(dict.fromkeys(p.strip().lower() for p in products if p and p.strip()))
    if not names:
        raise ConfigError(f"No terrain product requested; choose from {', '.join(PRODUCTS)}.")
    unknown = [p for p in names if p not in PRODUCTS]
    if unknown:
        raise ConfigError(f"Unknown terrain product(s) {', '.join(map(repr, unknown))}; "
                          f"valid products are {', '.join(PRODUCTS)}.")
    return names


def _check_z_factor(z_factor: float) -> float:
    z = float(z_factor)
    if not math.isfinite(z) or z <= 0:
        raise ConfigError(f"z_factor must be a positive finite number, got {z_factor!r} "
                          "(use e.g. 0.3048 for elevations in feet over metre pixels).")
    return z


def _check_dem(dem: np.ndarray) -> np.ndarray:
    arr = np.asarray(dem)
    if arr.ndim != 2:
        raise InputError(f"A DEM must be a 2-D array, got shape {arr.shape}; "
                         "pass a single band (e.g. dem[0]).")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"A DEM must hold numbers, got dtype {arr.dtype}.")
    return arr.astype(np.float64, copy=False)


def _spacing(res: Res, nrows: int) -> tuple[float | np.ndarray, float]:
    """Pixel spacing ``(dx, dy)`` in metres; ``dx`` may vary per row (geographic DEMs).

    Args:
        res: One number, ``(x, y)``, or ``(x_per_row, y)`` with ``x_per_row`` of length
            ``nrows``.
        nrows: Rows of the DEM.

    Returns:
        ``(dx, dy)``; ``dx`` is a float or an array of shape ``(nrows - 2, 1)`` holding the
        spacing of each interior row.
    """
    rx: object
    ry: object
    if np.isscalar(res):
        rx, ry = res, res
    else:
        try:
            rx, ry = res  # type: ignore[misc]
        except (TypeError, ValueError):
            raise InputError(f"res must be a pixel size or an (x, y) pair in metres, "
                             f"got {res!r}.") from None
    try:
        dy = float(ry)  # type: ignore[arg-type]
        dx_arr = np.asarray(rx, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"res must be numbers in metres, got {res!r}.") from None
    if not math.isfinite(dy) or dy <= 0 or not np.all(np.isfinite(dx_arr)) or np.any(dx_arr <= 0):
        raise InputError(f"Pixel size must be positive and finite, got res={res!r}.")
    if dx_arr.ndim == 0:
        return float(dx_arr), dy
    if dx_arr.shape != (nrows,):
        raise InputError(f"A per-row x pixel size needs {nrows} values (one per DEM row), "
                         f"got shape {dx_arr.shape}.")
    return dx_arr[1:-1, np.newaxis], dy


# ----------------------------------------------------------------------------- core maths
def _valid_interior(z: np.ndarray) -> np.ndarray:
    """True for interior cells whose whole 3 x 3 neighbourhood is finite."""
    f = np.isfinite(z)
    h, w = z.shape
    ok = f[0:h - 2, 0:w - 2].copy()
    for r in range(3):
        for c in range(3):
            if r or c:
                ok &= f[r:h - 2 + r, c:w - 2 + c]
    return ok


def _compute(dem: np.ndarray, res: Res, products: Iterable[str] | str, z_factor: float,
             flat_value: float = 0.0, azimuth: float = 315.0,
             altitude: float = 45.0) -> dict[str, np.ndarray]:
    """Compute the requested products; every public function goes through here."""
    names = _check_products(products)
    z_factor = _check_z_factor(z_factor)
    z = _check_dem(dem)
    h, w = z.shape
    dx, dy = _spacing(res, h)
    out = {p: np.full((h, w), np.nan, dtype=np.float32) for p in names}
    if h < 3 or w < 3:
        log.warning("DEM of shape %s is smaller than 3 x 3: all terrain values are NaN.", z.shape)
        return out

    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, e, f = z[1:-1, :-2], z[1:-1, 1:-1], z[1:-1, 2:]
    g, hh, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    valid = _valid_interior(z)

    def put(name: str, values: np.ndarray) -> None:
        # store as float32 at once so that float64 results do not pile up
        np.copyto(out[name][1:-1, 1:-1], values, where=valid, casting="unsafe")

    if {"slope", "aspect", "hillshade"} & set(names):
        # Horn's gradient, in elevation units per metre (x eastwards, y northwards).
        p = ((c + 2 * f + i) - (a + 2 * d + g)) * (z_factor / (8 * dx))
        q = ((a + 2 * b + c) - (g + 2 * hh + i)) * (z_factor / (8 * dy))
        grad2 = p * p + q * q
        if "slope" in names:
            put("slope", np.degrees(np.arctan(np.sqrt(grad2))))
        if "aspect" in names:
            # The slope faces the steepest descent, (-p, -q); azimuth clockwise from north.
            asp = np.mod(np.degrees(np.arctan2(-p, -q)), 360.0)
            asp[(p == 0) & (q == 0)] = flat_value
            put("aspect", asp)
            del asp
        if "hillshade" in names:
            az, alt = math.radians(azimuth), math.radians(altitude)
            cos_i = (math.sin(alt) - math.cos(alt) * (p * math.sin(az) + q * math.cos(az)))
            cos_i /= np.sqrt(1.0 + grad2)
            put("hillshade", 1.0 + 254.0 * np.maximum(cos_i, 0.0))
            del cos_i
        del p, q, grad2
    if "curvature" in names:
        dd = ((d + f) / 2 - e) / (dx * dx)
        dd += ((b + hh) / 2 - e) / (dy * dy)
        put("curvature", -200.0 * z_factor * dd + 0.0)  # + 0.0: no -0.0
    if "aspect" in out:
        # float32 rounding can turn 359.99999999 into 360.0; keep [0, 360).
        asp32 = out["aspect"]
        asp32[asp32 >= 360.0] = 0.0
    return out


# ----------------------------------------------------------------------------- public API
def slope(dem: np.ndarray, res: Res, z_factor: float = 1.0) -> np.ndarray:
    """Slope in degrees by Horn's method (the same as ``gdaldem slope``).

    Args:
        dem: 2-D elevations, NaN for nodata.
        res: Pixel size in metres, one number or ``(x, y)``; ``x`` may be an array with one
            value per row (geographic DEMs).
        z_factor: Multiplier of elevations (unit conversion or exaggeration).

    Returns:
        float32 array of ``dem``'s shape; NaN where the 3 x 3 neighbourhood is not fully
        valid, including the 1-pixel border.

    Raises:
        InputError: ``dem`` is not 2-D or ``res`` is not positive.
        ConfigError: ``z_factor`` is not a positive number.
    """
    return _compute(dem, res, ("slope",), z_factor)["slope"]


def aspect(dem: np.ndarray, res: Res, z_factor: float = 1.0,
           flat_value: float = 0.0) -> np.ndarray:
    """Aspect: the azimuth the slope faces, degrees clockwise from north in [0, 360).

    Same convention as ``gdaldem aspect``; flat cells (zero gradient) get ``flat_value``
    (``0`` is ``gdaldem aspect -zero_for_flat``). Unlike ``gdaldem``, non-square pixels are
    taken into account.

    Args:
        dem: 2-D elevations, NaN for nodata.
        res: Pixel size in metres (see :func:`slope`).
        z_factor: Multiplier of elevations.
        flat_value: Value of cells without slope.

    Returns:
        float32 array of ``dem``'s shape, NaN where the neighbourhood is incomplete.
    """
    return _compute(dem, res, ("aspect",), z_factor, flat_value=flat_value)["aspect"]


def curvature(dem: np.ndarray, res: Res, z_factor: float = 1.0) -> np.ndarray:
    """General curvature of Zevenbergen & Thorne, ArcGIS convention.

    ``-2 (D + E) * 100`` in 1/100 (elevation unit) per metre: positive on convex cells
    (hill tops, ridges), negative on concave cells (hollows, channels). For
    ``z = c (x**2 + y**2)`` it is ``-400 c``.

    Args:
        dem: 2-D elevations, NaN for nodata.
        res: Pixel size in metres (see :func:`slope`).
        z_factor: Multiplier of elevations.

    Returns:
        float32 array of ``dem``'s shape, NaN where the neighbourhood is incomplete.
    """
    return _compute(dem, res, ("curvature",), z_factor)["curvature"]


def hillshade(dem: np.ndarray, res: Res, azimuth: float = 315.0, altitude: float = 45.0,
              z_factor: float = 1.0) -> np.ndarray:
    """Hillshade by the ``gdaldem hillshade`` formula: ``1 + 254 * max(0, cos i)``.

    Args:
        dem: 2-D elevations, NaN for nodata.
        res: Pixel size in metres (see :func:`slope`).
        azimuth: Sun azimuth, degrees clockwise from north.
        altitude: Sun elevation above the horizon, degrees in [0, 90].
        z_factor: Multiplier of elevations.

    Returns:
        float32 array of ``dem``'s shape with values in [1, 255], NaN where the
        neighbourhood is incomplete.

    Raises:
        ConfigError: ``azimuth`` or ``altitude`` is out of range.
    """
    if not math.isfinite(float(azimuth)):
        raise ConfigError(f"Sun azimuth must be a finite number of degrees, got {azimuth!r}.")
    if not 0.0 <= float(altitude) <= 90.0:
        raise ConfigError(f"Sun altitude must be between 0 and 90 degrees, got {altitude!r}.")
    return _compute(dem, res, ("hillshade",), z_factor, azimuth=float(azimuth),
                    altitude=float(altitude))["hillshade"]


def terrain_products(dem: np.ndarray, res: Res, products: Iterable[str] | str = PRODUCTS,
                     z_factor: float = 1.0) -> dict[str, np.ndarray]:
    """Several products at once (the gradient is computed only once).

    Defaults of :func:`aspect` (flat cells 0) and :func:`hillshade` (sun at 315/45) apply.

    Args:
        dem: 2-D elevations, NaN for nodata.
        res: Pixel size in metres (see :func:`slope`).
        products: Names from :data:`PRODUCTS` (or one comma-separated string).
        z_factor: Multiplier of elevations.

    Returns:
        ``{product: float32 array}`` in the requested order.

    Raises:
        ConfigError: an unknown product name, or a bad ``z_factor``.
    """
    return _compute(dem, res, products, z_factor)


# ----------------------------------------------------------------------------- files
def _row_spacing(src: rasterio.io.DatasetReader, row0: int, nrows: int) -> Res:
    """Pixel size in metres of rows ``row0 .. row0 + nrows`` of ``src``."""
    t = src.transform
    if src.crs.is_geographic:
        lat = t.f + t.e * (np.arange(row0, row0 + nrows) + 0.5)
        dx = abs(t.a) * M_PER_DEG_LON * np.cos(np.radians(lat))
        if np.any(dx <= 0):
            raise InputError(f"DEM {src.name!r} reaches a pole (latitude {lat.max():.4f}); "
                             "reproject it to a projected CRS first (gdalwarp -t_srs).")
        return (dx, abs(t.e) * M_PER_DEG_LAT)
    return (abs(t.a), abs(t.e))


def _read_block(src: rasterio.io.DatasetReader, row0: int, row1: int,
                nodata: float | None, use_mask: bool, dem: str = "") -> np.ndarray:
    """Rows ``[row0, row1)`` of band 1 as float64 with NaN for nodata.

    Raises:
        InputError: the rows cannot be decoded (a truncated or corrupt file).
    """
    win = Window(0, row0, src.width, row1 - row0)
    try:
        z = src.read(1, window=win).astype(np.float64)
        mask = src.read_masks(1, window=win) if use_mask else None
    except rasterio.errors.RasterioIOError as exc:
        name = dem or src.name
        raise InputError(
            f"Cannot read DEM {name!r}: rows {row0}-{row1 - 1} of {src.height} are "
            f"unreadable, so the file is truncated or corrupt ({gdal_error_text(exc)}). "
            f"Download or export it again (`gdalinfo -checksum {name}` shows whether a "
            f"copy is whole).") from exc
    if nodata is not None:
        z[z == nodata] = np.nan
    if mask is not None:
        z[mask == 0] = np.nan
    return z


def write_terrain(dem: str, out: str, products: Iterable[str] | str = PRODUCTS,
                  z_factor: float = 1.0, nodata: float | None = None, *,
                  max_pixels: int = MAX_WHOLE_PIXELS) -> dict[str, str]:
    """Compute terrain products of a DEM file and write one COG per product.

    Writes ``<out>/<product>.tif`` (float32, nodata -9999, band description = product
    name) on exactly the DEM's grid. The DEM's nodata (or ``nodata``) becomes NaN. For a
    geographic CRS the pixel size is converted to metres row by row
    (``dx = res * 111320 * cos(lat)``, ``dy = res * 110574``); projected CRSs use their own
    units. DEMs larger than ``max_pixels`` are processed in row blocks with a 1-row
    overlap, staging the outputs in disk-backed arrays so that memory stays bounded.

    Args:
        dem: DEM raster path, local or ``gs://`` (band 1 is used).
        out: Output folder, local or ``gs://``.
        products: Names from :data:`PRODUCTS` (or one comma-separated string).
        z_factor: Multiplier of elevations (e.g. 0.3048 for elevations in feet).
        nodata: DEM value to treat as nodata, overriding the file's nodata.
        max_pixels: Above this many pixels the DEM is processed in row blocks.

    Returns:
        ``{product: path}`` of the written COGs.

    Raises:
        ConfigError: unknown product or bad ``z_factor``.
        DataNotFoundError: ``dem`` does not exist.
        CRSError: the DEM has no CRS.
        NoDataError: the DEM holds no valid elevation.
        InputError: the file is not a readable raster or not north-up.
        OutputError: ``out`` cannot be written.
    """
    names = _check_products(products)
    z_factor = _check_z_factor(z_factor)
    if not fsio.exists(dem):
        raise DataNotFoundError(f"DEM {dem!r} does not exist; check the path or bucket.")
    fsio.makedirs(out)
    with fsio.local_copy(dem) as local:
        try:
            src = rasterio.open(local)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"Cannot read DEM {dem!r} as a raster: {exc}") from exc
        with src:
            return _write_from(src, dem, out, names, z_factor, nodata, max_pixels)


def _write_from(src: rasterio.io.DatasetReader, dem: str, out: str, names: tuple[str, ...],
                z_factor: float, nodata: float | None, max_pixels: int) -> dict[str, str]:
    if src.crs is None:
        raise CRSError(f"DEM {dem!r} has no CRS; assign one first "
                       "(e.g. gdal_edit.py -a_srs EPSG:32645 DEM.tif).")
    t = src.transform
    if t.b != 0 or t.d != 0 or t.e >= 0 or t.a <= 0:
        raise InputError(f"DEM {dem!r} is not north-up (transform {tuple(t)[:6]}); "
                         "warp it first (gdalwarp).")
    if src.count > 1:
        log.warning("DEM %s has %d bands; using band 1.", dem, src.count)
    if nodata is None:
        nodata = src.nodata
    use_mask = bool({MaskFlags.per_dataset, MaskFlags.alpha} & set(src.mask_flag_enums[0]))
    if not src.crs.is_geographic and src.crs.linear_units not in ("metre", "meter", "m"):
        log.warning("DEM %s has horizontal units %r; slope assumes elevations in the same units "
                    "(set z_factor otherwise).", dem, src.crs.linear_units)
    grid = PixelGrid.from_affine(str(src.crs), t, src.width, src.height)
    h, w = src.height, src.width
    blocked = h * w > max_pixels
    block_rows = max(1, min(max_pixels, BLOCK_PIXELS) // max(w, 1)) if blocked else h
    nblocks = math.ceil(h / block_rows)
    log.info("Terrain of %s (%d x %d px, %s): %s in %d block(s).", dem, w, h, grid.crs,
             ", ".join(names), nblocks)

    with tempfile.TemporaryDirectory(prefix="landslides-terrain-") as tmp:
        results: dict[str, np.ndarray]
        if blocked:
            results = {p: np.lib.format.open_memmap(str(Path(tmp, f"{p}.npy")), mode="w+",
                                                    dtype=np.float32, shape=(h, w))
                       for p in names}
        else:
            results = {}
        n_valid = 0
        t0 = time.monotonic()
        for k in range(nblocks):
            r0, r1 = k * block_rows, min(h, (k + 1) * block_rows)
            lo, hi = max(0, r0 - 1), min(h, r1 + 1)  # 1-row overlap on each side
            z = _read_block(src, lo, hi, nodata, use_mask, dem)
            n_valid += int(np.count_nonzero(np.isfinite(z[r0 - lo:r0 - lo + (r1 - r0)])))
            block = _compute(z, _row_spacing(src, lo, hi - lo), names, z_factor)
            for p in names:
                values = block[p][r0 - lo:r0 - lo + (r1 - r0)]
                values[np.isnan(values)] = OUT_NODATA
                if blocked:
                    results[p][r0:r1] = values
                else:
                    results[p] = values
            if blocked:
                done, el = r1, time.monotonic() - t0
                rate = done / el if el > 0 else float("inf")
                log.info("terrain: %d/%d rows (%.0f rows/s, ETA %.0f s)", done, h, rate,
                         (h - done) / rate if rate else 0.0)
        if n_valid == 0:
            raise NoDataError(f"DEM {dem!r} holds no valid elevation (every pixel is nodata = "
                              f"{nodata!r}); check the file or the --nodata value.")
        paths = {}
        for p in names:
            path = fsio.join(out, f"{p}.tif")
            # an angle's average across north (350 and 10 degrees) is south: nearest
            write_cog(path, results[p], grid, nodata=OUT_NODATA, band_names=[p],
                      profile=CATEGORICAL if p == "aspect" else CONTINUOUS,
                      tags={"product": p, "units": UNITS[p], "z_factor": repr(z_factor),
                            "source": str(dem)})
            paths[p] = path
        results.clear()
    return paths

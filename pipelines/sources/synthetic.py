"""The synthetic mountain-valley world: the project's embedded default data.

:func:`generate_world` builds a Rasuwa-like Himalayan valley on a UTM grid and writes:

* ``dem.tif``: a DEM with a main valley and its river, tributaries, second-order gullies
  and fractal roughness (float32 metres).
* ``landcover.tif``: forest, shrub/grass, bare rock, snow/ice, water, river gravel beds,
  roads, settlements and terraced fields (uint8; the legend is in ``world.json``).
* ``s2_<year>.tif``: 12 Sentinel-2 L2A bands per year (uint16 DN = reflectance * 10000,
  nodata 0) with class spectra, within-class texture, terrain illumination for that
  year's sun, phenology, haze, the native 20/60 m resolution of the red-edge/SWIR/aerosol
  bands, sensor noise and, optionally, clouds with their displaced shadows.
* ``clouds_<year>.tif``: the cloud mask of that image (uint8: 0 clear, 1 cloud, 2 cloud
  shadow, 3 thin cloud or faint shadow).
* ``inventory_<year>.gpkg``: the landslides visible (not yet revegetated) that year.
* ``aoi.geojson``, ``train_area.geojson``, ``study_area.geojson`` (WGS 84) and
  ``world.json`` (configuration, georeferencing, per-year counts, legend, file names).

Landslides start on steep slopes (probability rising steeply above ~30 degrees), run
downslope along the DEM's gradient (so they are elongated in the aspect direction), have
heavy-tailed (inverse-gamma) areas, occur at a background rate every year, massively in
the event year (an earthquake: more near ridge crests) and at a decaying elevated rate
after it. Some reactivate (grow upslope); all revegetate over a few years, big ones more
slowly, and drop out of the inventories once more than half recovered. Look-alikes that
are not landslides: river gravel beds and debris fans, dirt roads, bare ridges and cliffs,
fallow fields and snow.

Everything is vectorised numpy/scipy (per-landslide Python only for the polygon
outlines). Every random component draws from its own stream derived from the seed, so
switching clouds off changes nothing but the cloudy pixels.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from pyproj import Transformer
from rasterio import features
from scipy import fft as sfft
from scipy import ndimage as ndi
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pipelines import fsio
from pipelines.errors import ConfigError, InputError
from pipelines.geo import terrain
from pipelines.geo.bands import SENTINEL2_BANDS, TERRAIN_BANDS
from pipelines.geo.cog import CATEGORICAL, CogProfile, write_cog
from pipelines.geo.grid import WGS84, PixelGrid, utm_epsg
from pipelines.sources.base import Raster, Source

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0.0"

# ----------------------------------------------------------------------------- land cover
FOREST, SHRUB, ROCK, SNOW, WATER, GRAVEL, ROAD, SETTLEMENT, FIELDS = range(1, 10)

#: Land-cover codes of ``landcover.tif`` (0 is nodata).
LANDCOVER: dict[int, str] = {
    FOREST: "forest",
    SHRUB: "shrub_grass",
    ROCK: "bare_rock",
    SNOW: "snow_ice",
    WATER: "water",
    GRAVEL: "river_gravel",
    ROAD: "road",
    SETTLEMENT: "settlement",
    FIELDS: "fields",
}

# ----------------------------------------------------------------------------- spectra
# Surface reflectance in SENTINEL2_BANDS order:
#            B1     B2     B3     B4     B5     B6     B7     B8     B8A    B9     B11    B12
_SPEC = {
    "forest": [0.020, 0.025, 0.045, 0.026, 0.075, 0.200, 0.250, 0.270, 0.285, 0.280, 0.130, 0.060],
    "shrub": [0.035, 0.042, 0.072, 0.065, 0.115, 0.210, 0.245, 0.265, 0.280, 0.275, 0.230, 0.130],
    "rock": [0.095, 0.105, 0.125, 0.145, 0.165, 0.180, 0.190, 0.200, 0.210, 0.205, 0.250, 0.210],
    "snow": [0.700, 0.740, 0.720, 0.700, 0.680, 0.660, 0.640, 0.620, 0.600, 0.470, 0.080, 0.060],
    "water": [0.060, 0.065, 0.085, 0.070, 0.060, 0.045, 0.040, 0.035, 0.032, 0.025, 0.012, 0.010],
    "gravel": [0.090, 0.110, 0.140, 0.165, 0.185, 0.200, 0.210, 0.220, 0.230, 0.225, 0.260, 0.215],
    "road": [0.100, 0.120, 0.150, 0.175, 0.195, 0.210, 0.220, 0.230, 0.240, 0.235, 0.290, 0.250],
    "roof": [0.110, 0.125, 0.140, 0.150, 0.165, 0.180, 0.190, 0.200, 0.205, 0.200, 0.240, 0.210],
    "crop": [0.040, 0.050, 0.085, 0.070, 0.130, 0.250, 0.300, 0.320, 0.335, 0.330, 0.240, 0.140],
    "soil": [0.070, 0.090, 0.120, 0.160, 0.190, 0.215, 0.230, 0.240, 0.250, 0.245, 0.320, 0.270],
    "cloud": [0.560, 0.560, 0.550, 0.540, 0.535, 0.530, 0.525, 0.515, 0.505, 0.420, 0.380, 0.280],
}
SPECTRA: dict[str, np.ndarray] = {k: np.array(v, dtype=np.float32) for k, v in _SPEC.items()}

_B = {b: i for i, b in enumerate(SENTINEL2_BANDS)}
#: How strongly vegetation vigour scales each band (red goes down when NIR goes up).
_VIGOUR_RESPONSE = np.array([0.0, 0.0, 0.3, -0.6, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.3, 0.0],
                            dtype=np.float32)
#: Diffuse (sky) share of the illumination per band: blue is the haziest.
_DIFFUSE = np.array([0.35, 0.30, 0.24, 0.20, 0.18, 0.16, 0.15, 0.14, 0.14, 0.14, 0.10, 0.08],
                    dtype=np.float32)
#: Spectral shape of the residual haze (path radiance) left by atmospheric correction.
_HAZE = np.array([1.0, 0.85, 0.6, 0.45, 0.38, 0.32, 0.28, 0.25, 0.24, 0.22, 0.08, 0.04],
                 dtype=np.float32)

#: Landslide susceptibility weight per land-cover class (road cuts fail more often).
_LC_SUSCEPTIBILITY = np.array([0, 1.0, 1.0, 0.35, 0.0, 0.0, 0.0, 1.5, 0.15, 0.6],
                              dtype=np.float64)

#: Classes of ``clouds_<year>.tif``.
CLOUD_LEGEND = "0=clear,1=cloud,2=cloud shadow,3=thin cloud or faint shadow"
#: Reflectance is stored as uint16 DN = reflectance * DN_SCALE (nodata 0).
DN_SCALE = 10000.0
DEM_NODATA = -32768.0
#: Inventory statuses.
STATUSES = ("new", "active", "reactivated")


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class WorldConfig:
    """What to generate.

    Attributes:
        seed: Random seed (>= 0); the same seed and configuration give the same world.
        size_km: Side of the square world in kilometres.
        pixel_size: Pixel size in metres (the grid is UTM, aligned to whole metres).
        years: The years to render (one image and one inventory each).
        event_year: Year of the earthquake that triggers many landslides (one of ``years``).
        clouds: Add clouds and their shadows to the images.
        center_lon: Longitude of the world's centre (picks the UTM zone).
        center_lat: Latitude of the world's centre.
    """

    seed: int = 42
    size_km: float = 12.0
    pixel_size: float = 10.0
    years: tuple[int, ...] = tuple(range(2013, 2020))
    event_year: int = 2015
    clouds: bool = True
    center_lon: float = 85.35
    center_lat: float = 28.15

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.pixel_size, (int, float)) or not 2.0 <= self.pixel_size <= 60.0:
            raise ConfigError(f"pixel_size must be between 2 and 60 metres, got "
                              f"{self.pixel_size!r} (Sentinel-2 is 10 m).")
        if not isinstance(self.size_km, (int, float)) or not math.isfinite(self.size_km):
            raise ConfigError(f"size_km must be a number, got {self.size_km!r}.")
        n = self.size_px
        if n < 64:
            raise ConfigError(f"size_km={self.size_km} at {self.pixel_size} m is {n} pixels: "
                              f"the world needs at least 64 pixels a side (e.g. --size-km 2).")
        if n > 8192:
            raise ConfigError(f"size_km={self.size_km} at {self.pixel_size} m is {n} pixels a "
                              f"side, more than 8192: use a smaller world or coarser pixels.")
        years = tuple(int(y) for y in self.years)
        if not years:
            raise ConfigError("years is empty: give at least one year, e.g. 2013-2019.")
        if list(years) != sorted(set(years)):
            raise ConfigError(f"years must be increasing and unique, got {list(years)}.")
        if years[0] < 1950 or years[-1] > 2100:
            raise ConfigError(f"years {years[0]}-{years[-1]} are outside 1950-2100.")
        object.__setattr__(self, "years", years)
        if self.event_year not in years:
            raise ConfigError(f"event_year {self.event_year} is not one of the years "
                              f"{years[0]}-{years[-1]}; choose a year inside the range.")
        if not (-180.0 < self.center_lon < 180.0 and -80.0 < self.center_lat < 84.0):
            raise ConfigError(f"Centre ({self.center_lon}, {self.center_lat}) is outside the "
                              f"UTM domain (longitude -180..180, latitude -80..84).")

    @property
    def size_px(self) -> int:
        """Pixels per side."""
        return round(self.size_km * 1000.0 / self.pixel_size)

    @property
    def epsg(self) -> int:
        """EPSG code of the world's UTM zone."""
        return utm_epsg(self.center_lon, self.center_lat)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["years"] = list(self.years)
        return d


def parse_years(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parse ``"2013-2019"``, ``"2013,2015,2017"`` or ``"2014-2016,2019"`` into years."""
    if not isinstance(text, str):
        return tuple(int(y) for y in text)
    years: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{4})\s*(?:-\s*(\d{4}))?", part)
        if not m:
            raise ConfigError(f"Bad years {text!r}: expected e.g. '2013-2019' or "
                              f"'2013,2015,2017'.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ConfigError(f"Bad year range {part!r}: the end comes before the start.")
        years.extend(range(a, b + 1))
    return tuple(sorted(set(years)))


# ----------------------------------------------------------------------------- randomness
def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent random stream for one component (and year) of the world."""
    ints = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k)
                          for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def _fractal(shape: tuple[int, int], rng: np.random.Generator, beta: float,
             max_wavelength: float, min_wavelength: float = 2.0) -> np.ndarray:
    """Zero-mean, unit-std fractal noise with power spectrum ~ f**-beta (wavelengths in px).

    Synthesised on a grid padded by a quarter so that the FFT's periodicity does not
    make opposite edges match.
    """
    h, w = shape
    ph, pw = sfft.next_fast_len(int(h * 1.25) + 8), sfft.next_fast_len(int(w * 1.25) + 8)
    white = rng.standard_normal((ph, pw), dtype=np.float32)
    spec = sfft.rfft2(white, workers=-1)
    fy = sfft.fftfreq(ph).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(pw).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f_lo, f_hi = 1.0 / max_wavelength, 1.0 / min_wavelength
    amp = np.power(np.maximum(f, f_lo), -beta / 2.0, dtype=np.float32)
    amp[f > f_hi] = 0.0
    amp[0, 0] = 0.0
    out = sfft.irfft2(spec * amp, s=(ph, pw), workers=-1)[:h, :w]
    out -= out.mean()
    sd = out.std()
    return (out / sd if sd > 0 else out).astype(np.float32)


def _smooth1d(n: int, rng: np.random.Generator, corr: float) -> np.ndarray:
    """A smooth 1-D random series (unit std) of length ``n``, correlated over ``corr`` samples."""
    x = ndi.gaussian_filter1d(rng.standard_normal(n + 8 * int(corr) + 8), corr, mode="wrap")
    x = x[4 * int(corr) + 4:4 * int(corr) + 4 + n]
    return (x - x.mean()) / (x.std() or 1.0)


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Frame:
    """The world's grid and its padded working grid."""

    grid: PixelGrid          # the world (written to files)
    pad: int                 # working pixels added on every side
    ps: float

    @property
    def n(self) -> int:
        return self.grid.width

    @property
    def np_(self) -> int:
        return self.grid.width + 2 * self.pad

    def crop(self, a: np.ndarray) -> np.ndarray:
        p = self.pad
        return a[..., p:p + self.n, p:p + self.n]

    def to_map(self, xy: np.ndarray) -> np.ndarray:
        """Local padded-grid metres (x east, y south from the padded corner) -> map x/y."""
        left, top = self.grid.transform[2], self.grid.transform[5]
        off = self.pad * self.ps
        return np.column_stack([left - off + xy[:, 0], top + off - xy[:, 1]])


def world_grid(config: WorldConfig) -> PixelGrid:
    """The world's pixel grid: UTM, north-up, corners on whole metres (60 m when possible)."""
    ps = float(config.pixel_size)
    tr = Transformer.from_crs(WGS84, f"EPSG:{config.epsg}", always_xy=True)
    cx, cy = tr.transform(config.center_lon, config.center_lat)
    ratio = 60.0 / ps
    if abs(ratio - round(ratio)) < 1e-9:
        align = 60.0  # on Sentinel-2's 60 m grid: coarse bands line up with whole pixels
    else:  # the smallest multiple of the pixel size that is a whole number of metres
        align = next((k * ps for k in range(1, 1001) if abs(k * ps - round(k * ps)) < 1e-9),
                     ps)
    n = config.size_px
    half = n * ps / 2.0
    left = math.floor((cx - half) / align) * align
    top = math.floor((cy + half) / align) * align
    return PixelGrid(f"EPSG:{config.epsg}", (ps, 0.0, float(left), 0.0, -ps, float(top)), n, n)


# ----------------------------------------------------------------------------- terrain
@dataclass
class _Channel:
    """A valley axis: points in local metres, floor elevation and flat-floor half-width."""

    xy: np.ndarray
    z: np.ndarray
    order: int
    half_floor: np.ndarray


@dataclass
class _Terrain:
    dem: np.ndarray            # padded, float64
    slope: np.ndarray          # padded, degrees
    aspect: np.ndarray
    curvature: np.ndarray
    channels: list[_Channel]
    d_main: np.ndarray         # padded distance to the main river axis (m)
    main_s: np.ndarray         # padded: position (m) along the main axis of its nearest point
    d_trib: np.ndarray         # padded distance to first-order tributary axes (m)
    trib_s: np.ndarray         # padded: relative position (0 mouth .. 1 head) of nearest trib
    rel_height: np.ndarray     # padded 0 (valley) .. 1 (ridge) within ~1 km
    main_axis: np.ndarray      # (k, 2) main river axis, local metres
    junctions: np.ndarray      # (m, 2) tributary mouths, local metres


def _walk(start: np.ndarray, heading: float, length: float, step: float,
          rng: np.random.Generator, wiggle: float) -> np.ndarray:
    """A gently meandering polyline from ``start`` (heading in radians, y southwards).

    The direction deviates from ``heading`` by a smooth random angle of std ``wiggle``
    (correlated over ~300 m), so channels bend without curling up.
    """
    n = max(2, int(length / step) + 1)
    ang = heading + wiggle * _smooth1d(n, rng, max(2.0, 300.0 / step))
    d = np.column_stack([np.cos(ang), np.sin(ang)]) * step
    return start + np.vstack([[0.0, 0.0], np.cumsum(d[:-1], axis=0)])


def _branch(parent: _Channel, k: int, side: float, rng: np.random.Generator, ps: float,
            length: float, grad: float, order: int, angle: tuple[float, float]) -> _Channel:
    """A side channel leaving ``parent`` at point ``k``, pointing upstream-ish on ``side``."""
    xy = parent.xy
    k0, k1 = max(0, k - 2), min(len(xy) - 1, k + 2)
    up = xy[k1] - xy[k0]  # the parent's upstream direction (its points run upstream)
    base = math.atan2(up[1], up[0])
    heading = base + side * math.radians(rng.uniform(*angle))
    pts = _walk(xy[k], heading, length, ps, rng, wiggle=0.25)
    s = np.hypot(*np.diff(pts, axis=0, prepend=pts[:1]).T).cumsum()
    z = parent.z[k] + grad * s * (1.0 + s / (2.0 * length))
    hf = np.zeros(len(pts)) if order == 2 else np.clip(25.0 * (1.0 - s / 1500.0), 0.0, None)
    return _Channel(pts, z, order, hf)


def _channels(frame: _Frame, seed: int) -> tuple[list[_Channel], np.ndarray]:
    """The valley network: a main N-S river, tributaries on both sides, gullies on all."""
    rng = _rng(seed, "channels")
    ps, size = frame.ps, frame.np_ * frame.ps
    margin = 800.0
    # Main river: points run upstream, from the south edge (y = size) to the north.
    y = np.arange(size + margin, -margin, -ps / 2.0)
    amp1 = min(600.0, 0.07 * size)
    x = (size * rng.uniform(0.5, 0.6)
         + amp1 * np.sin(2 * np.pi * y / rng.uniform(4000, 7000) + rng.uniform(0, 2 * np.pi))
         + 120.0 * np.sin(2 * np.pi * y / rng.uniform(1100, 1700) + rng.uniform(0, 2 * np.pi))
         + 60.0 * _smooth1d(len(y), rng, 80.0))
    z_main = rng.uniform(1450.0, 1550.0) + rng.uniform(0.015, 0.025) * (size + margin - y)
    floor = np.clip(110.0 + 35.0 * _smooth1d(len(y), rng, 150.0), 60.0, 180.0)
    main = _Channel(np.column_stack([x, y]), z_main, 0, floor)
    chans = [main]
    junctions = []
    step_main = ps / 2.0
    for side in (-1.0, 1.0):
        # Tributaries every ~2 km, with gullies on both of their banks.
        s = rng.uniform(0.1, 1.0) * 2000.0
        while s < len(y) * step_main:
            k = int(s / step_main)
            trib = _branch(main, k, -side, rng, ps, rng.uniform(3500.0, 8000.0),
                           rng.uniform(0.09, 0.15), 1, (50.0, 80.0))
            chans.append(trib)
            junctions.append(main.xy[k])
            for tside in (-1.0, 1.0):
                t = rng.uniform(0.2, 1.0) * 700.0
                while t < len(trib.xy) * ps * 0.85:
                    kt = int(t / ps)
                    chans.append(_branch(trib, kt, tside, rng, ps, rng.uniform(500.0, 1600.0),
                                         rng.uniform(0.22, 0.38), 2, (40.0, 75.0)))
                    t += rng.uniform(500.0, 900.0)
            s += rng.uniform(1500.0, 2600.0)
        # Short steep gullies straight off the main valley between the tributaries.
        s = rng.uniform(0.0, 1.0) * 700.0
        while s < len(y) * step_main:
            k = int(s / step_main)
            chans.append(_branch(main, k, -side, rng, ps, rng.uniform(500.0, 1500.0),
                                 rng.uniform(0.28, 0.42), 2, (60.0, 90.0)))
            s += rng.uniform(500.0, 900.0)
    return chans, np.array(junctions).reshape(-1, 2)


def _burn_points(xy: np.ndarray, values: np.ndarray, shape: tuple[int, int], ps: float,
                 reduce: str = "min") -> np.ndarray:
    """Raster of ``values`` at the points ``xy`` (NaN elsewhere), min/max per cell."""
    col = np.floor(xy[:, 0] / ps).astype(np.int64)
    row = np.floor(xy[:, 1] / ps).astype(np.int64)
    ok = (row >= 0) & (row < shape[0]) & (col >= 0) & (col < shape[1])
    fill = np.inf if reduce == "min" else -np.inf
    out = np.full(shape, fill)
    op = np.minimum if reduce == "min" else np.maximum
    op.at(out, (row[ok], col[ok]), values[ok])
    out[~np.isfinite(out)] = np.nan
    return out


def _distance_to(cells: np.ndarray, ps: float, indices: bool = False):
    """Euclidean distance (m) to the True cells of ``cells`` (inf-like if there are none)."""
    if not cells.any():
        big = np.full(cells.shape, 1e7)
        if indices:
            idx = np.zeros((2, *cells.shape), dtype=np.int32)
            return big, idx
        return big
    return ndi.distance_transform_edt(~cells, sampling=ps, return_indices=indices)


#: Valley-wall profile per channel order: ``z = floor + H (1 - exp(-d / L)) + k d`` with
#: ``d`` the distance (m) beyond the flat floor, and the reach (m) over which it is computed.
_PROFILES = {0: (2500.0, 2600.0, 0.10, None), 1: (720.0, 600.0, 0.10, 3500.0),
             2: (330.0, 300.0, 0.10, 2500.0)}
#: Smoothing (m) of the nearest-floor field per channel order.
_FLOOR_SMOOTH = {0: 150.0, 1: 150.0, 2: 60.0}
#: Elevations above _ALPINE_BASE (m) are stretched by 1 + _ALPINE_STRETCH.
_ALPINE_BASE = 3000.0
_ALPINE_STRETCH = 0.35
#: Margin (m) around the working grid within which channels still shape the terrain.
_ENV_MARGIN = 1500.0
#: Softness (m) of the lower envelope: rounds ridge crests.
_SOFT = 80.0


def _envelope(chans: list[_Channel], n: int, ps: float) -> np.ndarray:
    """Soft lower envelope of every channel's valley-wall profile on an ``n x n`` grid.

    Each channel's distance field is computed (EDT) only within its reach, so hundreds of
    gullies cost little; the main valley covers the whole grid.
    """
    acc_min = np.full((n, n), np.inf)
    acc_sum = np.zeros((n, n))
    allxy = np.vstack([c.xy for c in chans])
    d_any = _distance_to(np.isfinite(_burn_points(allxy, np.zeros(len(allxy)), (n, n), ps)), ps)
    # Hard minimum on valley floors (no soft-min dip where channels meet), soft on ridges.
    soft = 5.0 + (_SOFT - 5.0) * (1.0 - np.exp(-d_any / 250.0))
    for ch in chans:
        H, L, k, reach = _PROFILES[ch.order]
        if reach is None:
            r0, r1, c0, c1 = 0, n, 0, n
        else:
            pad = reach / ps
            c0 = max(0, int(ch.xy[:, 0].min() / ps - pad))
            c1 = min(n, int(ch.xy[:, 0].max() / ps + pad) + 1)
            r0 = max(0, int(ch.xy[:, 1].min() / ps - pad))
            r1 = min(n, int(ch.xy[:, 1].max() / ps + pad) + 1)
            if c1 <= c0 or r1 <= r0:
                continue
        local = ch.xy - np.array([c0 * ps, r0 * ps])
        zf = _burn_points(local, ch.z, (r1 - r0, c1 - c0), ps, "min")
        cells = np.isfinite(zf)
        if not cells.any():
            continue
        hf = np.nan_to_num(_burn_points(local, ch.half_floor, zf.shape, ps, "max"))
        d, (ii, jj) = ndi.distance_transform_edt(~cells, sampling=ps, return_indices=True)
        # The floor of the nearest channel point jumps across the medial axis of a bend:
        # smooth it so the walls do not get cliffs there.
        floor = ndi.gaussian_filter(zf[ii, jj], _FLOOR_SMOOTH[ch.order] / ps, mode="nearest")
        dd = np.maximum(d - hf[ii, jj], 0.0)
        cand = floor + H * (1.0 - np.exp(-dd / L)) + k * dd
        if reach is not None:  # fade out with a rising penalty, then stop
            cand += np.maximum(d - 0.5 * reach, 0.0) ** 2 / reach
            cand[d > reach] = np.inf
        am, asum = acc_min[r0:r1, c0:c1], acc_sum[r0:r1, c0:c1]
        sw = soft[r0:r1, c0:c1]
        new_min = np.minimum(am, cand)
        with np.errstate(invalid="ignore"):
            scale = np.where(np.isfinite(am), np.exp(-(am - new_min) / sw), 0.0)
            add = np.where(np.isfinite(cand), np.exp(-(cand - new_min) / sw), 0.0)
        acc_sum[r0:r1, c0:c1] = asum * scale + add
        acc_min[r0:r1, c0:c1] = new_min
    return acc_min - soft * np.log(acc_sum)


def _scaled_noise(shape: tuple[int, int], rng: np.random.Generator, ps: float, beta: float,
                  max_wl_m: float, min_wl_m: float, grad_rms: float) -> np.ndarray:
    """Fractal noise scaled so that its slope (m/m) has the RMS ``grad_rms``."""
    n = _fractal(shape, rng, beta, max_wl_m / ps, max(2.0, min_wl_m / ps)).astype(np.float64)
    gy, gx = np.gradient(n, ps)
    rms = float(np.sqrt(np.mean(gx * gx + gy * gy)))
    return n * (grad_rms / rms if rms > 0 else 0.0)


def _make_terrain(frame: _Frame, seed: int) -> _Terrain:
    """The DEM: soft lower envelope of valley-wall profiles around every channel, plus noise."""
    ps = frame.ps
    N = frame.np_
    chans, junctions = _channels(frame, seed)
    # The envelope is smooth at the scale of tens of metres: compute it on a coarser grid,
    # extended by a margin so that channels just outside the world shape its edges.
    f = max(1, round(20.0 / ps))
    cps = ps * f
    m = math.ceil(_ENV_MARGIN / cps)
    shift = np.array([m * cps, m * cps])
    ext = [_Channel(c.xy + shift, c.z, c.order, c.half_floor) for c in chans]
    env = _envelope(ext, math.ceil(N / f) + 2 * m, cps)
    r = (np.arange(N) + 0.5) / f - 0.5 + m  # bilinear upsampling, pixel centres aligned
    env = ndi.map_coordinates(env, np.meshgrid(r, r, indexing="ij"), order=1, mode="nearest")
    main_axis = chans[0].xy
    along = np.arange(len(main_axis), dtype=np.float64) * (ps / 2.0)
    ms = _burn_points(main_axis, along, (N, N), ps, "min")
    d_main, (mi, mj) = _distance_to(np.isfinite(ms), ps, indices=True)
    main_s = np.nan_to_num(ms[mi, mj])
    tribs = [c for c in chans if c.order == 1]
    if tribs:
        txy = np.vstack([c.xy for c in tribs])
        ts = np.concatenate([np.linspace(0.0, 1.0, len(c.xy)) for c in tribs])
        ts_r = _burn_points(txy, ts, (N, N), ps, "min")
        d_trib, (ti, tj) = _distance_to(np.isfinite(ts_r), ps, indices=True)
        trib_s = np.nan_to_num(ts_r[ti, tj], nan=1.0)
    else:
        d_trib, trib_s = np.full((N, N), 1e7), np.ones((N, N))
    allxy = np.vstack([c.xy for c in chans])
    d_any = _distance_to(np.isfinite(_burn_points(allxy, np.zeros(len(allxy)), (N, N), ps)), ps)

    rng = _rng(seed, "dem-noise")
    taper = 1.0 - np.exp(-d_any / 150.0)
    hills = _scaled_noise((N, N), rng, ps, 2.6, 2500.0, 60.0, 0.16)
    rough = _scaled_noise((N, N), rng, ps, 2.0, 150.0, 20.0, 0.07)
    dem = env + taper * hills
    # High terrain is steeper and rockier: stretch elevations above ~3000 m.
    dem = dem + _ALPINE_STRETCH * np.maximum(dem - _ALPINE_BASE, 0.0)
    dem = np.clip(dem + rough, 1000.0, 7500.0)

    prods = terrain.terrain_products(dem, ps, ("slope", "aspect", "curvature"))
    for a in prods.values():  # the 1-pixel border of the padded grid: copy the neighbour
        a[0], a[-1], a[:, 0], a[:, -1] = a[1], a[-2], a[:, 1], a[:, -2]
    win = max(3, round(1000.0 / ps) | 1)
    lo = ndi.uniform_filter(ndi.minimum_filter(dem, size=win, mode="nearest"), size=win,
                            mode="nearest")
    hi = ndi.uniform_filter(ndi.maximum_filter(dem, size=win, mode="nearest"), size=win,
                            mode="nearest")
    rel = np.clip((dem - lo) / np.maximum(hi - lo, 1.0), 0.0, 1.0)
    return _Terrain(dem, prods["slope"].astype(np.float64), prods["aspect"].astype(np.float64),
                    prods["curvature"].astype(np.float64), chans, d_main, main_s, d_trib,
                    trib_s, rel, main_axis, junctions)


# ----------------------------------------------------------------------------- land cover
@dataclass
class _Land:
    lc: np.ndarray             # uint8 classes (world grid)
    parcels: np.ndarray        # int32 field-parcel id (0 outside fields)
    n_parcels: int
    d_road: np.ndarray         # distance to the nearest road (m)
    fan: np.ndarray            # bool: debris fans / tributary beds (gravel off the main river)


def _rasterize_lines(lines: list[np.ndarray], frame: _Frame) -> np.ndarray:
    """Burn polylines (local padded metres) 1 pixel wide onto the world grid."""
    geoms = [shapely.LineString(frame.to_map(xy)) for xy in lines if len(xy) >= 2]
    if not geoms:
        return np.zeros(frame.grid.shape, dtype=bool)
    return features.rasterize([(g, 1) for g in geoms], out_shape=frame.grid.shape,
                              transform=frame.grid.affine, fill=0, dtype="uint8") > 0


def _offset_line(axis: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """A polyline at a signed perpendicular ``offset`` (m, per point) from ``axis``."""
    t = np.gradient(axis, axis=0)
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    normal = np.column_stack([-t[:, 1], t[:, 0]])
    return axis + normal * offset[:, None]


def _switchbacks(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zig-zag road from ``a`` to ``b`` (local metres), as built up steep hillsides."""
    length = float(np.hypot(*(b - a)))
    n_turns = max(1, int(length / rng.uniform(120.0, 220.0)))
    t = np.linspace(0.0, 1.0, max(8, 16 * n_turns))
    tri = 2.0 * np.abs((t * n_turns) % 1.0 - 0.5) - 0.5         # -0.5 .. 0.5
    amp = rng.uniform(70.0, 160.0) * np.sin(np.pi * t) ** 0.3   # no zig at the ends
    d = (b - a) / max(length, 1e-9)
    perp = np.array([-d[1], d[0]])
    return a + np.outer(t, b - a) + np.outer(tri * amp * 2.0, perp)


def _make_landcover(frame: _Frame, T: _Terrain, seed: int) -> _Land:
    """Classes from elevation, slope, aspect, ridges and valleys; settlements and roads."""
    ps, n = frame.ps, frame.n
    rng = _rng(seed, "landcover")
    dem, slope = frame.crop(T.dem), frame.crop(T.slope)
    asp = np.radians(frame.crop(T.aspect))
    north = np.cos(asp)
    d_main, main_s = frame.crop(T.d_main), frame.crop(T.main_s)
    d_trib, trib_s = frame.crop(T.d_trib), frame.crop(T.trib_s)
    shape = (n, n)

    def noise(beta: float, max_m: float, min_m: float = 20.0) -> np.ndarray:
        return _fractal(shape, rng, beta, max_m / ps, max(2.0, min_m / ps))

    n_tree, n_snow, n_rock = noise(2.5, 2000.0), noise(2.5, 1500.0), noise(2.2, 800.0)
    n_shrub, n_bed, n_house = noise(2.4, 1200.0, 40.0), noise(2.0, 400.0), noise(1.5, 200.0)

    lc = np.full(shape, FOREST, dtype=np.uint8)
    # Shrub and grass: patches, more on dry south-facing slopes.
    lc[n_shrub + 0.5 * (-north) > 0.75] = SHRUB
    # Alpine shrub/grass above the tree line, north-facing slopes keep trees higher.
    treeline = 3450.0 + 120.0 * n_tree + 80.0 * north
    lc[dem > treeline] = SHRUB
    # Bare rock: cliffs, high rocky terrain, bare ridge crests.
    smooth = ndi.gaussian_filter(frame.crop(T.dem), 30.0 / ps) if ps < 30 else dem
    ridge = terrain.curvature(np.pad(smooth, 1, mode="edge"), ps)[1:-1, 1:-1]
    high = dem > 2500.0
    ridge_thr = np.quantile(ridge[high], 0.93) if high.sum() > 100 else np.inf
    rock = (slope > 50.0 + 4.0 * n_rock) | ((dem > 3700.0 + 150.0 * n_rock) & (slope > 28.0))
    rock |= high & (ridge > ridge_thr) & (n_rock > -0.4)
    lc[rock] = ROCK
    lc[dem > 4000.0 + 80.0 * n_snow - 120.0 * north] = SNOW

    # Settlements with terraced fields on gentle mid-slopes not far from the river.
    area_km2 = (n * ps / 1000.0) ** 2
    want = max(1, round(area_km2 / 10.0 * rng.uniform(0.8, 1.25)))
    ok = (slope < 24.0) & (dem > 1600.0) & (dem < 2900.0) & (d_main > 150.0)
    weight = np.where(ok, np.exp(-d_main / 3000.0) * (24.0 - slope), 0.0)
    centres: list[tuple[int, int]] = []
    if weight.sum() > 0:
        g = np.log(np.maximum(weight.ravel(), 1e-300)) + rng.gumbel(size=weight.size)
        g[weight.ravel() <= 0] = -np.inf
        top = np.argpartition(-g, min(50 * want, g.size - 1))[: 50 * want]
        for flat in top[np.argsort(-g[top], kind="stable")]:
            if not np.isfinite(g[flat]) or len(centres) >= want:
                break
            r, c = divmod(int(flat), n)
            if all(math.hypot(r - r2, c - c2) * ps > 900.0 for r2, c2 in centres):
                centres.append((r, c))
    seeds = np.zeros(shape, dtype=np.int32)
    fields = np.zeros(shape, dtype=bool)
    town = np.zeros(shape, dtype=bool)
    for k, (r, c) in enumerate(centres):
        seeds[r, c] = k + 1
    if centres:
        d_c, (ci, cj) = ndi.distance_transform_edt(seeds == 0, sampling=ps,
                                                   return_indices=True)
        k_near = seeds[ci, cj] - 1
        r_core = rng.uniform(60.0, 130.0, len(centres))
        r_field = rng.uniform(250.0, 500.0, len(centres))
        wobble = 1.0 + 0.25 * n_bed
        town = (d_c < r_core[k_near] * wobble) & (slope < 32.0) & (n_house > -0.6)
        fields = (d_c < r_field[k_near] * wobble) & (slope < 28.0) & ~town & (dem < 3200.0)
    lc[fields] = FIELDS
    lc[town] = SETTLEMENT
    parcels = np.zeros(shape, dtype=np.int32)
    n_parcels = 0
    if fields.any():
        # Terraced parcels: Voronoi cells of random seeds, ~0.2 ha each.
        k = max(1, int(fields.sum() * ps * ps / 2000.0))
        fr, fc = np.nonzero(fields)
        pick = rng.choice(fr.size, size=min(k, fr.size), replace=False)
        pseed = np.zeros(shape, dtype=np.int32)
        pseed[fr[pick], fc[pick]] = np.arange(1, pick.size + 1)
        _, (pi, pj) = ndi.distance_transform_edt(pseed == 0, return_indices=True)
        parcels = np.where(fields, pseed[pi, pj], 0)
        n_parcels = int(pick.size)

    # River: water channel, gravel bars and beds that widen and narrow downstream.
    s_idx = np.clip((main_s / (ps / 2.0)).astype(np.int64), 0, None)
    n_axis = len(T.main_axis)
    bed_series = np.clip(70.0 + 30.0 * _smooth1d(n_axis, rng, 120.0), 35.0, 140.0)
    water_series = np.clip(14.0 + 4.0 * _smooth1d(n_axis, rng, 80.0), 8.0, 24.0)
    s_idx = np.minimum(s_idx, n_axis - 1)
    bed_hw = bed_series[s_idx] * (1.0 + 0.25 * n_bed)
    gravel = d_main < bed_hw
    # Tributary beds near their mouths and debris fans at the junctions.
    fan = (d_trib < 25.0 * (1.0 - trib_s) ** 2 + 4.0) & (trib_s < 0.35)
    if len(T.junctions):
        jmask = np.zeros(shape, dtype=bool)
        jrc = np.floor((T.junctions[:, ::-1]) / ps).astype(int) - frame.pad
        inside = (jrc >= 0).all(axis=1) & (jrc < n).all(axis=1)
        jmask[jrc[inside, 0], jrc[inside, 1]] = True
        if jmask.any():
            d_j = _distance_to(jmask, ps)
            fan |= (d_j < 120.0 * (1.0 + 0.5 * n_bed)) & (slope < 22.0)
    lc[gravel | fan] = GRAVEL
    water = d_main < water_series[s_idx]
    lc[water] = WATER

    # Roads: a valley road along one bank, switchbacks up to every settlement.
    side = float(rng.choice([-1.0, 1.0]))
    offset = side * (bed_series + np.clip(130.0 + 70.0 * _smooth1d(n_axis, rng, 300.0), 60.0,
                                          300.0))
    main_road = _offset_line(T.main_axis, offset)
    lines = [main_road]
    for r, c in centres:
        here = np.array([(c + frame.pad + 0.5) * ps, (r + frame.pad + 0.5) * ps])
        k = int(np.argmin(np.hypot(*(main_road - here).T)))
        lines.append(_switchbacks(main_road[k], here, rng))
    road = _rasterize_lines(lines, frame) & ~water
    lc[road] = ROAD
    d_road = _distance_to(road, ps)
    return _Land(lc, parcels, n_parcels, d_road, (gravel | fan) & ~water)


# ----------------------------------------------------------------------------- landslides
#: New landslides per km2: background every year, and in the event year.
BACKGROUND_RATE = 0.45
EVENT_RATE = 4.0
#: Yearly probability that a landslide still visible (or recently revegetated) reactivates.
REACTIVATION_P = 0.02
#: Inverse-gamma area distribution (Malamud et al. 2004 shape): tail exponent, scale (m2).
AREA_SHAPE = 1.4
AREA_SCALE = 1600.0
AREA_MAX = 600_000.0
#: Years of background landslides before the first year that may still be visible in it.
LEGACY_YEARS = 2


@dataclass
class _Disturbance:
    """One failure of a landslide: its first trigger or a reactivation."""

    year: int
    kind: str                 # "new" or "reactivated"
    geometry: BaseGeometry    # shapely polygon (map coordinates)
    visible_years: float      # years until more than half revegetated
    crown: np.ndarray         # (col, row) of the crown, world pixels
    length: float             # metres
    width: float              # metres


@dataclass
class _Landslide:
    lid: int
    trigger_year: int
    rockiness: float          # 0 soil .. 1 rock debris
    redness: float            # soil colour factor
    history: list[_Disturbance] = field(default_factory=list)

    def state(self, year: int) -> _Disturbance | None:
        """The latest failure at or before ``year``."""
        past = [d for d in self.history if d.year <= year]
        return past[-1] if past else None


@dataclass
class _Slopes:
    """What landslide placement and shapes need, on the world grid."""

    slope: np.ndarray
    res: float                # pixel size (m)
    down: np.ndarray          # (2, h, w) unit downslope vector in (col, row) pixels
    susceptibility: np.ndarray
    bg_weight: np.ndarray
    event_weight: np.ndarray


def _slopes(frame: _Frame, T: _Terrain, land: _Land) -> _Slopes:
    ps = frame.ps
    slope = frame.crop(T.slope)
    zs = ndi.gaussian_filter(T.dem, 20.0 / ps)
    gy, gx = np.gradient(zs, ps)          # gy: along rows (southwards)
    norm = np.maximum(np.hypot(gx, gy), 1e-9)
    down = frame.crop(np.stack([-gx / norm, -gy / norm]))
    rel = frame.crop(T.rel_height)
    n = frame.n
    susc = 1.0 / (1.0 + np.exp(-(slope - 40.0) / 2.5)) * _LC_SUSCEPTIBILITY[land.lc]
    near_road = np.exp(-land.d_road / 60.0)
    bg = susc * (0.5 + (1.0 - rel)) * (1.0 + 1.5 * near_road)
    # Earthquake: topographic amplification near ridge crests, shaking fading eastwards.
    shake = 1.0 - 0.3 * (np.arange(n) / max(n - 1, 1))[None, :]
    ev = susc * (0.3 + 1.7 * rel ** 1.5) * shake
    return _Slopes(slope, ps, down, susc, bg, ev)


def _sample_sites(weight: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct pixels drawn with probability ~ ``weight`` (Gumbel top-k); (k, 2) rc."""
    w = weight.ravel()
    k = min(k, int(np.count_nonzero(w > 0)))
    if k <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    with np.errstate(divide="ignore"):
        key = np.log(w) + rng.gumbel(size=w.size)
    top = np.argpartition(-key, k - 1)[:k]
    top = top[np.argsort(-key[top], kind="stable")]
    return np.column_stack(np.divmod(top, weight.shape[1]))


def _arc(centre: np.ndarray, r: float, a0: float, a1: float, n: int = 7) -> np.ndarray:
    t = np.linspace(a0, a1, n)[1:-1]
    return centre + r * np.column_stack([np.cos(t), np.sin(t)])


def _outline(path_px: np.ndarray, radii_m: np.ndarray, grid: PixelGrid) -> BaseGeometry:
    """A ribbon of varying half-width ``radii_m`` along a path, with round ends.

    Built as one ring (left bank, toe cap, right bank, crown cap) and repaired where a
    tight bend makes it cross itself: a smooth elongated polygon in map coordinates.
    """
    a, b, c, d, e, f = grid.transform
    xs = c + a * path_px[:, 0] + b * path_px[:, 1]
    ys = f + d * path_px[:, 0] + e * path_px[:, 1]
    P = np.column_stack([xs, ys])
    r = np.asarray(radii_m, dtype=np.float64)
    keep = np.concatenate([[True], np.hypot(*np.diff(P, axis=0).T) > 1e-6])
    P, r = P[keep], r[keep]
    if len(P) < 2:
        return shapely.Point(P[0]).buffer(float(r[0]), quad_segs=6)
    t = np.gradient(P, axis=0)
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-12)[:, None]
    nrm = np.column_stack([-t[:, 1], t[:, 0]])
    left, right = P + nrm * r[:, None], P - nrm * r[:, None]
    a_end = math.atan2(nrm[-1, 1], nrm[-1, 0])
    a_start = math.atan2(-nrm[0, 1], -nrm[0, 0])
    ring = np.vstack([left, _arc(P[-1], r[-1], a_end, a_end - math.pi), right[::-1],
                      _arc(P[0], r[0], a_start, a_start - math.pi)])
    poly = shapely.Polygon(ring)
    if not poly.is_valid:
        poly = shapely.union_all(shapely.get_parts(shapely.make_valid(poly)))
        poly = shapely.union_all([g for g in shapely.get_parts(poly)
                                  if g.geom_type == "Polygon"])
    return poly


def _trace(start: np.ndarray, length: float, step: float, S: _Slopes, lateral: float,
           stop_slope: float, uphill: bool = False) -> tuple[np.ndarray, float]:
    """Follow the steepest descent (or ascent) from ``start`` (col, row) for ``length`` m.

    Going down, the mass stops where the ground gets gentler than ``stop_slope`` degrees
    (once 30% of the way is done); going up (to move a crown), the climb stops below such
    gentle ground (ridge shoulders). Both stop at the world's edge. Returns the path
    (pixels) and the distance travelled (m).
    """
    ps = float(S.res)
    n = S.slope.shape[0]
    pts = [start.astype(float)]
    pos = start.astype(float)
    travelled = 0.0
    sign = -1.0 if uphill else 1.0
    while travelled < length:
        r, c = int(pos[1]), int(pos[0])
        if not (0 <= r < n and 0 <= c < n):
            break
        d = sign * S.down[:, r, c]
        d = d + lateral * np.array([-d[1], d[0]])
        d /= max(math.hypot(d[0], d[1]), 1e-9)
        nxt = pos + d * (step / ps)
        if uphill:
            rn, cn = int(nxt[1]), int(nxt[0])
            if not (0 <= rn < n and 0 <= cn < n) or S.slope[rn, cn] < stop_slope:
                break
        pos = nxt
        travelled += step
        pts.append(pos.copy())
        if not uphill and travelled > 0.3 * length and S.slope[r, c] < stop_slope:
            break
    return np.array(pts), travelled


def _failure(crown: np.ndarray, area: float, ratio: float, debris_flow: bool, S: _Slopes,
             grid: PixelGrid, rng: np.random.Generator) -> tuple[object, float, float]:
    """Trace a landslide downslope from ``crown`` (col, row) and return its outline.

    The body follows the DEM's steepest descent for about ``sqrt(area * ratio)`` metres,
    narrow at the crown and widest in the body; debris flows are narrow and long with a
    fan at the toe. When the slope below is too short, the crown moves up the slope; if it
    is still short, the body widens a little and the landslide ends up smaller.

    Returns:
        ``(polygon in map coordinates, length m, mean width m)``.
    """
    ps = grid.res
    length = math.sqrt(area * ratio / 0.75)
    width = length / ratio
    step = max(0.7 * ps, length / 30.0)
    lateral = rng.normal(0.0, 0.15)
    stop = 8.0 if debris_flow else 18.0  # slides deposit at the toe, debris flows run on
    path, travelled = _trace(crown, length, step, S, lateral, stop)
    if travelled < 0.7 * length:
        up, climbed = _trace(crown, length - travelled, step, S, 0.0, 30.0, uphill=True)
        if climbed > 0:
            crown = up[-1]
            path, travelled = _trace(crown, length, step, S, lateral, stop)
    run = max(travelled, ps)
    if travelled < length and not debris_flow:  # stopped on gentle ground: spread sideways
        width = max(width, min(area / (0.75 * run), 0.7 * run))
    u = np.linspace(0.0, 1.0, len(path))
    if debris_flow:
        prof = np.where(u < 0.75, 0.45, 0.45 + 1.2 * (u - 0.75) / 0.25)
    else:
        prof = 0.55 + 0.5 * np.sin(np.pi * np.minimum(1.0, 0.15 + u))
    wig = 1.0 + 0.12 * _smooth1d(len(path), rng, 2.0)
    radii = width / 2.0 * prof * wig
    geom = _outline(path, np.maximum(radii, 0.6 * ps), grid)
    # Widths follow from a shape model; correct them once so the area is the drawn one,
    # without making the landslide wider than ~0.7 times its length.
    k = min(area / max(geom.area, 1e-6), 0.7 * run / max(radii.max() * 2.0, 1e-6))
    if abs(math.log(max(k, 1e-6))) > math.log(1.2):
        radii = radii * min(max(k, 0.25), 1.5)
        geom = _outline(path, np.maximum(radii, 0.6 * ps), grid)
    return geom, float(travelled), float(2.0 * radii.mean())


def _visible_years(area: float, rng: np.random.Generator) -> float:
    """How long a landslide stays mostly bare: 1-2 years when small, 4-6 when huge."""
    return max(1.05, (1.0 + 0.9 * math.log10(max(area, 300.0) / 300.0)) * rng.uniform(0.75, 1.35))


def _make_landslides(frame: _Frame, S: _Slopes, config: WorldConfig
                     ) -> tuple[list[_Landslide], dict[int, int]]:
    """Every landslide of the world with its failures, for the years and a few before."""
    grid = frame.grid
    seed = config.seed
    area_km2 = (grid.width * grid.res / 1000.0) ** 2
    first, event = config.years[0], config.event_year
    all_years = list(range(first - LEGACY_YEARS, first)) + list(config.years)
    rng = _rng(seed, "landslide-counts")
    counts: dict[int, int] = {}
    for y in all_years:
        if y == event:
            rate = EVENT_RATE
        elif y > event:
            rate = BACKGROUND_RATE * (1.0 + 1.5 * math.exp(-(y - event - 1) / 1.2))
        else:
            rate = BACKGROUND_RATE
        counts[y] = int(rng.poisson(rate * area_km2))
    total = sum(counts.values())
    # Areas: inverse-gamma, stratified (Latin hypercube) so the heavy tail is represented.
    rng = _rng(seed, "landslide-areas")
    u = (rng.permutation(total) + rng.uniform(size=total)) / max(total, 1)
    from scipy import stats  # ~0.4 s to import: only world generation needs it

    areas = np.minimum(stats.invgamma.isf(u, AREA_SHAPE, scale=AREA_SCALE), AREA_MAX)
    world_box = box(*grid.bounds)
    slides: list[_Landslide] = []
    k = 0
    next_id = 1
    for y in all_years:
        rng = _rng(seed, "landslide-sites", y)
        if y == event:
            weight = S.event_weight
        elif y > event:
            weight = 0.6 * S.bg_weight + 0.4 * S.event_weight
        else:
            weight = S.bg_weight
        sites = _sample_sites(weight, counts[y], rng)
        for r, c in sites:
            area = float(areas[k])
            k += 1
            ratio = float(np.clip(rng.lognormal(math.log(2.6), 0.35), 1.3, 7.0))
            debris = bool(rng.uniform() < 0.15)
            if debris:
                ratio *= 2.0
            crown = np.array([c + rng.uniform(), r + rng.uniform()])
            geom, length, width = _failure(crown, area, ratio, debris, S, grid, rng)
            geom = shapely.intersection(geom, world_box)
            if geom.is_empty or geom.area < 0.5 * grid.res ** 2:
                continue
            ls = _Landslide(next_id, y, float(rng.uniform(0.1, 0.8)),
                            float(rng.uniform(0.9, 1.12)))
            ls.history.append(_Disturbance(y, "new", geom, _visible_years(geom.area, rng),
                                           crown, length, width))
            slides.append(ls)
            next_id += 1
        if y > event:
            _reactivate(slides, y, S, grid, world_box, _rng(seed, "reactivations", y), event)
    return slides, counts


def _reactivate(slides: list[_Landslide], year: int, S: _Slopes, grid: PixelGrid,
                world_box: object, rng: np.random.Generator, event: int) -> None:
    """Some landslides fail again: the crown retreats upslope and the scar grows."""
    for ls in slides:
        last = ls.state(year - 1)
        if last is None or ls.trigger_year >= year or year - last.year > last.visible_years + 3:
            continue
        p = REACTIVATION_P * (1.7 if ls.trigger_year == event else 1.0)
        if rng.uniform() >= p:
            continue
        r, c = int(last.crown[1]), int(last.crown[0])
        n = grid.width
        if not (0 <= r < n and 0 <= c < n):
            continue
        back = rng.uniform(0.15, 0.4) * last.length / grid.res
        crown = last.crown - S.down[:, r, c] * back
        area = last.geometry.area * rng.uniform(1.2, 1.6)
        geom, length, width = _failure(crown, area, max(1.3, last.length / max(last.width, 1.0)),
                                       False, S, grid, rng)
        geom = shapely.intersection(shapely.union(geom, last.geometry), world_box)
        if geom.is_empty:
            continue
        ls.history.append(_Disturbance(year, "reactivated", geom,
                                       _visible_years(geom.area, rng), crown, length, width))


def _inventory_rows(slides: list[_Landslide], year: int) -> list[dict]:
    """The landslides visible in ``year`` (not yet more than half revegetated)."""
    rows = []
    for ls in slides:
        d = ls.state(year)
        if d is None or year - d.year >= d.visible_years:
            continue
        if d.year == year:
            status = "new" if d.kind == "new" else "reactivated"
        else:
            status = "active"
        rows.append({"id": ls.lid, "trigger_year": ls.trigger_year, "status": status,
                     "area_m2": float(d.geometry.area), "geometry": d.geometry})
    return rows


# ----------------------------------------------------------------------------- imagery
#: Endmembers of the linear mixing model, in the order of the fraction stack.
_ENDMEMBERS = ("forest", "shrub", "crop", "soil", "rock", "snow", "water", "gravel", "road",
               "roof")
_EM = {name: i for i, name in enumerate(_ENDMEMBERS)}
_N_VEG = 3  # the first three endmembers are vegetation (their NIR follows vigour)
_E = np.stack([SPECTRA[name] for name in _ENDMEMBERS], axis=1)  # (12, n_endmembers)
#: Native resolution (m) of each band, for the sensor's spatial response.
_NATIVE = np.array([60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 20, 20], dtype=np.float64)


def sun_position(date: dt.date, lat: float, lon: float, solar_hour: float = 10.5
                 ) -> tuple[float, float]:
    """Sun ``(azimuth, elevation)`` in degrees at a local solar time (Sentinel-2: ~10:30)."""
    doy = date.timetuple().tm_yday
    decl = math.radians(-23.44 * math.cos(2.0 * math.pi * (doy + 10) / 365.0))
    phi = math.radians(lat)
    hour = math.radians(15.0 * (solar_hour - 12.0))
    sin_e = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour)
    elev = math.asin(sin_e)
    cos_a = (math.sin(decl) - sin_e * math.sin(phi)) / (math.cos(elev) * math.cos(phi))
    az = math.degrees(math.acos(max(-1.0, min(1.0, cos_a))))
    if hour > 0:
        az = 360.0 - az
    return az, math.degrees(elev)


@dataclass
class _Textures:
    """Static within-class texture fields (the same surface every year)."""

    bright: np.ndarray
    density: np.ndarray
    vigour: np.ndarray
    patch: np.ndarray
    rough: np.ndarray


def _textures(shape: tuple[int, int], ps: float, seed: int) -> _Textures:
    rng = _rng(seed, "textures")
    return _Textures(
        bright=_fractal(shape, rng, 2.0, 600.0 / ps),
        density=_fractal(shape, rng, 2.2, 800.0 / ps),
        vigour=_fractal(shape, rng, 2.6, 2500.0 / ps),
        patch=_fractal(shape, rng, 1.6, 300.0 / ps),
        rough=rng.standard_normal(shape, dtype=np.float32),
    )


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """What a sensor with ``k`` x ``k`` bigger pixels sees, resampled back (nearest)."""
    h, w = a.shape
    H, W = math.ceil(h / k) * k, math.ceil(w / k) * k
    p = np.pad(a, ((0, H - h), (0, W - w)), mode="edge")
    m = p.reshape(H // k, k, W // k, k).mean(axis=(1, 3))
    return np.repeat(np.repeat(m, k, axis=0), k, axis=1)[:h, :w]


def _sensor_response(refl: np.ndarray, ps: float) -> None:
    """Blur each band to its native resolution (in place): 20 m and 60 m bands are blocky."""
    for b in range(refl.shape[0]):
        ratio = _NATIVE[b] / ps
        k = round(ratio)
        if k >= 2 and abs(ratio - k) < 1e-6:
            refl[b] = _block_mean(refl[b], k)
        else:
            refl[b] = ndi.gaussian_filter(refl[b], max(0.4, 0.45 * ratio))


def _fractions(lc: np.ndarray, land: _Land, tex: _Textures, dem: np.ndarray,
               params: dict, field_state: np.ndarray) -> np.ndarray:
    """Endmember fractions ``(n_endmembers, h, w)`` of the land cover in one year."""
    F = np.zeros((len(_ENDMEMBERS), *lc.shape), dtype=np.float32)

    def put(mask: np.ndarray, **parts: np.ndarray | float) -> None:
        for name, value in parts.items():
            F[_EM[name]][mask] = value[mask] if isinstance(value, np.ndarray) else value

    dens = np.clip(0.85 + 0.12 * tex.density, 0.45, 1.0)
    put(lc == FOREST, forest=dens, shrub=1.0 - dens)
    dry = np.clip(params["dryness"] + 0.12 * tex.patch, 0.0, 0.7)
    put(lc == SHRUB, shrub=1.0 - dry, soil=dry)
    lichen = np.clip(0.12 + 0.08 * tex.patch, 0.0, 0.3)
    put(lc == ROCK, rock=1.0 - lichen, shrub=lichen)
    put(lc == SNOW, snow=1.0)
    silt = np.clip(0.1 + 0.05 * tex.patch, 0.0, 0.25)
    put(lc == WATER, water=1.0 - silt, gravel=silt)
    bars = np.clip(0.08 + 0.08 * tex.patch, 0.0, 0.3)
    put(lc == GRAVEL, gravel=1.0 - bars, shrub=bars * 0.6, water=bars * 0.4)
    # A dirt road and its bare cut and fill slopes fill most of a 10 m pixel.
    put(lc == ROAD, road=np.full(lc.shape, 0.75, np.float32), shrub=0.15, forest=0.1)
    roofs = np.clip(0.5 + 0.2 * tex.patch, 0.2, 0.85)
    put(lc == SETTLEMENT, roof=roofs, crop=(1.0 - roofs) * 0.5, shrub=(1.0 - roofs) * 0.5)
    fields = lc == FIELDS
    state = field_state[land.parcels]  # 0 crop, 1 fallow (bare soil), 2 stubble
    crop = np.select([state == 0, state == 1], [0.8, 0.05], 0.25).astype(np.float32)
    soil = np.select([state == 0, state == 1], [0.2, 0.85], 0.5).astype(np.float32)
    put(fields, crop=crop, soil=soil, shrub=1.0 - crop - soil)
    # Seasonal snow below the permanent snow line.
    line = params["snowline"] + 60.0 * tex.vigour
    s = np.clip((dem - line) / 150.0, 0.0, 1.0).astype(np.float32)
    if s.any():
        F *= 1.0 - s
        F[_EM["snow"]] += s
    return F


def _landslide_layer(slides: list[_Landslide], year: int, grid: PixelGrid, dem: np.ndarray,
                     tex: _Textures) -> dict | None:
    """Bare fraction, material and zone of the scar pixels present in ``year``.

    Returns flat indices of the scar pixels and per-pixel values for them only: ``bare``
    (1 fresh .. 0 revegetated), ``u`` (0 crown .. 1 toe, from elevation), ``rocky`` and
    ``red`` (material), or None when there is no scar.
    """
    states = []
    for ls in slides:
        d = ls.state(year)
        if d is None:
            continue
        t = year - d.year
        rec = 1.0 - 2.0 ** (-t / d.visible_years)  # half recovered after visible_years
        if rec < 0.97:
            states.append((d.year, ls, d, rec, t))
    if not states:
        return None
    states.sort(key=lambda s: (s[0], s[1].lid))  # the most recent failure on top
    shapes = [(st[2].geometry, i + 1) for i, st in enumerate(states)]
    lab = features.rasterize(shapes, out_shape=grid.shape, transform=grid.affine, fill=0,
                             dtype="int32")
    inside = lab > 0
    if not inside.any():
        return None
    pix = np.flatnonzero(inside)
    lb = lab.ravel()[pix]
    z = dem.ravel()[pix]
    k = len(states) + 1
    zmax = np.full(k, -np.inf)
    zmin = np.full(k, np.inf)
    np.maximum.at(zmax, lb, z)
    np.minimum.at(zmin, lb, z)
    rec = np.array([0.0] + [s[3] for s in states])
    age = np.array([0.0] + [min(1.0, s[4]) for s in states])
    rocky = np.array([0.0] + [s[1].rockiness for s in states], dtype=np.float32)
    red = np.array([1.0] + [s[1].redness for s in states], dtype=np.float32)
    # Margins revegetate first: distance to the scar's edge.
    edge = ndi.distance_transform_edt(inside, sampling=grid.res).ravel()[pix]
    f = rec[lb] + age[lb] * 0.3 * np.exp(-edge / 15.0) + 0.08 * tex.patch.ravel()[pix]
    bare = (1.0 - np.clip(f, 0.0, 1.0)).astype(np.float32)
    u = ((zmax[lb] - z) / np.maximum(zmax[lb] - zmin[lb], 1.0)).astype(np.float32)
    return {"pix": pix, "bare": bare, "u": u, "rocky": rocky[lb], "red": red[lb]}


def _render_year(year: int, config: WorldConfig, frame: _Frame, T: _Terrain, land: _Land,
                 slides: list[_Landslide], tex: _Textures) -> tuple[np.ndarray, np.ndarray, dict]:
    """One Sentinel-2-like L2A image: ``(dn (12, h, w) uint16, cloud mask, metadata)``."""
    seed, ps, grid = config.seed, frame.ps, frame.grid
    shape = grid.shape
    dem = frame.crop(T.dem)
    rng = _rng(seed, "year", year)
    date = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(287, 336)))
    az, alt = sun_position(date, config.center_lat, config.center_lon)
    params = {
        "vigour": float(rng.uniform(0.9, 1.08)),
        "dryness": float(rng.uniform(0.05, 0.35)),
        "snowline": 3950.0 + float(rng.uniform(-350.0, 0.0)),
        "haze": float(rng.uniform(0.0, 0.025)),
        "gain": float(rng.uniform(0.97, 1.03)),
    }
    field_state = rng.choice(3, size=land.n_parcels + 1, p=[0.45, 0.35, 0.2])
    F = _fractions(land.lc, land, tex, dem, params, field_state)

    ls = _landslide_layer(slides, year, grid, dem, tex)
    mult = (1.0 + 0.05 * tex.bright).ravel()
    Fr = F.reshape(F.shape[0], -1)
    if ls is not None:
        pix, bare, u = ls["pix"], ls["bare"], ls["u"]
        scarp, deposit = u < 0.2, u > 0.65
        rocky = np.where(scarp, np.minimum(1.0, ls["rocky"] + 0.4), ls["rocky"])
        Fls = np.zeros((Fr.shape[0], pix.size), dtype=np.float32)
        Fls[_EM["rock"]] = rocky
        Fls[_EM["forest"]] = np.where(deposit, 0.08, 0.0)  # uprooted trees in the debris
        Fls[_EM["soil"]] = 1.0 - rocky - Fls[_EM["forest"]]
        # Revegetation: pioneer shrubs first, then the surrounding cover.
        keep = 1.0 - bare
        w_sh = 1.0 - keep ** 2
        veg = Fr[:, pix] * (1.0 - w_sh)
        veg[_EM["shrub"]] += w_sh
        Fr[:, pix] = bare * Fls + keep * veg
        m = mult[pix]
        m = np.where(scarp, m * (1.0 + 0.12 * bare), m)
        m = np.where(deposit, m * (1.0 + 0.22 * bare * tex.rough.ravel()[pix]), m)
        mult[pix] = m
    # Linear mixing; vegetation NIR/red follow the year's and the place's vigour.
    h, w = shape
    veg_part = _E[:, :_N_VEG] @ Fr[:_N_VEG]
    v = (params["vigour"] * (1.0 + 0.08 * tex.vigour)).reshape(1, -1) - 1.0
    refl = _E[:, _N_VEG:] @ Fr[_N_VEG:] + veg_part * (1.0 + _VIGOUR_RESPONSE[:, None] * v)
    refl = refl.reshape(12, h, w).astype(np.float32)
    del F, Fr, veg_part
    refl *= mult.reshape(h, w).astype(np.float32)
    if ls is not None:
        reddish = 1.0 + (ls["red"] - 1.0) * ls["bare"]
        for band, power in (("B4", 1.0), ("B5", 0.5)):
            flat = refl[_B[band]].reshape(-1)
            flat[ls["pix"]] *= reddish ** power

    # Terrain illumination for this date's sun: direct light ~ cos(i) / cos(zenith).
    hs = frame.crop(terrain.hillshade(T.dem, ps, azimuth=az, altitude=alt))
    ratio = ((hs - 1.0) / 254.0) / max(math.sin(math.radians(alt)), 0.05)
    direct = np.clip(ratio, 0.0, 2.5).astype(np.float32)

    cloud_alpha = np.zeros(shape, dtype=np.float32)
    shadow = np.zeros(shape, dtype=np.float32)
    meta: dict = {"date": date.isoformat(), "sun_azimuth": round(az, 2),
                  "sun_elevation": round(alt, 2), **{k: round(v, 4) for k, v in params.items()}}
    if config.clouds:
        crng = _rng(seed, "clouds", year)
        cover = float(crng.uniform(0.03, 0.25))
        field_ = _fractal(shape, crng, 3.2, 6000.0 / ps, max(2.0, 40.0 / ps)) \
            + 0.08 * _fractal(shape, crng, 2.2, 400.0 / ps, max(2.0, 30.0 / ps))
        thr = float(np.quantile(field_, 1.0 - cover))
        # Opaque cores, semi-transparent fringes ~ a hundred metres wide.
        cloud_alpha = (np.clip((field_ - thr) / 0.3 + 0.15, 0.0, 1.0) ** 0.8).astype(np.float32)
        height = float(crng.uniform(1500.0, 4500.0))
        off = height / math.tan(math.radians(alt)) / ps
        drow = off * math.cos(math.radians(az))        # shadows fall away from the sun
        dcol = -off * math.sin(math.radians(az))
        shadow = ndi.shift(cloud_alpha, (drow, dcol), order=1, mode="constant", cval=0.0)
        meta.update({"cloud_cover_target": round(cover, 4), "cloud_height_m": round(height)})
    for b in range(12):
        diff = _DIFFUSE[b]
        light = diff + (1.0 - diff) * direct * (1.0 - 0.85 * shadow)
        refl[b] *= light
    refl *= params["gain"]
    _sensor_response(refl, ps)
    haze_rng = _rng(seed, "haze", year)
    haze = params["haze"] * (0.6 + 0.4 * np.clip(
        _fractal(shape, haze_rng, 3.0, 8000.0 / ps, 500.0 / ps) * 0.5 + 0.5, 0.0, 1.0))
    if config.clouds:
        crng2 = _rng(seed, "cloud-texture", year)
        cloud_tex = 0.85 + 0.15 * _fractal(shape, crng2, 2.0, 1500.0 / ps)
        a = cloud_alpha
        for b in range(12):
            refl[b] = refl[b] * (1.0 - a) + a * SPECTRA["cloud"][b] * cloud_tex
    nrng = _rng(seed, "sensor-noise", year)
    for b in range(12):
        refl[b] += _HAZE[b] * haze
        sigma = 0.002 + 0.006 * np.abs(refl[b])
        refl[b] += sigma * nrng.standard_normal(shape, dtype=np.float32)
    np.clip(refl, 0.0, 1.5, out=refl)
    dn = np.clip(np.rint(refl * DN_SCALE), 1, 65535).astype(np.uint16)
    mask = np.zeros(shape, dtype=np.uint8)
    # Thin fringes, grown by one 60 m pixel: the coarse bands smear clouds that far.
    grow = 2 * math.ceil(60.0 / ps) + 1
    touched = ndi.maximum_filter(((cloud_alpha > 0.0) | (shadow > 0.0)).view(np.uint8),
                                 size=grow) > 0
    mask[touched] = 3
    mask[shadow > 0.2] = 2
    mask[cloud_alpha > 0.3] = 1
    meta["cloud_fraction"] = round(float((mask == 1).mean()), 4)
    meta["shadow_fraction"] = round(float((mask == 2).mean()), 4)
    return dn, mask, meta


# ----------------------------------------------------------------------------- outputs
FILES = {
    "dem": "dem.tif",
    "landcover": "landcover.tif",
    "aoi": "aoi.geojson",
    "train_area": "train_area.geojson",
    "study_area": "study_area.geojson",
    "world": "world.json",
}
#: Share of the world (its western part) set aside for training.
TRAIN_FRACTION = 0.4
#: Gap (pixels) between the training and study areas, so no patch with its halo spans both.
AREA_GAP_PX = 32


def s2_name(year: int) -> str:
    return f"s2_{year}.tif"


def clouds_name(year: int) -> str:
    return f"clouds_{year}.tif"


def inventory_name(year: int) -> str:
    return f"inventory_{year}.gpkg"


def _inventory_frame(rows: list[dict], crs: str):
    import geopandas as gpd
    import pandas as pd

    rows = sorted(rows, key=lambda r: r["id"])
    data = pd.DataFrame({
        "id": pd.Series([r["id"] for r in rows], dtype="int64"),
        "trigger_year": pd.Series([r["trigger_year"] for r in rows], dtype="int64"),
        "status": pd.Series([r["status"] for r in rows], dtype="object"),
        "area_m2": pd.Series([round(r["area_m2"], 2) for r in rows], dtype="float64"),
    })
    geoms = gpd.GeoSeries([r["geometry"] for r in rows], crs=crs)
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def _write_areas(out: str, grid: PixelGrid) -> dict:
    """The AOI, training and study areas as WGS 84 GeoJSON polygons."""
    import geopandas as gpd

    from pipelines.geo.inventory import write_inventory

    left, bottom, right, top = grid.bounds
    split = left + round(TRAIN_FRACTION * grid.width) * grid.res
    gap = min(AREA_GAP_PX * grid.res, 0.05 * (right - left))
    parts = {
        "aoi": box(left, bottom, right, top),
        "train_area": box(left, bottom, split - gap / 2.0, top),
        "study_area": box(split + gap / 2.0, bottom, right, top),
    }
    bounds = {}
    for name, geom in parts.items():
        g = gpd.GeoDataFrame({"name": [name]},
                             geometry=[shapely.segmentize(geom, 100.0)], crs=grid.crs)
        g = g.to_crs(WGS84)
        write_inventory(g, fsio.join(out, FILES[name]))
        bounds[name] = [round(v, 7) for v in g.total_bounds]
    return bounds


def generate_world(out: str, config: WorldConfig = WorldConfig()) -> dict:
    """Generate the synthetic world into ``out`` (local folder or ``gs://`` prefix).

    Args:
        out: Output folder.
        config: What to generate.

    Returns:
        The content written to ``world.json``.

    Raises:
        ConfigError: an invalid configuration.
        OutputError: ``out`` cannot be written.
    """
    from pipelines.geo.inventory import write_inventory

    t0 = time.monotonic()
    fsio.makedirs(out)
    grid = world_grid(config)
    ps = float(config.pixel_size)
    frame = _Frame(grid, max(8, round(160.0 / ps)), ps)
    log.info("Synthetic world: %d x %d px at %g m (%s), years %d-%d, event %d, seed %d.",
             grid.width, grid.height, ps, grid.crs, config.years[0], config.years[-1],
             config.event_year, config.seed)
    T = _make_terrain(frame, config.seed)
    dem = frame.crop(T.dem).astype(np.float32)
    land = _make_landcover(frame, T, config.seed)
    S = _slopes(frame, T, land)
    slides, _ = _make_landslides(frame, S, config)
    tex = _textures(grid.shape, ps, config.seed)
    log.info("Terrain, land cover and %d landslides in %.1f s.", len(slides),
             time.monotonic() - t0)

    tags = {"generator": f"landslide-mapper synthetic {GENERATOR_VERSION}",
            "seed": str(config.seed)}
    write_cog(fsio.join(out, FILES["dem"]), dem, grid, nodata=DEM_NODATA, band_names=["DEM"],
              profile=_FLOAT_COG, tags={**tags, "units": "m"})
    write_cog(fsio.join(out, FILES["landcover"]), land.lc, grid, nodata=0,
              band_names=["landcover"], profile=CATEGORICAL,
              tags={**tags, "legend": ",".join(f"{k}={v}" for k, v in LANDCOVER.items())})
    per_year: dict[str, dict] = {}
    images: dict[str, dict] = {}
    for i, year in enumerate(config.years):
        ty = time.monotonic()
        dn, mask, meta = _render_year(year, config, frame, T, land, slides, tex)
        write_cog(fsio.join(out, s2_name(year)), dn, grid, nodata=0,
                  band_names=list(SENTINEL2_BANDS), profile=_DN_COG,
                  tags={**tags, "date": meta["date"], "scale": repr(1.0 / DN_SCALE),
                        "product": "synthetic Sentinel-2 L2A surface reflectance"})
        write_cog(fsio.join(out, clouds_name(year)), mask, grid, nodata=None,
                  band_names=["clouds"], profile=CATEGORICAL,
                  tags={**tags, "legend": CLOUD_LEGEND})
        rows = _inventory_rows(slides, year)
        write_inventory(_inventory_frame(rows, grid.crs), fsio.join(out, inventory_name(year)))
        stats_y = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        per_year[str(year)] = {
            **stats_y,
            "visible": len(rows),
            "total_area_m2": round(sum(r["area_m2"] for r in rows), 1),
            "new_area_m2": round(sum(r["area_m2"] for r in rows if r["status"] == "new"), 1),
            "max_area_m2": round(max((r["area_m2"] for r in rows), default=0.0), 1),
        }
        images[str(year)] = meta
        el = time.monotonic() - t0
        log.info("Year %d: %d landslides visible (%d new), clouds %.0f%% - %.1f s "
                 "(%d/%d, ETA %.0f s).", year, len(rows), stats_y["new"],
                 100 * meta["cloud_fraction"], time.monotonic() - ty, i + 1, len(config.years),
                 el / (i + 1) * (len(config.years) - i - 1))
    area_bounds = _write_areas(out, grid)
    counts = np.bincount(land.lc.ravel(), minlength=len(LANDCOVER) + 1)
    world = {
        "generator": "landslide-mapper synthetic world",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "crs": grid.crs,
        "transform": list(grid.transform),
        "shape": [grid.height, grid.width],
        "width": grid.width,
        "height": grid.height,
        "pixel_size": ps,
        "bounds": list(grid.bounds),
        "bounds_wgs84": area_bounds,
        "years": list(config.years),
        "event_year": config.event_year,
        "bands": list(SENTINEL2_BANDS),
        "terrain_bands": list(TERRAIN_BANDS),
        "dn_scale": 1.0 / DN_SCALE,
        "nodata": 0,
        "dem_range_m": [round(float(dem.min()), 1), round(float(dem.max()), 1)],
        "landcover_legend": {str(k): v for k, v in LANDCOVER.items()},
        "landcover_fractions": {v: round(float(counts[k]) / land.lc.size, 4)
                                for k, v in LANDCOVER.items()},
        "landslides": per_year,
        "landslides_total": len(slides),
        "images": images,
        "files": {
            **{k: v for k, v in FILES.items()},
            "s2": {str(y): s2_name(y) for y in config.years},
            "clouds": {str(y): clouds_name(y) for y in config.years},
            "inventory": {str(y): inventory_name(y) for y in config.years},
        },
    }
    fsio.write_json(fsio.join(out, FILES["world"]), world)
    log.info("Synthetic world written to %s in %.1f s.", out, time.monotonic() - t0)
    return world


#: COG options: fast deflate for the big imagery, predictors for better compression.
_DN_COG = CogProfile(predictor=2)
_FLOAT_COG = CogProfile(predictor=3)


def generate_world_cli(out: str, seed: int, size_km: float, pixel_size: float, years: str,
                       clouds: bool, event_year: int) -> int:
    """``landslides synth``: generate the world; returns the exit code."""
    config = WorldConfig(seed=seed, size_km=size_km, pixel_size=pixel_size,
                         years=parse_years(years), event_year=event_year, clouds=clouds)
    world = generate_world(out, config)
    for year, c in world["landslides"].items():
        log.info("%s: %d visible landslides (%d new, %d active, %d reactivated), %.0f m2.",
                 year, c["visible"], c["new"], c["active"], c["reactivated"],
                 c["total_area_m2"])
    return 0


# ----------------------------------------------------------------------------- source
#: How a window spanning several of the world's years combines their images:
#: ``mosaic`` takes the most recent clear pixel, ``greenest`` the clear pixel with the
#: highest NDVI (a vegetation baseline: the state before a scar, if any year had none).
COMPOSITES = ("mosaic", "greenest")


class SyntheticSource(Source):
    """Years of the synthetic world as a source: 12 Sentinel-2 bands + terrain bands.

    Reads ``s2_<year>.tif`` (DN scaled to reflectance) and ``dem.tif`` (with slope, aspect,
    curvature and hillshade computed on the requested grid) onto any grid, through
    :class:`~pipelines.sources.geotiff.GeoTIFFSource` and ``TerrainSource``.

    Pixels under clouds and their shadows (classes 1-3 of ``clouds_<year>.tif``) are
    invalid, as the Earth Engine source masks Sentinel-2's SCL cloud, shadow and cirrus
    classes: one image a year has no clear view there, so they are nodata in exports
    (ignored labels) and predictions, never "no landslide". A date window that spans
    several years composites their images (``composite``), as Earth Engine composites the
    scenes of a window: a pixel is valid where any of them is clear.

    Args:
        world: The world's folder (local or ``gs://``), as written by :func:`generate_world`.
        year: One of the world's years, or several (a composite, most recent first).
        mask_clouds: Mask cloudy pixels (default); False keeps them as imagery.
        composite: ``mosaic`` or ``greenest`` (see :data:`COMPOSITES`), for several years.

    Raises:
        DataNotFoundError: ``world`` holds no ``world.json``.
        InputError: a year is not one of the world's years, or an unknown composite.
    """

    kind = "synthetic"

    def __init__(self, world: str, year: int | Sequence[int], mask_clouds: bool = True,
                 composite: str = "mosaic") -> None:
        from pipelines.errors import DataNotFoundError
        from pipelines.sources.geotiff import GeoTIFFSource, TerrainSource

        self.world = str(world).rstrip("/") or str(world)
        meta_path = fsio.join(self.world, FILES["world"])
        if not fsio.exists(meta_path):
            raise DataNotFoundError(
                f"{self.world!r} is not a synthetic world (no {FILES['world']}): generate one "
                f"with `landslides synth --out {self.world}`.")
        meta = fsio.read_json(meta_path)
        years = [int(y) for y in meta.get("years", [])]
        wanted = [year] if isinstance(year, (int, str, np.integer)) else list(year)
        try:
            self.years = tuple(sorted({int(y) for y in wanted}, reverse=True))
        except (TypeError, ValueError):
            raise InputError(f"year must be an integer, got {year!r}.") from None
        if not self.years:
            raise InputError("The synthetic source needs at least one year.")
        missing = [y for y in self.years if y not in years]
        if missing:
            raise InputError(
                f"Year {', '.join(map(str, sorted(missing)))} is not in the synthetic world "
                f"{self.world!r}; available years: {', '.join(map(str, years))}.")
        if composite not in COMPOSITES:
            raise InputError(f"Unknown composite {composite!r} of the synthetic source; use "
                             f"one of {', '.join(COMPOSITES)}.")
        self.year = self.years[0]
        self.composite = composite
        files = meta.get("files", {})
        dem = fsio.join(self.world, files.get("dem", FILES["dem"]))
        self.crs = meta.get("crs")
        self.generator_version = meta.get("generator_version")
        self._images = [GeoTIFFSource(
            fsio.join(self.world, files.get("s2", {}).get(str(y), s2_name(y))),
            resampling="bilinear") for y in self.years]
        self._terrain = TerrainSource(dem)
        self.mask_clouds = bool(mask_clouds)
        self._clouds = [GeoTIFFSource(
            fsio.join(self.world, files.get("clouds", {}).get(str(y), clouds_name(y))),
            band_map={"clouds": 1}, resampling="nearest", scale=1.0)
            for y in self.years] if self.mask_clouds else []

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(SENTINEL2_BANDS) + tuple(TERRAIN_BANDS)

    def _read_year(self, i: int, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        """One year's optical bands, cloudy pixels invalid (NaN)."""
        raster = self._images[i].read(grid, bands)
        if not self._clouds:
            return raster
        classes = self._clouds[i].read(grid, ("clouds",))
        cloudy = classes.valid & (classes.data[0] > 0)
        if not cloudy.any():
            return raster
        np.copyto(raster.data, np.nan, where=cloudy)
        return Raster(raster.data, raster.valid & ~cloudy, grid, bands)

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        optical = tuple(b for b in bands if b in SENTINEL2_BANDS)
        terrain = tuple(b for b in bands if b not in SENTINEL2_BANDS)
        data = np.full((len(bands), *grid.shape), np.nan, np.float32)
        valid = np.ones(grid.shape, bool)
        if optical:
            img = self._composite(grid, optical)
            for k, b in enumerate(optical):
                data[bands.index(b)] = img.data[k]
            valid &= img.valid
        if terrain:
            ter = self._terrain.read(grid, terrain)
            for k, b in enumerate(terrain):
                data[bands.index(b)] = ter.data[k]
            valid &= ter.valid
        if not valid.all():
            data[:, ~valid] = np.nan
        return Raster(data, valid, grid, bands)

    def _composite(self, grid: PixelGrid, optical: tuple[str, ...]) -> Raster:
        """The optical bands of the source's years, composited per pixel."""
        greenest = self.composite == "greenest" and len(self.years) > 1
        need = tuple(dict.fromkeys(optical + (("B4", "B8") if greenest else ())))
        best = self._read_year(0, grid, need)
        if len(self.years) == 1:
            return best if need == optical else best.select(optical)
        data, valid = best.data.copy(), best.valid.copy()
        score = _ndvi(data, need) if greenest else np.zeros(0, np.float32)
        for i in range(1, len(self.years)):
            if not greenest and valid.all():
                break
            other = self._read_year(i, grid, need)
            if greenest:
                s = _ndvi(other.data, need)
                take = other.valid & (~valid | (s > score))
                score = np.where(take, s, score)
            else:
                take = other.valid & ~valid  # the most recent clear pixel stays on top
            np.copyto(data, other.data, where=take)
            valid |= take
        out = Raster(data, valid, grid, need)
        return out if need == optical else out.select(optical)

    def open(self) -> None:
        for s in (*self._images, self._terrain, *self._clouds):
            s.open()

    def close(self) -> None:
        for s in (*self._images, self._terrain, *self._clouds):
            s.close()

    def describe(self) -> dict:
        d = {"kind": self.kind, "bands": list(self.bands), "world": self.world,
             "year": self.year, "crs": self.crs, "mask_clouds": self.mask_clouds,
             "generator_version": self.generator_version,
             # a world regenerated at the same path changes the run's signature
             "fingerprints": [fsio.fingerprint(fsio.join(self.world, FILES["world"]))]}
        if len(self.years) > 1:
            d.update({"years": sorted(self.years), "composite": self.composite})
        return d

    def footprint(self) -> tuple[str, tuple[float, float, float, float]] | None:
        return self._images[0].footprint()

    def covers(self, grid: PixelGrid) -> bool:
        return self._images[0].covers(grid) and self._terrain.covers(grid)

    def check_covers(self, region) -> None:
        self._images[0].check_covers(region)
        self._terrain.check_covers(region)


def _ndvi(data: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """NDVI of ``(bands, h, w)`` reflectances; -inf where undefined (loses every choice)."""
    from pipelines.geo.stack import index

    b4, b8 = data[bands.index("B4")], data[bands.index("B8")]
    out = index(b8, b4)
    out[~(np.isfinite(b4) & np.isfinite(b8))] = -np.inf
    return out

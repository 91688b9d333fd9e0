"""One Sentinel-2-like L2A image a year: the ground under that year's sun and sky.

:func:`render_year` takes the surface reflectance of the year (:mod:`.spectra`), lights
it for the acquisition date's sun over the DEM (direct light and diffuse sky light, cloud
shadows), adds clouds (:mod:`.clouds`), residual haze, the native 20/60 m resolution of
the red-edge/SWIR/aerosol bands and sensor noise, and quantises to uint16 DN.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
from scipy import ndimage as ndi

from pipelines.geo.terrain import hillshade
from pipelines.synth.clouds import Clouds, blend_clouds, clear_sky, cloud_mask, make_clouds
from pipelines.synth.config import WorldConfig
from pipelines.synth.frame import Frame
from pipelines.synth.landcover import Land
from pipelines.synth.landslides import Landslide
from pipelines.synth.noise import fractal, stream
from pipelines.synth.spectra import Textures, surface_reflectance
from pipelines.synth.terrain import Terrain

#: Reflectance is stored as uint16 DN = reflectance * DN_SCALE (nodata 0).
DN_SCALE = 10000.0
#: Diffuse (sky) share of the illumination per band: blue is the haziest.
_DIFFUSE = np.array([0.35, 0.30, 0.24, 0.20, 0.18, 0.16, 0.15, 0.14, 0.14, 0.14, 0.10, 0.08],
                    dtype=np.float32)
#: Spectral shape of the residual haze (path radiance) left by atmospheric correction.
_HAZE = np.array([1.0, 0.85, 0.6, 0.45, 0.38, 0.32, 0.28, 0.25, 0.24, 0.22, 0.08, 0.04],
                 dtype=np.float32)
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


def render_year(year: int, config: WorldConfig, frame: Frame, T: Terrain, land: Land,
                slides: list[Landslide], tex: Textures) -> tuple[np.ndarray, np.ndarray, dict]:
    """One Sentinel-2-like L2A image: ``(dn (12, h, w) uint16, cloud mask, metadata)``."""
    seed, ps, grid = config.seed, frame.ps, frame.grid
    shape = grid.shape
    dem = frame.crop(T.dem)
    rng = stream(seed, "year", year)
    date = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(287, 336)))
    az, alt = sun_position(date, config.center_lat, config.center_lon)
    params = {
        "vigour": float(rng.uniform(0.9, 1.08)),
        "dryness": float(rng.uniform(0.05, 0.35)),
        "snowline": 3950.0 + float(rng.uniform(-350.0, 0.0)),
        "haze": float(rng.uniform(0.0, 0.025)),
        "gain": float(rng.uniform(0.97, 1.03)),
    }
    refl = surface_reflectance(year, grid, dem, land, slides, tex, params, rng)

    # Terrain illumination for this date's sun: direct light ~ cos(i) / cos(zenith).
    hs = frame.crop(hillshade(T.dem, ps, azimuth=az, altitude=alt))
    ratio = ((hs - 1.0) / 254.0) / max(math.sin(math.radians(alt)), 0.05)
    direct = np.clip(ratio, 0.0, 2.5).astype(np.float32)

    meta: dict = {"date": date.isoformat(), "sun_azimuth": round(az, 2),
                  "sun_elevation": round(alt, 2), **{k: round(v, 4) for k, v in params.items()}}
    clouds: Clouds = make_clouds(shape, ps, seed, year, az, alt) if config.clouds \
        else clear_sky(shape)
    meta.update(clouds.meta)
    for b in range(12):
        diff = _DIFFUSE[b]
        light = diff + (1.0 - diff) * direct * (1.0 - 0.85 * clouds.shadow)
        refl[b] *= light
    refl *= params["gain"]
    _sensor_response(refl, ps)
    haze_rng = stream(seed, "haze", year)
    haze = params["haze"] * (0.6 + 0.4 * np.clip(
        fractal(shape, haze_rng, 3.0, 8000.0 / ps, 500.0 / ps) * 0.5 + 0.5, 0.0, 1.0))
    if config.clouds:
        blend_clouds(refl, clouds, ps, seed, year)
    nrng = stream(seed, "sensor-noise", year)
    for b in range(12):
        refl[b] += _HAZE[b] * haze
        sigma = 0.002 + 0.006 * np.abs(refl[b])
        refl[b] += sigma * nrng.standard_normal(shape, dtype=np.float32)
    np.clip(refl, 0.0, 1.5, out=refl)
    dn = np.clip(np.rint(refl * DN_SCALE), 1, 65535).astype(np.uint16)
    mask = cloud_mask(clouds, ps)
    meta["cloud_fraction"] = round(float((mask == 1).mean()), 4)
    meta["shadow_fraction"] = round(float((mask == 2).mean()), 4)
    return dn, mask, meta

"""What the ground reflects: class spectra, within-class texture and linear mixing.

Each land-cover class is a mix of endmember spectra (forest, shrub, crop, soil, rock,
snow, water, gravel, road, roof) whose fractions vary with texture fields, the year's
dryness, snow line and field rotation; landslide scars mix rock and soil, brighter at the
scarp and rougher in the deposit, and revegetate from their margins
(:func:`surface_reflectance`). Light, atmosphere, clouds and the sensor come after
(:mod:`pipelines.synth.imagery`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipelines.geo.bands import SENTINEL2_BANDS
from pipelines.geo.grid import PixelGrid
from pipelines.synth.landcover import (
    FIELDS,
    FOREST,
    GRAVEL,
    ROAD,
    ROCK,
    SETTLEMENT,
    SHRUB,
    SNOW,
    WATER,
    Land,
)
from pipelines.synth.landslides import Landslide, scar_raster
from pipelines.synth.noise import fractal, stream

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
#: Endmembers of the linear mixing model, in the order of the fraction stack.
_ENDMEMBERS = ("forest", "shrub", "crop", "soil", "rock", "snow", "water", "gravel", "road",
               "roof")
_EM = {name: i for i, name in enumerate(_ENDMEMBERS)}
_N_VEG = 3  # the first three endmembers are vegetation (their NIR follows vigour)
_E = np.stack([SPECTRA[name] for name in _ENDMEMBERS], axis=1)  # (12, n_endmembers)


@dataclass
class Textures:
    """Static within-class texture fields (the same surface every year)."""

    bright: np.ndarray
    density: np.ndarray
    vigour: np.ndarray
    patch: np.ndarray
    rough: np.ndarray


def make_textures(shape: tuple[int, int], ps: float, seed: int) -> Textures:
    """The world's texture fields, from their own stream of ``seed``."""
    rng = stream(seed, "textures")
    return Textures(
        bright=fractal(shape, rng, 2.0, 600.0 / ps),
        density=fractal(shape, rng, 2.2, 800.0 / ps),
        vigour=fractal(shape, rng, 2.6, 2500.0 / ps),
        patch=fractal(shape, rng, 1.6, 300.0 / ps),
        rough=rng.standard_normal(shape, dtype=np.float32),
    )


def _fractions(lc: np.ndarray, land: Land, tex: Textures, dem: np.ndarray,
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


def _landslide_layer(slides: list[Landslide], year: int, grid: PixelGrid, dem: np.ndarray,
                     tex: Textures) -> dict | None:
    """Bare fraction, material and zone of the scar pixels present in ``year``.

    Returns flat indices of the scar pixels and per-pixel values for them only: ``bare``
    (1 fresh .. 0 revegetated), ``u`` (0 crown .. 1 toe, from elevation), ``rocky`` and
    ``red`` (material), or None when there is no scar.
    """
    # the most recent failure on top; half recovered after visible_years
    lab, drawn = scar_raster(slides, year, grid)
    if not drawn:
        return None
    states = [(d.year, ls, d, rec, year - d.year) for ls, d, rec in drawn]
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


def surface_reflectance(year: int, grid: PixelGrid, dem: np.ndarray, land: Land,
                        slides: list[Landslide], tex: Textures, params: dict,
                        rng: np.random.Generator) -> np.ndarray:
    """Surface reflectance ``(12, h, w)`` float32 of the ground in ``year``.

    ``params`` holds the year's ``vigour``, ``dryness`` and ``snowline``; ``rng`` (the
    year's stream) draws the state of every field parcel (crop, fallow or stubble).
    """
    shape = grid.shape
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
    return refl

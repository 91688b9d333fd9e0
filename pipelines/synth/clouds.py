"""Clouds over one image: opacity, displaced shadows, blending and the cloud mask.

Each image's clouds come from their own streams of the seed (``clouds`` and
``cloud-texture``, per year), so a world without clouds is the same world with clear
skies. The mask (``clouds_<year>.tif``) has the classes of :data:`CLOUD_LEGEND`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from pipelines.synth.noise import fractal, stream
from pipelines.synth.spectra import SPECTRA

#: Classes of ``clouds_<year>.tif``.
CLOUD_LEGEND = "0=clear,1=cloud,2=cloud shadow,3=thin cloud or faint shadow"


@dataclass
class Clouds:
    """One image's clouds on the world grid."""

    alpha: np.ndarray         # float32 cloud opacity, 0 clear .. 1 opaque
    shadow: np.ndarray        # float32 shadow strength, 0 .. 1
    meta: dict = field(default_factory=dict)  # recorded in world.json's images


def clear_sky(shape: tuple[int, int]) -> Clouds:
    """No cloud and no shadow anywhere."""
    return Clouds(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))


def make_clouds(shape: tuple[int, int], ps: float, seed: int, year: int, sun_azimuth: float,
                sun_elevation: float) -> Clouds:
    """The clouds of ``year``'s image and their shadows, cast away from the sun."""
    az, alt = sun_azimuth, sun_elevation
    crng = stream(seed, "clouds", year)
    cover = float(crng.uniform(0.03, 0.25))
    field_ = fractal(shape, crng, 3.2, 6000.0 / ps, max(2.0, 40.0 / ps)) \
        + 0.08 * fractal(shape, crng, 2.2, 400.0 / ps, max(2.0, 30.0 / ps))
    thr = float(np.quantile(field_, 1.0 - cover))
    # Opaque cores, semi-transparent fringes ~ a hundred metres wide.
    cloud_alpha = (np.clip((field_ - thr) / 0.3 + 0.15, 0.0, 1.0) ** 0.8).astype(np.float32)
    height = float(crng.uniform(1500.0, 4500.0))
    off = height / math.tan(math.radians(alt)) / ps
    drow = off * math.cos(math.radians(az))        # shadows fall away from the sun
    dcol = -off * math.sin(math.radians(az))
    shadow = ndi.shift(cloud_alpha, (drow, dcol), order=1, mode="constant", cval=0.0)
    return Clouds(cloud_alpha, shadow,
                  {"cloud_cover_target": round(cover, 4), "cloud_height_m": round(height)})


def blend_clouds(refl: np.ndarray, clouds: Clouds, ps: float, seed: int, year: int) -> None:
    """Put the (textured) clouds over the reflectances ``(12, h, w)``, in place."""
    crng2 = stream(seed, "cloud-texture", year)
    cloud_tex = 0.85 + 0.15 * fractal(clouds.alpha.shape, crng2, 2.0, 1500.0 / ps)
    a = clouds.alpha
    for b in range(12):
        refl[b] = refl[b] * (1.0 - a) + a * SPECTRA["cloud"][b] * cloud_tex


def cloud_mask(clouds: Clouds, ps: float) -> np.ndarray:
    """The uint8 mask of :data:`CLOUD_LEGEND`: cores, shadows and grown thin fringes."""
    cloud_alpha, shadow = clouds.alpha, clouds.shadow
    mask = np.zeros(cloud_alpha.shape, dtype=np.uint8)
    # Thin fringes, grown by one 60 m pixel: the coarse bands smear clouds that far.
    grow = 2 * math.ceil(60.0 / ps) + 1
    touched = ndi.maximum_filter(((cloud_alpha > 0.0) | (shadow > 0.0)).view(np.uint8),
                                 size=grow) > 0
    mask[touched] = 3
    mask[shadow > 0.2] = 2
    mask[cloud_alpha > 0.3] = 1
    return mask

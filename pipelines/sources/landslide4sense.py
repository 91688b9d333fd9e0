"""Reading Landslide4Sense (L4S) archives (``landslides import-l4s`` turns them into shards).

The published layout is ``img/image_N.h5`` (dataset ``img``, 128 x 128 x 14 float: Sentinel-2
B1-B12 *including* B10, then slope and DEM from ALOS PALSAR) and, for labelled parts,
``mask/mask_N.h5`` (dataset ``mask``, 128 x 128, 1 = landslide). The values are the
dataset's own normalised numbers, not physical units, and the patches carry no
coordinates: records get ``crs=""`` and an identity transform, and splits are assigned
per patch by a seeded hash (spatial blocking is impossible without coordinates).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import DataNotFoundError, InputError
from pipelines.geo.patches import IGNORE, SPLITS, stable_unit

log = logging.getLogger(__name__)

L4S_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12",
             "slope", "DEM")
IDENTITY = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
#: The unit of every band in an L4S manifest's ``band_units``: not the band registry's
#: physical unit, so a model trained on these numbers is refused where physical units come
#: in (predict reads reflectance, metres and degrees from every source).
L4S_UNITS = "landslide4sense-normalised"
_NUM = re.compile(r"(\d+)")


@dataclass(frozen=True)
class L4SPair:
    """One patch's files: the image and (for labelled parts) its mask."""

    index: int
    image: str
    mask: str | None


def find_pairs(data_dir: str) -> list[L4SPair]:
    """List ``img/image_N.h5`` files and their ``mask/mask_N.h5`` partners, by N."""
    img_dir = Path(data_dir, "img")
    if not img_dir.is_dir():
        raise DataNotFoundError(
            f"{data_dir!r} has no img/ folder: expected the Landslide4Sense layout "
            f"img/image_N.h5 (+ mask/mask_N.h5)."
        )
    pairs = []
    for p in sorted(img_dir.glob("image_*.h5")):
        m = _NUM.search(p.stem)
        if not m:
            continue
        n = int(m.group(1))
        mask = Path(data_dir, "mask", f"mask_{n}.h5")
        pairs.append(L4SPair(n, str(p), str(mask) if mask.exists() else None))
    if not pairs:
        raise DataNotFoundError(f"No img/image_N.h5 files under {data_dir!r}.")
    return sorted(pairs, key=lambda q: q.index)


def read_pair(pair: L4SPair, bands: Sequence[str]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one patch: its pixels, labels and which pixels hold values.

    Unlabelled patches get an all-IGNORE mask. NaNs become 0 with IGNORE labels.

    Returns:
        ``(h, w, len(bands))`` float32 pixels, ``(h, w)`` uint8 labels and an ``(h, w)``
        bool array, True where every band of the pixel is finite (before NaNs became 0):
        the pixels band statistics may count, labelled or not.
    """
    import h5py

    idx = [L4S_BANDS.index(b) for b in bands]
    try:
        with h5py.File(pair.image, "r") as f:
            if "img" not in f:
                raise InputError(f"{pair.image!r} has no 'img' dataset (keys: {list(f)}).")
            img = np.asarray(f["img"], dtype=np.float32)
        if img.ndim != 3 or img.shape[-1] != len(L4S_BANDS):
            raise InputError(
                f"{pair.image!r} holds an array of shape {img.shape}; Landslide4Sense images "
                f"are (h, w, 14)."
            )
        if pair.mask:
            with h5py.File(pair.mask, "r") as f:
                if "mask" not in f:
                    raise InputError(f"{pair.mask!r} has no 'mask' dataset (keys: {list(f)}).")
                mask = np.asarray(f["mask"]).astype(np.uint8)
            if mask.shape != img.shape[:2]:
                raise InputError(f"{pair.mask!r} shape {mask.shape} != image {img.shape[:2]}.")
        else:
            mask = np.full(img.shape[:2], IGNORE, np.uint8)
    except OSError as exc:
        raise InputError(f"Cannot read Landslide4Sense file {pair.image!r}: {exc}") from exc
    img = img[..., idx]
    finite = np.asarray(np.isfinite(img).all(axis=-1))
    img[~np.isfinite(img)] = 0.0
    mask[~finite] = IGNORE
    return img, mask, finite


def assign_split(index: int, fractions: Sequence[float], seed: int) -> str:
    u = stable_unit("l4s", seed, index)
    edges = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(edges, u, side="right"))]

"""computePixels requests: cutting a read into blocks, the request's grid, decoding answers.

A read is split into row blocks (and band groups, and column blocks when one row is too
large) so that every request stays under Earth Engine's 48 MiB limit
(:func:`plan_blocks`); each block asks for exactly its part of the
:class:`~pipelines.geo.grid.PixelGrid` (:func:`grid_request`) and comes back as a NumPy
structured array, turned into float32 with NaN where masked (:func:`decode`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.windows import Window

from pipelines.errors import BandError, ConfigError, SourceError
from pipelines.geo.grid import PixelGrid
from pipelines.sources.earthengine.config import BYTES_PER_VALUE, EE_MAX_DIMENSION, NODATA

__all__ = ["Block", "decode", "describe_grid", "grid_request", "plan_blocks"]

@dataclass(frozen=True)
class Block:
    """One computePixels request: a band group and a window of the grid.

    Attributes:
        bands: ``(start, stop)`` indices into the requested bands.
        window: The block's rows and columns in the grid.
    """

    bands: tuple[int, int]
    window: Window


def _split(n: int, most: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into the fewest near-equal pieces of at most ``most``."""
    pieces = max(1, math.ceil(n / most))
    bounds = [round(i * n / pieces) for i in range(pieces + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(pieces)]


def plan_blocks(width: int, height: int, n_bands: int, max_bytes: int,
                max_dim: int = EE_MAX_DIMENSION) -> list[Block]:
    """Split a ``n_bands x height x width`` float32 read into requests under ``max_bytes``.

    Rows are split first (whole rows, all bands), then bands into groups, and columns
    only when one row of one band is over budget. The blocks tile the grid exactly once.
    """
    if min(width, height, n_bands) < 1:
        raise ConfigError(f"Nothing to read: {n_bands} bands on a {width}x{height} grid.")
    budget = max_bytes // BYTES_PER_VALUE  # values per request
    cols = max(1, min(width, max_dim, budget))
    group = max(1, min(n_bands, budget // cols))
    rows = max(1, min(height, max_dim, budget // (cols * group)))
    return [
        Block((b0, b1), Window(c0, r0, c1 - c0, r1 - r0))
        for b0, b1 in _split(n_bands, group)
        for r0, r1 in _split(height, rows)
        for c0, c1 in _split(width, cols)
    ]


def grid_request(grid: PixelGrid) -> dict:
    """The computePixels ``grid`` of a :class:`PixelGrid` (the exact affine transform)."""
    a, b, c, d, e, f = (float(v) for v in grid.transform)
    out: dict[str, Any] = {
        "dimensions": {"width": int(grid.width), "height": int(grid.height)},
        "affineTransform": {"scaleX": a, "shearX": b, "translateX": c,
                            "shearY": d, "scaleY": e, "translateY": f},
    }
    if re.fullmatch(r"(?i)epsg:\d+", grid.crs.strip()):
        out["crsCode"] = grid.crs.strip().upper()
    else:
        out["crsWkt"] = grid.crs
    return out


def describe_grid(grid: PixelGrid) -> str:
    """A short description of a grid for messages: CRS, size, pixel size and origin."""
    a, _, c, _, _, f = grid.transform
    return f"{grid.crs} {grid.width}x{grid.height} px of {a:g} m at ({c:.2f}, {f:.2f})"


def decode(result: Any, bands: tuple[str, ...], window: Window) -> np.ndarray:
    """Structured (possibly masked) NPY answer -> ``(bands, h, w)`` float32 with NaN."""
    shape = (int(window.height), int(window.width))
    if getattr(result, "shape", None) != shape or result.dtype.names is None:
        raise SourceError(f"Earth Engine answered an array of shape "
                          f"{getattr(result, 'shape', None)} / fields "
                          f"{getattr(getattr(result, 'dtype', None), 'names', None)}; "
                          f"expected {shape} with fields {list(bands)}.")
    missing = [b for b in bands if b not in result.dtype.names]
    if missing:
        raise BandError(f"Earth Engine's answer lacks band(s) {', '.join(missing)}; it has "
                        f"{', '.join(result.dtype.names)}.")
    out = np.empty((len(bands), *shape), dtype=np.float32)
    mask: Any = np.ma.getmaskarray(result) if isinstance(result, np.ma.MaskedArray) else None
    nodata = np.float32(NODATA)
    for i, name in enumerate(bands):
        values = np.asarray(np.ma.getdata(result[name]), dtype=np.float32)
        bad = ~np.isfinite(values) | (values == nodata)
        if mask is not None:
            bad |= mask[name] if mask.dtype.names else mask
        out[i] = np.where(bad, np.float32(np.nan), values)
    return out

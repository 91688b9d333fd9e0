"""Sliding windows on a global lattice and smooth weighted blending (pure numpy, no Beam).

Seamlessness by construction: window origins are multiples of the stride in *global*
pixel coordinates (counted from the grid origin :data:`~pipelines.geo.grid.ORIGIN_X`,
:data:`~pipelines.geo.grid.ORIGIN_Y` that also anchors the chunk keys). The blended value
of a pixel,

    p(x) = sum_k w_k(x) p_k(x) / sum_k w_k(x)   over every lattice window k covering x,

therefore depends only on the pixel and the imagery around it, never on how the region
was cut into chunks, as long as each chunk is read with a halo that holds every lattice
window touching its interior (:meth:`Lattice.halo`). The weight is a separable Hann
window raised by a small floor, so window edges (where a network sees least context)
count least but never zero; with 50% overlap the Hann parts sum to a constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.errors import ConfigError
from pipelines.geo.grid import ORIGIN_X, ORIGIN_Y, PixelGrid

#: Default weight floor: a window's corner pixels still weigh 1% of its centre.
WEIGHT_FLOOR = 0.01


@dataclass(frozen=True)
class Lattice:
    """Square windows of side ``window`` whose origins are multiples of ``stride``.

    Attributes:
        window: Window side in pixels (the model's input size).
        stride: Step between window origins, ``1 <= stride <= window``.
        floor: Weight floor in ``(0, 1]`` (see :func:`window_weight`).
    """

    window: int
    stride: int
    floor: float = WEIGHT_FLOOR

    def __post_init__(self) -> None:
        if int(self.window) != self.window or self.window < 1:
            raise ConfigError(f"window must be a positive number of pixels, got {self.window!r}.")
        if int(self.stride) != self.stride or not 1 <= self.stride <= self.window:
            raise ConfigError(
                f"stride must be between 1 and the window ({self.window}) pixels, got "
                f"{self.stride!r}: an overlap in [0, 1) gives one."
            )
        if not 0.0 < self.floor <= 1.0:
            raise ConfigError(f"weight floor must be in (0, 1], got {self.floor!r}.")

    @classmethod
    def from_overlap(cls, window: int, overlap: float, floor: float = WEIGHT_FLOOR) -> Lattice:
        """The lattice of windows of side ``window`` overlapping by the fraction ``overlap``."""
        if not (isinstance(overlap, int | float) and 0.0 <= overlap < 1.0):
            raise ConfigError(
                f"overlap must be a fraction in [0, 1) (0.5 = half a window), got {overlap!r}."
            )
        stride = max(1, round(window * (1.0 - overlap)))
        return cls(int(window), min(stride, int(window)), floor)

    @property
    def overlap(self) -> float:
        return 1.0 - self.stride / self.window

    def origins(self, start: int, stop: int) -> np.ndarray:
        """Global origins (1-D) of every lattice window touching pixels ``[start, stop)``."""
        first = math.ceil((start - self.window + 1) / self.stride)
        last = (stop - 1) // self.stride
        return np.arange(first, last + 1, dtype=np.int64) * self.stride

    def halo(self, chunk_size: int) -> int:
        """Context pixels a chunk of ``chunk_size`` needs so every window touching it fits.

        Tight (``window - stride`` or a multiple of the stride) when ``chunk_size`` is a
        multiple of the stride, so chunk edges fall on the lattice; ``window`` otherwise.
        """
        if chunk_size % self.stride:
            return self.window
        below = ((self.window - 1) // self.stride) * self.stride
        above = self.window - self.stride
        return max(below, above, 0)

    def to_dict(self) -> dict:
        return {"window": self.window, "stride": self.stride, "floor": self.floor,
                "overlap": round(self.overlap, 6)}


def window_weight(size: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """The ``(size, size)`` float32 blending weight: separable Hann window plus ``floor``.

    ``w(i) = floor + (1 - floor) * sin^2(pi * (i + 0.5) / size)`` per axis, outer product.
    Symmetric, largest at the centre, strictly positive everywhere.
    """
    if size < 1:
        raise ConfigError(f"window size must be positive, got {size}.")
    i = np.arange(size, dtype=np.float64)
    w1 = floor + (1.0 - floor) * np.sin(np.pi * (i + 0.5) / size) ** 2
    return np.outer(w1, w1).astype(np.float32)


def global_offset(grid: PixelGrid) -> tuple[int, int]:
    """Global ``(row, col)`` of ``grid``'s top-left pixel, counted from the chunk origin.

    Raises:
        ConfigError: the grid is rotated or not aligned to whole pixels of the origin.
    """
    a, b, c, d, e, f = grid.transform
    if b or d or a <= 0 or e >= 0 or not math.isclose(a, -e, rel_tol=1e-9):
        raise ConfigError(
            f"Blending needs a north-up grid with square pixels, got {grid.transform}.")
    col = (c - ORIGIN_X) / a
    row = (ORIGIN_Y - f) / a
    rc, cc = round(row), round(col)
    if abs(row - rc) > 1e-6 or abs(col - cc) > 1e-6:
        raise ConfigError(
            f"Grid origin ({c}, {f}) is not on the {a} m pixel lattice anchored at "
            f"({ORIGIN_X}, {ORIGIN_Y}); plan grids with pipelines.geo.grid."
        )
    return int(rc), int(cc)


def _rect_any(mask: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray,
              c1: np.ndarray) -> np.ndarray:
    """Whether each rectangle ``[r0, r1) x [c0, c1)`` of ``mask`` holds a True pixel."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    total = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return total > 0


def chunk_windows(lattice: Lattice, read_grid: PixelGrid, halo: int,
                  needed: np.ndarray | None = None) -> np.ndarray:
    """Origins, in ``read_grid`` pixels, of the lattice windows touching the chunk interior.

    Args:
        lattice: The window lattice.
        read_grid: The chunk grid grown by ``halo`` on every side.
        halo: Halo width in pixels.
        needed: Optional ``(h, w)`` bool mask of the *interior*: windows that cover none of
            its True pixels are left out (they cannot change any output pixel).

    Returns:
        ``(n, 2)`` int64 ``(row, col)`` origins, in raster order.

    Raises:
        ConfigError: the halo is too small for the lattice (a window would leave the read
            grid), or ``needed`` does not match the interior.
    """
    g_row, g_col = global_offset(read_grid)
    h, w = read_grid.height - 2 * halo, read_grid.width - 2 * halo
    if h <= 0 or w <= 0:
        raise ConfigError(f"halo {halo} leaves no interior in a {read_grid.shape} read grid.")
    rows = lattice.origins(g_row + halo, g_row + halo + h) - g_row
    cols = lattice.origins(g_col + halo, g_col + halo + w) - g_col
    if rows[0] < 0 or cols[0] < 0 or rows[-1] + lattice.window > read_grid.height \
            or cols[-1] + lattice.window > read_grid.width:
        raise ConfigError(
            f"halo {halo} is too small for {lattice.window}-px windows with stride "
            f"{lattice.stride}; use at least {lattice.halo(h)}."
        )
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    origins = np.stack([rr.ravel(), cc.ravel()], axis=1)
    if needed is not None:
        needed = np.asarray(needed, dtype=bool)
        if needed.shape != (h, w):
            raise ConfigError(f"needed mask {needed.shape} does not match the interior {(h, w)}.")
        r0 = np.clip(origins[:, 0] - halo, 0, h)
        r1 = np.clip(origins[:, 0] - halo + lattice.window, 0, h)
        c0 = np.clip(origins[:, 1] - halo, 0, w)
        c1 = np.clip(origins[:, 1] - halo + lattice.window, 0, w)
        origins = origins[_rect_any(needed, r0, r1, c0, c1)]
    return origins


def cut_windows(image: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """Stack the ``(size, size)`` windows of an ``(h, w, c)`` image: ``(n, size, size, c)``."""
    out = np.empty((len(origins), size, size, image.shape[2]), dtype=image.dtype)
    for i, (r, c) in enumerate(origins):
        out[i] = image[r:r + size, c:c + size]
    return out


def blend(probs: np.ndarray, origins: np.ndarray, weight: np.ndarray, halo: int,
          shape: tuple[int, int]) -> np.ndarray:
    """Blend window predictions onto the chunk interior.

    Args:
        probs: ``(n, s, s)`` predictions of the windows at ``origins``.
        origins: ``(n, 2)`` origins in read-grid pixels (see :func:`chunk_windows`).
        weight: ``(s, s)`` blending weight (see :func:`window_weight`).
        halo: Halo of the read grid.
        shape: ``(h, w)`` of the interior.

    Returns:
        ``(h, w)`` float32 weighted mean; NaN where no window covers a pixel.
    """
    probs = np.asarray(probs, dtype=np.float32)
    n, s = probs.shape[0], weight.shape[0]
    if probs.shape[1:] != weight.shape or len(origins) != n:
        raise ConfigError(
            f"{probs.shape} predictions for {len(origins)} windows of {weight.shape}.")
    h, w = shape
    acc = np.zeros(shape, dtype=np.float64)
    wsum = np.zeros(shape, dtype=np.float64)
    for k in range(n):
        r, c = int(origins[k, 0]) - halo, int(origins[k, 1]) - halo
        r0, r1, c0, c1 = max(r, 0), min(r + s, h), max(c, 0), min(c + s, w)
        if r1 <= r0 or c1 <= c0:
            continue
        wk = weight[r0 - r:r1 - r, c0 - c:c1 - c]
        acc[r0:r1, c0:c1] += wk * probs[k, r0 - r:r1 - r, c0 - c:c1 - c]
        wsum[r0:r1, c0:c1] += wk
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(wsum > 0, acc / np.where(wsum > 0, wsum, 1.0), np.nan)
    return out.astype(np.float32)


__all__ = [
    "WEIGHT_FLOOR",
    "Lattice",
    "blend",
    "chunk_windows",
    "cut_windows",
    "global_offset",
    "window_weight",
]

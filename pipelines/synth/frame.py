"""Where the world lies: its UTM pixel grid and the padded working frame around it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyproj import Transformer

from pipelines.geo.grid import WGS84, PixelGrid
from pipelines.synth.config import WorldConfig


@dataclass(frozen=True)
class Frame:
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

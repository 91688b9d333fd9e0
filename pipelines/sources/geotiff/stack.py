"""Stacks of sources: the :class:`StackSource`.

It puts the bands of several sources side by side (e.g. Sentinel-2 GeoTIFFs and the
terrain of a DEM); any :class:`~pipelines.sources.base.Source` can be a part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipelines.errors import BandError, ConfigError
from pipelines.geo.grid import PixelGrid, Region
from pipelines.sources.base import Raster, Source

if TYPE_CHECKING:
    from pipelines.workers import WorkerLayout

__all__ = ["StackSource"]


class StackSource(Source):
    """The bands of several sources side by side (e.g. Sentinel-2 GeoTIFFs + terrain).

    A band provided by several sources is read from the first one that has it. A read is
    split per source, the parts are stacked in the requested order and the valid masks are
    AND-ed.

    Args:
        sources: The sources, in priority order.
    """

    kind = "stack"

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)
        if not self.sources:
            raise ConfigError("A stack needs at least one source.")
        for s in self.sources:
            if not isinstance(s, Source):
                raise ConfigError(f"StackSource takes Source objects, got {s!r}.")

    @property
    def bands(self) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for s in self.sources:
            out.update(dict.fromkeys(s.bands))
        return tuple(out)

    def owner(self, band: str) -> Source:
        """The source a band is read from (the first one providing it)."""
        for s in self.sources:
            if band in s.bands:
                return s
        raise BandError(f"No source of the stack provides band {band}.")

    def open(self) -> None:
        for s in self.sources:
            s.open()

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def for_workers(self, layout: WorkerLayout) -> None:
        for s in self.sources:
            s.for_workers(layout)

    def describe(self) -> dict:
        return {"kind": self.kind, "bands": list(self.bands),
                "sources": [s.describe() for s in self.sources]}

    def covers(self, grid: PixelGrid) -> bool:
        """True when every part that can tell overlaps ``grid``."""
        return all(s.covers(grid) for s in self.sources if hasattr(s, "covers"))

    def check_covers(self, region: Region) -> None:
        for s in self.sources:
            check = getattr(s, "check_covers", None)
            if check is not None:
                check(region)

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        groups: dict[int, list[str]] = {}
        for band in bands:
            groups.setdefault(id(self.owner(band)), []).append(band)
        layers: dict[str, np.ndarray] = {}
        valid: np.ndarray = np.ones(grid.shape, dtype=bool)
        for s in self.sources:
            names = groups.get(id(s))
            if not names:
                continue
            part = s.read(grid, names)
            valid &= part.valid
            layers.update({n: part.band(n) for n in names})
        data = np.stack([layers[b] for b in bands], dtype=np.float32)  # a new array
        if not valid.all():
            np.copyto(data, np.nan, where=~valid)
        return Raster(data, valid, grid, bands)

"""The source interface.

A source knows which bands it can provide and reads any :class:`PixelGrid` (any projected
CRS, any transform) into a :class:`Raster`: float32 values in physical units, in the
requested band order, plus a boolean valid-pixel mask. Sources are plain picklable
objects holding configuration only; clients and open datasets are created lazily by
:meth:`Source.open` (a Beam DoFn calls it in ``setup``) and released by :meth:`close`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.geo import bands as bandreg
from pipelines.geo.grid import PixelGrid

if TYPE_CHECKING:
    from pipelines.workers import WorkerLayout


@dataclass
class Raster:
    """Pixels read from a source.

    Attributes:
        data: ``(bands, height, width)`` float32 in physical units; invalid pixels hold NaN.
        valid: ``(height, width)`` bool, True where every band has a valid value.
        grid: The pixel grid the data lies on.
        bands: Band names, in the order of ``data``.
    """

    data: np.ndarray
    valid: np.ndarray
    grid: PixelGrid
    bands: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.shape[1:] != self.grid.shape:
            raise ValueError(
                f"Raster data shape {self.data.shape} does not match grid {self.grid.shape}."
            )
        if len(self.bands) != self.data.shape[0]:
            raise ValueError(f"{len(self.bands)} band names for {self.data.shape[0]} bands.")

    def band(self, name: str) -> np.ndarray:
        return self.data[self.bands.index(name)]

    def select(self, names: Sequence[str]) -> Raster:
        bandreg.require(self.bands, names, "raster")
        idx = [self.bands.index(n) for n in names]
        return Raster(self.data[idx], self.valid, self.grid, tuple(names))

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


class Source(abc.ABC):
    """An imagery source. Subclasses implement :meth:`bands` and :meth:`_read`."""

    #: Short name recorded in manifests (``geotiff``, ``synthetic``, ``earthengine``...).
    kind: str = "source"

    @property
    @abc.abstractmethod
    def bands(self) -> tuple[str, ...]:
        """The canonical names of every band this source can provide."""

    @abc.abstractmethod
    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        """Read validated bands onto ``grid``."""

    def read(self, grid: PixelGrid, bands: Sequence[str]) -> Raster:
        """Read ``bands`` (any known names or aliases) onto ``grid``.

        Raises:
            BandError: a band is unknown or not provided by this source.
        """
        names = bandreg.resolve(bands)
        bandreg.require(self.bands, names, f"{self.kind} source")
        return self._read(grid, names)

    def open(self) -> None:
        """Create clients / open datasets (called once per worker). Idempotent."""

    def close(self) -> None:
        """Release what :meth:`open` created. Idempotent."""

    def for_workers(self, layout: WorkerLayout) -> None:
        """Adapt to the workers that will read this source (on the launcher, before launch).

        E.g. the Earth Engine source takes its worker processes' part of the job's request
        budget. The default does nothing; sources made of sources pass it on.

        Raises:
            ConfigError: the source cannot be read by those workers as configured.
        """

    def describe(self) -> dict:
        """A JSON-able description for manifests and run records."""
        return {"kind": self.kind, "bands": list(self.bands)}

    def footprint(self) -> tuple[str, tuple[float, float, float, float]] | None:
        """``(crs, bounds)`` of the data, if known, to reject regions outside it early."""
        return None

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_bounds(bounds: Sequence[float]) -> str:
    """``(minx, miny, maxx, maxy)`` rounded for messages (six significant digits)."""
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"

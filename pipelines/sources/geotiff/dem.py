"""Terrain from a DEM file: the :class:`TerrainSource`.

It derives slope, aspect, curvature and hillshade from a DEM read with
:class:`~pipelines.sources.geotiff.source.GeoTIFFSource`. The DEM is read on the target
grid grown by one pixel, the products come from :mod:`pipelines.geo.terrain` and the extra
pixel is cropped, so the edge pixels of a chunk are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio

from pipelines import fsio
from pipelines.errors import CRSError
from pipelines.geo import bands as bandreg
from pipelines.geo import terrain
from pipelines.geo.grid import PixelGrid, Region
from pipelines.sources.base import Raster, Source
from pipelines.sources.geotiff.source import GeoTIFFSource

__all__ = ["TerrainSource"]


class TerrainSource(Source):
    """A DEM and the terrain products derived from it, on any projected grid.

    The DEM is read with :class:`GeoTIFFSource` (band 1 as ``DEM``, bilinear) on the target
    grid grown by one pixel; slope, aspect, curvature and hillshade come from
    :func:`pipelines.geo.terrain.terrain_products` at the grid's pixel size and the extra
    pixel is cropped, so edge pixels are computed from their real neighbours. A DEM that
    declares GDAL's scale/offset (e.g. decimetres stored with scale 0.1) is read in the
    units they give.

    Args:
        dem: DEM path(s) or glob pattern(s), as for :class:`GeoTIFFSource`.
        nodata: Elevation value marking missing data, overriding the file's nodata (e.g. 0
            for DEMs that are 0 outside their area).
        z_factor: Multiplier of elevations (e.g. 0.3048 for feet).
    """

    kind = "dem"

    def __init__(self, dem: str | Sequence[str], nodata: float | None = None,
                 z_factor: float = 1.0) -> None:
        self.z_factor = terrain._check_z_factor(z_factor)
        self.dem = GeoTIFFSource(dem, band_map={"DEM": 1}, nodata=nodata, resampling="bilinear")

    @property
    def bands(self) -> tuple[str, ...]:
        return bandreg.TERRAIN_BANDS

    def open(self) -> None:
        self.dem.open()

    def close(self) -> None:
        self.dem.close()

    def describe(self) -> dict:
        scaling = self.dem.declared_scaling()  # e.g. a DEM stored in decimetres
        return {"kind": self.kind, "bands": list(self.bands), "dem": list(self.dem.paths),
                "files": list(self.dem.files),
                "fingerprints": [fsio.fingerprint(f) for f in self.dem.files],
                "nodata": self.dem.nodata,
                "z_factor": self.z_factor, "scale": self.dem.scale,
                **({"declared_scaling": scaling} if scaling else {})}

    def footprint(self) -> tuple[str, tuple[float, float, float, float]]:
        return self.dem.footprint()

    def covers(self, grid: PixelGrid) -> bool:
        return self.dem.covers(grid)

    def coverage(self, grid: PixelGrid) -> float:
        return self.dem.coverage(grid)

    def check_covers(self, region: Region) -> None:
        self.dem.check_covers(region)

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        products = [b for b in bands if b != "DEM"]
        if not products:
            return self.dem.read(grid, bands)
        a, b, _, d, e, _ = grid.transform
        if b or d:
            raise CRSError(f"Terrain needs a north-up grid; got transform {grid.transform}.")
        if rasterio.crs.CRS.from_user_input(grid.crs).is_geographic:
            raise CRSError(f"Terrain needs a projected grid in metres, got {grid.crs}; read "
                           f"onto a UTM grid (see pipelines.geo.grid.utm_epsg).")
        halo = grid.buffered(1)
        dem = self.dem.read(halo, ("DEM",)).data[0]
        derived = terrain.terrain_products(dem, (abs(a), abs(e)), products, self.z_factor)
        layers = {"DEM": dem[1:-1, 1:-1], **{p: v[1:-1, 1:-1] for p, v in derived.items()}}
        data = np.stack([layers[name] for name in bands], dtype=np.float32)
        valid = np.asarray(np.isfinite(data).all(axis=0))
        if not valid.all():
            np.copyto(data, np.nan, where=~valid)
        return Raster(data, valid, grid, bands)

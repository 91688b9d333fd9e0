"""The synthetic world as an imagery source: :class:`SyntheticSource`.

Reads a world folder written by :func:`pipelines.synth.generate_world` (the simulator
lives in :mod:`pipelines.synth`; this module only reads what it wrote).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines import fsio
from pipelines.errors import InputError
from pipelines.geo.bands import SENTINEL2_BANDS, TERRAIN_BANDS
from pipelines.geo.grid import PixelGrid
from pipelines.sources.base import Raster, Source
from pipelines.synth import FILES, clouds_name, s2_name

#: How a window spanning several of the world's years combines their images:
#: ``mosaic`` takes the most recent clear pixel, ``greenest`` the clear pixel with the
#: highest NDVI (a vegetation baseline: the state before a scar, if any year had none),
#: ``barest`` the clear pixel with the lowest NDVI (a scar at its freshest, if any year
#: had one: what a scar's recovery is measured from).
COMPOSITES = ("mosaic", "greenest", "barest")


class SyntheticSource(Source):
    """Years of the synthetic world as a source: 12 Sentinel-2 bands + terrain bands.

    Reads ``s2_<year>.tif`` (DN scaled to reflectance) and ``dem.tif`` (with slope, aspect,
    curvature and hillshade computed on the requested grid) onto any grid, through
    :class:`~pipelines.sources.geotiff.GeoTIFFSource` and ``TerrainSource``.

    Pixels under clouds and their shadows (classes 1-3 of ``clouds_<year>.tif``) are
    invalid, as the Earth Engine source masks Sentinel-2's SCL cloud, shadow and cirrus
    classes: one image a year has no clear view there, so they are nodata in exports
    (ignored labels) and predictions, never "no landslide". A date window that spans
    several years composites their images (``composite``), as Earth Engine composites the
    scenes of a window: a pixel is valid where any of them is clear.

    Args:
        world: The world's folder (local or ``gs://``), as written by
            :func:`~pipelines.synth.generate_world`.
        year: One of the world's years, or several (a composite, most recent first).
        mask_clouds: Mask cloudy pixels (default); False keeps them as imagery.
        composite: ``mosaic``, ``greenest`` or ``barest`` (see :data:`COMPOSITES`), for
            several years.

    Raises:
        DataNotFoundError: ``world`` holds no ``world.json``.
        InputError: a year is not one of the world's years, or an unknown composite.
    """

    kind = "synthetic"

    def __init__(self, world: str, year: int | Sequence[int], mask_clouds: bool = True,
                 composite: str = "mosaic") -> None:
        from pipelines.errors import DataNotFoundError
        from pipelines.sources.geotiff import GeoTIFFSource, TerrainSource

        self.world = str(world).rstrip("/") or str(world)
        meta_path = fsio.join(self.world, FILES["world"])
        if not fsio.exists(meta_path):
            raise DataNotFoundError(
                f"{self.world!r} is not a synthetic world (no {FILES['world']}): generate one "
                f"with `landslides synth --out {self.world}`.")
        meta = fsio.read_json(meta_path)
        years = [int(y) for y in meta.get("years", [])]
        wanted = [year] if isinstance(year, (int, str, np.integer)) else list(year)
        try:
            self.years = tuple(sorted({int(y) for y in wanted}, reverse=True))
        except (TypeError, ValueError):
            raise InputError(f"year must be an integer, got {year!r}.") from None
        if not self.years:
            raise InputError("The synthetic source needs at least one year.")
        missing = [y for y in self.years if y not in years]
        if missing:
            raise InputError(
                f"Year {', '.join(map(str, sorted(missing)))} is not in the synthetic world "
                f"{self.world!r}; available years: {', '.join(map(str, years))}.")
        if composite not in COMPOSITES:
            raise InputError(f"Unknown composite {composite!r} of the synthetic source; use "
                             f"one of {', '.join(COMPOSITES)}.")
        self.year = self.years[0]
        self.composite = composite
        files = meta.get("files", {})
        dem = fsio.join(self.world, files.get("dem", FILES["dem"]))
        self.crs = meta.get("crs")
        self.generator_version = meta.get("generator_version")
        self._images = [GeoTIFFSource(
            fsio.join(self.world, files.get("s2", {}).get(str(y), s2_name(y))),
            resampling="bilinear") for y in self.years]
        self._terrain = TerrainSource(dem)
        self.mask_clouds = bool(mask_clouds)
        self._clouds = [GeoTIFFSource(
            fsio.join(self.world, files.get("clouds", {}).get(str(y), clouds_name(y))),
            band_map={"clouds": 1}, resampling="nearest", scale=1.0)
            for y in self.years] if self.mask_clouds else []

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(SENTINEL2_BANDS) + tuple(TERRAIN_BANDS)

    def _read_year(self, i: int, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        """One year's optical bands, cloudy pixels invalid (NaN)."""
        raster = self._images[i].read(grid, bands)
        if not self._clouds:
            return raster
        classes = self._clouds[i].read(grid, ("clouds",))
        cloudy = classes.valid & (classes.data[0] > 0)
        if not cloudy.any():
            return raster
        np.copyto(raster.data, np.nan, where=cloudy)
        return Raster(raster.data, raster.valid & ~cloudy, grid, bands)

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        optical = tuple(b for b in bands if b in SENTINEL2_BANDS)
        terrain = tuple(b for b in bands if b not in SENTINEL2_BANDS)
        data = np.full((len(bands), *grid.shape), np.nan, np.float32)
        valid = np.ones(grid.shape, bool)
        if optical:
            img = self._composite(grid, optical)
            for k, b in enumerate(optical):
                data[bands.index(b)] = img.data[k]
            valid &= img.valid
        if terrain:
            ter = self._terrain.read(grid, terrain)
            for k, b in enumerate(terrain):
                data[bands.index(b)] = ter.data[k]
            valid &= ter.valid
        if not valid.all():
            data[:, ~valid] = np.nan
        return Raster(data, valid, grid, bands)

    def _composite(self, grid: PixelGrid, optical: tuple[str, ...]) -> Raster:
        """The optical bands of the source's years, composited per pixel."""
        # greenest: each pixel's highest clear NDVI; barest: its lowest
        sign = {"greenest": 1.0, "barest": -1.0}.get(self.composite, 0.0)
        by_ndvi = sign != 0.0 and len(self.years) > 1
        need = tuple(dict.fromkeys(optical + (("B4", "B8") if by_ndvi else ())))
        best = self._read_year(0, grid, need)
        if len(self.years) == 1:
            return best if need == optical else best.select(optical)
        data, valid = best.data.copy(), best.valid.copy()
        score = sign * _ndvi(data, need) if by_ndvi else np.zeros(0, np.float32)
        for i in range(1, len(self.years)):
            if not by_ndvi and valid.all():
                break
            other = self._read_year(i, grid, need)
            if by_ndvi:
                s = sign * _ndvi(other.data, need)
                take = other.valid & (~valid | (s > score))
                score = np.where(take, s, score)
            else:
                take = other.valid & ~valid  # the most recent clear pixel stays on top
            np.copyto(data, other.data, where=take)
            valid |= take
        out = Raster(data, valid, grid, need)
        return out if need == optical else out.select(optical)

    def open(self) -> None:
        for s in (*self._images, self._terrain, *self._clouds):
            s.open()

    def close(self) -> None:
        for s in (*self._images, self._terrain, *self._clouds):
            s.close()

    def describe(self) -> dict:
        d = {"kind": self.kind, "bands": list(self.bands), "world": self.world,
             "year": self.year, "crs": self.crs, "mask_clouds": self.mask_clouds,
             "generator_version": self.generator_version,
             # a world regenerated at the same path changes the run's signature
             "fingerprints": [fsio.fingerprint(fsio.join(self.world, FILES["world"]))]}
        if len(self.years) > 1:
            d.update({"years": sorted(self.years), "composite": self.composite})
        return d

    def footprint(self) -> tuple[str, tuple[float, float, float, float]] | None:
        return self._images[0].footprint()

    def covers(self, grid: PixelGrid) -> bool:
        return self._images[0].covers(grid) and self._terrain.covers(grid)

    def check_covers(self, region) -> None:
        self._images[0].check_covers(region)
        self._terrain.check_covers(region)


def _ndvi(data: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """NDVI of ``(bands, h, w)`` reflectances; NaN where undefined (loses every choice)."""
    from pipelines.geo.stack import index

    b4, b8 = data[bands.index("B4")], data[bands.index("B8")]
    out = index(b8, b4)
    out[~(np.isfinite(b4) & np.isfinite(b8))] = np.nan
    return out

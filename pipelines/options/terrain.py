"""The options of ``landslides terrain``: a DEM in, slope/aspect/curvature/hillshade out."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.geo.terrain import PRODUCTS
from pipelines.options.fields import option


def _products(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in str(text).split(",") if p.strip())


@dataclass(frozen=True)
class TerrainOptions:
    """The parameters of :func:`pipelines.geo.terrain.write_terrain`."""

    dem: str = option(help="DEM raster (GeoTIFF/COG, local or gs://).", positional=True)
    out: str = option(help="Output folder for the terrain COGs.")
    products: tuple[str, ...] = option(PRODUCTS, "Comma-separated products (default: all "
                                       "four).", parse=_products)
    z_factor: float = option(1.0, "Vertical exaggeration / unit conversion of elevations "
                             "(default %(default)s).")
    nodata: float | None = option(None, "Treat this DEM value as nodata (overrides the "
                                  "file's nodata).")


__all__ = ["TerrainOptions"]

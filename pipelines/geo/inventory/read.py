"""Reading landslide inventories: :func:`read_inventory` and its :class:`InventoryReport`.

Real inventories are messy: attribute schemas differ from year to year, some polygons are
invalid (self-intersecting rings), some features are empty or are points.
:func:`read_inventory` turns any of them into clean, valid polygons with a
geometry-derived ``area_m2`` column and a report of what it had to fix.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from pipelines import fsio
from pipelines.errors import (
    CRSError,
    DataNotFoundError,
    GeometryError,
    InputError,
)
from pipelines.geo.grid import WGS84, to_crs
from pipelines.geo.inventory.geometry import (
    COLLECTION,
    MULTIPOLYGON,
    POLYGON,
    area_m2,
    flatten_polygons,
    has_area,
    polygonal,
)

if TYPE_CHECKING:
    from pipelines.geo.grid import Region

logger = logging.getLogger(__name__)

__all__ = ["PARQUET_EXTS", "InventoryReport", "read_inventory"]

#: Extensions read with ``geopandas.read_parquet`` rather than GDAL.
PARQUET_EXTS = (".parquet", ".geoparquet")


@dataclass
class InventoryReport:
    """What :func:`read_inventory` found and fixed in one file.

    Attributes:
        path: The file (or folder/layer) read.
        n_read: Features in the file (or layer).
        n_empty: Features dropped for having no geometry, an empty one, or an invalid one
            whose repair left no area (a polygon collapsed to a line or a point).
        n_invalid_repaired: Invalid polygons repaired with ``shapely.make_valid`` and kept.
        n_non_polygon: Points, lines and other features without any polygonal part (dropped).
        n_kept: Polygons returned (after the optional clip to a region).
    """

    path: str
    n_read: int
    n_empty: int
    n_invalid_repaired: int
    n_non_polygon: int
    n_kept: int

    def to_dict(self) -> dict:
        """The report as a plain dict."""
        return asdict(self)


def _is_parquet(path: str) -> bool:
    return str(path).lower().endswith(PARQUET_EXTS)


def _read_any(local: str, path: str, layer: str | None) -> gpd.GeoDataFrame:
    """Read ``local`` with pyogrio or pyarrow; errors become InputError naming ``path``."""
    import pyogrio

    if _is_parquet(local):
        if layer is not None:
            raise InputError(f"{path!r} is GeoParquet, which has no layers: drop layer={layer!r}.")
        try:
            return gpd.read_parquet(local)
        except Exception as exc:  # pyarrow raises several types for bad files
            raise InputError(
                f"Cannot read the GeoParquet inventory {path!r}: {exc}. Check that it is a "
                f"complete GeoParquet file (re-export it with geopandas.to_parquet)."
            ) from exc
    try:
        return gpd.read_file(local, layer=layer, engine="pyogrio")
    except pyogrio.errors.DataLayerError as exc:
        try:
            layers = [str(name) for name, _ in pyogrio.list_layers(local)]
        except Exception:  # the file itself is unreadable: report the original error
            layers = []
        raise InputError(
            f"Layer {layer!r} not found in {path!r}: {exc}. Available layers: {layers}."
        ) from exc
    except Exception as exc:  # pyogrio/GDAL raise several types for corrupt files
        raise InputError(
            f"Cannot read the inventory {path!r}: {exc}. Give a vector file GDAL can open "
            f"(shapefile with its .shx/.dbf, GeoPackage, GeoJSON) or a GeoParquet file."
        ) from exc


def _clip(gdf: gpd.GeoDataFrame, region: Region) -> gpd.GeoDataFrame:
    """Keep the parts of ``gdf``'s polygons inside ``region`` (WGS 84)."""
    if len(gdf) == 0:
        return gdf
    area = to_crs(region.geometry, WGS84, gdf.crs)
    shapely.prepare(area)
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    inside = shapely.contains(area, geoms)
    cut = np.flatnonzero(~inside)
    if cut.size:
        geoms[cut] = polygonal(shapely.intersection(geoms[cut], area))
    keep = has_area(geoms)
    out = gdf.iloc[np.flatnonzero(keep)].copy()
    out[out.geometry.name] = gpd.GeoSeries(geoms[keep], index=out.index, crs=gdf.crs)
    return out


def read_inventory(
    path: str,
    layer: str | None = None,
    crs: str | None = None,
    region: Region | None = None,
) -> gpd.GeoDataFrame:
    """Read a landslide inventory as clean, valid polygons.

    Empty features are dropped; invalid polygons are repaired with ``shapely.make_valid``
    (keeping their polygonal parts; one warning per file says how many); points and lines
    are dropped. Attribute columns are kept as they are, but areas are never taken from
    them: inventories disagree on their schemas (the Rasuwa layers carry
    ``raster_val``/``InPoly_FID`` in 2013 and ``gridcode``/``Shape_Area`` later), so the
    ``area_m2`` column is computed from the geometry (see :func:`area_m2`).

    Args:
        path: A vector file geopandas reads (shapefile, GeoPackage, GeoJSON, a folder of
            shapefiles, ``.parquet`` GeoParquet), local or ``gs://`` (single-file formats
            only there: GeoPackage, GeoJSON, GeoParquet, zipped shapefile ``.shp.zip``).
        layer: Layer name for multi-layer sources (a GeoPackage, a folder of shapefiles).
        crs: Reproject to this CRS (e.g. ``"EPSG:32645"``).
        region: Keep only the parts of polygons inside this WGS 84 area of interest.

    Returns:
        The polygons with an ``area_m2`` column and a fresh 0..n-1 index; the
        :class:`InventoryReport` is in ``gdf.attrs["report"]``. A file without features
        gives an empty frame with its columns and CRS (and a warning).

    Raises:
        DataNotFoundError: the file does not exist.
        InputError: the file cannot be read, or the layer does not exist.
        CRSError: the file has no CRS, or ``crs`` is not a CRS.
        GeometryError: every feature with a geometry is a point or a line.
    """
    path = str(path)
    if not fsio.exists(path):
        raise DataNotFoundError(
            f"Inventory {path!r} does not exist. Check the path (shapefile, GeoPackage, "
            f"GeoJSON or GeoParquet; local or gs://)."
        )
    if fsio.is_remote(path) and path.lower().endswith(".shp"):
        raise InputError(
            f"Cannot read the shapefile {path!r} from an object store: its .shx/.dbf/.prj "
            f"sidecars are separate objects. Upload it as one file instead (GeoPackage, "
            f"GeoParquet, or the zipped shapefile as .shp.zip)."
        )
    with fsio.local_copy(path) as local:
        raw = _read_any(local, path, layer)
    name = f"{path}:{layer}" if layer else path
    if raw.crs is None:
        raise CRSError(
            f"Inventory {name!r} has no CRS. Add one: a .prj beside a shapefile, or "
            f"`ogr2ogr -a_srs EPSG:nnnn out.gpkg {path}` with the CRS its coordinates are in."
        )

    geoms = np.asarray(raw.geometry.values, dtype=object)
    n_read = len(geoms)
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    tid = shapely.get_type_id(geoms)
    polygonal_type = (tid == POLYGON) | (tid == MULTIPOLYGON)
    collection = tid == COLLECTION
    if collection.any():  # a collection counts as polygonal when it holds a polygon
        has_poly = np.array([bool(flatten_polygons(g)) for g in geoms[collection]])
        polygonal_type[np.flatnonzero(collection)[has_poly]] = True
    non_polygon = ~empty & ~polygonal_type
    n_non_polygon = int(non_polygon.sum())
    if n_non_polygon and n_non_polygon == int((~empty).sum()):
        names = sorted({g.geom_type for g in geoms[non_polygon][:1000]})
        raise GeometryError(
            f"Inventory {name!r} holds no polygons ({n_non_polygon} features of types "
            f"{names}): landslide inventories need polygon outlines. "
            f"Buffer points to the landslide extent, or give the polygon layer."
        )

    cand = ~empty & polygonal_type
    if shapely.has_z(geoms[cand]).any():
        geoms[cand] = shapely.force_2d(geoms[cand])
    invalid = cand & ~shapely.is_valid(geoms)
    n_repaired = 0
    if invalid.any():
        fixed = polygonal(shapely.make_valid(geoms[invalid]))
        geoms[invalid] = fixed
        n_repaired = int(has_area(fixed).sum())
    if cand.any():
        geoms[cand] = polygonal(geoms[cand])  # collections -> their polygons
    keep = cand & has_area(geoms)
    n_empty = int(n_read - n_non_polygon - keep.sum())
    if n_repaired:
        logger.warning("repaired %d invalid geometries in %s", n_repaired, name)

    gdf = raw.iloc[np.flatnonzero(keep)].copy()
    gdf[gdf.geometry.name] = gpd.GeoSeries(geoms[keep], index=gdf.index, crs=raw.crs)
    if n_empty:
        logger.info("dropped %d empty geometries in %s", n_empty, name)
    if n_non_polygon:
        logger.warning("dropped %d non-polygon features (points/lines) in %s",
                       n_non_polygon, name)
    if crs is not None:
        try:
            target = CRS.from_user_input(crs)
        except Exception as exc:
            raise CRSError(f"Unknown CRS {crs!r}: give e.g. 'EPSG:32645'.") from exc
        gdf = gdf.to_crs(target)
    if region is not None:
        gdf = _clip(gdf, region)
    gdf = gdf.reset_index(drop=True)
    gdf["area_m2"] = area_m2(gdf).to_numpy()
    gdf.attrs["report"] = InventoryReport(
        path=name, n_read=n_read, n_empty=n_empty, n_invalid_repaired=n_repaired,
        n_non_polygon=n_non_polygon, n_kept=len(gdf),
    )
    if len(gdf) == 0:
        logger.warning("inventory %s holds no landslide polygons%s", name,
                       f" inside region {region.name!r}" if region is not None else "")
    return gdf

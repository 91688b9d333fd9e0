"""Polygon clean-up and true areas for landslide inventories.

:func:`polygonal` keeps the polygonal part of each geometry (what ``make_valid`` or a clip
may turn into a collection), :func:`has_area` tells which geometries still cover any
ground, and :func:`area_m2` gives true areas in square metres in any CRS (per-feature UTM
zones for degrees and Mercator).
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipelines.errors import CRSError
from pipelines.geo.grid import WGS84, distorts_areas

__all__ = ["COLLECTION", "MULTIPOLYGON", "POLYGON", "area_m2", "areas_m2",
           "flatten_polygons", "has_area", "polygonal"]

#: Shapely geometry type ids of polygons, multipolygons and geometry collections.
POLYGON, MULTIPOLYGON, COLLECTION = 3, 6, 7


def flatten_polygons(geom: shapely.Geometry) -> list[shapely.Geometry]:
    """Every polygon inside ``geom`` (recursing through multi-parts and collections)."""
    tid = shapely.get_type_id(geom)
    if tid == POLYGON:
        return [] if geom.is_empty else [geom]
    if tid in (MULTIPOLYGON, COLLECTION):
        out: list[shapely.Geometry] = []
        for part in shapely.get_parts(geom):
            out.extend(flatten_polygons(part))
        return out
    return []


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """The polygonal part of each geometry (an empty polygon when it has none).

    Polygons and multipolygons pass through unchanged; only collections (from
    ``make_valid`` or a clip) are taken apart, so the Python loop runs over those few.
    """
    out = np.asarray(geoms, dtype=object).copy()
    tid = shapely.get_type_id(out)
    for i in np.flatnonzero((tid != POLYGON) & (tid != MULTIPOLYGON)):
        parts = flatten_polygons(out[i]) if out[i] is not None else []
        if not parts:
            out[i] = shapely.Polygon()
        elif len(parts) == 1:
            out[i] = parts[0]
        else:
            multi = shapely.MultiPolygon(parts)
            # Parts of a valid collection do not overlap, but may share an edge.
            out[i] = multi if multi.is_valid else shapely.union_all(parts)
    return out


def has_area(geoms: np.ndarray) -> np.ndarray:
    """True where a geometry is present, not empty and of positive area."""
    return ~(shapely.is_missing(geoms) | shapely.is_empty(geoms)) & (shapely.area(geoms) > 0)


def _crs_label(crs: CRS | str) -> str:
    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()


def area_m2(gdf: gpd.GeoDataFrame | gpd.GeoSeries) -> pd.Series:
    """True areas in square metres, computed from the geometry.

    Projected CRSs in metres (UTM, national grids) use the planar area, scaled by the
    CRS's unit when it is not the metre. Geographic CRSs (and Mercator, whose areas are
    badly inflated away from the equator) are projected, feature by feature, to the UTM
    zone holding each feature's centre, so inventories spanning several zones stay exact.

    Args:
        gdf: Polygons with a CRS.

    Returns:
        A float Series aligned with ``gdf``'s index (0 for empty geometries).

    Raises:
        CRSError: ``gdf`` has no CRS.
    """
    geo = gdf.geometry if isinstance(gdf, gpd.GeoDataFrame) else gdf
    if len(geo) == 0:
        return pd.Series([], index=geo.index, dtype="float64", name="area_m2")
    if geo.crs is None:
        raise CRSError(
            "Cannot compute areas of geometries without a CRS: set one with "
            "gdf.set_crs('EPSG:nnnn') (the CRS the coordinates are in)."
        )
    areas = areas_m2(np.asarray(geo.values, dtype=object), geo.crs)
    return pd.Series(areas, index=geo.index, dtype="float64", name="area_m2")


def areas_m2(geoms: np.ndarray, crs: CRS | str) -> np.ndarray:
    """:func:`area_m2` of an array of shapely geometries in ``crs``, as a float array.

    For callers that hold plain arrays (a sweep polygonises every chunk): no GeoSeries.
    """
    geoms = np.asarray(geoms, dtype=object)
    crs = CRS.from_user_input(crs)
    if not distorts_areas(crs):
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        areas = shapely.area(geoms) * factor**2
    else:
        areas = np.zeros(len(geoms), dtype="float64")
        ok = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        if ok.any():
            centres = gpd.GeoSeries(geoms[ok], crs=crs).to_crs(WGS84).values
            lon = shapely.get_x(shapely.centroid(centres))
            lat = shapely.get_y(shapely.centroid(centres))
            zone = np.clip(np.floor((np.clip(lon, -180.0, 180.0) + 180.0) / 6.0) + 1, 1, 60)
            zones = np.where(lat >= 0, 32600, 32700) + zone.astype("int64")
            idx = np.flatnonzero(ok)
            for epsg in np.unique(zones):
                sel = idx[zones == epsg]
                proj = gpd.GeoSeries(geoms[sel], crs=crs).to_crs(f"EPSG:{int(epsg)}")
                areas[sel] = shapely.area(proj.values)
    return np.asarray(areas, dtype="float64")

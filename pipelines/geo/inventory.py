"""Landslide inventories: read and validate polygons, rasterize them, vectorize masks.

An inventory is a set of landslide polygons in a vector file (shapefile, GeoPackage,
GeoJSON, GeoParquet...). Real inventories are messy: attribute schemas differ from year to
year, some polygons are invalid (self-intersecting rings), some features are empty or are
points. :func:`read_inventory` turns any of them into clean, valid polygons with a
geometry-derived ``area_m2`` column and a report of what it had to fix.

:func:`rasterize` burns polygons into a label mask on a :class:`~pipelines.geo.grid.PixelGrid`
(for training labels), :func:`vectorize` turns a predicted mask back into polygons with
per-polygon area and probability statistics (for the sweep's vector inventory), and
:func:`write_inventory` publishes a layer atomically, locally or on ``gs://``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS
from scipy import ndimage

from pipelines import fsio
from pipelines.errors import (
    CRSError,
    DataNotFoundError,
    GeometryError,
    InputError,
    OutputError,
)
from pipelines.geo.grid import WGS84, PixelGrid, to_crs

if TYPE_CHECKING:
    from pipelines.geo.grid import Region

logger = logging.getLogger(__name__)

#: Extensions read with ``geopandas.read_parquet`` rather than GDAL.
PARQUET_EXTS = (".parquet", ".geoparquet")
#: Output format by extension (``None``: GeoParquet through pyarrow).
WRITE_DRIVERS: dict[str, str | None] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".parquet": None,
    ".geoparquet": None,
}
#: Files that make up a shapefile besides the ``.shp`` (published before it).
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
#: Columns of :func:`vectorize`'s output (the ``prob_*`` ones only with a probability).
VECTOR_COLUMNS = ("value", "area_m2", "n_pixels", "prob_mean", "prob_max")

_POLYGON, _MULTIPOLYGON, _COLLECTION = 3, 6, 7


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
        return asdict(self)


# --------------------------------------------------------------------------- geometry helpers
def _flatten_polygons(geom: shapely.Geometry) -> list[shapely.Geometry]:
    """Every polygon inside ``geom`` (recursing through multi-parts and collections)."""
    tid = shapely.get_type_id(geom)
    if tid == _POLYGON:
        return [] if geom.is_empty else [geom]
    if tid in (_MULTIPOLYGON, _COLLECTION):
        out: list[shapely.Geometry] = []
        for part in shapely.get_parts(geom):
            out.extend(_flatten_polygons(part))
        return out
    return []


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """The polygonal part of each geometry (an empty polygon when it has none).

    Polygons and multipolygons pass through unchanged; only collections (from
    ``make_valid`` or a clip) are taken apart, so the Python loop runs over those few.
    """
    out = np.asarray(geoms, dtype=object).copy()
    tid = shapely.get_type_id(out)
    for i in np.flatnonzero((tid != _POLYGON) & (tid != _MULTIPOLYGON)):
        parts = _flatten_polygons(out[i]) if out[i] is not None else []
        if not parts:
            out[i] = shapely.Polygon()
        elif len(parts) == 1:
            out[i] = parts[0]
        else:
            multi = shapely.MultiPolygon(parts)
            # Parts of a valid collection do not overlap, but may share an edge.
            out[i] = multi if multi.is_valid else shapely.union_all(parts)
    return out


def _has_area(geoms: np.ndarray) -> np.ndarray:
    return ~(shapely.is_missing(geoms) | shapely.is_empty(geoms)) & (shapely.area(geoms) > 0)


def _crs_label(crs: CRS | str) -> str:
    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()


# --------------------------------------------------------------------------- areas
def _needs_utm(crs: CRS) -> bool:
    """True for CRSs whose planar areas are not true areas (degrees, Mercator)."""
    if crs.is_geographic:
        return True
    op = crs.coordinate_operation
    method = (op.method_name if op is not None else "").lower()
    return "mercator" in method and "transverse" not in method


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
    crs = CRS.from_user_input(geo.crs)
    geoms = np.asarray(geo.values, dtype=object)
    if not _needs_utm(crs):
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
    return pd.Series(areas, index=geo.index, dtype="float64", name="area_m2")


# --------------------------------------------------------------------------- reading
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
        geoms[cut] = _polygonal(shapely.intersection(geoms[cut], area))
    keep = _has_area(geoms)
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
    polygonal_type = (tid == _POLYGON) | (tid == _MULTIPOLYGON)
    collection = tid == _COLLECTION
    if collection.any():  # a collection counts as polygonal when it holds a polygon
        has_poly = np.array([bool(_flatten_polygons(g)) for g in geoms[collection]])
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
        fixed = _polygonal(shapely.make_valid(geoms[invalid]))
        geoms[invalid] = fixed
        n_repaired = int(_has_area(fixed).sum())
    if cand.any():
        geoms[cand] = _polygonal(geoms[cand])  # collections -> their polygons
    keep = cand & _has_area(geoms)
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


# --------------------------------------------------------------------------- rasterize
def _burn_values(
    gdf: gpd.GeoDataFrame, attribute: str, classes: dict[str, int] | None
) -> np.ndarray:
    """The uint8 value to burn for each feature, from ``attribute``."""
    if attribute not in gdf.columns:
        raise InputError(
            f"Attribute {attribute!r} not found; the inventory has columns "
            f"{[c for c in gdf.columns if c != gdf.geometry.name]}."
        )
    col = gdf[attribute]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        vals = col.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isfinite(vals) | (vals < 0) | (vals > 255) | (vals != np.round(vals))
        if bad.any():
            raise InputError(
                f"Attribute {attribute!r} has values that are not class numbers in 0..255: "
                f"{sorted(set(col[bad].astype(str)))[:10]}. Map them to small integers, or "
                f"pass string classes through `classes`."
            )
        return vals.astype("uint8")
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype="uint8")
    if classes is None:
        raise InputError(
            f"Attribute {attribute!r} holds strings ({sorted(set(col.dropna().astype(str)))[:10]}):"
            f" pass classes={{'name': value, ...}} to map them to class numbers."
        )
    for k, v in classes.items():
        if not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= 255:
            raise InputError(f"Class {k!r} maps to {v!r}; class values must be integers 0..255.")
    names = col.astype("object")
    unknown = sorted({str(v) for v in names if v is None or (v not in classes)}, key=str)
    if unknown:
        raise InputError(
            f"Attribute {attribute!r} has values missing from classes {sorted(classes)}: "
            f"{unknown}. Add them to `classes` or drop those features."
        )
    return np.array([classes[v] for v in names], dtype="uint8")


def rasterize(
    gdf: gpd.GeoDataFrame,
    grid: PixelGrid,
    attribute: str | None = None,
    classes: dict[str, int] | None = None,
    all_touched: bool = False,
) -> np.ndarray:
    """Burn polygons into a ``uint8`` mask on ``grid``.

    Args:
        gdf: Polygons with a CRS (reprojected to ``grid.crs`` here).
        grid: The pixel grid.
        attribute: Column holding class values. Numbers (0..255) are burnt as they are;
            strings are mapped through ``classes``. ``None`` burns 1 everywhere.
        classes: ``{"scarp": 1, "deposit": 2}`` for a string ``attribute``.
        all_touched: Burn every pixel a polygon touches instead of the pixels whose centre
            lies inside (the default, which keeps areas unbiased).

    Returns:
        ``(height, width)`` uint8 array, 0 outside polygons (features of class 0 burn
        nothing). Where polygons overlap, the later feature wins.

    Raises:
        CRSError: ``gdf`` has no CRS.
        InputError: unknown attribute, values not in 0..255, or strings missing from
            ``classes``.
    """
    from rasterio.features import rasterize as _rasterize

    out_shape = grid.shape
    if len(gdf) == 0:
        return np.zeros(out_shape, dtype="uint8")
    if gdf.crs is None:
        raise CRSError(
            "Cannot rasterize polygons without a CRS: set one with gdf.set_crs('EPSG:nnnn')."
        )
    values = (np.ones(len(gdf), dtype="uint8") if attribute is None
              else _burn_values(gdf, attribute, classes))
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    src = CRS.from_user_input(gdf.crs)
    if src != CRS.from_user_input(grid.crs):
        if src.is_geographic:  # long edges in degrees bend once projected
            geoms = shapely.segmentize(geoms, 1e-3)
        geoms = np.asarray(gpd.GeoSeries(geoms, crs=src).to_crs(grid.crs).values, dtype=object)
    ok = _has_area(geoms) & (values > 0)
    if not ok.any():
        return np.zeros(out_shape, dtype="uint8")
    return _rasterize(
        zip(geoms[ok], values[ok].tolist()),
        out_shape=out_shape,
        transform=grid.affine,
        fill=0,
        all_touched=all_touched,
        dtype="uint8",
    )


# --------------------------------------------------------------------------- vectorize
def _empty_vector(grid: PixelGrid, with_prob: bool) -> gpd.GeoDataFrame:
    cols: dict[str, pd.Series] = {
        "value": pd.Series([], dtype="int64"),
        "area_m2": pd.Series([], dtype="float64"),
        "n_pixels": pd.Series([], dtype="int64"),
    }
    if with_prob:
        cols["prob_mean"] = pd.Series([], dtype="float64")
        cols["prob_max"] = pd.Series([], dtype="float64")
    gdf = gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=grid.crs), crs=grid.crs)
    return gdf[["geometry", *cols]]


def _check_shape(name: str, arr: np.ndarray, grid: PixelGrid) -> None:
    if arr.shape != grid.shape:
        raise InputError(
            f"{name} has shape {arr.shape} but the grid is {grid.shape} (height, width): "
            f"pass arrays on the same grid."
        )


def vectorize(
    mask: np.ndarray,
    grid: PixelGrid,
    min_area_m2: float = 200.0,
    probability: np.ndarray | None = None,
    connectivity: int = 4,
    valid: np.ndarray | None = None,
) -> gpd.GeoDataFrame:
    """Turn a class mask into polygons, one per connected region of one class.

    Connected regions are found with ``scipy.ndimage.label`` (per class value) and
    polygonized with ``rasterio.features.shapes`` on the label image, so each polygon's
    pixel count and probability statistics come from the very pixels it outlines.

    Args:
        mask: ``(h, w)`` class mask; values > 0 are landslide classes (bool is class 1).
        grid: The mask's pixel grid.
        min_area_m2: Drop polygons smaller than this (true area, see :func:`area_m2`).
        probability: Optional ``(h, w)`` probabilities; adds ``prob_mean`` and ``prob_max``
            per polygon (NaN pixels are ignored).
        connectivity: 4 (edges) or 8 (edges and corners) pixel connectivity.
        valid: Optional ``(h, w)`` bool array; pixels where it is False belong to no polygon.

    Returns:
        Columns ``geometry, value, area_m2, n_pixels`` (and ``prob_mean, prob_max``) in
        ``grid.crs``, ordered by class value, then by the raster scan order of each
        polygon's first pixel. With ``connectivity=8`` a region joined only through pixel
        corners is one MultiPolygon whose parts touch at those corners (valid geometry).

    Raises:
        InputError: arrays not on the grid, non-integer class values, bad connectivity.
    """
    from rasterio.features import shapes

    if connectivity not in (4, 8):
        raise InputError(f"connectivity must be 4 or 8, got {connectivity!r}.")
    mask = np.asarray(mask)
    _check_shape("mask", mask, grid)
    if mask.dtype == bool:
        classes_img = mask.astype("int32")
    else:
        if not np.issubdtype(mask.dtype, np.number):
            raise InputError(f"mask must be numeric or bool, got dtype {mask.dtype}.")
        m = np.where(np.isfinite(mask), mask, 0) if mask.dtype.kind == "f" else mask
        if mask.dtype.kind == "f" and np.any(m != np.round(m)):
            raise InputError(
                "mask holds fractional values: it must hold class numbers. Threshold "
                "probabilities first (e.g. mask = probability >= 0.5)."
            )
        if m.size and (m.max() > np.iinfo("int32").max):
            raise InputError(f"mask values up to {m.max()} do not fit int32 class numbers.")
        classes_img = np.where(m > 0, m, 0).astype("int32")
    if valid is not None:
        valid = np.asarray(valid)
        _check_shape("valid", valid, grid)
        classes_img[~valid.astype(bool)] = 0
    if probability is not None:
        probability = np.asarray(probability, dtype="float64")
        _check_shape("probability", probability, grid)

    # One label per connected region of one class value.
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(classes_img.shape, dtype="int32")
    label_class: list[np.ndarray] = [np.zeros(1, dtype="int64")]
    n_labels = 0
    for value in np.unique(classes_img[classes_img > 0]):
        lab, n = ndimage.label(classes_img == value, structure=structure)
        sel = lab > 0
        labels[sel] = lab[sel] + n_labels
        label_class.append(np.full(n, int(value), dtype="int64"))
        n_labels += n
    if n_labels == 0:
        return _empty_vector(grid, probability is not None)
    cls_of = np.concatenate(label_class)

    # Polygonize the label image with 4-connectivity: GDAL's 8-connected rings touch
    # themselves at pixel corners (invalid, and very slow to repair on noisy masks), so a
    # region joined through corners becomes a MultiPolygon of its 4-connected pieces,
    # which touch only at points (valid).
    pieces, piece_ids = [], []
    for geom, lab_id in shapes(labels, mask=labels > 0, connectivity=4, transform=grid.affine):
        pieces.append(shapely.geometry.shape(geom))
        piece_ids.append(int(lab_id))
    piece_arr = np.empty(len(pieces), dtype=object)
    piece_arr[:] = pieces
    piece_lab = np.asarray(piece_ids, dtype="int64")
    order = np.argsort(piece_lab, kind="stable")
    piece_arr, piece_lab = piece_arr[order], piece_lab[order]
    ids_arr, first, counts = np.unique(piece_lab, return_index=True, return_counts=True)
    geoms = piece_arr[first].copy()
    multi = counts > 1
    if multi.any():
        sel = np.isin(piece_lab, ids_arr[multi])
        group = np.searchsorted(ids_arr[multi], piece_lab[sel])
        geoms[multi] = shapely.multipolygons(piece_arr[sel], indices=group)
    bad = ~shapely.is_valid(geoms)
    if bad.any():  # not expected from pixel outlines; repaired rather than passed on
        logger.warning("repairing %d invalid polygons from polygonize", int(bad.sum()))
        geoms[bad] = _polygonal(shapely.make_valid(geoms[bad]))

    flat = labels.ravel()
    n_pix = np.bincount(flat, minlength=n_labels + 1)
    data: dict[str, np.ndarray] = {
        "value": cls_of[ids_arr],
        "n_pixels": n_pix[ids_arr].astype("int64"),
    }
    if probability is not None:
        p = probability.ravel()
        finite = np.isfinite(p)
        cnt = np.bincount(flat[finite], minlength=n_labels + 1)
        tot = np.bincount(flat[finite], weights=p[finite], minlength=n_labels + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
        pmax = np.asarray(
            ndimage.maximum(np.where(finite, p, -np.inf).reshape(labels.shape), labels,
                            index=np.arange(n_labels + 1)), dtype="float64")
        pmax[~np.isfinite(pmax)] = np.nan
        data["prob_mean"] = mean[ids_arr]
        data["prob_max"] = pmax[ids_arr]
    gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=grid.crs), crs=grid.crs)
    gdf.insert(1, "area_m2", area_m2(gdf).to_numpy())
    gdf = gdf[gdf["area_m2"] >= float(min_area_m2)].reset_index(drop=True)
    cols = ["geometry", *[c for c in VECTOR_COLUMNS if c in gdf.columns]]
    return gdf[cols]


# --------------------------------------------------------------------------- writing
def write_inventory(gdf: gpd.GeoDataFrame, path: str) -> str:
    """Write polygons to ``path`` atomically, in the format its extension names.

    ``.gpkg`` (GeoPackage), ``.parquet``/``.geoparquet`` (GeoParquet), ``.geojson``/``.json``
    and ``.shp``. The file is written to a local temporary folder, then published through
    :mod:`pipelines.fsio` (rename locally, one object upload on ``gs://``), so readers never
    see a partial file. A shapefile's sidecars are published before its ``.shp``.

    Args:
        gdf: Polygons with a CRS (``gdf.attrs`` is not written).
        path: Local path or ``gs://`` URL.

    Returns:
        ``path``.

    Raises:
        InputError: an unsupported extension.
        CRSError: ``gdf`` has no CRS.
        OutputError: the destination or the format writer failed.
    """
    path = str(path)
    low = path.lower()
    ext = next((e for e in WRITE_DRIVERS if low.endswith(e)), None)
    if ext is None:
        raise InputError(
            f"Cannot tell the vector format of {path!r}: use one of the extensions "
            f"{sorted(WRITE_DRIVERS)}."
        )
    if gdf.crs is None:
        raise CRSError(f"Refusing to write {path!r} without a CRS: set one with gdf.set_crs().")
    out = gdf.copy()
    out.attrs = {}  # the InventoryReport is not serialisable metadata
    driver = WRITE_DRIVERS[ext]
    layer = Path(path.rstrip("/").rsplit("/", 1)[-1]).stem
    try:
        if driver == "ESRI Shapefile":
            import tempfile

            with tempfile.TemporaryDirectory(prefix="landslides-") as d:
                local = os.path.join(d, "out.shp")
                out.to_file(local, driver=driver, engine="pyogrio")
                base = path[: -len(ext)]
                for side in SHAPEFILE_SIDECARS:
                    if os.path.exists(os.path.join(d, "out" + side)):
                        fsio.put_file(os.path.join(d, "out" + side), base + side)
                fsio.put_file(local, path)
            return path
        with fsio.staged_output(path, suffix=ext) as local:
            if driver is None:
                out.to_parquet(local)
            else:
                out.to_file(local, driver=driver, layer=layer, engine="pyogrio")
    except OutputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow raise several types
        raise OutputError(f"Cannot write the inventory {path!r}: {exc}") from exc
    return path


__all__ = [
    "InventoryReport",
    "area_m2",
    "rasterize",
    "read_inventory",
    "vectorize",
    "write_inventory",
]

"""Rasterizing landslide inventories: :func:`rasterize` burns polygons into a label mask.

The mask lies on a :class:`~pipelines.geo.grid.PixelGrid` (training labels); class values
come from an attribute, numbers as they are or strings through a ``classes`` mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipelines.errors import CRSError, InputError
from pipelines.geo.grid import PixelGrid
from pipelines.geo.inventory.geometry import has_area

__all__ = ["check_classes", "rasterize"]


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


def check_classes(gdf: gpd.GeoDataFrame, attribute: str, classes: Mapping[str, int],
                  name: str = "inventory") -> None:
    """Refuse polygons whose ``attribute`` would burn a class ``classes`` does not declare.

    A numeric (or boolean) attribute holds class ids themselves: each must be one of the
    ids of ``classes``, or 0 (burns nothing). A string attribute must hold names of
    ``classes``. Otherwise masks would hold values that the declared classes (e.g. an
    export manifest) do not name, and 255 would silently become "ignore".

    Args:
        gdf: The polygons.
        attribute: Column holding each polygon's class.
        classes: ``{"scarp": 1, "deposit": 2}``: every class and its id.
        name: The inventory, for messages.

    Raises:
        InputError: naming the column, the undeclared values and the fix.
    """
    try:
        values = _burn_values(gdf, attribute, dict(classes))
    except InputError as exc:
        raise InputError(f"Inventory {name!r}: {exc}") from exc
    declared = set(classes.values())
    bad = sorted(set(values.tolist()) - declared - {0})
    if bad:
        raise InputError(
            f"Inventory {name!r}: attribute {attribute!r} holds class ids {bad} that the "
            f"classes {dict(classes)} do not declare (0 is background, 255 ignore). Add "
            f"each to the classes as NAME=ID (ids 1..254), or recode those polygons."
        )


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
    ok = has_area(geoms) & (values > 0)
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

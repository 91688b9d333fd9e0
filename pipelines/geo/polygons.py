"""Landslide polygons joined across the edges of the pieces they were cut in.

A sweep vectorises each chunk and a comparison each raster window on its own; a landslide
that spans an edge comes out as several polygons. :func:`merge_across_edges` is the one
place that joins them again (with their attributes); :func:`groups` and :func:`combine`
are its building blocks, also used to join polygons across UTM zones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely


def merge_across_edges(gdf, connectivity: int = 4, tolerance: float = 1e-6,
                       piece: str = "chunk", first: Sequence[str] = (), grid_size: float = 0.0):
    """Join polygons that continue across piece (chunk, window) edges into one polygon each.

    Polygons of one piece never share an edge (they are distinct connected regions), so
    only polygons of different pieces that share a boundary segment (4-connectivity) or
    at least a point (8) are joined, transitively.

    Args:
        gdf: GeoDataFrame in one projected CRS with a column naming the piece each
            polygon came from (``piece``), optionally ``edge`` (it touches its piece's border: only
            those can join), ``area_m2``, ``n_pixels``, ``prob_mean``/``prob_max``.
        connectivity: 4: polygons join when they share a boundary segment; 8: touching
            at a corner is enough (as the mask's pixel connectivity).
        tolerance: Smallest shared boundary length (CRS units) that counts for 4.
        piece: The column naming each polygon's piece (default ``chunk``).
        first: Columns whose value each landslide takes from its group's first polygon
            (e.g. where that polygon came from, to put the landslide in order).
        grid_size: Snap every vertex to this grid (CRS units) first (0: as they are). Two
            pieces compute their shared edge each from its own origin, which in degrees or
            at pixel sizes such as 0.3 m differs in the last bits: the edge then neither
            touches (one landslide stays two) nor stops at a point (a sliver joins two that
            meet at a corner). A millionth of a pixel (rounded down to a power of two)
            makes both sides one line.

    Returns:
        A GeoDataFrame with one row per landslide: ``area_m2`` and ``n_pixels`` summed,
        ``prob_mean`` pixel-weighted, ``prob_max`` the maximum (those present),
        ``chunks`` the number of pieces it spans, the ``first`` columns; in the order of
        each group's first polygon.
    """
    n = len(gdf)
    if n == 0:
        out = gdf.drop(columns=[c for c in (piece, "edge") if c in gdf.columns
                                and c not in first])
        out = out.copy()
        out["chunks"] = np.zeros(0, dtype="int64")
        return out
    original = np.asarray(gdf.geometry.values, dtype=object)
    geoms = original
    if grid_size > 0:
        # a power of two: GEOS scales by its inverse, exact in binary, so vertices already
        # on it (a UTM pixel edge) stay put; pointwise: vertices move by under the grid,
        # nothing else is rebuilt (a pixel polygon has no two vertices that close)
        grid = 2.0 ** math.floor(math.log2(grid_size))
        geoms = shapely.set_precision(original, grid, mode="pointwise")
    chunk = np.asarray(gdf[piece].astype(str))
    edge_idx = (np.flatnonzero(np.asarray(gdf["edge"], dtype=bool)) if "edge" in gdf.columns
                else np.arange(n))
    rows: list[np.ndarray] = []
    cols_: list[np.ndarray] = []
    if len(edge_idx) > 1:
        eg = geoms[edge_idx]
        tree = shapely.STRtree(eg)
        a, b = tree.query(eg, predicate="intersects")
        keep = (a < b) & (chunk[edge_idx[a]] != chunk[edge_idx[b]])
        a, b = edge_idx[a[keep]], edge_idx[b[keep]]
        if connectivity == 4 and len(a):
            shared = shapely.length(shapely.intersection(geoms[a], geoms[b]))
            a, b = a[shared > tolerance], b[shared > tolerance]
        rows.append(a)
        cols_.append(b)
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols_) if cols_ else np.zeros(0, dtype=np.int64)
    if grid_size > 0 and len(r):
        # only the polygons that join are snapped (set_precision also re-orders a ring's
        # vertices); every other polygon keeps its geometry as it came
        import geopandas as gpd

        joined = np.zeros(n, dtype=bool)
        joined[r] = joined[c] = True
        gdf = gdf.assign(**{gdf.geometry.name: gpd.GeoSeries(
            np.where(joined, geoms, original), index=gdf.index, crs=gdf.crs)})
    return combine(gdf, groups(n, r, c), shapely.union_all, piece, first)


def groups(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the pairs ``(a[i], b[i])`` over ``n`` items.

    Returns:
        Each item's group number; groups are numbered in the order of their first member.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # first member of each component
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[labels]


def combine(gdf, group: np.ndarray, union, piece: str = "chunk", first: Sequence[str] = ()):
    """One row per group (``group``: each row's group number, from :func:`groups`).

    Geometries are joined with ``union`` (single-member groups keep theirs);
    ``area_m2`` and ``n_pixels`` are summed, ``prob_mean`` pixel-weighted over its
    finite values, ``prob_max`` the largest finite value (NaN when there is none), and
    ``chunks`` the number of distinct pieces (column ``piece``; or the sum of ``chunks``
    when the rows are already merged parts); the ``first`` columns from each group's
    first row.
    """
    import geopandas as gpd

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    n_groups = int(group.max()) + 1 if len(group) else 0
    cols = [c for c in ("area_m2", "n_pixels", "prob_mean", "prob_max") if c in gdf.columns]
    values = {col: np.asarray(gdf[col].to_numpy(), dtype=np.float64) for col in cols}
    npx = values.get("n_pixels", np.ones(len(gdf)))
    out: dict[str, Any] = {}
    for col in cols:
        vals = values[col]
        if col == "prob_mean":
            ok = np.isfinite(vals)
            w = np.where(ok, npx, 0.0)
            tot = np.bincount(group, weights=np.where(ok, vals, 0.0) * w, minlength=n_groups)
            wsum = np.bincount(group, weights=w, minlength=n_groups)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[col] = np.where(wsum > 0, tot / wsum, np.nan)
        elif col == "prob_max":
            best = np.full(n_groups, -np.inf)
            np.maximum.at(best, group, np.where(np.isfinite(vals), vals, -np.inf))
            out[col] = np.where(np.isfinite(best), best, np.nan)
        elif col == "n_pixels":
            out[col] = np.bincount(group, weights=vals, minlength=n_groups).astype(np.int64)
        else:
            out[col] = np.bincount(group, weights=vals, minlength=n_groups)
    if "chunks" in gdf.columns:  # already merged parts: add up their chunk counts
        out["chunks"] = np.bincount(group, weights=np.asarray(gdf["chunks"].to_numpy(),
                                                              dtype=np.float64),
                                    minlength=n_groups).astype(np.int64)
    else:  # distinct chunks per group
        _, chunk_code = np.unique(np.asarray(gdf[piece].astype(str)), return_inverse=True)
        pairs = np.unique(np.stack([group, chunk_code.ravel()]), axis=1)
        out["chunks"] = np.bincount(pairs[0], minlength=n_groups).astype(np.int64)
    if first:
        lead = np.full(n_groups, len(group), dtype=np.int64)
        np.minimum.at(lead, group, np.arange(len(group)))
        for col in first:
            out[col] = gdf[col].to_numpy()[lead]
    sizes = np.bincount(group, minlength=n_groups)
    out_geoms = np.empty(n_groups, dtype=object)
    single = sizes[group] == 1
    out_geoms[group[single]] = geoms[single]
    if (~single).any():
        order = np.flatnonzero(~single)
        order = order[np.argsort(group[order], kind="stable")]
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for members in np.split(order, bounds):
            out_geoms[group[members[0]]] = union(geoms[members])
    return gpd.GeoDataFrame(out, geometry=gpd.GeoSeries(out_geoms, crs=gdf.crs), crs=gdf.crs)

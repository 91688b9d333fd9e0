"""Put chunk outputs back together: mosaics, merged COGs, polygons.

VRT mosaics and merged COGs of the chunk rasters, and landslide polygons joined across
chunk edges. The STAC catalog of what a sweep wrote is made by :mod:`pipelines.geo.stac`.

Nothing here holds more than one output raster in memory: a VRT only references the
chunk COGs (written as XML, with paths relative to the VRT so the folder can be moved or
served from ``gs://``), and a merged COG is made only below a pixel budget the caller sets.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import shapely

from pipelines import fsio
from pipelines.errors import InputError
from pipelines.geo.grid import WGS84, PixelGrid, to_crs

log = logging.getLogger(__name__)

_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


# ----------------------------------------------------------------------------- VRT
def mosaic_grid(grids: Sequence[PixelGrid]) -> PixelGrid:
    """The smallest grid holding every one of ``grids`` (same CRS, same aligned pixels).

    Raises:
        InputError: no grids, grids in several CRSs, or pixels that do not line up.
    """
    if not grids:
        raise InputError("A mosaic needs at least one raster.")
    crs = grids[0].crs
    a, _, _, _, e, _ = grids[0].transform
    for g in grids:
        if g.crs != crs:
            raise InputError(f"Cannot mosaic rasters in {crs} and {g.crs} into one grid; "
                             f"make one mosaic per CRS.")
        if g.transform[0] != a or g.transform[4] != e or g.transform[1] or g.transform[3]:
            raise InputError(f"Cannot mosaic pixels {g.transform} with {grids[0].transform}.")
    left = min(g.bounds[0] for g in grids)
    top = max(g.bounds[3] for g in grids)
    right = max(g.bounds[2] for g in grids)
    bottom = min(g.bounds[1] for g in grids)
    width = round((right - left) / a)
    height = round((top - bottom) / -e)
    return PixelGrid(crs, (a, 0.0, left, 0.0, e, top), width, height)


def _offset(outer: PixelGrid, inner: PixelGrid) -> tuple[int, int]:
    a, e = outer.transform[0], outer.transform[4]
    col = (inner.transform[2] - outer.transform[2]) / a
    row = (inner.transform[5] - outer.transform[5]) / e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        raise InputError(f"Raster at {inner.transform[2]}, {inner.transform[5]} is not aligned "
                         f"with the mosaic's pixels.")
    return round(row), round(col)


def vrt_xml(sources: Sequence[tuple[str, PixelGrid]], dtype: str, nodata: float | None,
            description: str = "", scale: float | None = None, offset: float | None = None,
            block: int = 256) -> str:
    """A GDAL VRT mosaic of single-band rasters on one aligned pixel grid.

    Args:
        sources: ``(href, grid)`` per raster; hrefs are written relative to the VRT.
        dtype: numpy name of the data type (``uint8``, ``float32``...).
        nodata: The band's nodata value.
        description: Band description.
        scale: Optional ``<Scale>`` (physical = stored * scale + offset).
        offset: Optional ``<Offset>``.
        block: Block size of the sources (for GDAL's cache).
    """
    if dtype not in _GDAL_TYPES:
        raise InputError(f"Unsupported VRT data type {dtype!r}.")
    grids = [g for _, g in sources]
    outer = mosaic_grid(grids)
    from rasterio.crs import CRS

    wkt = CRS.from_user_input(outer.crs).to_wkt()
    a, b, c, d, e, f = outer.transform
    gdt = _GDAL_TYPES[dtype]
    lines = [f'<VRTDataset rasterXSize="{outer.width}" rasterYSize="{outer.height}">',
             f"  <SRS>{escape(wkt)}</SRS>",
             f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
             f'  <VRTRasterBand dataType="{gdt}" band="1">']
    if description:
        lines.append(f"    <Description>{escape(description)}</Description>")
    if nodata is not None:
        nd = "nan" if isinstance(nodata, float) and np.isnan(nodata) else repr(nodata)
        lines.append(f"    <NoDataValue>{nd}</NoDataValue>")
    if offset is not None:
        lines.append(f"    <Offset>{offset!r}</Offset>")
    if scale is not None:
        lines.append(f"    <Scale>{scale!r}</Scale>")
    lines.append("    <ColorInterp>Gray</ColorInterp>")
    for href, g in sources:
        row, col = _offset(outer, g)
        bw, bh = min(block, g.width), min(block, g.height)
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="1">{escape(href)}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SourceProperties RasterXSize="{g.width}" RasterYSize="{g.height}" '
            f'DataType="{gdt}" BlockXSize="{bw}" BlockYSize="{bh}" />',
            f'      <SrcRect xOff="0" yOff="0" xSize="{g.width}" ySize="{g.height}" />',
            f'      <DstRect xOff="{col}" yOff="{row}" xSize="{g.width}" ySize="{g.height}" />',
            "    </SimpleSource>",
        ]
    lines += ["  </VRTRasterBand>", "</VRTDataset>", ""]
    return "\n".join(lines)


def write_vrt(path: str, sources: Sequence[tuple[str, PixelGrid]], dtype: str,
              nodata: float | None, **kwargs) -> str:
    """Write a VRT mosaic of ``sources`` (absolute paths/URLs) at ``path`` atomically."""
    folder = path.rsplit("/", 1)[0] if fsio.is_remote(path) else os.path.dirname(
        os.path.abspath(path))
    rel = [(fsio.relative_href(p, folder), g) for p, g in sources]
    fsio.write_bytes(path, vrt_xml(rel, dtype, nodata, **kwargs).encode("utf-8"))
    return path


def merge_to_cog(dest: str, files: Sequence[str], nodata: float | None,
                 tags: Mapping[str, str] | None = None, categorical: bool = False,
                 description: str | None = None) -> str:
    """Merge aligned single-band COGs (local or ``gs://``) into one COG at ``dest``.

    The caller bounds the size (see ``merge_max_px`` in the predict configuration): the
    whole mosaic is held in memory once.
    """
    import rasterio
    from rasterio.merge import merge

    from pipelines.geo.cog import CATEGORICAL, CONTINUOUS, write_cog

    if not files:
        raise InputError(f"Nothing to merge into {dest!r}.")
    with contextlib.ExitStack() as stack:
        datasets = [stack.enter_context(rasterio.open(stack.enter_context(fsio.local_copy(f))))
                    for f in files]
        crs = str(datasets[0].crs)
        arr, transform = merge(datasets, nodata=nodata)
    grid = PixelGrid.from_affine(crs, transform, arr.shape[2], arr.shape[1])
    write_cog(dest, arr, grid, nodata=nodata, band_names=[description] if description else None,
              profile=CATEGORICAL if categorical else CONTINUOUS, tags=dict(tags or {}))
    return dest


# ----------------------------------------------------------------------------- polygons
def merge_chunk_polygons(gdf, connectivity: int = 4, tolerance: float = 1e-6):
    """Join polygons that continue across chunk edges into one polygon each.

    Args:
        gdf: GeoDataFrame in one projected CRS with columns ``chunk`` (the chunk each
            polygon came from), ``edge`` (it touches its chunk's border), ``area_m2``,
            ``n_pixels`` and optionally ``prob_mean``/``prob_max``.
        connectivity: 4: polygons of different chunks join when they share a boundary
            segment; 8: touching at a corner is enough (as the mask's pixel connectivity).
        tolerance: Smallest shared boundary length (CRS units) that counts for 4.

    Returns:
        A GeoDataFrame with one row per landslide: ``area_m2`` and ``n_pixels`` summed,
        ``prob_mean`` pixel-weighted, ``prob_max`` the maximum, ``chunks`` the number of
        chunks it spans; in the order of each group's first polygon.
    """
    n = len(gdf)
    if n == 0:
        out = gdf.drop(columns=[c for c in ("chunk", "edge") if c in gdf.columns])
        out = out.copy()
        out["chunks"] = np.zeros(0, dtype="int64")
        return out
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    chunk = np.asarray(gdf["chunk"].astype(str))
    edge_idx = np.flatnonzero(np.asarray(gdf["edge"], dtype=bool))
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
    return _combine(gdf, _groups(n, r, c), shapely.union_all)


def _groups(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


def _combine(gdf, group: np.ndarray, union):
    """One row per group (``group``: each row's group number, from :func:`_groups`).

    Geometries are joined with ``union`` (single-member groups keep theirs);
    ``area_m2`` and ``n_pixels`` are summed, ``prob_mean`` pixel-weighted over its
    finite values, ``prob_max`` the largest finite value (NaN when there is none), and
    ``chunks`` the number of distinct chunks (or the sum of ``chunks`` when the rows are
    already merged parts).
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
        _, chunk_code = np.unique(np.asarray(gdf["chunk"].astype(str)), return_inverse=True)
        pairs = np.unique(np.stack([group, chunk_code.ravel()]), axis=1)
        out["chunks"] = np.bincount(pairs[0], minlength=n_groups).astype(np.int64)
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


def _zone_edges(epsg: int, bounds: tuple[float, float, float, float]):
    """The limits of UTM zone ``epsg`` near ``bounds`` (lon/lat), in that zone's CRS.

    The limits are the zone's meridians and the equator (or the UTM latitude limits).
    """
    from shapely.geometry import box

    zone, south = epsg % 100, epsg // 100 == 327
    west = -180.0 + 6.0 * (zone - 1)
    lat0, lat1 = (-80.0, 0.0) if south else (0.0, 84.0)
    _, miny, _, maxy = bounds
    zone_box = box(west, max(lat0, miny - 0.1), west + 6.0, min(lat1, maxy + 0.1))
    return to_crs(zone_box.boundary, WGS84, f"EPSG:{epsg}")


def merge_across_zones(parts: Sequence, pixel_size: float, crs: str = WGS84):
    """Join landslides split by a UTM zone limit, then put every zone's polygons in ``crs``.

    Each zone is swept on its own grid, so the two sides of a landslide on a zone limit
    come within a pixel of each other without sharing edges. Polygons of different zones
    that lie within 2 pixels of their zone's limit and within 1.5 pixels of each other
    are joined (their gap closed morphologically); areas and pixel counts are summed.

    Args:
        parts: Per-zone GeoDataFrames in their UTM CRS (from :func:`merge_chunk_polygons`).
        pixel_size: Pixel size in metres.
        crs: CRS of the result.
    """
    import geopandas as gpd
    import pandas as pd

    parts = [p for p in parts if len(p)]
    if not parts:
        return gpd.GeoDataFrame({"area_m2": []}, geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    if len(parts) == 1:
        return parts[0].to_crs(crs).reset_index(drop=True)
    metric = parts[0].crs
    frames, zone_of, near = [], [], []
    for z, part in enumerate(parts):
        ll_bounds = tuple(part.to_crs(WGS84).total_bounds)
        edge = _zone_edges(int(part.crs.to_epsg()), ll_bounds)
        near.append(shapely.dwithin(np.asarray(part.geometry.values), edge, 2.0 * pixel_size))
        zone_of.append(np.full(len(part), z))
        frames.append(part.to_crs(metric))
    allm = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=metric)
    zone = np.concatenate(zone_of)
    cand = np.flatnonzero(np.concatenate(near))
    a = b = np.zeros(0, dtype=np.int64)
    if len(cand) > 1:
        geoms = np.asarray(allm.geometry.values, dtype=object)[cand]
        i, j = shapely.STRtree(geoms).query(geoms, predicate="dwithin",
                                            distance=1.5 * pixel_size)
        keep = (i < j) & (zone[cand[i]] != zone[cand[j]])
        a, b = cand[i[keep]], cand[j[keep]]
    d = float(pixel_size)

    def close(geoms: np.ndarray):
        grown = shapely.union_all(shapely.buffer(geoms, d, join_style="mitre"))
        return shapely.buffer(grown, -d, join_style="mitre")

    merged = _combine(allm, _groups(len(allm), a, b), close)
    return merged.to_crs(crs).reset_index(drop=True)


__all__ = [
    "merge_across_zones",
    "merge_chunk_polygons",
    "merge_to_cog",
    "mosaic_grid",
    "vrt_xml",
    "write_vrt",
]

"""Put chunk outputs back together: mosaics, merged COGs, polygons.

VRT mosaics and merged COGs of the chunk rasters, and landslide polygons joined across
UTM zones (across chunk edges: :mod:`pipelines.geo.polygons`). The STAC catalog of what
a sweep wrote is made by :mod:`pipelines.geo.stac`.

Nothing here holds more than one output raster in memory: a VRT only references the
chunk COGs (written as XML, with paths relative to the VRT so the folder can be moved or
served from ``gs://``), and a merged COG is made only below a pixel budget the caller sets.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

import numpy as np
import shapely

from pipelines import fsio
from pipelines.errors import CorruptOutputError, InputError
from pipelines.geo.grid import WGS84, PixelGrid, to_crs
from pipelines.geo.polygons import combine, groups

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


def _checked(stack: contextlib.ExitStack, path: str):
    """``path`` opened (kept open by ``stack``) once it reads whole and georeferenced.

    Raises:
        CorruptOutputError: it does not (a truncated or overwritten file).
    """
    import rasterio

    from pipelines.geo.cog import gdal_error_text, is_gdal_error

    try:
        ds = stack.enter_context(rasterio.open(stack.enter_context(fsio.local_copy(path))))
        if ds.crs is None or not np.all(np.isfinite(tuple(ds.transform)[:6])):
            raise ValueError(f"no usable georeferencing (CRS {ds.crs}, transform "
                             f"{tuple(ds.transform)[:6]})")
        ds.read()  # decodes every block; what the merge reads next stays in GDAL's cache
    except Exception as exc:
        if not (is_gdal_error(exc) or isinstance(exc, ValueError)):
            raise
        raise CorruptOutputError(f"{path!r} is truncated or corrupt: "
                                 f"{gdal_error_text(exc)}", path) from exc
    return ds


def merge_to_cog(dest: str, files: Sequence[str], nodata: float | None,
                 tags: Mapping[str, str] | None = None, categorical: bool = False,
                 description: str | None = None) -> str:
    """Merge aligned single-band COGs (local or ``gs://``) into one COG at ``dest``.

    A continuous (not ``categorical``) merged COG keeps the first file's band scale and
    offset (see :func:`pipelines.geo.cog.band_scaling`).

    The caller bounds the size (see ``merge_max_px`` in the predict configuration): the
    whole mosaic is held in memory once.

    Raises:
        CorruptOutputError: one of ``files`` is truncated or corrupt (its ``path``).
    """
    from rasterio.merge import merge

    from pipelines.geo.cog import CATEGORICAL, CONTINUOUS, band_scaling, write_cog

    if not files:
        raise InputError(f"Nothing to merge into {dest!r}.")
    with contextlib.ExitStack() as stack:
        datasets = [_checked(stack, f) for f in files]
        crs = str(datasets[0].crs)
        scale, offset = band_scaling(datasets[0])
        arr, transform = merge(datasets, nodata=nodata)
    grid = PixelGrid.from_affine(crs, transform, arr.shape[2], arr.shape[1])
    scaled = not categorical and (scale, offset) != (1.0, 0.0)
    write_cog(dest, arr, grid, nodata=nodata, band_names=[description] if description else None,
              profile=CATEGORICAL if categorical else CONTINUOUS, tags=dict(tags or {}),
              scales=[scale] if scaled else None, offsets=[offset] if scaled else None)
    return dest


# ----------------------------------------------------------------------------- polygons
def zone_edges(epsg: int, bounds: tuple[float, float, float, float]):
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


def near_zone_limit(part, pixel_size: float) -> np.ndarray:
    """Which polygons of ``part`` lie within 2 pixels of their UTM zone's limits.

    Only those can continue in the next zone (see :func:`merge_across_zones`).

    Args:
        part: A GeoDataFrame in the CRS of its UTM zone.
        pixel_size: Pixel size in metres.
    """
    if not len(part):
        return np.zeros(0, dtype=bool)
    ll_bounds = tuple(part.to_crs(WGS84).total_bounds)
    edge = zone_edges(int(part.crs.to_epsg()), ll_bounds)
    return shapely.dwithin(np.asarray(part.geometry.values), edge, 2.0 * pixel_size)


def merge_across_zones(parts: Sequence, pixel_size: float, crs: str = WGS84):
    """Join landslides split by a UTM zone limit, then put every zone's polygons in ``crs``.

    Each zone is swept on its own grid, so the two sides of a landslide on a zone limit
    come within a pixel of each other without sharing edges. Polygons of different zones
    that lie within 2 pixels of their zone's limit and within 1.5 pixels of each other
    are joined (their gap closed morphologically); areas and pixel counts are summed.

    Args:
        parts: Per-zone GeoDataFrames in their UTM CRS (from
            :func:`pipelines.geo.polygons.merge_across_edges`).
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
        near.append(near_zone_limit(part, pixel_size))
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

    merged = combine(allm, groups(len(allm), a, b), close)
    return merged.to_crs(crs).reset_index(drop=True)


__all__ = [
    "merge_across_zones",
    "merge_to_cog",
    "mosaic_grid",
    "near_zone_limit",
    "vrt_xml",
    "write_vrt",
    "zone_edges",
]

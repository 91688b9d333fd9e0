"""One AOI's landslide inventory, streamed chunk by chunk into GeoPackage and GeoParquet.

A chunk's polygons that touch no chunk edge are final as the chunk wrote them; they stay
in its done-record and are read back here, chunk after chunk (a few reads ahead on
threads), never all at once. Polygons on chunk edges are joined first, per UTM zone, by
:func:`merge_edges` (the one merger, :func:`pipelines.geo.polygons.merge_across_edges`),
and come in at the place of their first part, so the inventory lists landslides in
chunk-key order exactly as merging every polygon at once would. In an AOI across UTM
zones, polygons within two pixels of a zone limit are held back and joined across the
limit at the end (:func:`pipelines.geo.mosaic.merge_across_zones`); the rest go straight
to WGS 84. :class:`~pipelines.geo.inventory.InventoryWriter` writes batches of
:data:`BATCH_ROWS`, so memory holds a batch, the edge polygons and the ones near zone
limits, not the inventory.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from pipelines import fsio
from pipelines.errors import CorruptOutputError
from pipelines.predict.config import SweepJob
from pipelines.predict.plan import SweepPlan
from pipelines.predict.records import (
    ChunkSummary,
    PolygonPart,
    drop_other,
    polygon_parts,
    tagged,
)

log = logging.getLogger(__name__)

#: Polygons per batch written to the inventory files.
BATCH_ROWS = 5_000
#: Done-records read ahead, on threads, while the inventory is written.
READ_AHEAD = 16
#: The inventory's columns, before the geometry.
COLUMNS = ("id", "area_m2", "n_pixels", "prob_mean", "prob_max", "chunks", "date",
           "model_id")

T = TypeVar("T")
R = TypeVar("R")


def parts_frame(parts: Sequence[PolygonPart], epsg: int):
    """``parts`` as a GeoDataFrame in their UTM CRS.

    Columns ``area_m2``, ``n_pixels``, ``prob_mean``, ``prob_max``, ``chunks`` and the
    geometry.
    """
    import geopandas as gpd
    import shapely

    crs = f"EPSG:{epsg}"
    return gpd.GeoDataFrame(
        {"area_m2": np.asarray([p.area_m2 for p in parts], dtype=np.float64),
         "n_pixels": np.asarray([p.n_pixels for p in parts], dtype=np.int64),
         "prob_mean": np.asarray([p.prob_mean for p in parts], dtype=np.float64),
         "prob_max": np.asarray([p.prob_max for p in parts], dtype=np.float64),
         "chunks": np.asarray([p.chunks for p in parts], dtype=np.int64)},
        geometry=gpd.GeoSeries(shapely.from_wkb([p.wkb for p in parts]), crs=crs), crs=crs)


def merge_edges(plan: SweepPlan, epsg: int, parts: Iterable[PolygonPart]) -> list[PolygonPart]:
    """Join one AOI's edge polygons of one UTM zone across chunk edges.

    Returns:
        One part per landslide, placed where its first part was (``key``, ``pos``),
        ``chunks`` the number of chunks it spans.
    """
    from pipelines.geo.polygons import merge_across_edges

    rows = sorted(parts, key=lambda p: (p.key, p.pos))
    if not rows:
        return []
    gdf = parts_frame(rows, epsg).drop(columns="chunks")
    gdf["chunk"], gdf["edge"] = [p.key for p in rows], True
    gdf["key"], gdf["pos"] = [p.key for p in rows], [p.pos for p in rows]
    merged = merge_across_edges(gdf, plan.config.connectivity, first=("key", "pos"),
                                grid_size=plan.pixel_size * 1e-6)
    return [PolygonPart(str(k), int(i), g.wkb, float(a), int(n), float(pm), float(px), int(c))
            for k, i, g, a, n, pm, px, c in zip(
                merged["key"], merged["pos"], merged.geometry.values, merged["area_m2"],
                merged["n_pixels"], merged["prob_mean"], merged["prob_max"],
                merged["chunks"])]


def read_interior(job: SweepJob, chunk: ChunkSummary) -> list[PolygonPart]:
    """The chunk's polygons off its edges, from its done-record.

    Raises:
        CorruptOutputError: the done-record is gone or no longer the chunk's (changed
            since this run read or wrote it).
    """
    path = job.path("done", f"{chunk.key}.json")
    rec = fsio.read_record(path)
    parts = polygon_parts(chunk.key, rec.get("polygons") or [], edge=False) if rec else None
    if parts is None or len(parts) != chunk.interior:
        raise CorruptOutputError(
            f"The done-record {path} changed or vanished while the sweep was finalized "
            f"(expected {chunk.interior} polygons off the chunk's edges). Is another run "
            f"writing to the same folder? Run the same command again.", path)
    return parts


def read_ahead(fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in order, ``fn`` running on up to ``depth`` threads ahead."""
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="inventory-read") as pool:
        window: deque[tuple[T, Future[R]]] = deque()
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= depth:
                first, fut = window.popleft()
                yield first, fut.result()
        while window:
            first, fut = window.popleft()
            yield first, fut.result()


def ordered_parts(job: SweepJob, chunks: Sequence[ChunkSummary],
                  merged: Iterable[PolygonPart]) -> Iterator[tuple[int, list[PolygonPart]]]:
    """``(epsg, parts)`` per chunk, in key order.

    A chunk's parts are its polygons off edges and the joined landslides whose first part
    it holds, in the order of the chunk's polygons.
    """
    starts: dict[str, list[PolygonPart]] = defaultdict(list)
    for part in merged:
        starts[part.key].append(part)
    todo = [c for c in sorted(chunks, key=lambda c: c.key) if c.interior or c.key in starts]
    for chunk, interior in read_ahead(
            lambda c: read_interior(job, c) if c.interior else [], todo, READ_AHEAD):
        yield chunk.epsg, sorted([*interior, *starts.pop(chunk.key, [])],
                                 key=lambda p: p.pos)
    if starts:  # joined landslides of chunks without a summary: the caller's mistake
        raise ValueError(f"Joined polygons of chunks {sorted(starts)[:5]} came without their "
                         f"chunk summaries.")


def inventory_crs(job: SweepJob) -> str:
    """One zone: its UTM CRS (exact pixel outlines); several: WGS 84."""
    from pipelines.geo.grid import WGS84

    return WGS84 if len(job.epsgs) > 1 else f"EPSG:{job.epsgs[0]}"


def inventory_template(crs: str):
    """The empty inventory: its columns, dtypes and CRS."""
    import geopandas as gpd
    import pandas as pd

    types = {"id": "int64", "n_pixels": "int64", "chunks": "int64", "date": "object",
             "model_id": "object"}
    return gpd.GeoDataFrame({c: pd.Series([], dtype=types.get(c, "float64"))
                             for c in COLUMNS},
                            geometry=gpd.GeoSeries([], crs=crs), crs=crs)


class _Inventory:
    """Batches of one AOI's polygons, filtered, numbered and written in order."""

    def __init__(self, plan: SweepPlan, job: SweepJob, writer) -> None:
        self.plan, self.job, self.writer = plan, job, writer
        self.zones = len(job.epsgs) > 1
        self.crs = inventory_crs(job)
        self.pending: dict[int, list[PolygonPart]] = defaultdict(list)
        self.held: dict[int, list] = defaultdict(list)  # near a zone limit, per zone
        self.count = 0
        self.area_m2 = 0.0

    def add(self, epsg: int, parts: list[PolygonPart]) -> None:
        self.pending[epsg].extend(parts)
        if len(self.pending[epsg]) >= BATCH_ROWS:
            self._flush(epsg)

    def _flush(self, epsg: int) -> None:
        from pipelines.geo.mosaic import near_zone_limit

        parts = self.pending.pop(epsg, [])
        if not parts:
            return
        gdf = parts_frame(parts, epsg)
        if self.zones:
            near = near_zone_limit(gdf, self.plan.pixel_size)
            if near.any():
                self.held[epsg].append(gdf[near])
            gdf = gdf[~near].to_crs(self.crs)
        self._emit(gdf)

    def _emit(self, gdf) -> None:
        gdf = gdf[gdf["area_m2"] >= self.plan.config.min_area_m2].reset_index(drop=True)
        if not len(gdf):
            return
        gdf.insert(0, "id", np.arange(self.count + 1, self.count + 1 + len(gdf),
                                      dtype=np.int64))
        gdf["date"] = self.job.date
        gdf["model_id"] = str(self.plan.meta["model_id"])
        gdf["n_pixels"] = gdf["n_pixels"].astype("int64")
        gdf["chunks"] = gdf["chunks"].astype("int64")
        self.writer.write(gdf[[*COLUMNS, "geometry"]].set_geometry("geometry"))
        self.count += len(gdf)
        self.area_m2 += float(gdf["area_m2"].sum())

    def finish(self) -> None:
        """Write what is pending, then the polygons near zone limits, joined across them."""
        import pandas as pd

        from pipelines.geo.mosaic import merge_across_zones

        for epsg in sorted(self.pending):
            self._flush(epsg)
        if self.held:
            parts = [pd.concat(self.held[e], ignore_index=True) for e in self.job.epsgs
                     if e in self.held]
            self._emit(merge_across_zones(parts, self.plan.pixel_size, self.crs))


def write_job_inventory(plan: SweepPlan, job: SweepJob, chunks: Sequence[ChunkSummary],
                        merged: Iterable[PolygonPart], partial: bool = False
                        ) -> tuple[dict[str, str], int, float]:
    """Write the AOI's inventory as GeoPackage and GeoParquet, streamed.

    With ``partial`` (some chunks failed) the files are ``inventory.partial.*``. The
    polygons carry ``id, area_m2, n_pixels, prob_mean, prob_max, chunks, date,
    model_id``, in the UTM CRS of a one-zone AOI, else WGS 84.

    Args:
        plan: The sweep's plan.
        job: The AOI.
        chunks: Its chunk summaries.
        merged: Its edge polygons joined across chunk edges (:func:`merge_edges`).
        partial: Some chunks failed.

    Returns:
        ``({"gpkg": path, "parquet": path}, polygons, total area in m2)``.
    """
    from pipelines.geo.inventory import InventoryWriter

    paths = {ext: tagged(job.path(f"inventory.{ext}"), partial) for ext in ("gpkg", "parquet")}
    template = inventory_template(inventory_crs(job))
    with InventoryWriter(list(paths.values()), template) as writer:
        inventory = _Inventory(plan, job, writer)
        for epsg, parts in ordered_parts(job, chunks, merged):
            inventory.add(epsg, parts)
        inventory.finish()
    for ext in paths:
        drop_other(job.path(f"inventory.{ext}"), partial)
    return paths, inventory.count, inventory.area_m2


__all__ = [
    "BATCH_ROWS",
    "COLUMNS",
    "inventory_crs",
    "inventory_template",
    "merge_edges",
    "ordered_parts",
    "parts_frame",
    "read_ahead",
    "read_interior",
    "write_job_inventory",
]

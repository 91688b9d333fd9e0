"""One AOI's products once every chunk is through, with nothing holding every chunk's data.

Chunk STAC items, inventory, mosaics, STAC catalog and run.json, in three steps, plain
functions of the frozen :class:`SweepPlan` (no Beam):

* :func:`chunk_outputs`, per chunk (in parallel): writes the chunk's STAC item and turns
  its done-record into a :class:`~pipelines.predict.records.ChunkSummary` (key, grid,
  files, counts: a few hundred bytes) and the polygons that touch its edges
  (:class:`~pipelines.predict.records.PolygonPart`); its other polygons are final as
  they are and stay in the done-record;
* :func:`~pipelines.predict.inventory.merge_edges`, per AOI and UTM zone: joins the edge
  polygons across chunk edges with the one merger,
  :func:`pipelines.geo.polygons.merge_across_edges`;
* :func:`finish_job`, per AOI, from the summaries, the failures and the merged edge
  polygons: ``inventory.gpkg`` and ``inventory.parquet`` streamed chunk by chunk
  (:mod:`pipelines.predict.inventory`), ``mosaic/*.vrt`` (plus merged COGs when small),
  ``stac/catalog.json`` with the mosaic item, ``failed_chunks.jsonl`` and, last,
  ``run.json``; the chunk products in the folder that are not this run's (an earlier
  run's, into the same folder) are deleted (:func:`remove_stale_chunks`).

:func:`finalize_job` chains the three for a list of chunk records.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from pipelines import fsio
from pipelines.errors import CorruptOutputError
from pipelines.geo.grid import PixelGrid
from pipelines.predict.config import (
    FAILED,
    FORMAT,
    MASK_BAND,
    NODATA_U8,
    PROB_BAND,
    PROB_SCALE,
    RUN,
    SweepJob,
)
from pipelines.predict.inventory import merge_edges, write_job_inventory
from pipelines.predict.plan import SweepPlan, job_keys
from pipelines.predict.records import (
    CHUNK_FILES,
    MOSAIC_FILE,
    ChunkSummary,
    PolygonPart,
    polygon_parts,
    remove_chunk_files,
    remove_chunk_items,
    remove_leftovers,
    remove_stac,
    tagged,
)

log = logging.getLogger(__name__)

#: Media type of the chunk and mosaic COGs in the STAC catalog.
COG_MEDIA = "image/tiff; application=geotiff; profile=cloud-optimized"


# ----------------------------------------------------------------------------- per chunk
def chunk_outputs(plan: SweepPlan, job_i: int, record: dict
                  ) -> tuple[ChunkSummary, list[PolygonPart]]:
    """Write a chunk's STAC item; return its summary and its polygons on chunk edges.

    Args:
        plan: The sweep's plan.
        job_i: Index of the chunk's job.
        record: The chunk's record (done, empty or skipped), polygons included.
    """
    job = plan.jobs[job_i]
    files = dict(record.get("files") or {})
    item = bool(files) and plan.config.stac
    if item:
        write_chunk_item(plan, job, record)
    polygons = record.get("polygons") or []
    edges = polygon_parts(record["key"], polygons, edge=True)
    summary = ChunkSummary(
        key=record["key"], epsg=int(record["epsg"]), grid=PixelGrid.from_dict(record["grid"]),
        files=tuple(sorted(files.items())), state=record["state"], action=record["action"],
        valid_px=int(record["valid_px"]), positive_px=int(record.get("positive_px", 0)),
        interior=len(polygons) - len(edges), item=item)
    return summary, edges


def _bands(plan: SweepPlan) -> dict[str, Any]:
    """The raster-extension bands of the probability, mask and Grad-CAM COGs."""
    from pipelines.geo.stac import RasterBandInfo

    res = float(plan.pixel_size)
    if plan.config.prob_dtype == "uint8":
        prob = RasterBandInfo("uint8", float(NODATA_U8), 1.0 / PROB_SCALE, 0.0, "1", res)
    else:
        prob = RasterBandInfo("float32", float("nan"), unit="1", spatial_resolution=res)
    return {"prob": (prob,), "mask": (RasterBandInfo("uint8", float(NODATA_U8),
                                                     spatial_resolution=res),),
            "explain": (RasterBandInfo("float32", float("nan"), spatial_resolution=res),)}


def _props(plan: SweepPlan) -> dict[str, Any]:
    return {"landslides:model_id": str(plan.meta["model_id"]),
            "landslides:threshold": plan.threshold}


def write_chunk_item(plan: SweepPlan, job: SweepJob, record: dict) -> str:
    """Write the STAC item of one chunk's COGs (``stac/<key>/<key>.json``)."""
    from pipelines.geo.stac import StacAsset, StacItem, write_stac_item

    bands = _bands(plan)
    key = record["key"]
    files = record["files"]
    spec = StacItem(key, PixelGrid.from_dict(record["grid"]), {
        "probability": StacAsset(job.path(files["prob"]), "Landslide probability", COG_MEDIA,
                                 bands=bands["prob"]),
        "mask": StacAsset(job.path(files["mask"]), "Landslide mask", COG_MEDIA,
                          bands=bands["mask"]),
        **({"gradcam": StacAsset(job.path(files["explain"]),
                                 "Grad-CAM heat map (landslide probability)", COG_MEDIA,
                                 bands=bands["explain"])}
           if "explain" in files else {}),
    }, {**_props(plan), "landslides:chunk": key})
    return write_stac_item(job.path("stac"), spec, job.start, job.end)


# ----------------------------------------------------------------------------- per AOI
def finish_job(plan: SweepPlan, job_i: int, summaries: Iterable[ChunkSummary],
               failures: Iterable[dict], merged: Iterable[PolygonPart]) -> dict:
    """Write the job's inventory, mosaics, STAC catalog, dead letters and run.json.

    Args:
        plan: The sweep's plan.
        job_i: Index of the job.
        summaries: The summaries of its chunks (done, empty or skipped).
        failures: The dead-letter records of its failed chunks.
        merged: Its edge polygons joined across chunk edges (every zone's).

    Returns:
        The run record, as written to ``run.json``.
    """
    job = plan.jobs[job_i]
    chunks = sorted(summaries, key=lambda s: s.key)
    failures = sorted(failures, key=lambda f: (f["chunk"], f["stage"]))
    # every planned chunk must come back, done or dead-lettered: a runner that drops
    # elements must not leave a sweep that looks complete
    lost = job.n_chunks - len({s.key for s in chunks} | {f["chunk"] for f in failures})
    if lost > 0:
        log.error("%d chunk(s) of %s were planned but came back neither written nor failed: "
                  "the runner lost them; the sweep is partial, re-run it to redo them.",
                  lost, job.label)
        failures.append({"aoi": job.label, "chunk": f"({lost} unaccounted)", "stage": "lost",
                         "error": f"{lost} planned chunk(s) never came back from the runner",
                         "reason": "LostChunks", "class": "transient", "count": lost})
    outputs: dict[str, Any] = {}
    # a sweep with failed chunks names its products *.partial.*, so that nothing reads
    # them as a complete map of the AOI; each run removes the other kind's leftovers
    partial = bool(failures)
    outputs["inventory"], n_polygons, area_m2 = write_job_inventory(plan, job, chunks, merged,
                                                                     partial)
    outputs["mosaics"] = write_mosaics(plan, job, chunks, partial)
    failed_path = job.path(FAILED)
    if failures:
        fsio.write_bytes(failed_path, "".join(
            json.dumps(f, sort_keys=True) + "\n" for f in failures).encode())
        outputs["failed_chunks"] = failed_path
    elif fsio.exists(failed_path):  # a clean rerun supersedes the old dead letters
        fsio.delete(failed_path)
    remove_stale_chunks(plan, job, chunks, failures, lost)
    if plan.config.stac:
        outputs["stac"] = write_stac(plan, job, chunks, outputs, partial)
    elif removed := remove_stac(job.path("stac")):  # no catalog of another run's products
        log.info("Removed the STAC catalog of an earlier run in %s (%d files): this run "
                 "writes none (stac off).", job.path("stac"), len(removed))
    outputs["run"] = job.path(RUN)
    run = run_record(plan, job, chunks, failures, lost, n_polygons, area_m2, outputs)
    fsio.write_json(job.path(RUN), run)  # last
    return run


def remove_stale_chunks(plan: SweepPlan, job: SweepJob, chunks: Sequence[ChunkSummary],
                        failures: Sequence[dict], lost: int) -> list[str]:
    """Delete the chunk products in the job's folder that are not this run's.

    An earlier run into the same folder (another AOI, another model) leaves
    ``prob|mask|explain/<key>.tif``, ``done/<key>.json`` and ``stac/<key>/<key>.json``;
    left, they would pass for this run's. What stays is, per chunk of this run: its
    done-record, and the COGs (and STAC item) it has; everything else named after a chunk
    key goes: chunks outside this run's plan, this run's failed chunks (their products
    and done-record are an earlier run's, or half-written), this run's empty chunks (no
    COG), chunks without ``--explain`` (no Grad-CAM). Chunks the runner lost (planned,
    never returned) are left as they are: what they hold may be this run's.

    Args:
        plan: The sweep's plan.
        job: The AOI.
        chunks: The summaries of its chunks (done, empty or skipped).
        failures: The dead-letter records of its failed chunks.
        lost: Planned chunks that came back neither written nor failed.

    Returns:
        The deleted paths.
    """
    unknown: set[str] = set()
    if lost > 0:
        known = {s.key for s in chunks} | {str(f["chunk"]) for f in failures}
        unknown = job_keys(plan, job) - known
    keep = {
        "done": {s.key for s in chunks},
        "prob": {s.key for s in chunks if "prob" in dict(s.files)},
        "mask": {s.key for s in chunks if "mask" in dict(s.files)},
        "explain": {s.key for s in chunks if "explain" in dict(s.files)},
    }
    removed: list[str] = []
    for folder, suffix in CHUNK_FILES.items():
        removed += remove_chunk_files(job.path(folder), suffix, keep[folder] | unknown)
    if plan.config.stac:  # else remove_stac takes the whole catalog
        removed += remove_chunk_items(job.path("stac"),
                                      {s.key for s in chunks if s.item} | unknown)
    if removed:
        log.info("Removed %d chunk product(s) in %s that this run did not write (an "
                 "earlier run's, or of chunks that failed or came out empty now), e.g. %s",
                 len(removed), job.out, ", ".join(removed[:5]))
    return removed


def run_record(plan: SweepPlan, job: SweepJob, chunks: Sequence[ChunkSummary],
               failures: Sequence[dict], lost: int, n_polygons: int, area_m2: float,
               outputs: dict) -> dict:
    """The body of ``run.json``."""
    actions = Counter(s.action for s in chunks)
    states = Counter(s.state for s in chunks)
    valid_px = sum(s.valid_px for s in chunks)
    px_km2 = plan.pixel_size ** 2 / 1e6
    if failures:
        status = "partial"
    elif valid_px == 0:
        status = "no_data"
    else:
        status = "ok"
    finished = dt.datetime.now(dt.UTC)
    return {
        "format": FORMAT,
        "status": status,
        "aoi": {"name": job.label, "region": job.region.name, "start": job.start,
                "end": job.end, "date": job.date, "area_km2": round(job.area_km2, 4),
                "epsg": list(job.epsgs)},
        "model": {"path": plan.config.model, "model_id": plan.meta["model_id"],
                  "bands": list(plan.bands), "threshold": plan.threshold,
                  "patch_size": plan.meta.get("patch_size"), **plan.lattice.to_dict()},
        "source": plan.source_info[job.source],
        "grid": {"pixel_size": plan.pixel_size, "chunk_size": plan.config.chunk_size,
                 "halo": plan.halo},
        "counts": {
            "chunks_total": job.n_chunks,
            "chunks_computed": actions.get("computed", 0),
            "chunks_skipped": actions.get("skipped", 0),
            "chunks_empty": states.get("empty", 0),
            "chunks_failed": len({f["chunk"] for f in failures if f["stage"] != "lost"})
            + max(lost, 0),
            "polygons": n_polygons,
            "valid_px": valid_px,
            "landslide_px": sum(s.positive_px for s in chunks),
        },
        "km2": {"aoi": round(job.area_km2, 4), "valid": round(valid_px * px_km2, 4),
                "landslides": round(area_m2 / 1e6, 6) if n_polygons else 0.0},
        "failures": {"count": len(failures),
                     "reasons": dict(Counter(f["reason"] for f in failures))},
        "timings": {"started": plan.started,
                    "finished": finished.isoformat(timespec="seconds"),
                    "seconds": round((finished - dt.datetime.fromisoformat(
                        plan.started)).total_seconds(), 3)},
        "config": plan.config.to_dict(),
        "outputs": outputs,
    }


def write_mosaics(plan: SweepPlan, job: SweepJob, chunks: Sequence[ChunkSummary],
                  partial: bool = False) -> dict[str, Any]:
    """Write a VRT (and, when small, a merged COG) of probability and mask per CRS.

    Sweeps with ``explain`` also get one of the Grad-CAM maps (``explain.vrt|tif``).

    With ``partial`` (some chunks failed) the files are ``<kind>.partial.vrt|tif``.

    Every mosaic file an earlier run left in ``mosaic/`` that this run does not write (the
    other kind of partial/complete, a merged COG now over ``merge_max_px``, the Grad-CAM
    maps of a run with ``explain``, a UTM zone no longer swept) is deleted: it would
    describe other chunks, or another model.
    """
    from pipelines.geo.mosaic import merge_to_cog, mosaic_grid, write_vrt

    out: dict[str, Any] = {}
    written: set[str] = set()
    with_files = [s for s in chunks if s.files]
    for epsg in sorted({s.epsg for s in with_files}):
        recs = [s for s in with_files if s.epsg == epsg]
        grids = [s.grid for s in recs]
        suffix = "" if len(job.epsgs) == 1 else f"_{epsg}"
        big = mosaic_grid(grids)
        small = big.width * big.height <= plan.config.merge_max_px
        tags = {"model_id": str(plan.meta["model_id"]), "threshold": repr(plan.threshold),
                "start": job.start or "", "end": job.end or ""}
        kinds = ("prob", "mask", *(("explain",) if all("explain" in dict(s.files)
                                                       for s in recs) else ()))
        for kind in kinds:
            files = [job.path(s.file(kind)) for s in recs]
            if kind == "prob" and plan.config.prob_dtype == "uint8":
                dtype, nodata, scale = "uint8", float(NODATA_U8), 1.0 / PROB_SCALE
            elif kind in ("prob", "explain"):
                dtype, nodata, scale = "float32", float("nan"), None
            else:
                dtype, nodata, scale = "uint8", float(NODATA_U8), None
            desc = {"prob": PROB_BAND, "mask": MASK_BAND,
                    "explain": "gradcam"}[kind]
            vrt = tagged(job.path("mosaic", f"{kind}{suffix}.vrt"), partial)
            write_vrt(vrt, list(zip(files, grids)), dtype, nodata, description=desc,
                      scale=scale)
            written.add(f"{kind}{suffix}.vrt")
            entry = {"vrt": vrt, "crs": f"EPSG:{epsg}", "shape": [big.height, big.width],
                     "transform": list(big.transform)}
            if small:
                kt = dict(tags, scale=repr(scale)) if scale else tags
                cog = tagged(job.path("mosaic", f"{kind}{suffix}.tif"), partial)
                try:
                    merge_to_cog(cog, files, nodata, tags=kt, categorical=kind == "mask",
                                 description=desc)
                except CorruptOutputError as exc:
                    raise _damaged_chunk(job, recs, files, exc) from exc
                written.add(f"{kind}{suffix}.tif")
                entry["cog"] = cog
            out[f"{kind}{suffix}"] = entry
    written = {tagged(name, partial) for name in written}
    removed = remove_leftovers(job.path("mosaic"), lambda name: bool(
        MOSAIC_FILE.fullmatch(name)) and name not in written)
    if removed:
        log.info("Removed %d mosaic file(s) of an earlier run that this run does not write: "
                 "%s", len(removed), ", ".join(removed))
    return out


def _damaged_chunk(job: SweepJob, recs: Sequence[ChunkSummary], files: list[str],
                   exc: CorruptOutputError) -> CorruptOutputError:
    """The error for a chunk COG damaged since it was written; forgets that chunk.

    Its done-record is deleted, so the same command recomputes the chunk instead of
    trusting the file again (sizes alone do not show bytes overwritten in place).
    """
    rec = next((r for r, f in zip(recs, files) if f == exc.path), None)
    done = job.path("done", f"{rec.key}.json") if rec else None
    if done and fsio.exists(done):
        fsio.delete(done)
    return CorruptOutputError(
        f"Chunk output {exc}. It was written by an earlier run and damaged since; "
        + (f"its done-record {done} is deleted, so running the same command again "
           f"recomputes that chunk" if done else "delete it")
        + " (or re-run with --overwrite to redo the whole sweep).", exc.path)


def _done_footprint(job: SweepJob, chunks: Sequence[ChunkSummary], batch: int = 512):
    """The AOI cut to the chunks that were written (WGS 84), unioned batch by batch."""
    import shapely
    from shapely.geometry import box

    from pipelines.geo.grid import WGS84, to_crs

    done = [s.grid for s in chunks if s.files]
    if not done:
        return job.region.geometry
    union = None
    for i in range(0, len(done), batch):
        part = [to_crs(box(*g.bounds), g.crs, WGS84) for g in done[i:i + batch]]
        union = shapely.union_all(part if union is None else [union, *part])
    return job.region.geometry.intersection(union)


def write_stac(plan: SweepPlan, job: SweepJob, chunks: Sequence[ChunkSummary], outputs: dict,
               partial: bool = False) -> str:
    """Write the job's mosaic item and its catalog, listing the chunk items already written.

    The mosaic item of a ``partial`` sweep says so (``landslides:partial``) and covers
    only the chunks that were computed, not the whole AOI.
    """
    from pipelines.geo.stac import StacAsset, StacItem, write_stac_item, write_stac_root

    bands = _bands(plan)
    assets = {
        "inventory_gpkg": StacAsset(outputs["inventory"]["gpkg"], "Landslide polygons",
                                    "application/geopackage+sqlite3"),
        "inventory_parquet": StacAsset(outputs["inventory"]["parquet"],
                                       "Landslide polygons (GeoParquet)",
                                       "application/vnd.apache.parquet"),
        "run": StacAsset(job.path(RUN), "Run record", "application/json", ("metadata",)),
    }
    for name, m in outputs["mosaics"].items():
        grid = PixelGrid(m["crs"], tuple(m["transform"]), m["shape"][1],  # type: ignore[arg-type]
                         m["shape"][0])
        kind = name.split("_", 1)[0]
        assets[f"{name}_vrt"] = StacAsset(m["vrt"], f"{name} mosaic (VRT)", "application/xml",
                                          ("data", "overview"), bands=bands[kind], grid=grid)
        if "cog" in m:
            assets[f"{name}_cog"] = StacAsset(m["cog"], f"{name} mosaic", COG_MEDIA,
                                              bands=bands[kind], grid=grid)
    footprint = _done_footprint(job, chunks) if partial else job.region.geometry
    folder = job.path("stac")
    write_stac_item(folder, StacItem("mosaic", None, assets,
                                     {**_props(plan), "landslides:partial": partial},
                                     geometry=footprint), job.start, job.end)
    ids = [s.key for s in chunks if s.item]
    return write_stac_root(folder, f"landslides-{job.label}"[:100],
                           f"Landslide predictions of {job.label} by model "
                           f"{plan.meta['model_id']}", [*ids, "mosaic"])


# ----------------------------------------------------------------------------- without Beam
def finalize_job(plan: SweepPlan, job_i: int, results: list[dict],
                 failures: list[dict]) -> dict:
    """The three steps for one job's chunk records, in this process (no Beam).

    Args:
        plan: The sweep's plan.
        job_i: Index of the job.
        results: The records of its chunks (done, empty or skipped).
        failures: The dead-letter records of its failed chunks.

    Returns:
        The run record, as written to ``run.json``.
    """
    summaries: list[ChunkSummary] = []
    edges: list[tuple[int, PolygonPart]] = []
    for record in results:
        summary, parts = chunk_outputs(plan, job_i, record)
        summaries.append(summary)
        edges.extend((summary.epsg, p) for p in parts)
    merged = [m for epsg in sorted({e for e, _ in edges})
              for m in merge_edges(plan, epsg, [p for e, p in edges if e == epsg])]
    return finish_job(plan, job_i, summaries, failures, merged)


__all__ = [
    "COG_MEDIA",
    "chunk_outputs",
    "finalize_job",
    "finish_job",
    "remove_stale_chunks",
    "run_record",
    "write_chunk_item",
    "write_mosaics",
    "write_stac",
]

"""One AOI's products once every chunk is through: inventory, mosaics, STAC, run.json.

Owns :func:`finalize_job`: the chunks' polygons merged across chunk edges (and UTM
zones) into ``inventory.gpkg`` and ``inventory.parquet``, ``mosaic/*.vrt`` (plus merged
COGs when small), ``stac/catalog.json``, ``failed_chunks.jsonl`` and, last,
``run.json``. Plain functions of the frozen :class:`SweepPlan` and the chunk records; no
Beam.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections import Counter
from typing import Any

import numpy as np

from pipelines import fsio
from pipelines.errors import CorruptOutputError
from pipelines.geo.grid import PixelGrid
from pipelines.predict.config import FAILED, FORMAT, NODATA_U8, PROB_SCALE, RUN, SweepJob
from pipelines.predict.plan import SweepPlan

log = logging.getLogger(__name__)


def finalize_job(plan: SweepPlan, job_i: int, results: list[dict],
                 failures: list[dict]) -> dict:
    """Write the job's inventory, mosaics, STAC catalog, dead letters and run.json.

    Args:
        plan: The sweep's plan.
        job_i: Index of the job.
        results: The records of its chunks (done, empty or skipped).
        failures: The dead-letter records of its failed chunks.

    Returns:
        The run record, as written to ``run.json``.
    """
    job = plan.jobs[job_i]
    results = sorted(results, key=lambda r: r["key"])
    failures = sorted(failures, key=lambda f: (f["chunk"], f["stage"]))
    # every planned chunk must come back, done or dead-lettered: a runner that drops
    # elements must not leave a sweep that looks complete
    lost = job.n_chunks - len({r["key"] for r in results} | {f["chunk"] for f in failures})
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
    gdf = job_inventory(plan, job, results)
    outputs["inventory"] = write_job_inventory(job, gdf, partial)
    outputs["mosaics"] = write_mosaics(plan, job, results, partial)
    failed_path = job.path(FAILED)
    if failures:
        fsio.write_bytes(failed_path, "".join(
            json.dumps(f, sort_keys=True) + "\n" for f in failures).encode())
        outputs["failed_chunks"] = failed_path
    elif fsio.exists(failed_path):  # a clean rerun supersedes the old dead letters
        fsio.delete(failed_path)
    if plan.config.stac:
        outputs["stac"] = write_stac(plan, job, results, outputs, partial)
    outputs["run"] = job.path(RUN)
    actions = Counter(r["action"] for r in results)
    states = Counter(r["state"] for r in results)
    valid_px = sum(r["valid_px"] for r in results)
    px_km2 = plan.pixel_size ** 2 / 1e6
    if failures:
        status = "partial"
    elif valid_px == 0:
        status = "no_data"
    else:
        status = "ok"
    finished = dt.datetime.now(dt.UTC)
    run = {
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
            "polygons": len(gdf),
            "valid_px": valid_px,
            "landslide_px": sum(r.get("positive_px", 0) for r in results),
        },
        "km2": {"aoi": round(job.area_km2, 4), "valid": round(valid_px * px_km2, 4),
                "landslides": round(float(gdf["area_m2"].sum()) / 1e6, 6)
                if len(gdf) else 0.0},
        "failures": {"count": len(failures),
                     "reasons": dict(Counter(f["reason"] for f in failures))},
        "timings": {"started": plan.started,
                    "finished": finished.isoformat(timespec="seconds"),
                    "seconds": round((finished - dt.datetime.fromisoformat(
                        plan.started)).total_seconds(), 3)},
        "config": plan.config.to_dict(),
        "outputs": outputs,
    }
    fsio.write_json(job.path(RUN), run)  # last
    return run


def job_inventory(plan: SweepPlan, job: SweepJob, results: list[dict]):
    """The job's landslide polygons, merged across chunk edges and UTM zones.

    Returns:
        A GeoDataFrame with ``id, area_m2, n_pixels, prob_mean, prob_max, chunks, date,
        model_id`` and the geometry: in the UTM CRS of a one-zone job, else WGS 84.
    """
    import geopandas as gpd
    import pandas as pd
    import shapely

    from pipelines.geo.grid import WGS84
    from pipelines.geo.mosaic import merge_across_zones
    from pipelines.geo.polygons import merge_across_edges

    parts = []
    for epsg in job.epsgs:
        rows = [(r["key"], p) for r in results if r["epsg"] == epsg for p in r["polygons"]]
        geoms = [shapely.from_wkb(base64.b64decode(p["wkb"])) for _, p in rows]
        gdf = gpd.GeoDataFrame(
            {"chunk": [k for k, _ in rows],
             "edge": np.asarray([p["edge"] for _, p in rows], dtype=bool),
             "area_m2": np.asarray([p["area_m2"] for _, p in rows], dtype=np.float64),
             "n_pixels": np.asarray([p["n_pixels"] for _, p in rows], dtype=np.int64),
             "prob_mean": np.asarray([p["prob_mean"] for _, p in rows], dtype=np.float64),
             "prob_max": np.asarray([p["prob_max"] for _, p in rows], dtype=np.float64)},
            geometry=gpd.GeoSeries(geoms, crs=f"EPSG:{epsg}"), crs=f"EPSG:{epsg}")
        parts.append(merge_across_edges(gdf, plan.config.connectivity))
    # one zone: its UTM CRS (exact pixel outlines); several: WGS 84, joined at zone limits
    crs = f"EPSG:{job.epsgs[0]}" if len(job.epsgs) == 1 else WGS84
    gdf = merge_across_zones(parts, plan.pixel_size, crs)
    gdf = gdf[gdf["area_m2"] >= plan.config.min_area_m2].reset_index(drop=True)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype=np.int64))
    gdf["date"] = job.date
    gdf["model_id"] = str(plan.meta["model_id"])
    cols = ["id", "area_m2", "n_pixels", "prob_mean", "prob_max", "chunks", "date",
            "model_id"]
    for c in cols:
        if c not in gdf.columns:
            gdf[c] = pd.Series([], dtype="float64")
    gdf["n_pixels"] = gdf["n_pixels"].astype("int64")
    gdf["chunks"] = gdf["chunks"].astype("int64")
    return gdf[[*cols, "geometry"]].set_geometry("geometry")


PARTIAL = ".partial"


def _tagged(path: str, partial: bool) -> str:
    """``inventory.gpkg`` -> ``inventory.partial.gpkg`` for a partial sweep."""
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{PARTIAL}{dot}{ext}" if partial else path


def _drop_other(path: str, partial: bool) -> None:
    """Delete the other kind of ``path`` (partial or complete) left by an older run."""
    other = _tagged(path, not partial)
    if fsio.exists(other):
        fsio.delete(other)


def write_job_inventory(job: SweepJob, gdf, partial: bool = False) -> dict[str, str]:
    """Write the inventory as GeoPackage and GeoParquet; returns their paths.

    With ``partial`` (some chunks failed) the files are ``inventory.partial.*``.
    """
    from pipelines.geo.inventory import write_inventory

    paths = {}
    for ext in ("gpkg", "parquet"):
        paths[ext] = _tagged(job.path(f"inventory.{ext}"), partial)
        write_inventory(gdf, paths[ext])
        _drop_other(job.path(f"inventory.{ext}"), partial)
    return paths


def write_mosaics(plan: SweepPlan, job: SweepJob, results: list[dict], partial: bool = False
                  ) -> dict[str, Any]:
    """Write a VRT (and, when small, a merged COG) of probability and mask per CRS.

    Sweeps with ``explain`` also get one of the Grad-CAM maps (``explain.vrt|tif``).

    With ``partial`` (some chunks failed) the files are ``<kind>.partial.vrt|tif``.
    """
    from pipelines.geo.mosaic import merge_to_cog, mosaic_grid, write_vrt

    out: dict[str, Any] = {}
    with_files = [r for r in results if r.get("files")]
    epsgs = sorted({r["epsg"] for r in with_files})
    for epsg in epsgs:
        recs = [r for r in with_files if r["epsg"] == epsg]
        grids = [PixelGrid.from_dict(r["grid"]) for r in recs]
        suffix = "" if len(job.epsgs) == 1 else f"_{epsg}"
        big = mosaic_grid(grids)
        small = big.width * big.height <= plan.config.merge_max_px
        tags = {"model_id": str(plan.meta["model_id"]), "threshold": repr(plan.threshold),
                "start": job.start or "", "end": job.end or ""}
        kinds = ("prob", "mask", *(("explain",) if all("explain" in r["files"]
                                                       for r in recs) else ()))
        for kind in kinds:
            files = [job.path(r["files"][kind]) for r in recs]
            if kind == "prob" and plan.config.prob_dtype == "uint8":
                dtype, nodata, scale = "uint8", float(NODATA_U8), 1.0 / PROB_SCALE
            elif kind in ("prob", "explain"):
                dtype, nodata, scale = "float32", float("nan"), None
            else:
                dtype, nodata, scale = "uint8", float(NODATA_U8), None
            desc = {"prob": "landslide_probability", "mask": "landslide",
                    "explain": "gradcam"}[kind]
            vrt = _tagged(job.path("mosaic", f"{kind}{suffix}.vrt"), partial)
            write_vrt(vrt, list(zip(files, grids)), dtype, nodata, description=desc,
                      scale=scale)
            _drop_other(job.path("mosaic", f"{kind}{suffix}.vrt"), partial)
            entry = {"vrt": vrt, "crs": f"EPSG:{epsg}", "shape": [big.height, big.width]}
            if small:
                kt = dict(tags, scale=repr(scale)) if scale else tags
                cog = _tagged(job.path("mosaic", f"{kind}{suffix}.tif"), partial)
                try:
                    merge_to_cog(cog, files, nodata, tags=kt, categorical=kind == "mask",
                                 description=desc)
                except CorruptOutputError as exc:
                    raise _damaged_chunk(job, recs, files, exc) from exc
                _drop_other(job.path("mosaic", f"{kind}{suffix}.tif"), partial)
                entry["cog"] = cog
            out[f"{kind}{suffix}"] = entry
    return out


def _damaged_chunk(job: SweepJob, recs: list[dict], files: list[str],
                   exc: CorruptOutputError) -> CorruptOutputError:
    """The error for a chunk COG damaged since it was written; forgets that chunk.

    Its done-record is deleted, so the same command recomputes the chunk instead of
    trusting the file again (sizes alone do not show bytes overwritten in place).
    """
    rec = next((r for r, f in zip(recs, files) if f == exc.path), None)
    done = job.path("done", f"{rec['key']}.json") if rec else None
    if done and fsio.exists(done):
        fsio.delete(done)
    return CorruptOutputError(
        f"Chunk output {exc}. It was written by an earlier run and damaged since; "
        + (f"its done-record {done} is deleted, so running the same command again "
           f"recomputes that chunk" if done else "delete it")
        + " (or re-run with --overwrite to redo the whole sweep).", exc.path)


def write_stac(plan: SweepPlan, job: SweepJob, results: list[dict], outputs: dict,
               partial: bool = False) -> str:
    """Write the job's STAC catalog: an item per chunk and one for the mosaics.

    The mosaic item of a ``partial`` sweep says so (``landslides:partial``) and covers
    only the chunks that were computed, not the whole AOI.
    """
    import shapely
    from shapely.geometry import box

    from pipelines.geo.grid import WGS84, to_crs
    from pipelines.geo.stac import StacAsset, StacItem, write_stac_catalog

    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    props = {"landslides:model_id": str(plan.meta["model_id"]),
             "landslides:threshold": plan.threshold}
    items = []
    for r in results:
        if not r.get("files"):
            continue
        items.append(StacItem(r["key"], PixelGrid.from_dict(r["grid"]), {
            "probability": StacAsset(job.path(r["files"]["prob"]), "Landslide probability",
                                     cog),
            "mask": StacAsset(job.path(r["files"]["mask"]), "Landslide mask", cog),
            **({"gradcam": StacAsset(job.path(r["files"]["explain"]),
                                     "Grad-CAM heat map (landslide probability)", cog)}
               if "explain" in r["files"] else {}),
        }, {**props, "landslides:chunk": r["key"]}))
    assets = {
        "inventory_gpkg": StacAsset(outputs["inventory"]["gpkg"], "Landslide polygons",
                                    "application/geopackage+sqlite3"),
        "inventory_parquet": StacAsset(outputs["inventory"]["parquet"],
                                       "Landslide polygons (GeoParquet)",
                                       "application/vnd.apache.parquet"),
        "run": StacAsset(job.path(RUN), "Run record", "application/json", ("metadata",)),
    }
    for name, m in outputs["mosaics"].items():
        assets[f"{name}_vrt"] = StacAsset(m["vrt"], f"{name} mosaic (VRT)",
                                          "application/xml", ("data", "overview"))
        if "cog" in m:
            assets[f"{name}_cog"] = StacAsset(m["cog"], f"{name} mosaic", cog)
    footprint = job.region.geometry
    done = [PixelGrid.from_dict(r["grid"]) for r in results if r.get("files")]
    if partial and done:
        footprint = footprint.intersection(shapely.union_all(
            [to_crs(box(*g.bounds), g.crs, WGS84) for g in done]))
    items.append(StacItem("mosaic", None, assets, {**props, "landslides:partial": partial},
                          geometry=footprint))
    return write_stac_catalog(job.path("stac"), f"landslides-{job.label}"[:100],
                              f"Landslide predictions of {job.label} by model "
                              f"{plan.meta['model_id']}", items, job.start, job.end)


__all__ = ["finalize_job", "job_inventory", "write_job_inventory", "write_mosaics",
           "write_stac"]

"""Predict: sweep a region chunk by chunk with a model artifact into COGs and an inventory.

The pipeline (Beam; DirectRunner locally, Dataflow in the cloud)::

    chunks of every AOI (planned on the launcher, per UTM zone; reshuffled over workers)
      | ReadChunk: skip chunks whose done-record matches this run's inputs; else read the
      |            chunk plus a halo from the source and cut the lattice windows (the
      |            next chunk on a reader thread, during this one's inference)
      | RunInference(KeyedModelHandler(KerasModelHandler))   (model loaded once per worker)
      | BlendWrite: weighted blend, halo cropped, nodata where imagery is invalid; write
      |             prob/<key>.tif, mask/<key>.tif, then done/<key>.json (with the
      |             chunk's polygons) last (on a writer thread, during the next inference)
      +-> per AOI (CoGroupByKey): polygons merged across chunk edges -> inventory.gpkg +
          inventory.parquet, mosaic/*.vrt (+ merged COGs when small), stac/catalog.json,
          failed_chunks.jsonl, run.json

Seamless by construction (see :mod:`pipelines.geo.blend`): windows sit on a global
lattice and every chunk is read with a halo holding each window that touches it, so the
blended probability of a pixel does not depend on the chunking.

Resumable and idempotent: each chunk's outputs are published atomically and its
``done/<key>.json`` last, holding a signature of everything its outputs depend on (model,
source, date window, windows, threshold, vectorising, chunk, region part). A rerun skips
chunks whose record matches and redoes the rest, so a run killed half way and started
again ends with the same outputs as an uninterrupted one.

Output encoding: probabilities are ``uint8`` by default (``p * 250`` rounded, 255 nodata):
4x smaller than ``float32`` at continental scale, and a step of 0.004 is far below any
model's calibration error; ``--prob-dtype float32`` keeps full precision (NaN nodata).
Masks are ``uint8`` 0/1 with 255 nodata.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines import fsio
from pipelines.errors import (
    ConfigError,
    DataNotFoundError,
    InputError,
    NoDataError,
    RegionError,
)
from pipelines.geo import bands as bandreg
from pipelines.geo.blend import Lattice, blend, chunk_windows, cut_windows, window_weight
from pipelines.geo.grid import Chunk, ChunkKey, GridSpec, PixelGrid, Region, plan_chunks
from pipelines.geo.patches import NODATA_POLICY, channels_last
from pipelines.geo.stack import StackSpec
from pipelines.sources.base import Source
from pipelines.sources.factory import check_window
from pipelines.sources.stacked import make_stacked_source

log = logging.getLogger(__name__)

FORMAT = "landslides-predict/1"
RUN = "run.json"
FAILED = "failed_chunks.jsonl"
CONFIG = "predict_config.json"
PROB_DTYPES = ("uint8", "float32")
PROB_SCALE = 250.0
NODATA_U8 = 255


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PredictConfig:
    """Everything a sweep needs; saved as ``predict_config.json`` beside the outputs.

    Attributes:
        model: Model artifact folder (local or ``gs://``).
        source: Source spec (see :mod:`pipelines.sources.factory`).
        out: Output folder, local or ``gs://``.
        aoi: Area of interest: a vector file or ``minlon,minlat,maxlon,maxlat``.
        point: ``"LAT,LON"``: map a square of half-side ``buffer_m`` around a place.
        buffer_m: Half-side in metres of the square around ``point`` or each event.
        events: CSV event catalogue (e.g. NASA's Global Landslide Catalog): one AOI per
            event, in ``out/<event_id>/``, with its own date window.
        days_before: Event window start, in days before each event's date.
        days_after: Event window end, in days after each event's date.
        start: Date window start (YYYY-MM-DD) for ``aoi``/``point``.
        end: Date window end.
        window: Window side in pixels (default: the artifact's patch size).
        overlap: Window overlap in [0, 1) (0.5 default: every pixel seen by 4 windows).
        chunk_size: Chunk side in pixels (a multiple of the stride keeps the halo tight).
        pixel_size: Metres (default: the artifact's, else 10).
        batch_size: Windows per model call.
        chunks_per_batch: Chunks per RunInference batch.
        threshold: Mask threshold (default: the artifact's decision threshold).
        min_area_m2: Drop landslide polygons smaller than this (after merging chunks).
        connectivity: Pixel connectivity of landslide polygons (4 or 8).
        prob_dtype: ``uint8`` (p * 250, 255 nodata) or ``float32`` (NaN nodata).
        merge_max_px: Write one merged COG per mosaic when it has at most this many pixels.
        retries: Read retries of a chunk (transient source errors) before dead-lettering.
        retry_delay_s: First retry delay; doubles each time.
        epsg: Force one projected CRS instead of per-UTM-zone chunks.
        stac: Write the STAC catalog.
        large_model: Share one model per machine across worker processes.
        overwrite: Replace the products of a sweep of other dates already in ``out``
            (refused by default: the mosaic, STAC and inventory would mix dates).
    """

    model: str
    source: dict[str, Any]
    out: str
    aoi: str | None = None
    point: str | None = None
    buffer_m: float = 1000.0
    events: str | None = None
    days_before: int = 0
    days_after: int = 90
    start: str | None = None
    end: str | None = None
    window: int | None = None
    overlap: float = 0.5
    chunk_size: int = 512
    pixel_size: float | None = None
    batch_size: int = 16
    chunks_per_batch: int = 1
    threshold: float | None = None
    min_area_m2: float = 200.0
    connectivity: int = 4
    prob_dtype: str = "uint8"
    merge_max_px: int = 50_000_000
    retries: int = 3
    retry_delay_s: float = 2.0
    epsg: int | None = None
    stac: bool = True
    large_model: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.events:
            check_window(self.start, self.end)
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"overlap must be in [0, 1) (0.5 = half a window), got "
                              f"{self.overlap!r}.")
        if self.window is not None and self.window < 8:
            raise ConfigError(f"window must be at least 8 pixels, got {self.window}.")
        if self.chunk_size < 8:
            raise ConfigError(f"chunk_size must be at least 8 pixels, got {self.chunk_size}.")
        if self.batch_size < 1 or self.chunks_per_batch < 1:
            raise ConfigError(f"batch_size ({self.batch_size}) and chunks_per_batch "
                              f"({self.chunks_per_batch}) must be >= 1.")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}.")
        if self.min_area_m2 < 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {self.min_area_m2}.")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity}.")
        if self.prob_dtype not in PROB_DTYPES:
            raise ConfigError(f"prob_dtype must be one of {', '.join(PROB_DTYPES)}, got "
                              f"{self.prob_dtype!r}.")
        if self.buffer_m <= 0:
            raise ConfigError(f"buffer_m must be positive, got {self.buffer_m}.")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ConfigError("retries and retry_delay_s must be >= 0.")
        if self.pixel_size is not None and self.pixel_size <= 0:
            raise ConfigError(f"pixel_size must be positive, got {self.pixel_size}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- jobs
@dataclass
class SweepJob:
    """One AOI of a sweep (a run has one, or one per event)."""

    name: str
    out: str
    region: Region
    start: str | None
    end: str | None
    date: str
    source: int
    n_chunks: int
    area_km2: float
    epsgs: tuple[int, ...]
    base_signature: str

    @property
    def label(self) -> str:
        return self.name or self.region.name

    def path(self, *parts: str) -> str:
        return fsio.join(self.out, *parts)


@dataclass
class ChunkTiles:
    """A chunk ready for inference: its windows and what blending needs afterwards."""

    job: int
    key: str
    spec: dict
    region_wkb: bytes
    signature: str
    origins: np.ndarray
    valid: np.ndarray
    windows: np.ndarray | None = field(default=None, repr=False)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Sweep:
    """What the workers need, built once on the launcher and pickled into the DoFns.

    Holds the configuration, the artifact's metadata (not the model: RunInference loads
    it once per worker), the window lattice, the jobs and their sources (configuration
    only; clients are created by :meth:`open` in each worker).
    """

    def __init__(self, config: PredictConfig, meta: dict, lattice: Lattice, halo: int,
                 pixel_size: float, threshold: float, jobs: list[SweepJob],
                 sources: list[Source], source_info: list[dict], started: str) -> None:
        self.config = config
        self.meta = meta
        self.lattice = lattice
        self.halo = halo
        self.pixel_size = pixel_size
        self.threshold = threshold
        self.jobs = jobs
        self.sources = sources
        self.source_info = source_info
        self.started = started
        self.bands = tuple(meta["bands"])
        self.weight = window_weight(lattice.window, lattice.floor)

    # ---- worker lifecycle
    def open(self) -> None:
        for s in self.sources:
            s.open()

    def close(self) -> None:
        for s in self.sources:
            s.close()

    # ---- per chunk
    def signature(self, job: SweepJob, key: str, region_wkb: bytes) -> str:
        """Hash of everything a chunk's outputs depend on."""
        return _digest({"base": job.base_signature, "key": key,
                        "region": hashlib.sha256(region_wkb).hexdigest()})

    def _load_done(self, job: SweepJob, key: str) -> dict | None:
        path = job.path("done", f"{key}.json")
        rec = fsio.read_record(path)
        if rec is None:
            return None
        sizes = rec.get("sizes", {})
        for name, rel in rec.get("files", {}).items():
            size = _size(job.path(rel))
            if size is None or size != sizes.get(name):
                log.warning("Done-record %s names %s, which is missing or not the file it "
                            "wrote (%s bytes, expected %s); redoing the chunk", path, rel, size,
                            sizes.get(name))
                return None
        return rec

    def _read(self, source: Source, grid: PixelGrid):
        from apache_beam.utils import retry

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, OSError | TimeoutError | ConnectionError) and not \
                isinstance(exc, DataNotFoundError | InputError)

        def note(fmt: str, *args: Any) -> None:
            log.info("retrying a chunk read after %s s: %s", args[0] if args else "?",
                     args[2].strip() if len(args) > 2 else "")

        read = retry.with_exponential_backoff(
            num_retries=self.config.retries, initial_delay_secs=self.config.retry_delay_s,
            retry_filter=retryable, logger=note)(source.read)
        return read(grid, self.bands)

    def prepare(self, job_i: int, key: str, region_wkb: bytes,
                spec_d: dict) -> ChunkTiles | dict:
        """Skip (returns the done-record) or read a chunk and cut its windows.

        Returns:
            A record dict for a skipped chunk or one without valid imagery (its done-record
            is written here), else :class:`ChunkTiles` for inference.
        """
        job = self.jobs[job_i]
        sig = self.signature(job, key, region_wkb)
        done = self._load_done(job, key)
        if done is not None and done.get("signature") == sig:
            return {**done, "action": "skipped"}
        chunk = Chunk(ChunkKey.parse(key), GridSpec(**spec_d), region_wkb)
        raster = self._read(self.sources[job.source], chunk.read_grid)
        h = self.halo
        inner = (slice(h, h + chunk.grid.height), slice(h, h + chunk.grid.width))
        valid = raster.valid[inner] & chunk.region_mask()
        if not valid.any():
            rec = self._record(job, chunk, sig, "empty", valid, None, [])
            fsio.write_json(job.path("done", f"{key}.json"), rec)
            return {**rec, "action": "computed"}
        origins = chunk_windows(self.lattice, chunk.read_grid, h, needed=valid)
        # one channels-last copy (never the source's array), invalid pixels filled exactly
        # as export fills them for training (the one nodata policy: channels_last)
        image = channels_last(raster.data, raster.valid)
        windows = cut_windows(image, origins, self.lattice.window)
        return ChunkTiles(job_i, key, spec_d, region_wkb, sig, origins, valid, windows)

    def finish(self, tiles: ChunkTiles, probs: np.ndarray) -> dict:
        """Blend, write the chunk's COGs and done-record; returns the record."""
        from pipelines.geo.cog import CATEGORICAL, CONTINUOUS, CogProfile, write_cog

        job = self.jobs[tiles.job]
        chunk = Chunk(ChunkKey.parse(tiles.key), GridSpec(**tiles.spec), tiles.region_wkb)
        grid = chunk.grid
        prob = blend(probs, tiles.origins, self.weight, self.halo, grid.shape)
        valid = tiles.valid & np.isfinite(prob)
        prob[~valid] = np.nan
        mask = valid & (prob >= self.threshold)
        tags = self._tags(job, tiles.key, tiles.signature)
        if self.config.prob_dtype == "uint8":
            q = np.where(valid, np.rint(np.clip(prob, 0.0, 1.0) * PROB_SCALE), NODATA_U8)
            prob_px, prob_nodata = q.astype(np.uint8), float(NODATA_U8)
            prob_profile = CogProfile(predictor=2)
            tags["scale"] = repr(1.0 / PROB_SCALE)
        else:
            prob_px, prob_nodata = prob.astype(np.float32), float("nan")
            prob_profile = dataclasses.replace(CONTINUOUS, predictor=3)
        mask_px = np.where(valid, mask, NODATA_U8).astype(np.uint8)
        files = {"prob": f"prob/{tiles.key}.tif", "mask": f"mask/{tiles.key}.tif"}
        write_cog(job.path(files["prob"]), prob_px, grid, nodata=prob_nodata,
                  band_names=["landslide_probability"], profile=prob_profile,
                  tags={**tags, "units": "probability"})
        write_cog(job.path(files["mask"]), mask_px, grid, nodata=float(NODATA_U8),
                  band_names=["landslide"], profile=CATEGORICAL,
                  tags={**tags, "legend": "0=no landslide,1=landslide"})
        polygons = self._polygons(grid, mask, prob, valid)
        rec = self._record(job, chunk, tiles.signature, "done", valid, files, polygons,
                           positive=int(mask.sum()))
        rec["sizes"] = {name: _size(job.path(rel)) for name, rel in files.items()}
        fsio.write_json(job.path("done", f"{tiles.key}.json"), rec)  # last: "complete"
        return {**rec, "action": "computed"}

    def _tags(self, job: SweepJob, key: str, sig: str) -> dict[str, str]:
        return {"model_id": str(self.meta["model_id"]), "threshold": repr(self.threshold),
                "start": job.start or "", "end": job.end or "", "chunk": key,
                "signature": sig, "window": str(self.lattice.window),
                "stride": str(self.lattice.stride), "generator": f"landslides predict {FORMAT}"}

    def _polygons(self, grid: PixelGrid, mask: np.ndarray, prob: np.ndarray,
                  valid: np.ndarray) -> list[dict]:
        from pipelines.geo.inventory import vectorize

        if not mask.any():
            return []
        mask = self._drop_small(mask, grid)
        if not mask.any():
            return []
        gdf = vectorize(mask, grid, min_area_m2=0.0, probability=prob,
                        connectivity=self.config.connectivity, valid=valid)
        left, bottom, right, top = grid.bounds
        tol = grid.res / 2.0
        out = []
        for geom, area, npx, pmean, pmax in zip(gdf.geometry.values, gdf["area_m2"],
                                                gdf["n_pixels"], gdf["prob_mean"],
                                                gdf["prob_max"]):
            x0, y0, x1, y1 = geom.bounds
            edge = bool(x0 <= left + tol or y0 <= bottom + tol or x1 >= right - tol
                        or y1 >= top - tol)
            if area < self.config.min_area_m2 and not edge:
                continue  # small ones on chunk edges wait for their other parts
            out.append({"wkb": _b64(geom.wkb), "area_m2": float(area), "n_pixels": int(npx),
                        "prob_mean": float(pmean), "prob_max": float(pmax), "edge": edge})
        return out

    def _drop_small(self, mask: np.ndarray, grid: PixelGrid) -> np.ndarray:
        """Clear regions below the minimum area that do not touch the chunk's border.

        Their area is final, so noisy masks are not polygonised pixel by pixel.
        """
        from scipy import ndimage

        structure = ndimage.generate_binary_structure(2, 1 if self.config.connectivity == 4
                                                      else 2)
        lab, n = ndimage.label(mask, structure=structure)
        if n == 0:
            return mask
        keep = np.bincount(lab.ravel(), minlength=n + 1) * grid.res ** 2 \
            >= self.config.min_area_m2
        keep[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
        keep[0] = False
        return keep[lab]

    def _record(self, job: SweepJob, chunk: Chunk, sig: str, state: str, valid: np.ndarray,
                files: dict | None, polygons: list[dict], positive: int = 0) -> dict:
        return {"format": FORMAT, "key": str(chunk.key), "signature": sig, "state": state,
                "epsg": chunk.key.epsg, "grid": chunk.grid.to_dict(),
                "valid_px": int(valid.sum()), "positive_px": positive,
                "files": files or {}, "polygons": polygons}

    def failure(self, job_i: int, key: str, stage: str, exc: BaseException | str,
                reason: str | None = None) -> dict:
        """A dead-letter record: which chunk, at which stage, and why."""
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if reason is None:
            reason = type(exc).__name__ if not isinstance(exc, str) else text.split(":", 1)[0]
        rec: dict[str, Any] = {"aoi": self.jobs[job_i].label, "chunk": key, "stage": stage,
                               "error": text, "reason": reason}
        if stage == "read":
            rec["retries"] = self.config.retries
        return rec

    # ---- per job, once every chunk is through
    def finalize(self, job_i: int, results: list[dict], failures: list[dict]) -> dict:
        """Write the job's inventory, mosaics, STAC catalog, dead letters and run.json."""
        job = self.jobs[job_i]
        results = sorted(results, key=lambda r: r["key"])
        failures = sorted(failures, key=lambda f: (f["chunk"], f["stage"]))
        outputs: dict[str, Any] = {}
        gdf = self._inventory(job, results)
        outputs["inventory"] = self._write_inventory(job, gdf)
        outputs["mosaics"] = self._mosaics(job, results)
        failed_path = job.path(FAILED)
        if failures:
            fsio.write_bytes(failed_path, "".join(
                json.dumps(f, sort_keys=True) + "\n" for f in failures).encode())
            outputs["failed_chunks"] = failed_path
        elif fsio.exists(failed_path):  # a clean rerun supersedes the old dead letters
            fsio.delete(failed_path)
        if self.config.stac:
            outputs["stac"] = self._stac(job, results, outputs)
        outputs["run"] = job.path(RUN)
        actions = Counter(r["action"] for r in results)
        states = Counter(r["state"] for r in results)
        valid_px = sum(r["valid_px"] for r in results)
        px_km2 = self.pixel_size ** 2 / 1e6
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
            "model": {"path": self.config.model, "model_id": self.meta["model_id"],
                      "bands": list(self.bands), "threshold": self.threshold,
                      "patch_size": self.meta.get("patch_size"), **self.lattice.to_dict()},
            "source": self.source_info[job.source],
            "grid": {"pixel_size": self.pixel_size, "chunk_size": self.config.chunk_size,
                     "halo": self.halo},
            "counts": {
                "chunks_total": job.n_chunks,
                "chunks_computed": actions.get("computed", 0),
                "chunks_skipped": actions.get("skipped", 0),
                "chunks_empty": states.get("empty", 0),
                "chunks_failed": len({f["chunk"] for f in failures}),
                "polygons": len(gdf),
                "valid_px": valid_px,
                "landslide_px": sum(r.get("positive_px", 0) for r in results),
            },
            "km2": {"aoi": round(job.area_km2, 4), "valid": round(valid_px * px_km2, 4),
                    "landslides": round(float(gdf["area_m2"].sum()) / 1e6, 6)
                    if len(gdf) else 0.0},
            "failures": {"count": len(failures),
                         "reasons": dict(Counter(f["reason"] for f in failures))},
            "timings": {"started": self.started,
                        "finished": finished.isoformat(timespec="seconds"),
                        "seconds": round((finished - dt.datetime.fromisoformat(
                            self.started)).total_seconds(), 3)},
            "config": self.config.to_dict(),
            "outputs": outputs,
        }
        fsio.write_json(job.path(RUN), run)  # last
        return run

    def _inventory(self, job: SweepJob, results: list[dict]):
        import geopandas as gpd
        import pandas as pd
        import shapely

        from pipelines.geo.grid import WGS84
        from pipelines.geo.mosaic import merge_across_zones, merge_chunk_polygons

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
            parts.append(merge_chunk_polygons(gdf, self.config.connectivity))
        # one zone: its UTM CRS (exact pixel outlines); several: WGS 84, joined at zone limits
        crs = f"EPSG:{job.epsgs[0]}" if len(job.epsgs) == 1 else WGS84
        gdf = merge_across_zones(parts, self.pixel_size, crs)
        gdf = gdf[gdf["area_m2"] >= self.config.min_area_m2].reset_index(drop=True)
        gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype=np.int64))
        gdf["date"] = job.date
        gdf["model_id"] = str(self.meta["model_id"])
        cols = ["id", "area_m2", "n_pixels", "prob_mean", "prob_max", "chunks", "date",
                "model_id"]
        for c in cols:
            if c not in gdf.columns:
                gdf[c] = pd.Series([], dtype="float64")
        gdf["n_pixels"] = gdf["n_pixels"].astype("int64")
        gdf["chunks"] = gdf["chunks"].astype("int64")
        return gdf[[*cols, "geometry"]].set_geometry("geometry")

    def _write_inventory(self, job: SweepJob, gdf) -> dict[str, str]:
        from pipelines.geo.inventory import write_inventory

        paths = {"gpkg": job.path("inventory.gpkg"), "parquet": job.path("inventory.parquet")}
        for path in paths.values():
            write_inventory(gdf, path)
        return paths

    def _mosaics(self, job: SweepJob, results: list[dict]) -> dict[str, Any]:
        from pipelines.geo.mosaic import merge_to_cog, mosaic_grid, write_vrt

        out: dict[str, Any] = {}
        with_files = [r for r in results if r.get("files")]
        epsgs = sorted({r["epsg"] for r in with_files})
        for epsg in epsgs:
            recs = [r for r in with_files if r["epsg"] == epsg]
            grids = [PixelGrid.from_dict(r["grid"]) for r in recs]
            suffix = "" if len(job.epsgs) == 1 else f"_{epsg}"
            big = mosaic_grid(grids)
            small = big.width * big.height <= self.config.merge_max_px
            tags = {"model_id": str(self.meta["model_id"]), "threshold": repr(self.threshold),
                    "start": job.start or "", "end": job.end or ""}
            for kind in ("prob", "mask"):
                files = [job.path(r["files"][kind]) for r in recs]
                if kind == "prob" and self.config.prob_dtype == "uint8":
                    dtype, nodata, scale = "uint8", float(NODATA_U8), 1.0 / PROB_SCALE
                elif kind == "prob":
                    dtype, nodata, scale = "float32", float("nan"), None
                else:
                    dtype, nodata, scale = "uint8", float(NODATA_U8), None
                desc = "landslide_probability" if kind == "prob" else "landslide"
                vrt = job.path("mosaic", f"{kind}{suffix}.vrt")
                write_vrt(vrt, list(zip(files, grids)), dtype, nodata, description=desc,
                          scale=scale)
                entry = {"vrt": vrt, "crs": f"EPSG:{epsg}", "shape": [big.height, big.width]}
                if small:
                    cog = job.path("mosaic", f"{kind}{suffix}.tif")
                    kt = dict(tags, scale=repr(scale)) if scale else tags
                    merge_to_cog(cog, files, nodata, tags=kt, categorical=kind == "mask",
                                 description=desc)
                    entry["cog"] = cog
                out[f"{kind}{suffix}"] = entry
        return out

    def _stac(self, job: SweepJob, results: list[dict], outputs: dict) -> str:
        from pipelines.geo.mosaic import StacAsset, StacItem, write_stac_catalog

        cog = "image/tiff; application=geotiff; profile=cloud-optimized"
        props = {"landslides:model_id": str(self.meta["model_id"]),
                 "landslides:threshold": self.threshold}
        items = []
        for r in results:
            if not r.get("files"):
                continue
            items.append(StacItem(r["key"], PixelGrid.from_dict(r["grid"]), {
                "probability": StacAsset(job.path(r["files"]["prob"]), "Landslide probability",
                                         cog),
                "mask": StacAsset(job.path(r["files"]["mask"]), "Landslide mask", cog),
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
        items.append(StacItem("mosaic", None, assets, props, geometry=job.region.geometry))
        return write_stac_catalog(job.path("stac"), f"landslides-{job.label}"[:100],
                                  f"Landslide predictions of {job.label} by model "
                                  f"{self.meta['model_id']}", items, job.start, job.end)


def _size(path: str) -> int | None:
    """Size in bytes of a file or object, ``None`` when it does not exist."""
    if fsio.is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        try:
            found = FileSystems.match([path])[0].metadata_list
        except Exception:  # Beam raises BeamIOError for a missing object
            return None
        return int(found[0].size_in_bytes) if found else None
    import os

    try:
        return os.path.getsize(path)
    except OSError:
        return None


# ----------------------------------------------------------------------------- launcher
def _load_meta(path: str) -> dict:
    from model.artifact import load_artifact
    from model.errors import ArtifactError

    try:
        art = load_artifact(path)
    except ArtifactError as exc:
        raise InputError(f"Model artifact {path!r} cannot be used: {exc}") from exc
    meta = dict(art.meta)  # the model stays cached for an in-process (DirectRunner) worker
    keep = ("model_id", "bands", "threshold", "patch_size", "size_multiple", "normalization",
            "pixel_size", "classes", "n_classes")
    out = {k: meta.get(k) for k in keep}
    record = meta.get("stack") or (meta.get("manifest") or {}).get("stack")
    if not record and any("@" in str(b) for b in meta["bands"]):
        raise InputError(f"Model artifact {path!r} takes stack channels {meta['bands']} but "
                         f"records no input stack (artifact.json 'stack'): retrain it from "
                         f"an export that records its stack.")
    stack = StackSpec.of({"stack": record, "bands": meta["bands"]})
    if list(stack.channels) != list(meta["bands"]):
        raise InputError(f"Model artifact {path!r} records the input stack "
                         f"{list(stack.channels)} but takes bands {meta['bands']}: the "
                         f"artifact is inconsistent; retrain or re-export it.")
    out["stack"] = stack.to_dict()
    return out


def plan_predict(config: PredictConfig) -> tuple[Sweep, list[tuple[int, str, bytes, dict]]]:
    """Validate every input and plan the chunks on the launcher (no Beam).

    Returns:
        The sweep (pickled to workers) and the chunk elements ``(job, key, region, spec)``.

    Raises:
        InputError: bad artifact, AOI, date window or configuration; BandError when the
            source lacks one of the model's bands; RegionError when the AOI lies outside
            the source.
    """
    from pipelines.geo.aoi_inputs import resolve_aois

    meta = _load_meta(config.model)
    bands = bandreg.resolve(meta["bands"])
    stack = StackSpec.from_dict(meta["stack"])
    window = int(config.window or meta["patch_size"])
    multiple = int(meta.get("size_multiple") or 1)
    if window % multiple:
        raise ConfigError(f"window {window} is not a multiple of {multiple}, which model "
                          f"{meta['model_id']} needs; use e.g. {window - window % multiple}.")
    lattice = Lattice.from_overlap(window, config.overlap)
    halo = lattice.halo(config.chunk_size)
    pixel_size = float(config.pixel_size or meta.get("pixel_size") or 10.0)
    if meta.get("pixel_size") and abs(float(meta["pixel_size"]) - pixel_size) > 1e-9:
        log.warning("Predicting at %g m with a model trained at %g m.", pixel_size,
                    float(meta["pixel_size"]))
    threshold = float(config.threshold if config.threshold is not None
                      else meta.get("threshold") or 0.5)
    if config.chunk_size < window:
        log.warning("chunk_size %d is smaller than the %d-px window: most windows are read "
                    "and predicted for several chunks.", config.chunk_size, window)
    aois = resolve_aois(config.aoi, config.point, config.buffer_m, config.events,
                        config.start, config.end, config.days_before, config.days_after)
    sources: list[Source] = []
    source_info: list[dict] = []
    by_window: dict[tuple, int] = {}
    jobs: list[SweepJob] = []
    elements: list[tuple[int, str, bytes, dict]] = []
    skipped_outside: list[str] = []
    for aoi in aois:
        win = (aoi.start, aoi.end)
        if win not in by_window:
            # every date of the model's input stack, or a clear error before any chunk
            source = make_stacked_source(config.source, stack, aoi.start, aoi.end)
            bandreg.require(source.bands, bands,
                            f"{source.kind} source (model {meta['model_id']} needs "
                            f"{', '.join(bands)})")
            by_window[win] = len(sources)
            sources.append(source)
            source_info.append(source.describe())
        src_i = by_window[win]
        covers = getattr(sources[src_i], "check_covers", None)
        if covers is not None:
            try:
                covers(aoi.region)
            except RegionError:
                if not aoi.name:
                    raise
                skipped_outside.append(aoi.name)
                continue
        chunks = plan_chunks(aoi.region, pixel_size, config.chunk_size, halo=halo,
                             epsg=config.epsg)
        out = fsio.join(config.out, aoi.name) if aoi.name else config.out
        base = _digest({"format": FORMAT, "model_id": meta["model_id"],
                        "source": source_info[src_i], "start": aoi.start, "end": aoi.end,
                        "lattice": lattice.to_dict(), "halo": halo, "pixel_size": pixel_size,
                        "chunk_size": config.chunk_size, "threshold": threshold,
                        "prob_dtype": config.prob_dtype, "min_area_m2": config.min_area_m2,
                        "connectivity": config.connectivity, "bands": list(bands),
                        "nodata": NODATA_POLICY})
        import shapely

        area = sum(shapely.from_wkb(c.region_wkb).area for c in chunks) / 1e6
        job_i = len(jobs)
        jobs.append(SweepJob(aoi.name, out, aoi.region, aoi.start, aoi.end,
                             aoi.event_date or (f"{aoi.start}/{aoi.end}" if aoi.start else ""),
                             src_i, len(chunks), area,
                             tuple(sorted({c.key.epsg for c in chunks})), base))
        elements += [(job_i, str(c.key), c.region_wkb, c.spec.to_dict()) for c in chunks]
    if skipped_outside:
        log.warning("%d event(s) lie outside the source and are skipped: %s",
                    len(skipped_outside), ", ".join(skipped_outside[:20]))
    if not jobs:
        raise RegionError(f"None of the {len(aois)} events of {config.events!r} lies inside "
                          f"the source's data; choose a source that covers them.")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    sweep = Sweep(config, meta, lattice, halo, pixel_size, threshold, jobs, sources,
                  source_info, started)
    return sweep, elements


#: What makes two sweeps into one folder the same run (their products may be merged).
_SAME_RUN = ("start", "end", "events", "days_before", "days_after")
#: The products of a sweep in its folder (per AOI or event): folders, then files.
_PRODUCT_DIRS = ("done", "prob", "mask", "mosaic", "stac")
_PRODUCT_FILES = ("inventory.gpkg", "inventory.parquet", RUN, FAILED, "events.json")


def _one_run_per_folder(config: PredictConfig) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding a sweep of other dates.

    Resuming needs the same dates; another date range into the same folder would leave
    chunks of the old dates in the mosaic, STAC and inventory (chunks empty in the new
    dates kept their old COGs).

    Raises:
        ConfigError: ``out`` holds a sweep of other dates and ``overwrite`` is off.
    """
    old = fsio.read_record(fsio.join(config.out, CONFIG))
    if not old:
        return
    new = config.to_dict()
    differ = {k: (old.get(k), new.get(k)) for k in _SAME_RUN if old.get(k) != new.get(k)}
    if not differ:
        return
    what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
    if not config.overwrite:
        raise ConfigError(
            f"{config.out!r} holds a sweep of other dates ({what}); its chunks would mix with "
            f"this one's. Sweep into another folder (e.g. one per date range), or pass "
            f"--overwrite to replace it.")
    log.warning("Replacing the sweep in %s (%s), as asked (--overwrite)", config.out, what)
    folders = {config.out}
    if old.get("events"):  # the old run's event folders
        folders |= {r["out"] for r in (fsio.read_record(
            fsio.join(config.out, "events.json")) or {}).get("events", []) if r.get("out")}
    for folder in folders:
        for name in _PRODUCT_DIRS:
            fsio.remove_tree(fsio.join(folder, name))
        for name in _PRODUCT_FILES:
            if fsio.exists(fsio.join(folder, name)):
                fsio.delete(fsio.join(folder, name))


def build_pipeline(p, sweep: Sweep, elements: Sequence[tuple]) -> None:
    """Add the sweep to the Beam pipeline ``p``."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    from pipelines.beam_util import in_process
    from pipelines.transforms.inference import (
        BlendWrite,
        KerasModelHandler,
        ReadChunk,
        finalize_job,
        inference_failures,
    )

    cfg = sweep.config
    handler: KeyedModelHandler = KeyedModelHandler(KerasModelHandler(
        cfg.model, batch_size=cfg.batch_size, max_chunks_per_batch=cfg.chunks_per_batch,
        large_model=cfg.large_model))
    read = (p
            # spread over workers, unless one worker in this process takes them all
            | "Chunks" >> beam.Create(list(elements), reshuffle=not in_process(p.options))
            | "Read" >> beam.ParDo(ReadChunk(sweep, len(elements))).with_outputs(
                "result", "failed", main="tiles"))
    preds, dlq = read.tiles | "Infer" >> RunInference(handler).with_exception_handling()
    written = preds | "BlendWrite" >> beam.ParDo(BlendWrite(sweep)).with_outputs(
        "failed", main="result")
    inf_failed = dlq.failed_inferences | "InferFailed" >> beam.FlatMap(inference_failures,
                                                                       sweep=sweep)
    results = (read.result, written.result) | "Results" >> beam.Flatten()
    failed = (read.failed, written.failed, inf_failed) | "Failed" >> beam.Flatten()
    jobs = p | "Jobs" >> beam.Create([(i, None) for i in range(len(sweep.jobs))])
    _ = ({"job": jobs, "result": results, "failed": failed}
         | "PerJob" >> beam.CoGroupByKey()
         | "Finalize" >> beam.Map(finalize_job, sweep=sweep))


def run_predict(config: PredictConfig, beam_args: Sequence[str] | None = None) -> list[dict]:
    """Run the sweep; returns the run record (``run.json``) of every AOI.

    Raises:
        InputError: bad configuration or input, before anything is launched.
        OutputError: an output folder or bucket cannot be written.
        NoDataError: no AOI had a single valid pixel of imagery (e.g. a date window with
            no images), after the run.
    """
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options, submitted_only

    t0 = time.monotonic()
    sweep, elements = plan_predict(config)
    for job in sweep.jobs:
        fsio.check_writable(job.out)
    _one_run_per_folder(config)
    fsio.write_json(fsio.join(config.out, CONFIG), config.to_dict())
    log.info("Predicting %d chunk(s) of %d AOI(s) (%.1f km2) with model %s, %d-px windows, "
             "stride %d, halo %d, into %s", len(elements), len(sweep.jobs),
             sum(j.area_km2 for j in sweep.jobs), sweep.meta["model_id"],
             sweep.lattice.window, sweep.lattice.stride, sweep.halo, config.out)
    opts = pipeline_options(beam_args, "landslides-predict")
    with beam.Pipeline(options=opts) as p:
        build_pipeline(p, sweep, elements)
    if submitted_only(opts):
        log.info("Dataflow job written to %s; it writes run.json in %s when it ends.",
                 opts.get_all_options()["template_location"], config.out)
        return []
    runs = [fsio.read_json(job.path(RUN)) for job in sweep.jobs]
    if len(sweep.jobs) > 1 or sweep.jobs[0].name:
        fsio.write_json(fsio.join(config.out, "events.json"), {
            "events": [{"name": j.name, "out": j.out, "status": r["status"],
                        "counts": r["counts"]} for j, r in zip(sweep.jobs, runs)]})
    n_failed = sum(r["counts"]["chunks_failed"] for r in runs)
    if n_failed == 0 and all(r["status"] == "no_data" for r in runs):
        windows = sorted({f"{j.start}..{j.end}" for j in sweep.jobs})
        raise NoDataError(
            f"No valid imagery in the AOI for the date window(s) {', '.join(windows)}: every "
            f"pixel is nodata (no image, or all clouds). Widen the date window or check the "
            f"source.")
    log.info("Predict finished in %.1f s: %s", time.monotonic() - t0,
             "; ".join(f"{r['aoi']['name']}: {r['counts']}" for r in runs[:5]))
    return runs


# ----------------------------------------------------------------------------- CLI
def predict_cli(model: str, out: str, aoi: str | None = None, point: str | None = None,
                buffer_m: float = 1000.0, events: str | None = None, days_before: int = 0,
                days_after: int = 90, start: str | None = None, end: str | None = None,
                source: str = "synthetic", window: int | None = None, overlap: float = 0.5,
                chunk_size: int = 512, pixel_size: float | None = None, batch_size: int = 16,
                chunks_per_batch: int = 1, threshold: float | None = None,
                min_area: float = 200.0, connectivity: int = 4, prob_dtype: str = "uint8",
                merge_max_px: int = 50_000_000, retries: int = 3, retry_delay: float = 2.0,
                epsg: int | None = None, stac: bool = True, large_model: bool = False,
                overwrite: bool = False,
                beam_args: list[str] | None = None, **source_args: Any) -> int:
    """``landslides predict``: parse CLI values into a :class:`PredictConfig` and run it.

    Returns:
        0 when every chunk was written, 1 when some failed (they are listed in
        ``failed_chunks.jsonl`` of their AOI).
    """
    from pipelines.sources.factory import spec_from_args

    config = PredictConfig(
        model=model, source=spec_from_args(source, **source_args), out=out, aoi=aoi,
        point=point, buffer_m=buffer_m, events=events, days_before=days_before,
        days_after=days_after, start=start, end=end, window=window, overlap=overlap,
        chunk_size=chunk_size, pixel_size=pixel_size, batch_size=batch_size,
        chunks_per_batch=chunks_per_batch, threshold=threshold, min_area_m2=min_area,
        connectivity=connectivity, prob_dtype=prob_dtype, merge_max_px=merge_max_px,
        retries=retries, retry_delay_s=retry_delay, epsg=epsg, stac=stac,
        large_model=large_model, overwrite=overwrite)
    runs = run_predict(config, beam_args)
    failed = [(r, r["failures"]) for r in runs if r["failures"]["count"]]
    if failed:
        n = sum(r["counts"]["chunks_failed"] for r, _ in failed)
        reasons: Counter[str] = Counter()
        for _, f in failed:
            reasons.update(f["reasons"])
        why = ", ".join(f"{k} x{v}" for k, v in reasons.most_common())
        files = ", ".join(r["outputs"].get("failed_chunks", "") for r, _ in failed[:3])
        log.error("%d chunk(s) failed after %d retries (%s); see %s. Rerun the same command "
                  "to retry them: finished chunks are skipped.", n, config.retries, why, files)
        return 1
    return 0

"""Planning a sweep on the launcher: the frozen :class:`SweepPlan` and what makes it.

Owns :func:`plan_predict` (validate every input, resolve the AOIs, build one source per
date window, cut each AOI into chunks), the resume signatures (what a chunk's outputs
depend on) and the one-run-per-folder check. No Beam: the plan is a plain value that is
pickled into the pipeline's DoFns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from pipelines import fsio
from pipelines.errors import ConfigError, InputError, RegionError
from pipelines.geo import bands as bandreg
from pipelines.geo.blend import Lattice, window_weight
from pipelines.geo.grid import plan_chunks
from pipelines.geo.patches import NODATA_POLICY
from pipelines.geo.stack import StackSpec
from pipelines.predict.config import CONFIG, FAILED, FORMAT, RUN, PredictConfig, SweepJob
from pipelines.sources.base import Source
from pipelines.sources.stacked import make_stacked_source

if TYPE_CHECKING:
    from pipelines.geo.aoi_inputs import AOI

log = logging.getLogger(__name__)

#: One chunk to sweep: ``(job index, chunk key, region WKB, grid spec dict)``.
ChunkElement = tuple[int, str, bytes, dict]


@dataclass(frozen=True)
class SweepPlan:
    """What the workers need, built once on the launcher and pickled into the DoFns.

    Holds the configuration, the artifact's metadata (not the model: RunInference loads
    it once per worker), the window lattice and the jobs with their sources
    (configuration only: the DoFns open them in each worker and pass them to the
    per-chunk steps).

    Attributes:
        config: The sweep's configuration.
        meta: The artifact's metadata that predicting needs (see :func:`load_meta`).
        lattice: The global window lattice.
        halo: Context pixels read around each chunk.
        pixel_size: Metres.
        threshold: Mask threshold.
        jobs: The AOIs.
        sources: One source per date window, unopened; a job names its index.
        source_info: Each source's description (for signatures and run.json).
        started: When the sweep was planned (ISO 8601, UTC).
        skipped: The events of the catalogue that lie outside the source's data and are
            not swept (see :func:`skipped_event`); ``events.json`` lists them.
    """

    config: PredictConfig
    meta: dict
    lattice: Lattice
    halo: int
    pixel_size: float
    threshold: float
    jobs: tuple[SweepJob, ...]
    sources: tuple[Source, ...]
    source_info: tuple[dict, ...]
    started: str
    skipped: tuple[dict, ...] = ()

    @property
    def bands(self) -> tuple[str, ...]:
        """The model's input channels, in order."""
        return tuple(self.meta["bands"])

    @cached_property
    def weight(self) -> np.ndarray:
        """The blending weight of one window."""
        return window_weight(self.lattice.window, self.lattice.floor)


def chunk_signature(job: SweepJob, key: str, region_wkb: bytes) -> str:
    """Hash of everything a chunk's outputs depend on."""
    return fsio.digest({"base": job.base_signature, "key": key,
                   "region": hashlib.sha256(region_wkb).hexdigest()})


def job_keys(plan: SweepPlan, job: SweepJob) -> set[str]:
    """The keys of the chunks :func:`plan_predict` cut ``job``'s AOI into.

    The same cover as :func:`~pipelines.geo.grid.plan_chunks` (the keys, without cutting
    the region into them): for a finalize that must know chunks the runner never returned.
    """
    from pipelines.geo.grid import chunk_keys

    covers = chunk_keys(job.region, plan.pixel_size, plan.config.chunk_size, plan.config.epsg)
    return {str(k) for keys, _ in covers.values() for k in keys}


def _precision_key(meta: dict) -> dict:
    """What a chunk's outputs owe to the precision (nothing at fp32: older sweeps resume)."""
    p = meta["precision"]
    if p["name"] == "fp32":
        return {}
    return {"precision": p["name"], **({"int8_sha256": p["sha256"]} if p["sha256"] else {})}


def load_meta(path: str, precision: str = "fp32", explain: bool = False,
              layer: str | None = None, large_model: bool = False) -> dict:
    """The artifact's metadata that a sweep needs, with its stack and precision checked.

    Reads ``artifact.json`` and checks the Keras file without loading the model (the
    workers load it, once each): the launcher never pays for a model it does not run,
    except with ``explain``, where ``explain_layer`` is the layer Grad-CAM weighs
    (``layer``, checked on the model, or the model's default).

    Raises:
        InputError: the artifact is missing, damaged, records an inconsistent stack or is
            an image classifier; it was not validated for ``precision`` (or that
            precision's held-out F1 drifted more than it allows); or ``explain`` asks for a
            layer the model lacks, or comes with a precision or ``large_model`` that
            cannot give gradients.
    """
    from model.artifact import check_files, require_segmentation
    from model.errors import ArtifactError, ModelError
    from model.precision import check_precision

    try:
        meta = check_files(path)
        require_segmentation(meta, path, "a predict sweep")
    except ArtifactError as exc:
        raise InputError(f"Model artifact {path!r} cannot be used: {exc}") from exc
    try:
        entry = check_precision(meta, precision, path)
    except ArtifactError as exc:  # its message names the artifact, the value and the fix
        raise InputError(str(exc)) from exc
    out = sweep_meta(dict(meta), path)
    out["precision"] = {"name": precision, "f1": entry.get("f1"), "drift": entry.get("drift"),
                        "sha256": entry.get("sha256")}
    out["explain_layer"] = None
    if explain:
        if precision != "fp32" or large_model:
            raise InputError(
                f"--explain needs the Keras model's gradients in each worker: it works with "
                f"--precision fp32 and without --large-model (got precision {precision!r}"
                f"{', large_model' if large_model else ''}); sweep once without --explain for "
                f"the fast path and once with it for the heat maps.")
        from model.artifact import load_artifact
        from model.explain import find_layer

        try:
            out["explain_layer"] = find_layer(load_artifact(path).model, layer)
        except (ArtifactError, ModelError) as exc:
            raise InputError(f"--explain with model {path!r}: {exc}") from exc
    return out


def sweep_meta(meta: dict, path: str) -> dict:
    """What a sweep needs of ``artifact.json`` (``meta``, read from ``path``), stack checked.

    Raises:
        InputError: the artifact records an inconsistent input stack.
    """
    keep = ("model_id", "bands", "threshold", "patch_size", "size_multiple", "normalization",
            "pixel_size", "classes", "n_classes")
    out = {k: meta.get(k) for k in keep}
    record = meta.get("stack") or (meta.get("manifest") or {}).get("stack")
    if not record and any("@" in str(b) for b in meta["bands"]):
        raise InputError(f"Model artifact {path!r} takes stack channels {meta['bands']} but "
                         f"records no input stack (artifact.json 'stack'): retrain it from "
                         f"an export that records its stack.")
    _require_physical_units(meta, path)
    stack = StackSpec.of({"stack": record, "bands": meta["bands"]})
    if list(stack.channels) != list(meta["bands"]):
        raise InputError(f"Model artifact {path!r} records the input stack "
                         f"{list(stack.channels)} but takes bands {meta['bands']}: the "
                         f"artifact is inconsistent; retrain or re-export it.")
    out["stack"] = stack.to_dict()
    return out


def _require_physical_units(meta: dict, path: str) -> None:
    """Refuse a model trained on numbers other than the physical units a sweep reads.

    Every source gives float32 in physical units (:mod:`pipelines.geo.bands`): reflectance
    0-1, metres, degrees. The manifest a model was trained on records its bands' units
    (``band_units``); a model trained on, e.g., Landslide4Sense's normalised values
    carries Sentinel-2 band names, and would take reflectance for those numbers without a
    word.

    Raises:
        InputError: naming the bands whose training units differ, and the fix.
    """
    units = (meta.get("manifest") or {}).get("band_units") or {}
    other = {}
    for b, u in units.items():
        try:
            if b in meta["bands"] and u != bandreg.get(b).unit:
                other[b] = u
        except KeyError:  # a band unknown to the registry: the sweep's band check names it
            continue
    if other:
        shown = ", ".join(f"{b} in {u!r} (a sweep reads {bandreg.get(b).unit!r})"
                          for b, u in list(other.items())[:4])
        raise InputError(
            f"Model artifact {path!r} was trained on {shown}"
            f"{f' and {len(other) - 4} more band(s)' if len(other) > 4 else ''}: the "
            f"sources of a sweep give physical units, so its inputs would not be what it "
            f"learnt. Fine-tune it on shards exported from imagery first (`landslides train "
            f"--init-from {path} --data <export>`), then sweep with that model.")


def sweep_geometry(meta: dict, window: int | None, overlap: float, chunk_size: int,
                   pixel_size: float | None) -> tuple[Lattice, int, float]:
    """The window lattice, halo and pixel size of a sweep with a model of metadata ``meta``.

    ``window`` and ``pixel_size`` default to the model's (its patch size; its pixel size,
    else 10 m). ``landslides plan`` sizes a sweep with the same numbers.

    Raises:
        ConfigError: the window is not a multiple of what the model needs.
    """
    win = int(window or meta["patch_size"])
    multiple = int(meta.get("size_multiple") or 1)
    if win % multiple:
        raise ConfigError(f"window {win} is not a multiple of {multiple}, which model "
                          f"{meta.get('model_id')} needs; use e.g. {win - win % multiple}.")
    lattice = Lattice.from_overlap(win, overlap)
    return (lattice, lattice.halo(chunk_size),
            float(pixel_size or meta.get("pixel_size") or 10.0))


def job_folders(config: PredictConfig, aois: Sequence[AOI]) -> list[str]:
    """The output folder of each AOI: ``out`` itself, or ``out/<name>`` per event.

    Raises:
        ConfigError: two AOIs would write into the same folder (each would overwrite the
            other's products and both runs would report success).
    """
    folders = [fsio.join(config.out, a.name) if a.name else config.out for a in aois]
    owners: dict[str, list[AOI]] = {}
    for aoi, folder in zip(aois, folders):
        owners.setdefault(folder, []).append(aoi)
    shared = {f: group for f, group in owners.items() if len(group) > 1}
    if shared:
        folder, group = next(iter(shared.items()))
        which = "; ".join(f"{a.region.name or 'the AOI'} {a.start}..{a.end}" for a in group)
        more = f" ({len(shared) - 1} other folder(s) too)" if len(shared) > 1 else ""
        raise ConfigError(
            f"{len(group)} sweeps would write into the same folder {folder!r} ({which}) "
            f"and overwrite each other's products{more}. Give each event of "
            f"{config.events!r} an id of its own.")
    return folders


def plan_predict(config: PredictConfig) -> tuple[SweepPlan, list[ChunkElement]]:
    """Validate every input and plan the chunks on the launcher (no Beam).

    Returns:
        The plan (pickled to workers) and the chunk elements ``(job, key, region, spec)``.

    Raises:
        InputError: bad artifact, AOI, date window or configuration; BandError when the
            source lacks one of the model's bands; RegionError when the AOI lies outside
            the source; ConfigError when two AOIs would write into one folder.
    """
    from pipelines.geo.aoi_inputs import resolve_aois

    meta = load_meta(config.model, config.precision, config.explain, config.explain_layer,
                     config.large_model)
    bands = bandreg.resolve(meta["bands"])
    stack = StackSpec.from_dict(meta["stack"])
    lattice, halo, pixel_size = sweep_geometry(meta, config.window, config.overlap,
                                               config.chunk_size, config.pixel_size)
    if meta.get("pixel_size") and abs(float(meta["pixel_size"]) - pixel_size) > 1e-9:
        log.warning("Predicting at %g m with a model trained at %g m.", pixel_size,
                    float(meta["pixel_size"]))
    threshold = float(config.threshold if config.threshold is not None
                      else meta.get("threshold") or 0.5)
    if config.chunk_size < lattice.window:
        log.warning("chunk_size %d is smaller than the %d-px window: most windows are read "
                    "and predicted for several chunks.", config.chunk_size, lattice.window)
    aois = resolve_aois(config.aoi, config.point, config.buffer_m, config.events,
                        config.start, config.end, config.days_before, config.days_after)
    folders = job_folders(config, aois)
    sources: list[Source] = []
    source_info: list[dict] = []
    by_window: dict[tuple, int] = {}
    jobs: list[SweepJob] = []
    elements: list[ChunkElement] = []
    skipped_outside: list[dict] = []
    for aoi, out in zip(aois, folders):
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
            except RegionError as exc:
                if not aoi.name:
                    raise
                skipped_outside.append(skipped_event(aoi, str(exc)))
                continue
        chunks = plan_chunks(aoi.region, pixel_size, config.chunk_size, halo=halo,
                             epsg=config.epsg)
        base = fsio.digest({"format": FORMAT, "model_id": meta["model_id"],
                       "source": source_info[src_i], "start": aoi.start, "end": aoi.end,
                       "lattice": lattice.to_dict(), "halo": halo, "pixel_size": pixel_size,
                       "chunk_size": config.chunk_size, "threshold": threshold,
                       "prob_dtype": config.prob_dtype, "min_area_m2": config.min_area_m2,
                       "connectivity": config.connectivity, "bands": list(bands),
                       "nodata": NODATA_POLICY, **_precision_key(meta),
                       **({"explain": meta["explain_layer"]} if config.explain else {})})
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
                    len(skipped_outside), ", ".join(e["name"] for e in skipped_outside[:20]))
    if not jobs:
        raise RegionError(f"None of the {len(aois)} events of {config.events!r} lies inside "
                          f"the source's data; choose a source that covers them.")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    plan = SweepPlan(config, meta, lattice, halo, pixel_size, threshold, tuple(jobs),
                     tuple(sources), tuple(source_info), started, tuple(skipped_outside))
    return plan, elements


#: Why an event of a catalogue is not swept (``events.json``'s ``skipped[].reason``).
OUTSIDE_SOURCE = "outside_source"


def skipped_event(aoi: AOI, error: str) -> dict:
    """The record of a catalogue event that is not swept (an entry of ``events.json``).

    Args:
        aoi: The event's AOI.
        error: Why: the source's message (e.g. the extent of its data).

    Returns:
        ``name``, ``date`` (the event's), ``start``/``end`` (its window), ``latitude``/
        ``longitude`` (its AOI's centre, WGS 84), ``reason`` (:data:`OUTSIDE_SOURCE`) and
        ``error``.
    """
    centre = aoi.region.geometry.centroid
    return {"name": aoi.name, "date": aoi.event_date, "start": aoi.start, "end": aoi.end,
            "latitude": round(float(centre.y), 6), "longitude": round(float(centre.x), 6),
            "reason": OUTSIDE_SOURCE, "error": error}


#: What makes two sweeps into one folder the same run (their products may be merged).
_SAME_RUN = ("start", "end", "events", "days_before", "days_after")
#: The products of a sweep in its folder (per AOI or event): folders, then files.
_PRODUCT_DIRS = ("done", "prob", "mask", "explain", "mosaic", "stac")
_PRODUCT_FILES = ("inventory.gpkg", "inventory.parquet", "inventory.partial.gpkg",
                  "inventory.partial.parquet", RUN, FAILED, "events.json")


def one_run_per_folder(config: PredictConfig) -> None:
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


__all__ = [
    "OUTSIDE_SOURCE",
    "ChunkElement",
    "SweepPlan",
    "chunk_signature",
    "job_folders",
    "job_keys",
    "load_meta",
    "one_run_per_folder",
    "plan_predict",
    "skipped_event",
    "sweep_geometry",
    "sweep_meta",
]

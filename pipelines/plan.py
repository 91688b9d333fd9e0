"""``landslides plan``: what a sweep of an area will take, before it is run.

Everything is derived from the pieces the sweep itself uses, so the plan cannot drift
from it:

* **chunks**: the predict planner's window lattice, halo and pixel size
  (:func:`pipelines.predict.plan.sweep_geometry`) and its chunk cover per UTM zone
  (:func:`pipelines.geo.grid.chunk_keys`, the keys of :func:`~pipelines.geo.grid.
  plan_chunks`), times the periods (``--years``);
* **Earth Engine**: per chunk and period, one read per date of the model's input stack
  (:meth:`pipelines.geo.stack.StackSpec.needed`), each cut into computePixels requests by
  the source's own :func:`~pipelines.sources.earthengine.pixels.plan_blocks` (float32
  values, under the 48 MiB limit); the job's budget bounds the time: at most
  ``requests / requests_per_second`` and ``requests x seconds per request / requests in
  flight``, where the requests in flight are ``P x floor(C / P)`` for P worker processes
  (:mod:`pipelines.sources.earthengine.budget`);
* **model compute**: the lattice windows the sweep infers (per chunk, those touching
  its interior, :func:`~pipelines.geo.blend.chunk_windows`; counted exactly over the
  planned chunks by :func:`sweep_windows`, as their number depends on where a chunk
  falls on the lattice when the chunk size is not a multiple of the stride) times the
  window's pixels, at the model's rate: on CPU workers in megapixels per second per
  vCPU, recorded in the artifact (``artifact.json`` ``throughput.mpx_per_vcpu_s``),
  else measured here on a few random tiles with the real model (:func:`calibrate`, one
  thread: one vCPU), else :data:`DEFAULT_MPX_PER_VCPU_S`; on GPU workers
  (``--worker-gpus``) in megapixels per second per GPU, given (``--model-rate``) or
  recorded (``throughput.mpx_per_gpu_s``), never a CPU rate; the compute is spread
  over workers x vCPUs, or workers x GPUs;
* **workers**: the fewest whose wall time is within 10% of the shortest (a CPU worker
  runs one SDK process per vCPU, a GPU worker one, as infra/README's GPU setup with
  ``--experiments no_use_multiple_sdk_containers``; never more processes than the
  budget's concurrent requests, or the job is refused); **wall time** = start-up + the
  larger of the Earth Engine and compute times (reads and inference overlap);
  **cost** = workers x hours x the worker's vCPUs, memory, disk and GPUs at
  :class:`~pipelines.options.plan.Prices`;
* **outputs**: probability and mask COGs per chunk, measured by writing one chunk of
  each with the sweep's COG writer (no landslide: the smallest; incompressible
  probabilities: the largest), times chunks and periods.

Earth Engine itself is not priced (free for noncommercial projects; commercial use is
billed by EECU-time, which depends on the expression).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any

import numpy as np

from pipelines.errors import ConfigError, InputError
from pipelines.options.plan import PlanOptions

log = logging.getLogger(__name__)

#: Throughput of the default model, the U-Net of ``landslides train`` (16 filters, depth 5)
#: on the export's 8 default bands with 128-px windows, on one thread: measured with
#: ``python bench/model_rate.py`` on the development machine (an x86 vCPU; see README).
DEFAULT_MPX_PER_VCPU_S = 0.43
#: What the default model takes and its window (see :data:`DEFAULT_MPX_PER_VCPU_S`).
DEFAULT_PATCH = 128
DEFAULT_SIZE_MULTIPLE = 16
#: Random tiles per calibration batch (the sweep's default batch size), and the least
#: time spent measuring.
CALIBRATION_TILES = 16
CALIBRATION_SECONDS = 1.0
#: The suggested worker count is the fewest whose wall time is within this factor of the
#: shortest any count within the budget reaches (10% slower for fewer worker-hours).
NEAR_BEST = 1.1


# ----------------------------------------------------------------------------- model
def model_meta(path: str | None) -> dict:
    """The sweep metadata of artifact ``path`` (read from artifact.json, model not loaded).

    Without a path: the default model's (the export's default bands, single date,
    128-px windows).

    Raises:
        InputError: ``path`` holds no readable artifact.json, or an inconsistent one.
    """
    from pipelines.geo.stack import StackSpec
    from pipelines.options.export import DEFAULT_BANDS
    from pipelines.predict.plan import sweep_meta

    if path is None:
        return {"model_id": None, "bands": list(DEFAULT_BANDS), "patch_size": DEFAULT_PATCH,
                "size_multiple": DEFAULT_SIZE_MULTIPLE, "pixel_size": None,
                "stack": StackSpec(bands=tuple(DEFAULT_BANDS)).to_dict(), "throughput": None}
    from pipelines import fsio

    where = fsio.join(path, "artifact.json")
    try:
        raw = fsio.read_json(where)
    except Exception as exc:  # missing, unreadable or not JSON
        raise InputError(f"Model artifact {path!r} cannot be read ({where}: {exc}). Give the "
                         f"folder `landslides train` wrote, holding artifact.json.") from exc
    missing = [k for k in ("bands", "patch_size", "model_id") if k not in raw]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}: not a complete model artifact; "
                         f"train or export it again.")
    meta = sweep_meta(raw, path)
    meta["throughput"] = raw.get("throughput")
    return meta


def calibrate(path: str, window: int) -> float:
    """Megapixels per second per vCPU of the artifact at ``path``: a short run here.

    The real model predicts batches of :data:`CALIBRATION_TILES` random tiles of
    ``window`` pixels for at least :data:`CALIBRATION_SECONDS` (after two batches that
    trace and optimise its graph) and keeps the fastest batch; on one thread when
    TensorFlow is not started yet in this process (else the rate is divided by its
    threads).
    """
    import tensorflow as tf

    threads = 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already runs in this process: it uses its threads
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
    from model.artifact import load_artifact

    art = load_artifact(path)
    tiles = np.random.default_rng(0).uniform(
        0.0, 1.0, (CALIBRATION_TILES, window, window, len(art.bands))).astype(np.float32)
    for _ in range(2):  # tracing, then TensorFlow's graph optimisation: not timed
        art.predict(tiles, batch_size=CALIBRATION_TILES)
    fastest, started = math.inf, time.perf_counter()
    runs = 0
    while runs < 3 or time.perf_counter() - started < CALIBRATION_SECONDS:
        t0 = time.perf_counter()
        art.predict(tiles, batch_size=CALIBRATION_TILES)
        fastest = min(fastest, time.perf_counter() - t0)
        runs += 1
    # the fastest batch: other processes on this machine only ever slow one down
    return CALIBRATION_TILES * window * window / fastest / 1e6 / threads


def model_rate(opts: PlanOptions, meta: dict, window: int) -> tuple[float, str]:
    """The model's rate and where the figure comes from.

    The rate is in megapixels per second per vCPU, or per GPU with ``--worker-gpus``.

    Raises:
        ConfigError: ``--worker-gpus`` without a GPU rate (``--model-rate``, or
            ``throughput.mpx_per_gpu_s`` in the artifact): a CPU rate, recorded or
            calibrated here, says nothing of a GPU.
    """
    throughput = meta.get("throughput") or {}
    if opts.worker_gpus:
        if opts.model_rate:
            return opts.model_rate, "given (--model-rate), per GPU"
        if throughput.get("mpx_per_gpu_s"):
            return float(throughput["mpx_per_gpu_s"]), "recorded in the artifact, per GPU"
        raise ConfigError(
            "--worker-gpus needs the model's rate on that GPU: give --model-rate MPX_PER_S "
            "measured on one such GPU, or an artifact whose artifact.json records "
            "throughput.mpx_per_gpu_s (a CPU rate, recorded as mpx_per_vcpu_s or "
            "calibrated here, does not apply to GPU workers).")
    if opts.model_rate:
        return opts.model_rate, "given (--model-rate)"
    recorded = throughput.get("mpx_per_vcpu_s")
    if recorded:
        return float(recorded), "recorded in the artifact"
    if opts.model:
        rate = calibrate(opts.model, window)
        return rate, (f"calibrated here: {CALIBRATION_TILES} random {window}-px tiles per "
                      f"batch, one thread")
    return DEFAULT_MPX_PER_VCPU_S, "default U-Net (bench/model_rate.py), no --model"


def windows_per_index(lattice: Any, chunk_size: int, index: np.ndarray) -> np.ndarray:
    """Lattice windows along one axis of chunks at row (or column) ``index``.

    As :func:`pipelines.geo.blend.chunk_windows` finds them: the windows whose origins
    are multiples of the stride and that touch the chunk's interior, pixels
    ``[index x chunk_size, (index + 1) x chunk_size)`` from the grid origin.
    """
    start = np.asarray(index, dtype=np.int64) * chunk_size
    first = -((lattice.window - 1 - start) // lattice.stride)  # ceil((start - w + 1) / s)
    last = (start + chunk_size - 1) // lattice.stride
    return last - first + 1


def sweep_windows(lattice: Any, covers: dict[int, tuple[list[Any], Any]],
                  chunk_size: int) -> int:
    """Every lattice window the sweep infers over a region's chunks (one period).

    The chunks are those of ``covers`` (:func:`pipelines.geo.grid.chunk_keys`, the keys of
    :func:`~pipelines.geo.grid.plan_chunks`); a chunk infers the windows of its rows
    times those of its columns (:func:`windows_per_index`).
    """
    total = 0
    for keys, _ in covers.values():
        rows = windows_per_index(lattice, chunk_size, np.array([k.row for k in keys]))
        cols = windows_per_index(lattice, chunk_size, np.array([k.col for k in keys]))
        total += int(np.sum(rows * cols))
    return total


# ----------------------------------------------------------------------------- outputs
def cog_bytes_per_chunk(chunk_size: int, prob_dtype: str) -> dict[str, int]:
    """Bytes of one chunk's probability + mask COGs, written here with the sweep's writer.

    Returns ``{"least": ..., "most": ...}``: a chunk with no landslide (constant pixels)
    and one of incompressible probabilities and a random mask.
    """
    import dataclasses

    from pipelines.geo.cog import CATEGORICAL, CONTINUOUS, CogProfile, write_cog
    from pipelines.geo.grid import PixelGrid

    grid = PixelGrid("EPSG:32645", (10.0, 0.0, 300000.0, 0.0, -10.0, 3100000.0),
                     chunk_size, chunk_size)
    rng = np.random.default_rng(0)
    shape = (chunk_size, chunk_size)
    out = {}
    with tempfile.TemporaryDirectory(prefix="lsm-plan-") as tmp:
        for case, noisy in (("least", False), ("most", True)):
            if prob_dtype == "uint8":  # as pipelines.predict.chunk encodes them
                prob: np.ndarray = (rng.integers(0, 251, shape) if noisy
                                    else np.zeros(shape)).astype(np.uint8)
                profile = CogProfile(predictor=2)
            else:
                prob = (rng.random(shape) if noisy else np.zeros(shape)).astype(np.float32)
                profile = dataclasses.replace(CONTINUOUS, predictor=3)
            mask = (rng.integers(0, 2, shape) if noisy else np.zeros(shape)).astype(np.uint8)
            p = write_cog(os.path.join(tmp, f"p{case}.tif"), prob, grid, profile=profile)
            m = write_cog(os.path.join(tmp, f"m{case}.tif"), mask, grid, profile=CATEGORICAL)
            out[case] = os.path.getsize(p) + os.path.getsize(m)
    return out


# ----------------------------------------------------------------------------- the plan
def make_plan(opts: PlanOptions) -> dict[str, Any]:
    """The plan of a sweep as plain JSON-ready data (see the module for the arithmetic).

    Raises:
        InputError: bad AOI or artifact; ConfigError: bad options (e.g. an unknown machine
            type without --worker-memory-gb).
    """
    from pipelines.geo.grid import chunk_keys, load_region
    from pipelines.geo.stack import StackSpec
    from pipelines.predict.plan import sweep_geometry
    from pipelines.sources.earthengine.config import BYTES_PER_VALUE, DEFAULT_REQUEST_BYTES
    from pipelines.sources.earthengine.pixels import plan_blocks
    from pipelines.workers import machine_memory_gb, machine_vcpus

    vcpus = machine_vcpus(opts.machine_type)
    memory = opts.worker_memory_gb or machine_memory_gb(opts.machine_type)
    if vcpus is None or memory is None:
        raise ConfigError(f"Unknown machine type {opts.machine_type!r}: give a Compute Engine "
                          f"type such as n2-highmem-4 or custom-8-32768 (for another, add "
                          f"--worker-memory-gb).")
    meta = model_meta(opts.model)
    lattice, halo, pixel_size = sweep_geometry(meta, opts.window, opts.overlap,
                                               opts.chunk_size, opts.pixel_size)
    region = load_region(opts.aoi)
    covers = chunk_keys(region, pixel_size, opts.chunk_size, opts.epsg)
    # per UTM zone: chunks, and km2 of the region's part
    zones = {code: (len(keys), float(part.area) / 1e6) for code, (keys, part) in covers.items()}
    chunks = sum(n for n, _ in zones.values())
    periods = max(1, len(opts.years))
    reads = chunks * periods

    # Earth Engine: one read per date of the stack, cut as the source cuts it
    target, refs = StackSpec.from_dict(meta["stack"]).needed()
    side = opts.chunk_size + 2 * halo
    dates = {"target": target, **refs}
    per_date: dict[str, dict[str, Any]] = {}
    for name, bands in dates.items():
        blocks = plan_blocks(side, side, len(bands), DEFAULT_REQUEST_BYTES)
        per_date[name] = {"bands": list(bands), "requests": len(blocks),
                          "bytes": side * side * len(bands) * BYTES_PER_VALUE}
    per_chunk = sum(int(d["requests"]) for d in per_date.values())
    requests = reads * per_chunk
    ee_bytes = reads * sum(int(d["bytes"]) for d in per_date.values())
    budget, rps = opts.ee["max_concurrent_requests"], opts.ee["requests_per_second"]
    rate_bound = requests / rps
    quota_bound = max(rate_bound, requests * opts.ee_seconds_per_request / budget)

    # model compute, on vCPUs or on GPUs
    rate, rate_source = model_rate(opts, meta, lattice.window)
    gpus = opts.worker_gpus
    unit = "gpu" if gpus else "vcpu"
    units = gpus or vcpus  # what the rate is per, on one worker
    # SDK processes per worker: one per vCPU, or one on a GPU worker
    # (--experiments no_use_multiple_sdk_containers: infra/README's GPU setup)
    per_worker = 1 if gpus else vcpus
    windows = sweep_windows(lattice, covers, opts.chunk_size)
    megapixels = periods * windows * lattice.window ** 2 / 1e6
    unit_s = megapixels / rate  # vCPU- or GPU-seconds

    # workers: the fewest with the shortest wall time, within the budget's processes
    most = budget // per_worker

    def timing(n: int) -> tuple[int, float, float, float]:
        """Requests in flight, Earth Engine, compute and wall seconds with ``n`` workers."""
        processes = n * per_worker
        flight = min(budget, processes * max(1, budget // processes))
        ee = max(rate_bound, requests * opts.ee_seconds_per_request / flight)
        compute = unit_s / (n * units)
        return flight, ee, compute, opts.startup_s + max(ee, compute)

    walls = {n: timing(n)[3] for n in range(1, most + 1)}
    suggested = min((n for n in walls if walls[n] <= min(walls.values()) * NEAR_BEST),
                    default=0)
    workers = opts.workers or max(1, suggested)
    notes = []
    if most == 0:
        notes.append(f"A {opts.machine_type} worker runs {vcpus} SDK processes, more than the "
                     f"budget's {budget} concurrent requests: the job would be refused; "
                     f"choose a smaller machine type.")
    elif workers > most:
        fix = "" if gpus else ", or one SDK process per worker"
        notes.append(f"{workers} workers x {per_worker} processes exceed the budget of "
                     f"{budget} concurrent requests: the job would be refused (at most "
                     f"{most} workers{fix}).")
    if gpus:
        notes.append(f"GPU workers run one SDK process each (--experiments "
                     f"no_use_multiple_sdk_containers, as infra/README's GPU setup): "
                     f"{gpus} GPU(s) per worker at {_num(rate)} Mpx/s per GPU.")
    processes = workers * per_worker
    in_flight, ee_s, compute_s, wall_s = timing(workers)
    hours = wall_s / 3600 * max(1, workers)
    p = opts.prices
    compute_usd = hours * (vcpus * p.vcpu_hour + memory * p.memory_gb_hour
                           + opts.disk_gb * p.disk_gb_hour + opts.worker_gpus * p.gpu_hour)
    cog = cog_bytes_per_chunk(opts.chunk_size, opts.prob_dtype)
    out_bytes = {k: v * reads for k, v in cog.items()}
    return {
        "aoi": {"name": region.name, "area_km2": round(sum(a for _, a in zones.values()), 1),
                "utm_zones": [f"EPSG:{e}" for e in zones],
                "chunks_per_zone": {f"EPSG:{e}": n for e, (n, _) in zones.items()}},
        "grid": {"pixel_size_m": pixel_size, "chunk_px": opts.chunk_size, "halo_px": halo,
                 "window_px": lattice.window, "stride_px": lattice.stride},
        "periods": periods, "years": list(opts.years), "chunks": chunks,
        "chunk_reads": reads,
        "earth_engine": {
            "dates": per_date, "requests_per_chunk": per_chunk,
            "requests": requests, "bytes": ee_bytes, "max_concurrent_requests": budget,
            "requests_per_second": rps, "seconds_per_request": opts.ee_seconds_per_request,
            "quota_bound_s": round(quota_bound, 1), "rate_bound_s": round(rate_bound, 1),
            "requests_in_flight": in_flight, "time_s": round(ee_s, 1)},
        "model": {"id": meta.get("model_id"), "channels": len(meta["bands"]),
                  "windows": windows, "windows_per_chunk": round(windows / chunks, 2),
                  "megapixels": round(megapixels, 1),
                  "rate_unit": "GPU" if gpus else "vCPU",
                  f"mpx_per_{unit}_s": round(rate, 4), "rate_source": rate_source,
                  f"{unit}_hours": round(unit_s / 3600, 4)},
        "workers": {"machine_type": opts.machine_type, "vcpus": vcpus, "memory_gb": memory,
                    "gpus": gpus, "disk_gb": opts.disk_gb,
                    "suggested": suggested, "used": workers, "most_within_budget": most,
                    "processes_per_worker": per_worker, "processes": processes},
        "time": {"earth_engine_s": round(ee_s, 1), "compute_s": round(compute_s, 1),
                 "startup_s": opts.startup_s, "wall_s": round(wall_s, 1),
                 "bound_by": "Earth Engine" if ee_s >= compute_s else "model compute"},
        "cost": {"prices": {k: getattr(p, k) for k in ("vcpu_hour", "memory_gb_hour",
                                                       "disk_gb_hour", "gpu_hour",
                                                       "storage_gb_month")},
                 "worker_hours": round(hours, 2), "workers_usd": round(compute_usd, 2),
                 "storage_usd_per_month": [round(out_bytes[k] / 1e9 * p.storage_gb_month, 2)
                                           for k in ("least", "most")]},
        "outputs": {"cog_bytes_per_chunk": cog, "bytes": out_bytes},
        "notes": notes,
    }


# ----------------------------------------------------------------------------- report
def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _num(x: float) -> str:
    """A figure with about three significant digits (thousands separated)."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:,.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:,.1f} min"
    return f"{s / 3600:,.1f} h"


def render(plan: dict[str, Any]) -> str:
    """The plan as a readable table."""
    ee, m, w, t, c = (plan[k] for k in ("earth_engine", "model", "workers", "time", "cost"))
    gpus = f", {w['gpus']} GPU" if w["gpus"] else ""
    aoi, g, o = plan["aoi"], plan["grid"], plan["outputs"]
    unit = "gpu" if m["rate_unit"] == "GPU" else "vcpu"
    dates = "; ".join(f"{k}: {len(d['bands'])} bands, {d['requests']} request(s)"
                      for k, d in ee["dates"].items())
    rows = [
        ("Area", f"{aoi['name']}: {aoi['area_km2']:,.1f} km2"),
        ("UTM zones", ", ".join(f"{z} ({n:,} chunks)"
                                for z, n in aoi["chunks_per_zone"].items())),
        ("Chunks", f"{plan['chunks']:,} of {g['chunk_px']} px at {g['pixel_size_m']:g} m "
                   f"(halo {g['halo_px']} px) x {plan['periods']} period(s) = "
                   f"{plan['chunk_reads']:,}"),
        ("Earth Engine", f"{ee['requests']:,} requests, {_size(ee['bytes'])} "
                         f"({dates} per chunk)"),
        ("Quota bound", f"{_duration(ee['quota_bound_s'])} at {ee['max_concurrent_requests']} "
                        f"in flight and {ee['requests_per_second']:g}/s "
                        f"({ee['seconds_per_request']:g} s per request assumed)"),
        ("Model", f"{m['windows_per_chunk']:g} windows of {g['window_px']} px per chunk, "
                  f"{_num(m['megapixels'])} Mpx at {_num(m[f'mpx_per_{unit}_s'])} Mpx/s/"
                  f"{m['rate_unit']} ({m['rate_source']}) = {_num(m[f'{unit}_hours'])} "
                  f"{m['rate_unit']}-h"),
        ("Workers", f"{w['used']} x {w['machine_type']} ({w['vcpus']} vCPU, "
                    f"{w['memory_gb']:g} GB{gpus}); "
                    f"suggested {w['suggested']}, at most {w['most_within_budget']} within "
                    f"the Earth Engine budget"),
        ("Wall time", f"{_duration(t['wall_s'])} (Earth Engine {_duration(t['earth_engine_s'])}"
                      f", model {_duration(t['compute_s'])}, start-up "
                      f"{_duration(t['startup_s'])}; bound by {t['bound_by']})"),
        ("Cost", f"${c['workers_usd']:,.2f} for {_num(c['worker_hours'])} worker-hours; "
                 f"storage ${c['storage_usd_per_month'][0]:,.2f}-"
                 f"${c['storage_usd_per_month'][1]:,.2f} a month"),
        ("Outputs", f"{_size(o['bytes']['least'])} - {_size(o['bytes']['most'])} of COGs "
                    f"({_size(o['cog_bytes_per_chunk']['least'])} - "
                    f"{_size(o['cog_bytes_per_chunk']['most'])} per chunk)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"Note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def plan_command(opts: PlanOptions) -> int:
    """``landslides plan``: print the plan (a table, or JSON with ``--json``)."""
    plan = make_plan(opts)
    print(json.dumps(plan, indent=2) if opts.as_json else render(plan))
    return 0


__all__ = ["DEFAULT_MPX_PER_VCPU_S", "calibrate", "cog_bytes_per_chunk", "make_plan",
           "model_meta", "plan_command", "render", "sweep_windows", "windows_per_index"]

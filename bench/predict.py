"""Predict throughput, memory and held-out F1 per precision (fp32, bf16, int8), in one run.

On a synthetic world it trains a small single-date U-Net (the bench's model: 16 filters,
depth 4, the 8 bands B2..slope; 64-px patches, swept in 128-px windows), validates it at
every precision (``validate_precisions``: int8 calibrated on its training patches, F1 on
its held-out test split) and, for a region R (``--side`` x ``--side`` chunks: 4 x 4 =
104 km2, a district) and one 4x larger (416 km2), prints side by side per precision:

* bare-model tiles/s: the precision's forward pass (``load_for_inference(...).predict``)
  on the sweep's very windows (read beforehand, not timed), one call per chunk with the
  sweep's batch size, as the model handler does; warm, in the sweep's process right after
  the sweep;
* end-to-end km2/s and tiles/s of ``run_predict`` (planning, Beam DirectRunner, reading
  the synthetic source with terrain, inference, blending, COGs, polygons, mosaics, STAC,
  run.json), each region in its own process, and their speed-up over fp32;
* end-to-end / bare ratio (goal >= 0.85 from 100 km2) and the rest in seconds;
* peak resident memory (``VmHWM`` of the sweep's process, before the bare timing) and the
  4R / R ratio (goal <= 1.2);
* CPU milliseconds per chunk of each step, one at a time on one thread: reading and
  cutting windows, the model, blending and writing (COGs, polygons), and the model's
  share of them: the most end-to-end / bare can reach when the model has every core;
* where a sweep's time goes (R), from the times of the sweep's own log records:
  planning; building the Beam graph and starting its runner, until the first chunk is
  read; reading the others (the model and the writer work behind the reader); and after
  the last read: its inference and writing, then the inventory, mosaics, STAC and
  run.json;
* held-out F1 per precision and its drift from fp32 (goal: within 0.01), as recorded in
  the artifact; with ``--also-model`` (e.g. the demo's fine-tuned model) and
  ``--also-data`` (its held-out shards), the same for that model too.

Run::

    .venv/bin/python bench/predict.py [--side 4] [--repeats 2] [--epochs 8]
        [--also-model demo-out/models/finetuned --also-data demo-out/shards/eval]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BANDS = ("B2", "B3", "B4", "B8", "B11", "B12", "DEM", "slope")
YEAR = 2015
PRECISIONS = ("fp32", "bf16", "int8")


def _quiet() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)


def _region_file(d: str, world: dict, chunk: int, n: int, name: str, skip: int = 0) -> str:
    """An AOI of n x n chunks inside the world, aligned with the chunk grid."""
    import geopandas as gpd
    from shapely.geometry import box

    from pipelines.geo.grid import ORIGIN_X, ORIGIN_Y

    ps = float(world["pixel_size"])
    cm = chunk * ps
    left, bottom, right, top = world["bounds"]
    c0 = math.ceil((left - ORIGIN_X) / cm) + skip
    r0 = math.ceil((ORIGIN_Y - top) / cm)
    x0, y1 = ORIGIN_X + c0 * cm, ORIGIN_Y - r0 * cm
    x1, y0 = x0 + n * cm, y1 - n * cm
    if x1 > right or y0 < bottom:
        raise SystemExit(f"the world is too small for {n} x {n} chunks of {chunk} px")
    path = os.path.join(d, f"{name}.geojson")
    gpd.GeoDataFrame(geometry=[box(x0 + 20, y0 + 20, x1 - 20, y1 - 20)],
                     crs=world["crs"]).to_file(path)
    return path


def _config(spec: dict, precision: str):
    from pipelines.predict import PredictConfig

    return PredictConfig(model=spec["model"], source={"kind": "synthetic",
                                                      "world": spec["world"]},
                         out=spec["out"], aoi=spec["aoi"], start=f"{YEAR}-06-01",
                         end=f"{YEAR}-10-31", chunk_size=spec["chunk"], window=spec["window"],
                         batch_size=spec["batch"], stac=True, precision=precision)


def _peak_rss_mb() -> float:
    """This process's peak resident memory (the high-water mark of its own address space)."""
    import resource

    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux


def child(spec: dict) -> None:
    """One end-to-end sweep in this fresh process, then the bare model on its windows."""
    _quiet()
    # imports are a once-per-process cost (a worker pays it once for a whole region)
    import apache_beam  # noqa: F401
    import geopandas  # noqa: F401
    import tensorflow  # noqa: F401

    import model.artifact  # noqa: F401
    import pipelines.geo.inventory
    import pipelines.sources.synthetic  # noqa: F401
    from pipelines.predict import run_predict

    cfg = _config(spec, spec["precision"])
    records = _LogTimes()
    t, cpu = time.perf_counter(), time.process_time()
    with records:
        run = run_predict(cfg)[0]
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    phases = records.phases(t, t + seconds)
    peak = _peak_rss_mb()
    tiles, model_s, model_cpu, steps = bare_model(cfg, spec["scratch"])
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "km2": run["aoi"]["area_km2"],
                      "chunks": run["counts"]["chunks_total"],
                      "polygons": run["counts"]["polygons"], "maxrss_mb": peak,
                      "tiles": tiles, "model_s": model_s, "model_cpu_s": model_cpu,
                      "steps": steps, "phases": phases}))


class _LogTimes(logging.Handler):
    """While active, the times of the sweep's records that mark its phases.

    ``run_predict`` logs "Predicting ..." once planned, and the progress logger a line when
    the first and the last chunk have been read ("n/N chunks"; others at most every few
    seconds); the sweep returns after finishing its AOI.
    """

    LOGGERS = ("pipelines.predict.run", "landslides.progress")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.planned: float | None = None
        self.chunks: list[float] = []
        self._saved: dict[str, tuple[int, bool]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        now = time.perf_counter()  # record.created is wall-clock; phases use perf_counter
        msg = record.getMessage()
        if record.name == self.LOGGERS[0] and msg.startswith("Predicting "):
            self.planned = now
        elif record.name == self.LOGGERS[1] and " chunks (" in msg:
            self.chunks.append(now)

    def __enter__(self) -> _LogTimes:
        for name in self.LOGGERS:
            lg = logging.getLogger(name)
            self._saved[name] = (lg.level, lg.propagate)
            lg.setLevel(logging.INFO)
            lg.addHandler(self)
            lg.propagate = False  # nothing printed: the child's stdout is its JSON line
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            lg = logging.getLogger(name)
            lg.removeHandler(self)
            lg.setLevel(self._saved[name][0])
            lg.propagate = self._saved[name][1]

    def phases(self, start: float, end: float) -> dict[str, float] | None:
        """Seconds of planning, start (to the first chunk read), reads, after the last read."""
        if self.planned is None or not self.chunks:
            return None
        return {"plan_s": self.planned - start, "start_s": self.chunks[0] - self.planned,
                "chunks_s": self.chunks[-1] - self.chunks[0],
                "finish_s": end - self.chunks[-1]}


def bare_model(cfg, scratch: str) -> tuple[int, float, float, dict[str, float]]:
    """Time the precision's forward pass on the sweep's own windows, one call per chunk.

    Also times, one chunk at a time on this thread, the work a sweep does outside the
    model (CPU milliseconds per chunk): reading the chunk and cutting its windows
    (``prepare_chunk``), and blending, thresholding, writing the COGs and polygonising
    (``finish_chunk``, into ``scratch``).
    """
    import dataclasses

    import numpy as np

    from model.precision import load_for_inference
    from pipelines.predict import ChunkTiles, plan_predict
    from pipelines.predict.chunk import finish_chunk, prepare_chunk

    plan, elements = plan_predict(dataclasses.replace(cfg, out=scratch))
    art = load_for_inference(cfg.model, cfg.precision)
    for source in plan.sources:
        source.open()
    chunks, windows = [], []
    read_cpu = 0.0
    for e in elements:  # timed apart from the model: reading and cutting windows
        c0 = time.process_time()
        t = prepare_chunk(plan, plan.sources, *e)
        if isinstance(t, ChunkTiles):
            windows.append(t.windows())
            chunks.append(t)
        read_cpu += time.process_time() - c0
    for source in plan.sources:
        source.close()
    art.predict(windows[0], batch_size=cfg.batch_size)  # warm, as a worker is
    tiles, seconds, cpu = 0, 0.0, 0.0
    probs = []
    for w in windows:
        t0, c0 = time.perf_counter(), time.process_time()
        probs.append(np.asarray(art.predict(w, batch_size=cfg.batch_size)))
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
        tiles += len(w)
    finish_cpu = 0.0
    for t, p in zip(chunks, probs):
        c0 = time.process_time()
        finish_chunk(plan, t, p)
        finish_cpu += time.process_time() - c0
    n = max(len(chunks), 1)
    steps = {"read_cut_ms": 1000 * read_cpu / n, "model_ms": 1000 * cpu / n,
             "finish_ms": 1000 * finish_cpu / n}
    return tiles, seconds, cpu, steps


def train_model(d: str, world_dir: str, world: dict, args) -> str:
    """Export patches of a strip of the world, train the bench's U-Net, validate precisions."""
    from model.train import TrainConfig, train, validate_precisions
    from pipelines.export import ExportConfig, run_export
    from pipelines.geo.patches import PatchRules, SplitPlan

    shards = os.path.join(d, "shards")
    run_export(ExportConfig(
        source={"kind": "synthetic", "world": world_dir},
        aoi=_region_file(d, world, 128, args.train_chunks, "train_area"), out=shards,
        inventory=os.path.join(world_dir, "inventory_{year}.gpkg"), start=f"{YEAR}-06-01",
        end=f"{YEAR}-10-31", years=(YEAR,), chunk_size=128,
        patch=PatchRules(64, stride=64, negative_fraction=0.3, max_nodata_fraction=0.5,
                         seed=0),
        split=SplitPlan((0.7, 0.1, 0.2), block=2, seed=0), compression="none"))
    out = os.path.join(d, "model")
    train(shards, out, TrainConfig(seed=0, base_filters=args.filters, depth=args.depth,
                                   epochs=args.epochs, patience=0, batch_size=16,
                                   loss="bce_dice", saved_model=False))
    validate_precisions(out, [p for p in PRECISIONS if p != "fp32"])
    return out


def _f1_rows(record: dict) -> dict[str, str]:
    out = {}
    for p in PRECISIONS:
        v = record["validated"].get(p)
        if v:
            drift = "" if p == "fp32" else f" ({v['drift']:+.4f}".replace("+", "") + ")"
            out[p] = f"{v['f1']:.4f}{drift}"
    return out


def also_model(d: str, model: str, data: str) -> dict:
    """Held-out F1 per precision of another artifact (copied: the original is not changed)."""
    from model.train import validate_precisions

    copy = os.path.join(d, "also-model")
    shutil.copytree(model, copy)
    return validate_precisions(copy, [p for p in PRECISIONS if p != "fp32"], data=data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", type=int, default=256, help="chunk side in pixels")
    ap.add_argument("--side", type=int, default=4, help="chunks per side of region R")
    ap.add_argument("--window", type=int, default=128, help="sweep window size")
    ap.add_argument("--filters", type=int, default=16, help="U-Net base filters")
    ap.add_argument("--depth", type=int, default=4, help="U-Net depth")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of the bench model")
    ap.add_argument("--train-chunks", type=int, default=10,
                    help="side of the training strip in 128-px chunks")
    ap.add_argument("--batch", type=int, default=16, help="windows per model call")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs per region and precision; the fastest of each measure is kept "
                         "(a shared machine's noise only ever slows a run down)")
    ap.add_argument("--also-model", help="another artifact to validate (held-out F1 only)")
    ap.add_argument("--also-data", help="held-out shards of --also-model")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    _quiet()
    from pipelines.synth import WorldConfig, generate_world

    precisions = [p for p in args.precisions.split(",") if p]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as d:
        side_km = (2 * args.side + 1) * args.chunk * 10.0 / 1000.0 + 0.5
        t = time.perf_counter()
        world_dir = os.path.join(d, "world")
        world = generate_world(world_dir, WorldConfig(size_km=side_km, years=(YEAR,),
                                                      event_year=YEAR, clouds=False))
        t_world = time.perf_counter() - t
        t = time.perf_counter()
        model = train_model(d, world_dir, world, args)
        t_train = time.perf_counter() - t
        record = json.loads(Path(model, "artifact.json").read_text())["precisions"]
        also = also_model(d, args.also_model, args.also_data) if args.also_model else None
        rows: dict[tuple[str, str], dict] = {}
        for rep in range(args.repeats):
            for p in precisions:
                for name, n in (("R", args.side), ("4R", 2 * args.side)):
                    spec = {"world": world_dir, "model": model, "precision": p,
                            "aoi": _region_file(d, world, args.chunk, n, name),
                            "out": os.path.join(d, f"out-{p}-{name}-{rep}"),
                            "scratch": os.path.join(d, f"scratch-{p}-{name}-{rep}"),
                            "chunk": args.chunk, "window": args.window, "batch": args.batch}
                    proc = subprocess.run([sys.executable, __file__, "--child",
                                           json.dumps(spec)], capture_output=True, text=True,
                                          check=False)
                    if proc.returncode:
                        sys.stderr.write(proc.stderr[-4000:])
                        raise SystemExit(f"the {p} {name} sweep failed")
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    old = rows.get((p, name))
                    if old:
                        if old["seconds"] < r["seconds"]:  # the phases of the fastest run
                            r["phases"] = old.get("phases")
                        for key in ("seconds", "model_s", "cpu_s", "model_cpu_s"):
                            r[key] = min(r[key], old[key])
                        r["steps"] = {k: min(v, old["steps"][k]) for k, v in r["steps"].items()}
                        r["maxrss_mb"] = max(r["maxrss_mb"], old["maxrss_mb"])
                    rows[(p, name)] = r
    report(args, precisions, rows, record, also, side_km, t_world, t_train,
           time.perf_counter() - started)


def report(args, precisions: list[str], rows: dict, record: dict, also: dict | None,
           side_km: float, t_world: float, t_train: float, total: float) -> None:
    """Print the figures as JSON, then the side-by-side table and the goals."""
    figures: dict = {"world_km": round(side_km, 2), "world_s": round(t_world, 1),
                     "train_and_validate_s": round(t_train, 1), "bench_s": round(total, 1),
                     "repeats": args.repeats, "chunk_px": args.chunk,
                     "window_px": args.window, "overlap": 0.5, "batch": args.batch,
                     "unet": f"{args.filters}x{args.depth}", "bands": len(BANDS),
                     "held_out": record["held_out"], "rows": {}}
    for (p, name), r in rows.items():
        figures["rows"][f"{p} {name}"] = {
            "km2": r["km2"], "chunks": r["chunks"], "tiles": r["tiles"],
            "polygons": r["polygons"], "end_to_end_s": round(r["seconds"], 2),
            "end_to_end_km2_per_s": round(r["km2"] / r["seconds"], 3),
            "end_to_end_cpu_s": round(r["cpu_s"], 2),
            "bare_s": round(r["model_s"], 2), "bare_cpu_s": round(r["model_cpu_s"], 2),
            "bare_tiles_per_s": round(r["tiles"] / r["model_s"], 1),
            "overhead_s": round(r["seconds"] - r["model_s"], 2),
            "peak_rss_mb": round(r["maxrss_mb"], 1),
            "cpu_ms_per_chunk": {k: round(v, 1) for k, v in r["steps"].items()},
            "phases_s": {k: round(v, 3) for k, v in (r.get("phases") or {}).items()}}
    print(json.dumps(figures, indent=1))
    f1 = _f1_rows(record)
    also_f1 = _f1_rows(also) if also else {}
    r_km2 = rows[(precisions[0], "R")]["km2"]
    r4_km2 = rows[(precisions[0], "4R")]["km2"]
    head = (f"{'precision':>9} | {'held-out F1 (drift)':>19} | {'bare tiles/s':>12} | "
            f"{'e2e km2/s R':>11} {'4R':>6} | {'x fp32 R':>8} {'4R':>5} | "
            f"{'e2e/bare R':>10} {'4R':>5} | {'fixed s':>7} | {'CPU s R':>7} {'4R':>5} | "
            f"{'peak MB R':>9} {'4R':>6} {'4R/R':>5}")
    if also_f1:
        head += f" | {'also-model F1 (drift)':>21}"
    from model.cpu import describe_cpu

    print(f"\nR = {r_km2:.0f} km2, 4R = {r4_km2:.0f} km2; held-out F1 on "
          f"{record['held_out']['patches']} patches of {record['held_out']['data']}; "
          f"{describe_cpu()}")
    print(head)
    print("-" * len(head))
    base = {n: rows.get(("fp32", n)) for n in ("R", "4R")}
    for p in precisions:
        r, r4 = rows[(p, "R")], rows[(p, "4R")]
        speed = [f"{b['seconds'] / x['seconds']:.2f}" if b else "n/a"
                 for b, x in ((base["R"], r), (base["4R"], r4))]
        line = (f"{p:>9} | {f1.get(p, 'not validated'):>19} | "
                f"{r4['tiles'] / r4['model_s']:>12.1f} | "
                f"{r['km2'] / r['seconds']:>11.2f} {r4['km2'] / r4['seconds']:>6.2f} | "
                f"{speed[0]:>8} {speed[1]:>5} | "
                f"{r['model_s'] / r['seconds']:>10.3f} {r4['model_s'] / r4['seconds']:>5.3f} | "
                f"{_fixed(r, r4):>7.2f} | {r['cpu_s']:>7.1f} {r4['cpu_s']:>5.1f} | "
                f"{r['maxrss_mb']:>9.0f} {r4['maxrss_mb']:>6.0f} "
                f"{r4['maxrss_mb'] / r['maxrss_mb']:>5.2f}")
        if also_f1:
            line += f" | {also_f1.get(p, 'n/a'):>21}"
        print(line)
    print(f"\nCPU ms per {args.chunk}-px chunk, one step at a time on one thread (4R): "
          "read + cut windows | model | blend + COGs + polygons -> model / all")
    for p in precisions:
        st = rows[(p, "4R")]["steps"]
        share = st["model_ms"] / (st["model_ms"] + st["read_cut_ms"] + st["finish_ms"])
        print(f"{p:>9} | {st['read_cut_ms']:6.1f} | {st['model_ms']:6.1f} | "
              f"{st['finish_ms']:6.1f} -> {share:.2f}")
    print("\nWhere the R sweep's seconds go (its log records): planning | Beam graph and "
          "runner start, to the first chunk read | reading the others, the model behind | "
          "after the last read: its model and writing, inventory, mosaics, STAC, run.json "
          "-> all but the reads | bare model")
    for p in precisions:
        r = rows[(p, "R")]
        ph = r.get("phases")
        if not ph:
            print(f"{p:>9} | n/a (the sweep logged no progress)")
            continue
        outside = ph["plan_s"] + ph["start_s"] + ph["finish_s"]
        print(f"{p:>9} | {ph['plan_s']:5.2f} | {ph['start_s']:5.2f} | {ph['chunks_s']:5.2f} | "
              f"{ph['finish_s']:5.2f} -> {outside:5.2f} | {r['model_s']:5.2f}")
    if also:
        print(f"also-model: {also['held_out']['patches']} held-out patches of "
              f"{also['held_out']['data']}")
    print("fixed s: a run's time is a fixed cost plus a cost per km2; the two regions give "
          "both. CPU s: CPU time of the sweep's process (all threads), steadier than wall "
          "time on a shared machine.")
    print("goals: a lower precision's e2e >= 1.5x fp32 with F1 within 0.01; e2e/bare >= 0.85 "
          "from 100 km2 at every precision; peak memory 4R/R <= 1.2")


def _fixed(r: dict, r4: dict) -> float:
    """Seconds per run that do not grow with the region (from the two regions' times)."""
    per_km2 = (r4["seconds"] - r["seconds"]) / (r4["km2"] - r["km2"])
    return r["seconds"] - per_km2 * r["km2"]


if __name__ == "__main__":
    main()

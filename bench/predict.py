"""Predict throughput and memory on the synthetic world, measured in one run.

Prints, for a region R (``--side`` x ``--side`` chunks: 4 x 4 = 104 km2 by default, a
district) and one 4x larger (8 x 8 chunks, 416 km2):

* end-to-end km2/s at 10 m of ``run_predict`` (planning, Beam DirectRunner, reading the
  synthetic source with terrain bands, inference, blending, COG writing, polygons,
  mosaics, STAC, run.json), each region in its own subprocess;
* model-only tiles/s: ``Artifact.predict`` on the very same windows (read beforehand, not
  timed), one call per chunk with the same batch size, as the sweep's model handler does,
  in the same subprocess right after the sweep;
* their ratio (goal >= 0.7) per region: the share of the sweep's time spent in the
  model, and the rest in seconds (``overhead_s``: partly fixed per run: loading and
  tracing the model, Beam's start, mosaics, STAC and the merged inventory; so small
  regions have lower ratios, see ``--side 2``);
* the marginal ratio from the two regions: the sweep's time is a fixed cost per run plus
  a cost per km2, the model's a cost per km2; their per-km2 costs compare the steady
  throughputs (every km2 beyond the first ones), and the fixed cost says from which
  region size a run's own ratio reaches 0.7;
* peak resident memory of each subprocess (``VmHWM``: ``ru_maxrss`` would include the
  forking parent's memory, which Linux carries across ``exec``) and their ratio (goal
  <= 1.2: memory does not grow with the region).

The model is an untrained U-Net of the default shape family: speed does not depend on the
weights, but an untrained net marks noise everywhere at 0.5, which no trained model does
and which would time the vectoriser on speckle. Its threshold is therefore set to the
98th percentile of its own output on the region, so about 2% of the pixels are
"landslides", as in a landslide-struck valley. Run::

    .venv/bin/python bench/predict.py [--chunk 256] [--window 128] [--filters 16] [--depth 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BANDS = ("B2", "B3", "B4", "B8", "B11", "B12", "DEM", "slope")
YEAR = 2015


def _quiet() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)


def _region_file(d: str, world: dict, chunk: int, n: int, name: str) -> str:
    """An AOI of n x n chunks inside the world, aligned with the chunk grid."""
    import geopandas as gpd
    from shapely.geometry import box

    from pipelines.geo.grid import ORIGIN_X, ORIGIN_Y

    ps = float(world["pixel_size"])
    cm = chunk * ps
    left, bottom, right, top = world["bounds"]
    c0 = math.ceil((left - ORIGIN_X) / cm)
    r0 = math.ceil((ORIGIN_Y - top) / cm)
    x0, y1 = ORIGIN_X + c0 * cm, ORIGIN_Y - r0 * cm
    x1, y0 = x0 + n * cm, y1 - n * cm
    if x1 > right or y0 < bottom:
        raise SystemExit(f"the world is too small for {n} x {n} chunks of {chunk} px")
    path = os.path.join(d, f"{name}.geojson")
    gpd.GeoDataFrame(geometry=[box(x0 + 20, y0 + 20, x1 - 20, y1 - 20)],
                     crs=world["crs"]).to_file(path)
    return path


def _config(world_dir: str, model: str, aoi: str, out: str, chunk: int, batch: int):
    from pipelines.predict import PredictConfig

    return PredictConfig(model=model, source={"kind": "synthetic", "world": world_dir},
                         out=out, aoi=aoi, start=f"{YEAR}-06-01", end=f"{YEAR}-10-31",
                         chunk_size=chunk, batch_size=batch, stac=True)


def _peak_rss_mb() -> float:
    """This process's peak resident memory (the high-water mark of its own address space)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux


def child(spec: dict) -> None:
    """One end-to-end sweep in this fresh process; prints timing and peak memory."""
    _quiet()
    # imports are a once-per-process cost (a worker pays it once for a whole region)
    import apache_beam  # noqa: F401
    import geopandas  # noqa: F401
    import tensorflow  # noqa: F401

    import model.artifact  # noqa: F401
    import pipelines.geo.inventory
    import pipelines.sources.synthetic  # noqa: F401
    from pipelines.predict import run_predict

    cfg = _config(spec["world"], spec["model"], spec["aoi"], spec["out"], spec["chunk"],
                  spec["batch"])
    t = time.perf_counter()
    run = run_predict(cfg)[0]
    seconds = time.perf_counter() - t
    peak = _peak_rss_mb()
    tiles, model_s = model_only(cfg, spec["scratch"])
    print(json.dumps({"seconds": seconds, "km2": run["aoi"]["area_km2"],
                      "chunks": run["counts"]["chunks_total"],
                      "computed": run["counts"]["chunks_computed"],
                      "polygons": run["counts"]["polygons"], "maxrss_mb": peak,
                      "tiles": tiles, "model_s": model_s}))


def model_only(cfg, scratch: str) -> tuple[int, float]:
    """Time Artifact.predict on the sweep's own windows, one call per chunk."""
    import dataclasses

    from model.artifact import load_artifact
    from pipelines.predict import ChunkTiles, plan_predict
    from pipelines.predict.chunk import prepare_chunk

    plan, elements = plan_predict(dataclasses.replace(cfg, out=scratch))
    art = load_artifact(cfg.model)
    for source in plan.sources:
        source.open()
    tiles, seconds, warm = 0, 0.0, False
    for e in elements:
        t = prepare_chunk(plan, plan.sources, *e)  # not timed: reading and cutting windows
        if not isinstance(t, ChunkTiles):
            continue
        if not warm:  # trace once, as a worker does on its first chunk
            art.predict(t.windows, batch_size=cfg.batch_size)
            warm = True
        t0 = time.perf_counter()
        art.predict(t.windows, batch_size=cfg.batch_size)
        seconds += time.perf_counter() - t0
        tiles += len(t.windows)
    for source in plan.sources:
        source.close()
    return tiles, seconds


def _calibrate(world_dir: str, model: str, aoi: str, chunk: int, batch: int,
               scratch: str, positive: float = 0.02) -> float:
    """The threshold that marks a fraction ``positive`` of one chunk's pixels."""
    import numpy as np

    from model.artifact import load_artifact
    from pipelines.predict import plan_predict
    from pipelines.predict.chunk import prepare_chunk

    plan, elements = plan_predict(_config(world_dir, model, aoi,
                                          os.path.join(scratch, "calib-out"), chunk, batch))
    for source in plan.sources:
        source.open()
    tiles = prepare_chunk(plan, plan.sources, *elements[0])
    for source in plan.sources:
        source.close()
    probs = load_artifact(model).predict(tiles.windows, batch_size=batch)
    return float(np.quantile(probs, 1.0 - positive))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", type=int, default=256, help="chunk side in pixels")
    ap.add_argument("--side", type=int, default=4, help="chunks per side of region R")
    ap.add_argument("--window", type=int, default=128, help="model window (patch) size")
    ap.add_argument("--filters", type=int, default=16, help="U-Net base filters")
    ap.add_argument("--depth", type=int, default=4, help="U-Net depth")
    ap.add_argument("--batch", type=int, default=16, help="windows per model call")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs per region; the fastest of each measure is kept (a shared "
                         "machine's noise only ever slows a run down)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    _quiet()
    import keras

    from model.artifact import save_artifact
    from model.unet import build_unet, size_multiple
    from pipelines.synth import WorldConfig, generate_world

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as d:
        # 2 * side chunks wherever they fall on the world
        side_km = (2 * args.side + 1) * args.chunk * 10.0 / 1000.0 + 0.5
        t = time.perf_counter()
        world = generate_world(os.path.join(d, "world"), WorldConfig(
            size_km=side_km, years=(YEAR,), event_year=YEAR, clouds=False))
        t_world = time.perf_counter() - t
        keras.utils.set_random_seed(0)
        net = build_unet(BANDS, base_filters=args.filters, depth=args.depth,
                         mean=[0.05, 0.08, 0.08, 0.25, 0.2, 0.15, 3000.0, 30.0],
                         std=[0.03, 0.03, 0.04, 0.08, 0.07, 0.06, 800.0, 12.0])
        model = os.path.join(d, "model")
        save_artifact(net, model, BANDS, patch_size=args.window, pixel_size=10.0,
                      size_multiple=size_multiple(args.depth), saved_model=False)
        threshold = _calibrate(os.path.join(d, "world"), model, _region_file(
            d, world, args.chunk, 1, "calib"), args.chunk, args.batch, d)
        save_artifact(net, model, BANDS, patch_size=args.window, pixel_size=10.0,
                      size_multiple=size_multiple(args.depth), saved_model=False,
                      threshold=threshold)
        rows = {}
        for rep in range(args.repeats):
            for name, n in (("R", args.side), ("4R", 2 * args.side)):
                aoi = _region_file(d, world, args.chunk, n, name)
                spec = {"world": os.path.join(d, "world"), "model": model, "aoi": aoi,
                        "out": os.path.join(d, f"out-{name}-{rep}"), "chunk": args.chunk,
                        "batch": args.batch, "scratch": os.path.join(d, f"scratch-{name}-{rep}")}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode:
                    sys.stderr.write(proc.stderr[-4000:])
                    raise SystemExit(f"the {name} sweep failed")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                if name in rows:
                    old = rows[name]
                    r["seconds"] = min(r["seconds"], old["seconds"])
                    r["model_s"] = min(r["model_s"], old["model_s"])
                    r["maxrss_mb"] = max(r["maxrss_mb"], old["maxrss_mb"])
                rows[name] = r
    report = {"world_km": side_km, "world_s": round(t_world, 1),
              "threshold": round(threshold, 4), "repeats": args.repeats,
              "chunk_px": args.chunk,
              "window_px": args.window, "overlap": 0.5, "unet": f"{args.filters}x{args.depth}",
              "bands": len(BANDS), "batch": args.batch}
    for name, r in rows.items():
        report[name] = {
            "km2": r["km2"], "chunks": r["chunks"], "tiles": r["tiles"],
            "polygons": r["polygons"],
            "end_to_end_s": round(r["seconds"], 2),
            "end_to_end_km2_per_s": round(r["km2"] / r["seconds"], 3),
            "end_to_end_tiles_per_s": round(r["tiles"] / r["seconds"], 2),
            "model_only_s": round(r["model_s"], 2),
            "model_only_tiles_per_s": round(r["tiles"] / r["model_s"], 2),
            "overhead_s": round(r["seconds"] - r["model_s"], 2),
            "peak_rss_mb": round(r["maxrss_mb"], 1),
        }
    # A sweep's time is a fixed cost per run plus a cost per km2; the model's is per km2
    # only (warm). The two regions give both: the marginal ratio is the throughput ratio
    # of every km2 a run sweeps beyond the first ones (its steady state).
    r1, r4 = rows["R"], rows["4R"]
    per_km2 = (r4["seconds"] - r1["seconds"]) / (r4["km2"] - r1["km2"])
    model_per_km2 = (r4["model_s"] - r1["model_s"]) / (r4["km2"] - r1["km2"])
    fixed = r1["seconds"] - per_km2 * r1["km2"]
    report["marginal"] = {"end_to_end_s_per_km2": round(per_km2, 4),
                          "model_only_s_per_km2": round(model_per_km2, 4),
                          "fixed_s_per_run": round(fixed, 2)}
    print(json.dumps(report, indent=1))
    for name, r in rows.items():
        print(f"{name} ({r['km2']:.0f} km2): end-to-end/model-only throughput ratio = "
              f"{r['model_s'] / r['seconds']:.3f} (goal >= 0.7)")
    print(f"marginal (each km2 beyond R): end-to-end/model-only throughput ratio = "
          f"{model_per_km2 / per_km2:.3f} (goal >= 0.7); fixed cost {fixed:.2f} s per run")
    if model_per_km2 > 0.7 * per_km2:
        print(f"the ratio reaches 0.7 from about "
              f"{0.7 * fixed / (model_per_km2 - 0.7 * per_km2):.0f} km2 per run")
    print(f"peak memory ratio 4R/R = {rows['4R']['maxrss_mb'] / rows['R']['maxrss_mb']:.3f} "
          f"(goal <= 1.2)")


if __name__ == "__main__":
    main()

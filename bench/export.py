"""Export throughput: patches/s of the Beam export vs a plain rasterio read of the same chunks.

Both are measured in this one run on the same local COGs (a generated 12-band Sentinel-2
scene + DEM in UTM), so the ratio is meaningful on any machine. Goal: ratio >= 0.5 on the
DirectRunner.

    .venv/bin/python bench/export.py [--size 4096] [--chunk 512] [--patch 128]

The export has ~1 s of fixed cost per run (Beam's graph and stages, planning), so the
ratio grows with the scene (README's table keeps the figures). The export reads the next
chunk on a thread; ``export_*_cpu_s`` shows the CPU of all its threads and, with
``--workers`` above 1, of its worker processes (``export_*_worker_cpu_s`` their part); the
plain read is one loop on one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.geo.bands import SENTINEL2_BANDS
from pipelines.geo.cog import write_cog
from pipelines.geo.grid import GridSpec, PixelGrid, patch_windows, plan_chunks


def make_scene(d: str, size: int) -> tuple[str, str, str, str]:
    rng = np.random.default_rng(0)
    spec = GridSpec(32645, 10.0, 512, 0)
    left, top = 320000.0, 10_000_000.0 - 5375 * 1280.0
    grid = PixelGrid(spec.crs, (10.0, 0.0, left, 0.0, -10.0, top), size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = (np.sin(xx / 97) + np.cos(yy / 61)) * 800 + 1500
    s2 = np.stack([(base + 100 * b + rng.normal(0, 50, base.shape)).clip(1, 10000)
                   for b in range(12)]).astype(np.uint16)
    write_cog(os.path.join(d, "s2.tif"), s2, grid, nodata=0, band_names=SENTINEL2_BANDS)
    dem = (3000 + 400 * np.sin(xx / 150) * np.cos(yy / 170) + 0.5 * yy).astype(np.float32)
    write_cog(os.path.join(d, "dem.tif"), dem, grid, nodata=-32768, band_names=["DEM"])
    import geopandas as gpd
    from shapely.geometry import box

    polys = [box(left + x, top - y - 300, left + x + 200, top - y)
             for x in range(500, size * 10 - 500, 1700) for y in range(500, size * 10 - 500, 1900)]
    gpd.GeoDataFrame(geometry=polys, crs=spec.crs).to_file(os.path.join(d, "inv.gpkg"))
    aoi = gpd.GeoDataFrame(geometry=[box(*grid.bounds).buffer(-1)], crs=spec.crs)
    aoi.to_file(os.path.join(d, "aoi.geojson"))
    return (os.path.join(d, "s2.tif"), os.path.join(d, "dem.tif"), os.path.join(d, "inv.gpkg"),
            os.path.join(d, "aoi.geojson"))


def plain_read(s2: str, dem: str, aoi: str, chunk: int, patch: int,
               bands: list[int]) -> tuple[int, float]:
    """Read the same chunk windows with rasterio only (no reprojection, no labels, no encoding)."""
    from pipelines.geo.grid import load_region

    chunks = plan_chunks(load_region(aoi), 10.0, chunk, 0)
    t = time.perf_counter()
    n = 0
    with rasterio.open(s2) as a, rasterio.open(dem) as b:  # one thread, as a plain loop is
        for c in chunks:
            win = rasterio.windows.from_bounds(*c.grid.bounds, transform=a.transform)
            x = a.read(bands, window=win, boundless=True, fill_value=0)
            z = b.read(1, window=win, boundless=True, fill_value=-32768)
            n += sum(1 for _ in patch_windows(x.shape[1], x.shape[2], patch))
            del x, z
    return n, time.perf_counter() - t


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process and of its child processes.

    Returns:
        ``(own, children)``: user + system time of all threads of this process
        (``time.process_time``), and of the children that ended and were waited for
        (``RUSAGE_CHILDREN``: the DirectRunner's worker processes once the pipeline is done).
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096, help="scene side in pixels")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1,
                    help="DirectRunner worker processes (>1: multi_processing mode)")
    args = ap.parse_args()
    beam_args = ([f"--direct_num_workers={args.workers}",
                  "--direct_running_mode=multi_processing"] if args.workers > 1 else [])
    logging.basicConfig(level=logging.WARNING)
    # Library imports are a fixed cost paid once per process; import before timing either side.
    import apache_beam  # noqa: F401

    import model.schema  # noqa: F401
    from pipelines.export import ExportConfig, run_export
    from pipelines.geo.patches import PatchRules, SplitPlan

    with tempfile.TemporaryDirectory() as d:
        s2, dem, inv, aoi = make_scene(d, args.size)
        bands = ("B2", "B3", "B4", "B8", "B11", "B12", "DEM", "slope")
        band_idx = [SENTINEL2_BANDS.index(b) + 1 for b in bands[:6]]
        n_plain, t_plain = plain_read(s2, dem, aoi, args.chunk, args.patch, band_idx)
        results = {}
        for compression in ("gzip", "none"):
            cfg = ExportConfig(
                source={"kind": "geotiff", "images": [s2], "dem": dem}, aoi=aoi,
                out=os.path.join(d, f"out-{compression}"), inventory=inv, bands=bands,
                chunk_size=args.chunk, compression=compression, split=SplitPlan(),
                patch=PatchRules(args.patch, negative_fraction=1.0, max_nodata_fraction=1.0))
            t, (own0, kids0) = time.perf_counter(), cpu_seconds()
            manifest = run_export(cfg, beam_args)
            t_export, (own1, kids1) = time.perf_counter() - t, cpu_seconds()
            size = sum(os.path.getsize(f) for fs in manifest["files"].values() for f in fs)
            results[compression] = (sum(manifest["patches"].values()), t_export,
                                    own1 - own0 + kids1 - kids0, kids1 - kids0, size)
    plain_rate = n_plain / t_plain
    report = {"scene_px": args.size, "chunk": args.chunk, "patch": args.patch,
              "workers": args.workers,
              "bands": len(bands), "plain_rasterio_patches": n_plain,
              "plain_rasterio_s": round(t_plain, 2),
              "plain_rasterio_patches_per_s": round(plain_rate, 1)}
    for compression, (n, t, cpu, worker_cpu, size) in results.items():
        report[f"export_{compression}_patches"] = n
        report[f"export_{compression}_s"] = round(t, 2)
        # CPU of all threads of this process (gzip runs on its own thread beside the read)
        # and of the worker processes (--workers > 1: they do the work)
        report[f"export_{compression}_cpu_s"] = round(cpu, 2)
        report[f"export_{compression}_worker_cpu_s"] = round(worker_cpu, 2)
        report[f"export_{compression}_patches_per_s"] = round(n / t, 1)
        report[f"export_{compression}_shard_mb"] = round(size / 1e6, 1)
    print(json.dumps(report, indent=1))
    for compression, (n, t, *_) in results.items():
        print(f"ratio export({compression})/plain-read = {n / t / plain_rate:.3f} (goal >= 0.5)")


if __name__ == "__main__":
    main()

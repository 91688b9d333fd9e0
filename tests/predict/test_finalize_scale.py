"""Finalize at scale: the Finalize transform on the DirectRunner over 256 and 1,024 chunks.

No model runs: the sweep is planned for real (tiny 16 px chunks over a 5 km AOI), each
chunk gets tiny probability and mask COGs and a done-record holding forty polygons
inside it and one on each side it shares with its left and right neighbours, and the pipeline
reads the records back one by one, as a resumed sweep does. The products must be exact
(every pair of edge parts joined, STAC item per chunk, partial naming when a chunk
failed), and finalize's peak memory (tracemalloc, the runner included) must stay flat
in the chunk count: no step may hold every chunk's polygons.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import apache_beam as beam
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from apache_beam.testing.test_pipeline import TestPipeline
from shapely.geometry import Point, box

from pipelines import fsio
from pipelines.geo.cog import CATEGORICAL, CogProfile, write_cog
from pipelines.geo.grid import Chunk, ChunkKey, GridSpec
from pipelines.predict import PredictConfig, plan_predict
from pipelines.predict.chunk import failure_record
from pipelines.predict.pipeline import Finalize

LEFT, TOP = 320000.0, 3120000.0  # UTM 45N, on the 160 m chunk grid
CHUNK = 16  # px of 10 m
INTERIOR = 40  # polygons inside each chunk
BANDS = ("B4", "B8")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A two-band scene under both AOIs and a 1x1 threshold model artifact."""
    import keras

    from model.artifact import save_artifact

    d = tmp_path_factory.mktemp("finalize_scale")
    n = 32 * CHUNK
    with rasterio.open(d / "s2.tif", "w", driver="GTiff", width=n, height=n, count=2,
                       dtype="uint16", crs="EPSG:32645", nodata=0,
                       transform=rasterio.transform.from_origin(LEFT, TOP, 10, 10)) as dst:
        dst.write(np.full((2, n, n), 1000, np.uint16))
        for i, b in enumerate(BANDS, 1):
            dst.set_band_description(i, b)
    inp = keras.Input((None, None, len(BANDS)))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    save_artifact(model, str(d / "thr"), BANDS, patch_size=16, size_multiple=1,
                  threshold=0.5, saved_model=False, training={"handcrafted": "any"})
    return d


def _aoi(d: Path, side: int) -> str:
    """An AOI of ``side`` x ``side`` chunks (inset 1 m, so no extra chunk is planned)."""
    size = side * CHUNK * 10.0
    path = d / f"aoi_{side}.geojson"
    gpd.GeoDataFrame(geometry=[box(LEFT + 1, TOP - size + 1, LEFT + size - 1, TOP - 1)],
                     crs="EPSG:32645").to_crs(4326).to_file(path)
    return str(path)


def _polygon(p, edge: bool) -> dict:
    import base64

    return {"wkb": base64.b64encode(p.wkb).decode(), "area_m2": float(p.area),
            "n_pixels": max(1, round(p.area / 100.0)), "prob_mean": 0.8, "prob_max": 0.9,
            "edge": edge}


def _sweep(world: Path, side: int, tmp: Path):
    """Plan a ``side`` x ``side`` chunk sweep and write each chunk's COGs and done-record.

    Each chunk holds INTERIOR 32-gon polygons (about 400 m2) off its edges and, at row
    ``r`` = 2 + (chunk col mod 12), a 1 px part on its right edge and the matching part
    on the next chunk's left edge: one 200 m2 landslide per pair of neighbours.
    """
    cfg = PredictConfig(model=str(world / "thr"), out=str(tmp / "out"), aoi=_aoi(world, side),
                        source={"kind": "geotiff", "images": [str(world / "s2.tif")]},
                        start="2020-06-01", end="2020-09-30", chunk_size=CHUNK,
                        min_area_m2=150.0, merge_max_px=10_000_000)
    plan, elements = plan_predict(cfg)
    job = plan.jobs[0]
    assert job.n_chunks == len(elements) == side * side
    cols = {}
    for _, key, _, spec in elements:
        grid = Chunk(ChunkKey.parse(key), GridSpec(**spec)).grid
        cols[key] = round((grid.bounds[0] - LEFT) / (CHUNK * 10))
    for _, key, _, _ in elements:
        _write_chunk(plan, key, cols[key], side)
    return plan, cols


def _write_chunk(plan, key: str, col: int, side: int) -> None:
    """Write chunk ``key``'s COGs and done-record (see :func:`_sweep`)."""
    job = plan.jobs[0]
    k = ChunkKey.parse(key)
    grid = Chunk(k, GridSpec(k.epsg, plan.pixel_size, CHUNK, plan.halo)).grid
    x0, _, x1, y1 = grid.bounds
    files = {"prob": f"prob/{key}.tif", "mask": f"mask/{key}.tif"}
    write_cog(job.path(files["prob"]), np.full((CHUNK, CHUNK), 200, np.uint8), grid,
              nodata=255, overviews=False, profile=CogProfile(predictor=2), scales=[1 / 250],
              offsets=[0.0])
    write_cog(job.path(files["mask"]), np.ones((CHUNK, CHUNK), np.uint8), grid, nodata=255,
              overviews=False, profile=CATEGORICAL)
    polys = [_polygon(Point(x0 + 25 + 12 * (i % 10), y1 - 25 - 36 * (i // 10)).buffer(
        11.3, quad_segs=8), False) for i in range(INTERIOR)]
    here = y1 - 10 * (2 + col % 12)  # this chunk's pair row, with its right neighbour
    left = y1 - 10 * (2 + (col - 1) % 12)  # the row of the pair with its left one
    if col < side - 1:
        polys.append(_polygon(box(x1 - 10, here - 10, x1, here), True))
    if col > 0:
        polys.append(_polygon(box(x0, left - 10, x0 + 10, left), True))
    fsio.write_json(job.path("done", f"{key}.json"), {
        "format": "landslides-predict/1", "key": key, "signature": "synthetic",
        "state": "done", "epsg": 32645, "grid": grid.to_dict(),
        "valid_px": CHUNK * CHUNK, "positive_px": CHUNK * CHUNK, "files": files,
        "polygons": polys})


def _load(key: str, folder: str) -> tuple[int, dict]:
    """A chunk's record, read back from its done-record (as a resumed sweep does)."""
    return 0, {**fsio.read_json(f"{folder}/done/{key}.json"), "action": "skipped"}


def _finalize(plan, keys: list[str], failed: list[str], trace: bool = False) -> int:
    """Run Finalize over the chunks; with ``trace``, returns the peak traced memory
    (bytes) of the run, runner included."""
    folder = plan.jobs[0].out
    failures = [(0, failure_record(plan, 0, k, "read", OSError("gone"))) for k in failed]
    if trace:
        tracemalloc.start()
        tracemalloc.reset_peak()
    try:
        with TestPipeline() as p:
            results = (p | "Keys" >> beam.Create([k for k in keys if k not in failed],
                                                 reshuffle=False)
                       | "Load" >> beam.Map(_load, folder=folder))
            dead = p | "Failed" >> beam.Create(failures, reshuffle=False)
            _ = {"result": results, "failed": dead} | Finalize(plan)
        return tracemalloc.get_traced_memory()[1] if trace else 0
    finally:
        if trace:
            tracemalloc.stop()


def _check(plan, cols: dict[str, int], side: int, failed: list[str]) -> dict:
    job = plan.jobs[0]
    run = json.loads(Path(job.path("run.json")).read_text())
    partial = bool(failed)
    assert run["status"] == ("partial" if partial else "ok")
    c = run["counts"]
    done = len(cols) - len(failed)
    assert (c["chunks_total"], c["chunks_skipped"], c["chunks_failed"]) == (
        side * side, done, len(failed))
    # every chunk's interior polygons, plus one landslide per pair of row neighbours
    # (minus those with a failed chunk)
    pairs = side * (side - 1) - sum(2 if 0 < cols[k] < side - 1 else 1 for k in failed)
    inv = gpd.read_parquet(job.path("inventory.partial.parquet" if partial
                                    else "inventory.parquet"))
    assert len(inv) == c["polygons"] == done * INTERIOR + pairs
    assert list(inv["id"]) == list(range(1, len(inv) + 1))
    joined = inv[inv["chunks"] == 2]
    assert len(joined) == pairs and np.allclose(joined["area_m2"], 200.0)
    assert (inv["chunks"] <= 2).all()
    gpkg = gpd.read_file(job.path("inventory.partial.gpkg" if partial else "inventory.gpkg"))
    assert len(gpkg) == len(inv) and gpkg.crs == inv.crs
    # a STAC item per written chunk, listed by the catalog with the mosaic item
    cat = json.loads(Path(job.path("stac", "catalog.json")).read_text())
    items = [link["href"] for link in cat["links"] if link["rel"] == "item"]
    assert len(items) == done + 1
    assert len(list(Path(job.path("stac")).glob("*/*.json"))) == done + 1
    mosaic = json.loads(Path(job.path("stac", "mosaic", "mosaic.json")).read_text())
    assert mosaic["properties"]["landslides:partial"] is partial
    vrt = job.path("mosaic", "prob.partial.vrt" if partial else "prob.vrt")
    with rasterio.open(vrt) as src:
        assert (src.width, src.height) == (side * CHUNK, side * CHUNK)
        assert shapely.box(*src.bounds).area == pytest.approx((side * CHUNK * 10.0) ** 2)
        px = src.read(1)
        assert src.scales[0] == pytest.approx(1 / 250) and src.nodata == 255
    # a hole where the failed chunk is, the chunks' value everywhere else
    assert (px == 255).sum() == len(failed) * CHUNK * CHUNK
    assert (px[px != 255] == 200).all()
    return run


@pytest.fixture
def warm(world, tmp_path_factory, monkeypatch):
    """One small finalize first, so that no measured run pays for first imports; and
    inventory batches of 2,000 polygons, fewer than a sweep here holds (as in a real
    sweep, whose inventory is many batches)."""
    from pipelines.predict import inventory

    monkeypatch.setattr(inventory, "BATCH_ROWS", 2000)
    plan, cols = _sweep(world, 2, tmp_path_factory.mktemp("warm"))
    _finalize(plan, sorted(cols), [])
    return world


@pytest.mark.slow
def test_finalize_memory_is_flat_from_256_to_1024_chunks(warm, tmp_path):
    """The same products over 4x the chunks and polygons, in about the same memory.

    Measured here: 20-25 MiB for either size; the finalize this replaced (every chunk's
    record on one key) peaked at 51 MiB for 256 chunks and 163 MiB for 1,024.
    """
    peaks = []
    for side in (16, 32):
        plan, cols = _sweep(warm, side, tmp_path / f"s{side}")
        peaks.append(_finalize(plan, sorted(cols), [], trace=True))
        _check(plan, cols, side, [])
    small, large = peaks
    ratio = large / small
    print(f"finalize peak traced memory: 256 chunks {small / 2**20:.1f} MiB, "
          f"1024 chunks {large / 2**20:.1f} MiB, ratio {ratio:.2f}")
    # 4x the chunks and polygons: the peak grows far less than 4x; what grows is the
    # chunk summaries, the polygons on chunk edges and the runner's buffers of them
    assert ratio < 2.0, (small, large)
    assert (large - small) / (1024 - 256) < 16 * 1024  # bytes per extra chunk


def test_finalize_of_144_chunks_is_exact_also_when_partial(warm, tmp_path):
    """The fast variant: the products at 144 chunks, partial then complete. (Its memory
    is not compared: at this size the peak is the runner's and GDAL's fixed costs and
    the garbage collector's timing, not the chunks.)"""
    plan, cols = _sweep(warm, 12, tmp_path)
    keys = sorted(cols)
    failed = [keys[len(keys) // 2 + 6]]  # a chunk inside a row
    _finalize(plan, keys, failed)
    _check(plan, cols, 12, failed)
    # the failed chunk's done-record and COGs are not this run's: gone; the rerun that
    # completes the sweep writes them anew
    job = plan.jobs[0]
    assert not any(Path(job.path(name)).exists() for name in (
        f"done/{failed[0]}.json", f"prob/{failed[0]}.tif", f"mask/{failed[0]}.tif"))
    _write_chunk(plan, failed[0], cols[failed[0]], 12)
    _finalize(plan, keys, [])
    _check(plan, cols, 12, [])

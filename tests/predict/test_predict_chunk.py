"""The predict sweep's per-chunk steps called directly, without Beam.

A 96 x 96 px (10 m, UTM) two-band GeoTIFF with bright-B8 "landslides" and a nodata
corner, an AOI inset from its edges (so border chunks are partly outside it) and a
handcrafted 1x1 model ``p = sigmoid(40 * (B8 - 0.3))``: the chunk steps' outputs are
known pixel by pixel.
"""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from pipelines.errors import DataNotFoundError, SourceError, TransientSourceError
from pipelines.geo.cog import band_scaling
from pipelines.geo.grid import Chunk, ChunkKey, GridSpec, PixelGrid
from pipelines.predict import ChunkTiles, PredictConfig, plan_predict
from pipelines.predict.chunk import (
    blend_chunk,
    chunk_polygons,
    drop_small,
    failure_record,
    finish_chunk,
    prepare_chunk,
)
from pipelines.predict.finalize import finalize_job
from pipelines.predict.plan import chunk_signature

LEFT, TOP, N = 320000.0, 3120000.0, 96  # aligned with 32-px chunks of 10 m
GRID = PixelGrid("EPSG:32645", (10.0, 0.0, LEFT, 0.0, -10.0, TOP), N, N)
BANDS = ("B4", "B8")
INSET = 103.0  # the AOI's edges, 10.3 px inside the raster's: it holds pixels 10..85
HOLE = (slice(64, 96), slice(0, 32))  # nodata: the whole bottom-left chunk


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    import keras

    from model.artifact import save_artifact

    d = tmp_path_factory.mktemp("predict_chunk")
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:N, 0:N]
    b4 = 900 + rng.integers(0, 300, (N, N))
    b8 = 1500 + (xx * 7 + yy * 5) % 900  # below 0.3 reflectance everywhere: p < 0.5
    b8[20:30, 26:40] = 5000  # across the col-32 chunk edge
    b8[50, 50] = 5000  # one pixel (100 m2) inside a chunk: below the 200 m2 minimum
    b8[40:48, 70:78] = 2999  # just below the threshold: never in the mask
    dn = np.stack([b4, b8]).astype("uint16")
    dn[:, HOLE[0], HOLE[1]] = 0
    with rasterio.open(d / "s2.tif", "w", driver="GTiff", width=N, height=N, count=2,
                       dtype="uint16", crs=GRID.crs, transform=GRID.affine, nodata=0) as dst:
        dst.write(dn)
        for i, b in enumerate(BANDS, 1):
            dst.set_band_description(i, b)
    aoi = box(LEFT + INSET, TOP - N * 10 + INSET, LEFT + N * 10 - INSET, TOP - INSET)
    gpd.GeoDataFrame(geometry=[aoi], crs=GRID.crs).to_crs("EPSG:4326").to_file(
        d / "aoi.geojson")
    inp = keras.Input((None, None, len(BANDS)))
    score = keras.layers.Conv2D(1, 1, activation="sigmoid", name="score")(inp)
    model = keras.Model(inp, score)
    kernel = np.zeros((1, 1, len(BANDS), 1), np.float32)
    kernel[0, 0, 1, 0] = 40.0
    model.get_layer("score").set_weights([kernel, np.array([-40.0 * 0.3], np.float32)])
    save_artifact(model, str(d / "thr"), BANDS, patch_size=32, size_multiple=1,
                  threshold=0.5, saved_model=False, training={"handcrafted": "sigmoid"})
    return {"dir": d, "dn": dn, "model": str(d / "thr"), "aoi": str(d / "aoi.geojson")}


def _config(scene, out, **kw) -> PredictConfig:
    args = dict(model=scene["model"], out=str(out), aoi=scene["aoi"],
                source={"kind": "geotiff", "images": [str(scene["dir"] / "s2.tif")]},
                start="2020-06-01", end="2020-09-30", chunk_size=32, retries=2,
                retry_delay_s=0.001)
    args.update(kw)
    return PredictConfig(**args)


@pytest.fixture
def planned(scene, tmp_path):
    """The plan and its chunks by key, with the plan's sources opened."""
    plan, elements = plan_predict(_config(scene, tmp_path / "out"))
    for source in plan.sources:
        source.open()
    yield plan, {e[1]: e for e in elements}
    for source in plan.sources:
        source.close()


def _probs(windows: np.ndarray) -> np.ndarray:
    """The handcrafted model, in numpy."""
    return (1.0 / (1.0 + np.exp(-40.0 * (windows[..., 1].astype(np.float64) - 0.3)))
            ).astype(np.float32)


def _offset(grid: PixelGrid) -> tuple[int, int]:
    return round((TOP - grid.affine.f) / 10), round((grid.affine.c - LEFT) / 10)


def _read(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(1), src.tags()


# ----------------------------------------------------------------------------- prepare
def _key_at(elements: dict, row: int, col: int) -> str:
    """The key of the chunk whose top-left pixel is the scene's ``(row, col)``."""
    return next(k for k, e in elements.items() if _offset(_grid(k, e)) == (row, col))


def _grid(key: str, element: tuple) -> PixelGrid:
    return Chunk(ChunkKey.parse(key), GridSpec(**element[3])).grid


def _in_region() -> np.ndarray:
    region = np.zeros((N, N), bool)
    region[10:86, 10:86] = True
    return region


def test_prepare_cuts_the_lattice_windows_of_a_chunk(scene, planned):
    plan, elements = planned
    assert len(elements) == 9 and plan.halo == 16 and plan.lattice.stride == 16
    key = _key_at(elements, 32, 0)  # the middle-left chunk
    tiles = prepare_chunk(plan, plan.sources, *elements[key])
    assert isinstance(tiles, ChunkTiles)
    assert (tiles.job, tiles.key) == (0, key)
    assert tiles.signature == chunk_signature(plan.jobs[0], key, elements[key][2])
    windows = tiles.windows()
    assert windows.dtype == np.float32 and tiles.size == 32
    assert windows.shape == (len(tiles.origins), 32, 32, 2)
    assert tiles.windows_nbytes == windows.nbytes
    # the image is carried once: the halo'd read grid, not the (overlapping) windows
    assert tiles.image is not None and tiles.image.shape == (32 + 2 * plan.halo,) * 2 + (2,)
    assert tiles.image.nbytes < windows.nbytes
    # the AOI starts 10.3 px inside the raster: the chunk's first 10 columns lie outside
    assert tiles.valid.shape == (32, 32)
    assert not tiles.valid[:, :10].any() and tiles.valid[:, 10:].all()
    # a window's pixels are the image's in reflectance (DN / 10000), nodata filled with 0
    dn_valid = (scene["dn"] != 0).any(axis=0)
    b8 = np.where(dn_valid, scene["dn"][1] * 1e-4, 0.0)
    checked = 0
    for (wr, wc), w in zip(tiles.origins, windows):
        row, col = 32 + wr - plan.halo, 0 + wc - plan.halo  # the window in the scene
        if 0 <= row <= N - 32 and 0 <= col <= N - 32:
            np.testing.assert_allclose(w[..., 1], b8[row:row + 32, col:col + 32], rtol=1e-6)
            checked += 1
    assert checked >= 2


def test_a_chunk_without_valid_imagery_is_recorded_empty(scene, planned):
    plan, elements = planned
    job = plan.jobs[0]
    key = _key_at(elements, 64, 0)  # wholly inside the nodata corner
    rec = prepare_chunk(plan, plan.sources, *elements[key])
    assert isinstance(rec, dict)
    assert (rec["state"], rec["action"], rec["valid_px"], rec["files"]) == (
        "empty", "computed", 0, {})
    with open(job.path("done", f"{key}.json")) as f:
        on_disk = json.load(f)
    assert on_disk["signature"] == rec["signature"] and on_disk["state"] == "empty"
    # a rerun skips it: its done-record matches this run's inputs
    again = prepare_chunk(plan, plan.sources, *elements[key])
    assert again["action"] == "skipped" and again["signature"] == rec["signature"]


class _Failing:
    """A source whose reads fail: resources are passed in, so a test can stand one in."""

    def __init__(self, exc: Exception) -> None:
        self.exc, self.calls = exc, 0

    def read(self, grid, bands):
        self.calls += 1
        raise self.exc


def test_read_errors_are_retried_only_when_transient(planned):
    plan, elements = planned
    element = next(iter(elements.values()))
    flaky = _Failing(ConnectionResetError("connection reset"))
    with pytest.raises(OSError, match="connection reset"):
        prepare_chunk(plan, [flaky], *element)
    assert flaky.calls == plan.config.retries + 1 == 3
    # permanent: a missing scene, a corrupt file, a source whose own retries are spent
    for error in (DataNotFoundError("no scene"), SourceError("Cannot read raster x.tif"),
                  TransientSourceError("HTTP 429 seven times", exhausted=True)):
        failing = _Failing(error)
        with pytest.raises(type(error)):
            prepare_chunk(plan, [failing], *element)
        assert failing.calls == 1, error


# ----------------------------------------------------------------------------- finish
def test_finish_writes_the_mask_of_probability_at_threshold_within_the_region(scene,
                                                                              planned):
    plan, elements = planned
    job = plan.jobs[0]
    scene_mask = np.full((N, N), 255, np.uint8)
    for key, element in sorted(elements.items()):
        tiles = prepare_chunk(plan, plan.sources, *element)
        if not isinstance(tiles, ChunkTiles):
            continue
        probs = _probs(tiles.windows())
        grid = _grid(key, element)
        prob, valid, mask = blend_chunk(plan, tiles, probs, grid.shape)
        np.testing.assert_array_equal(valid, tiles.valid)  # every blend is finite
        np.testing.assert_array_equal(mask, valid & (prob >= plan.threshold))
        assert np.isnan(prob[~valid]).all()
        # a 1x1 model gives every window the same value: the blend is the model's value
        r0, c0 = _offset(grid)
        b8 = scene["dn"][1][r0:r0 + 32, c0:c0 + 32] * 1e-4
        expected_p = 1.0 / (1.0 + np.exp(-40.0 * (b8 - 0.3)))
        np.testing.assert_allclose(prob[valid], expected_p[valid], atol=1e-5)

        rec = finish_chunk(plan, tiles, probs)
        assert (rec["key"], rec["state"], rec["action"]) == (key, "done", "computed")
        assert rec["valid_px"] == int(valid.sum()) and rec["positive_px"] == int(mask.sum())
        mask_px, tags = _read(job.path(rec["files"]["mask"]))
        np.testing.assert_array_equal(mask_px, np.where(valid, mask, 255))
        prob_px, ptags = _read(job.path(rec["files"]["prob"]))
        # p * 250 rounded, but never on the other side of the threshold than the mask
        # (p = 0.499 just below it is stored 124, not 125, which reads 0.5)
        rounded = np.where(valid, np.rint(np.clip(prob, 0, 1) * 250), 255)
        np.testing.assert_array_equal(prob_px == 255, ~valid)
        assert np.abs(prob_px[valid] - rounded[valid]).max(initial=0) <= 1
        np.testing.assert_array_equal(prob_px[valid] * (1 / 250) >= plan.threshold,
                                      mask[valid])
        np.testing.assert_array_equal(prob_px[~mask & valid],
                                      np.minimum(rounded[~mask & valid], 124))
        assert (tags["chunk"], tags["signature"]) == (key, tiles.signature)
        # GDAL's band scale turns the stored bytes into the probability
        with rasterio.open(job.path(rec["files"]["prob"])) as src:
            assert src.scales == (pytest.approx(1 / 250),) and src.offsets == (0.0,)
            assert band_scaling(src) == (pytest.approx(1 / 250), 0.0)
            unscaled = src.read(1).astype(np.float64) * src.scales[0] + src.offsets[0]
        # within half a code, or (moved to its side of the threshold) within one
        err = np.abs(unscaled[valid] - prob[valid])
        assert err.max() <= 1 / 250 + 1e-6
        assert err[(prob_px[valid] == rounded[valid])].max() <= 0.5 / 250 + 1e-6
        np.testing.assert_array_equal(unscaled[valid] >= plan.threshold, mask[valid])
        assert float(ptags["scale"]) == pytest.approx(1 / 250)  # kept for older readers
        assert "scale" not in tags  # the mask is not scaled
        with open(job.path("done", f"{key}.json")) as f:
            done = json.load(f)  # written last, naming the files' sizes
        assert done["sizes"] == {k: os.path.getsize(job.path(v))
                                 for k, v in rec["files"].items()}
        assert done["polygons"] == rec["polygons"] and done["signature"] == tiles.signature
        scene_mask[r0:r0 + 32, c0:c0 + 32] = mask_px
    # over the scene: landslide where B8 >= 0.3, on valid imagery inside the AOI only
    dn_valid = (scene["dn"] != 0).any(axis=0)
    observed = dn_valid & _in_region()
    np.testing.assert_array_equal(scene_mask == 255, ~observed)
    np.testing.assert_array_equal(scene_mask == 1, observed & (scene["dn"][1] >= 3000))
    assert (scene_mask[40:48, 70:78] == 0).all()  # just below the threshold


def test_polygons_keep_edge_parts_and_drop_small_interior_ones():
    grid = PixelGrid("EPSG:32645", (10.0, 0.0, LEFT, 0.0, -10.0, TOP), 32, 32)
    mask = np.zeros((32, 32), bool)
    mask[10, 10] = True  # 100 m2 inside: dropped
    mask[0, 20] = True  # 100 m2 on the top edge: kept for its neighbour chunk
    mask[15:20, 15:20] = True  # 2500 m2 inside: kept
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    valid = np.ones_like(mask)
    kept = drop_small(mask, grid, connectivity=4, min_area_m2=200.0)
    assert not kept[10, 10] and kept[0, 20] and kept[15:20, 15:20].all()
    polys = chunk_polygons(grid, mask, prob, valid, connectivity=4, min_area_m2=200.0)
    got = sorted((p["area_m2"], p["n_pixels"], p["edge"]) for p in polys)
    assert got == [(100.0, 1, True), (2500.0, 25, False)]
    assert all(p["prob_mean"] == pytest.approx(0.9) for p in polys)
    assert chunk_polygons(grid, np.zeros_like(mask), prob, valid, 4, 200.0) == []


# ----------------------------------------------------------------------------- failures
def test_a_failure_record_names_the_chunk_the_stage_and_the_error(planned):
    plan, _ = planned
    label = plan.jobs[0].label
    rec = failure_record(plan, 0, "32645_10_20", "read", OSError("disk gone"))
    assert rec == {"aoi": label, "chunk": "32645_10_20", "stage": "read",
                   "error": "OSError: disk gone", "reason": "OSError",
                   "retries": plan.config.retries, "class": "permanent"}
    rec = failure_record(plan, 0, "k", "write", ValueError("bad"))
    assert rec == {"aoi": label, "chunk": "k", "stage": "write", "error": "ValueError: bad",
                   "reason": "ValueError", "class": "permanent"}
    rec = failure_record(plan, 0, "k", "read", TimeoutError("slow server"))
    assert rec["class"] == "transient"
    rec = failure_record(plan, 0, "k", "inference", "ArtifactError: wrong shape",
                         reason="ArtifactError")
    assert (rec["stage"], rec["error"], rec["reason"]) == (
        "inference", "ArtifactError: wrong shape", "ArtifactError")
    assert failure_record(plan, 0, "k", "inference", "Boom: x")["reason"] == "Boom"


# ----------------------------------------------------------------------------- finalize
def _sweep_all(plan, elements) -> list[dict]:
    """Every chunk prepared and finished in order, as the pipeline's steps would."""
    results = []
    for element in elements.values():
        tiles = prepare_chunk(plan, plan.sources, *element)
        results.append(tiles if isinstance(tiles, dict)
                       else finish_chunk(plan, tiles, _probs(tiles.windows())))
    return results


def test_the_chunk_steps_and_finalize_make_a_whole_sweep_without_beam(scene, planned):
    plan, elements = planned
    results = _sweep_all(plan, elements)
    failures = [failure_record(plan, 0, "32645_0_0", "read", OSError("x"))]
    run = finalize_job(plan, 0, results, failures)
    c = run["counts"]
    assert run["status"] == "partial" and run["failures"]["reasons"] == {"OSError": 1}
    assert (c["chunks_total"], c["chunks_computed"], c["chunks_empty"]) == (9, 9, 1)
    assert c["landslide_px"] == sum(r["positive_px"] for r in results) > 0
    # a chunk failed: the products say they are partial
    assert not os.path.exists(plan.jobs[0].path("inventory.gpkg"))
    gdf = gpd.read_file(plan.jobs[0].path("inventory.partial.gpkg"))
    # the bright block across the chunk edge is one polygon; the 1-px one is dropped
    assert len(gdf) == c["polygons"] == 1
    assert gdf.loc[0, "chunks"] == 2 and gdf.loc[0, "area_m2"] == pytest.approx(10 * 14 * 100)
    with open(plan.jobs[0].path("run.json")) as f:
        assert json.load(f)["counts"] == c


def test_finalize_flags_chunks_the_runner_lost(scene, planned, tmp_path):
    """A runner that drops an element (Beam's Dask runner did) must not leave a sweep that
    looks complete: a planned chunk that came back neither written nor failed makes the
    sweep partial and is recorded."""
    plan, elements = planned
    results = _sweep_all(plan, elements)
    run = finalize_job(plan, 0, results[1:], [])  # one chunk never came back
    assert run["status"] == "partial"
    assert run["counts"]["chunks_failed"] == 1 and run["failures"]["reasons"] == {
        "LostChunks": 1}
    assert os.path.exists(plan.jobs[0].path("inventory.partial.gpkg"))
    full = finalize_job(plan, 0, results, [])  # all accounted for: complete again
    assert full["status"] == "ok" and full["counts"]["chunks_failed"] == 0


# ----------------------------------------------------------------------------- explain
@pytest.fixture(scope="module")
def explainable(scene):
    """The handcrafted model with an inner, encoder-named feature map for Grad-CAM."""
    import keras

    from model.artifact import save_artifact

    inp = keras.Input((None, None, len(BANDS)))
    feat = keras.layers.Conv2D(2, 1, use_bias=False, name="enc0_relu2")(inp)
    score = keras.layers.Conv2D(1, 1, activation="sigmoid", name="score")(feat)
    model = keras.Model(inp, score)
    model.get_layer("enc0_relu2").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    kernel = np.zeros((1, 1, 2, 1), np.float32)
    kernel[0, 0, 1, 0] = 40.0
    model.get_layer("score").set_weights([kernel, np.array([-40.0 * 0.3], np.float32)])
    path = str(scene["dir"] / "explainable")
    save_artifact(model, path, BANDS, patch_size=32, size_multiple=1, threshold=0.5,
                  saved_model=False, training={"handcrafted": "sigmoid, inner identity"})
    return path


def test_explain_writes_a_gradcam_cog_beside_each_probability_cog(scene, explainable,
                                                                  tmp_path):
    """Through the RunInference handler and the chunk steps: each window's Grad-CAM of its
    predicted pixels, blended like the probabilities, lights the bright-B8 block only."""
    from pipelines.transforms.inference import KerasModelHandler

    plan, elements = plan_predict(_config(scene, tmp_path / "out", model=explainable,
                                          explain=True))
    assert plan.meta["explain_layer"] == "enc0_relu2"
    plain, _ = plan_predict(_config(scene, tmp_path / "plain", model=explainable))
    assert plan.jobs[0].base_signature != plain.jobs[0].base_signature  # redone if toggled
    handler = KerasModelHandler(explainable, batch_size=8, explain_layer="enc0_relu2",
                                explain_threshold=plan.threshold)
    model = handler.load_model()
    heat = np.full((N, N), np.nan, np.float32)
    for source in plan.sources:
        source.open()
    try:
        for key, element in sorted({e[1]: e for e in elements}.items()):
            tiles = prepare_chunk(plan, plan.sources, *element)
            if not isinstance(tiles, ChunkTiles):
                continue
            out = handler.run_inference([tiles], model)[0].inference
            windows = tiles.windows()
            assert out.shape == (*windows.shape[:3], 2)
            np.testing.assert_allclose(out[..., 0], _probs(windows), atol=1e-5)
            rec = finish_chunk(plan, tiles, out)
            cam, tags = _read(plan.jobs[0].path(rec["files"]["explain"]))
            prob, _ = _read(plan.jobs[0].path(rec["files"]["prob"]))
            assert tags["layer"] == "enc0_relu2" and tags["chunk"] == key
            np.testing.assert_array_equal(np.isnan(cam), prob == 255)  # same nodata
            r0, c0 = _offset(_grid(key, element))
            heat[r0:r0 + 32, c0:c0 + 32] = cam
    finally:
        for source in plan.sources:
            source.close()
    assert np.nanmin(heat) >= 0
    block = heat[20:30, 26:40]  # the bright block, the only predicted landslide
    assert np.nanmin(block) > 5 * np.nanmax(heat[60:86, 40:86])
    finalize_job(plan, 0, _sweep_records(plan), [])
    assert os.path.exists(plan.jobs[0].path("mosaic", "explain.vrt"))


def _sweep_records(plan) -> list[dict]:
    folder = plan.jobs[0].path("done")
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            out.append({**json.load(f), "action": "computed"})
    return out


def test_explain_needs_a_model_with_an_inner_feature_map(scene, tmp_path):
    from pipelines.errors import InputError

    with pytest.raises(InputError, match="no inner layer"):
        plan_predict(_config(scene, tmp_path / "o", explain=True))
    with pytest.raises(InputError, match=r"no layer 'nope'"):
        plan_predict(_config(scene, tmp_path / "o", explain=True, explain_layer="nope"))
    with pytest.raises(InputError, match="pass --explain too"):
        _config(scene, tmp_path / "o", explain_layer="enc0_relu2")

"""Predict end to end on a small UTM scene: seams, nodata, polygons across chunk edges,
COGs, mosaics, STAC, resume, dead letters, multi-process, gs:// and bad inputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import apache_beam as beam
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from pyproj import Transformer
from shapely.geometry import box

from pipelines import cli, fsio
from pipelines.errors import (
    BandError,
    ConfigError,
    DataNotFoundError,
    InputError,
    NoDataError,
    OutputError,
    RegionError,
    SourceError,
)
from pipelines.geo.aoi_inputs import parse_point, read_events
from pipelines.geo.blend import window_weight
from pipelines.geo.grid import PixelGrid
from pipelines.geo.polygons import merge_across_edges
from pipelines.predict import PredictConfig, run_predict
from pipelines.transforms.inference import KerasModelHandler

LEFT, TOP, N = 320000.0, 3120000.0, 256  # aligned with 64-px chunks of 10 m
GRID = PixelGrid("EPSG:32645", (10.0, 0.0, LEFT, 0.0, -10.0, TOP), N, N)
BANDS = ("B4", "B8")
START, END = "2020-06-01", "2020-09-30"
HOLE = (slice(200, 211), slice(20, 61))  # nodata rows/cols
THRESH_DN = 3000  # the handcrafted model's B8 threshold (0.3 reflectance)


def _write_tif(path, dn, nodata=0):
    with rasterio.open(path, "w", driver="GTiff", width=N, height=N, count=2, dtype="uint16",
                       crs=GRID.crs, transform=GRID.affine, nodata=nodata, tiled=True,
                       blockxsize=128, blockysize=128, compress="deflate") as dst:
        dst.write(dn)
        for i, b in enumerate(BANDS, 1):
            dst.set_band_description(i, b)


def _save_threshold_model(out: Path, bands=BANDS, k=40.0, t=0.3, on="B8"):
    """A handcrafted artifact: p = sigmoid(k * (band - t)) per pixel: predictions are known."""
    import keras

    from model.artifact import save_artifact

    inp = keras.Input((None, None, len(bands)))
    out_t = keras.layers.Conv2D(1, 1, activation="sigmoid", name="score")(inp)
    m = keras.Model(inp, out_t)
    kernel = np.zeros((1, 1, len(bands), 1), np.float32)
    kernel[0, 0, list(bands).index(on) if on in bands else 0, 0] = k
    m.get_layer("score").set_weights([kernel, np.array([-k * t], np.float32)])
    save_artifact(m, str(out), bands, patch_size=32, size_multiple=1, threshold=0.5,
                  saved_model=False, training={"handcrafted": f"sigmoid({k}*({on}-{t}))"})
    return str(out)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Two-band S2 DNs with landslide-like B8 blobs, a nodata hole, an AOI and two models."""
    import keras

    from model.artifact import save_artifact
    from model.unet import build_unet

    d = tmp_path_factory.mktemp("predict_scene")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:N, 0:N]
    b4 = 900 + (xx * 3 + yy * 2) % 600 + rng.integers(0, 80, (N, N))
    b8 = 1500 + (xx * 5 + yy * 3) % 800 + rng.integers(0, 80, (N, N))
    blob_a = ((yy - 128) / 20.0) ** 2 + ((xx - 64) / 30.0) ** 2 <= 1.0  # spans 4 chunks
    b8[blob_a] = 5000
    b8[40, 127:129] = 5000  # 2 px across the col-128 chunk edge: 100 + 100 m2
    b8[40, 100] = 5000  # 1 px: below the 200 m2 minimum
    blob_d = np.zeros((N, N), bool)
    blob_d[190:220, 50:70] = True  # partly inside the nodata hole
    b8[blob_d] = 5000
    dn = np.stack([b4, b8]).astype("uint16")
    dn[:, HOLE[0], HOLE[1]] = 0
    _write_tif(d / "s2.tif", dn)
    aoi = gpd.GeoDataFrame(geometry=[box(LEFT + 1, TOP - N * 10 + 1, LEFT + N * 10 - 1, TOP - 1)],
                           crs=GRID.crs).to_crs("EPSG:4326")
    aoi.to_file(d / "aoi.geojson")
    keras.utils.set_random_seed(3)
    mean, std = [0.12, 0.2], [0.03, 0.05]
    unet = build_unet(BANDS, base_filters=4, depth=3, mean=mean, std=std)
    save_artifact(unet, str(d / "unet"), BANDS, patch_size=32, mean=mean, std=std,
                  size_multiple=4, saved_model=False)
    thr = _save_threshold_model(d / "thr")
    valid = (dn != 0).any(axis=0)
    expected = (b8 >= THRESH_DN) & valid
    return {"dir": d, "dn": dn, "valid": valid, "expected": expected, "unet": str(d / "unet"),
            "thr": thr, "aoi": str(d / "aoi.geojson"), "blob_a": blob_a, "blob_d": blob_d}


def _config(scene, out, **kw) -> PredictConfig:
    args = dict(model=scene["thr"], source={"kind": "geotiff",
                                            "images": [str(scene["dir"] / "s2.tif")]},
                out=str(out), aoi=scene["aoi"], start=START, end=END, chunk_size=64,
                retries=1, retry_delay_s=0.01)
    args.update(kw)
    return PredictConfig(**args)


def _read(path) -> np.ndarray:
    with fsio.local_copy(str(path)) as local, rasterio.open(local) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def swept(scene, tmp_path_factory):
    """The handcrafted model swept in 16 chunks of 64 px (uint8 probabilities)."""
    out = tmp_path_factory.mktemp("swept")
    runs = run_predict(_config(scene, out))
    return out, runs[0]


# ----------------------------------------------------------------------------- seams
def test_sweep_in_chunks_equals_whole_raster_prediction(scene, tmp_path):
    """A U-Net swept in 64-px chunks equals one whole-raster pass with the same windows."""
    from model.artifact import load_artifact
    from pipelines.sources.geotiff import GeoTIFFSource

    run_predict(_config(scene, tmp_path, model=scene["unet"], prob_dtype="float32"))
    got = _read(tmp_path / "mosaic" / "prob.vrt")
    assert got.shape == (N, N)
    # reference: read once with a window of context, run every lattice window, blend
    art = load_artifact(scene["unet"])
    W, s = 32, 16
    big = GRID.buffered(W)
    img = GeoTIFFSource(str(scene["dir"] / "s2.tif")).read(big, BANDS)
    # invalid pixels filled as export fills them for training (the one nodata policy)
    x = np.where(img.valid[..., None], np.nan_to_num(np.moveaxis(img.data, 0, -1)), 0.0)
    starts = range(-s, N, s)  # every window touching the scene (its origin is on the lattice)
    wins = [(r, c) for r in starts for c in starts]
    probs = art.predict(np.stack([x[W + r:W + r + W, W + c:W + c + W] for r, c in wins]))
    weight = window_weight(W).astype(np.float64)
    acc = np.zeros((N + 2 * W, N + 2 * W))
    wsum = np.zeros_like(acc)
    for (r, c), p in zip(wins, probs):
        acc[W + r:W + r + W, W + c:W + c + W] += weight * p
        wsum[W + r:W + r + W, W + c:W + c + W] += weight
    ref = acc[W:W + N, W:W + N] / wsum[W:W + N, W:W + N]
    valid = scene["valid"]
    assert np.isnan(got[~valid]).all()
    assert np.isfinite(got[valid]).all()
    diff = np.abs(got[valid] - ref[valid])
    assert diff.max() < 1e-3, diff.max()
    assert got[valid].std() > 0.01  # a real, varying prediction, not a constant
    # chunk COGs: valid COGs whose pixels are exactly the mosaic's
    from rio_cogeo.cogeo import cog_validate

    for tif in sorted((tmp_path / "prob").glob("*.tif"))[:3]:
        ok, errors, _ = cog_validate(str(tif))
        assert ok, errors
        with rasterio.open(tif) as src:
            r0 = round((TOP - src.transform.f) / 10)
            c0 = round((src.transform.c - LEFT) / 10)
            np.testing.assert_array_equal(src.read(1), got[r0:r0 + 64, c0:c0 + 64])
            assert src.tags()["model_id"] == art.model_id


# ----------------------------------------------------------------------------- outputs
def test_masks_probabilities_and_nodata(scene, swept):
    out, run = swept
    mask = _read(out / "mosaic" / "mask.tif")
    prob = _read(out / "mosaic" / "prob.tif")
    valid = scene["valid"]
    assert (mask[~valid] == 255).all() and (prob[~valid] == 255).all()
    assert set(np.unique(mask[valid])) <= {0, 1}
    np.testing.assert_array_equal(mask[valid] == 1, scene["expected"][valid])
    p = 1.0 / (1.0 + np.exp(-40.0 * (scene["dn"][1] * 1e-4 - 0.3)))  # the known model
    assert np.abs(prob[valid].astype(int) - np.rint(p[valid] * 250)).max() <= 1
    assert (prob[scene["expected"]] == 250).all()  # sigmoid(8) = 0.9997
    np.testing.assert_array_equal(_read(out / "mosaic" / "mask.vrt"), mask)
    assert run["status"] == "ok"
    c = run["counts"]
    assert c["chunks_total"] == c["chunks_computed"] == 16 and c["chunks_failed"] == 0
    assert c["valid_px"] == int(valid.sum())
    assert c["landslide_px"] == int(scene["expected"].sum())
    with rasterio.open(out / "mosaic" / "prob.vrt") as src:
        assert src.scales[0] == pytest.approx(1 / 250) and src.nodata == 255


def test_landslides_crossing_chunk_edges_are_one_polygon(scene, swept):
    out, run = swept
    gdf = gpd.read_file(out / "inventory.gpkg")
    parquet = gpd.read_parquet(out / "inventory.parquet")
    assert len(gdf) == len(parquet) == run["counts"]["polygons"] == 3
    assert gdf.crs.to_epsg() == 32645
    assert set(gdf.columns) >= {"area_m2", "prob_mean", "prob_max", "date", "model_id",
                                "n_pixels", "chunks"}
    assert (gdf["date"] == f"{START}/{END}").all()
    assert (gdf["model_id"] == run["model"]["model_id"]).all()
    by_area = gdf.sort_values("area_m2").reset_index(drop=True)
    # the 2-px landslide split by a chunk edge: two 100 m2 parts joined, then kept
    assert by_area.loc[0, "area_m2"] == pytest.approx(200.0)
    assert by_area.loc[0, "chunks"] == 2
    a = gdf.loc[gdf["chunks"].idxmax()]
    assert a["chunks"] == 4 and a.geometry.geom_type == "Polygon"
    assert a["area_m2"] == pytest.approx(scene["blob_a"].sum() * 100.0)
    assert a["prob_mean"] > 0.99 and a["prob_max"] <= 1.0
    # nothing inside the nodata hole; the blob around it keeps only its valid pixels
    hole = box(LEFT + 20 * 10, TOP - 211 * 10, LEFT + 61 * 10, TOP - 200 * 10)
    assert not any(g.intersection(hole).area > 1e-6 for g in gdf.geometry)
    d_valid = int((scene["blob_d"] & scene["valid"]).sum())
    assert any(abs(v - d_valid * 100.0) < 1e-6 for v in gdf["area_m2"])


def test_cogs_mosaics_and_stac_catalog(scene, swept):
    import pystac
    from rio_cogeo.cogeo import cog_validate

    out, _run = swept
    for tif in [out / "mosaic" / "prob.tif", out / "mosaic" / "mask.tif",
                *sorted((out / "mask").glob("*.tif"))[:2]]:
        ok, errors, _ = cog_validate(str(tif))
        assert ok, (tif, errors)
    with rasterio.open(out / "mosaic" / "prob.vrt") as vrt:
        assert vrt.crs.to_epsg() == 32645 and vrt.transform == GRID.affine
    cat = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    items = list(cat.get_items(recursive=True))
    assert len(items) == 16 + 1  # one per chunk with data, plus the mosaic/inventory item
    for item in items:
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).exists(), asset.href
            assert not Path(asset.href).is_absolute()
    chunk_item = next(i for i in items if i.id != "mosaic")
    assert chunk_item.properties["proj:code"] == "EPSG:32645"
    assert chunk_item.properties["start_datetime"].startswith(START)
    mosaic = next(i for i in items if i.id == "mosaic")
    assert {"inventory_gpkg", "prob_vrt", "mask_cog"} <= set(mosaic.assets)


def test_every_stac_item_and_the_catalog_validate(swept):
    """Structurally, against the STAC 1.1 item/catalog and the projection v2.0 and raster
    v1.1 extensions (see tests/stac_checks.py: the schemas are not usable offline)."""
    from tests.stac_checks import PROJ_V2, RASTER_V11, catalog_problems, item_problems

    out, _run = swept
    cat = json.loads((out / "stac" / "catalog.json").read_text())
    assert catalog_problems(cat) == []
    hrefs = [link["href"] for link in cat["links"] if link["rel"] == "item"]
    assert len(hrefs) == 17
    for href in hrefs:
        doc = json.loads((out / "stac" / href).read_text())
        assert item_problems(doc) == [], (href, item_problems(doc))
        assert {PROJ_V2, RASTER_V11} <= set(doc["stac_extensions"])
        for asset in doc["assets"].values():
            if "raster:bands" not in asset:
                continue
            with rasterio.open((out / "stac" / href).parent / asset["href"]) as src:
                band = asset["raster:bands"][0]  # what the raster says about itself
                assert band["data_type"] == src.dtypes[0] and band["nodata"] == src.nodata
                assert band.get("scale", 1.0) == pytest.approx(src.scales[0])
                assert band.get("offset", 0.0) == src.offsets[0]
                if "proj:shape" in asset:
                    assert asset["proj:shape"] == [src.height, src.width]
                    assert asset["proj:transform"] == list(src.transform)[:6]
        if doc["id"] != "mosaic":
            with rasterio.open((out / "stac" / href).parent / doc["assets"]["mask"][
                    "href"]) as src:
                assert doc["properties"]["proj:bbox"] == list(src.bounds)
                assert doc["properties"]["proj:shape"] == [src.height, src.width]


def _tree(out: Path) -> dict[str, bytes]:
    """Every output file's content, without the run record and inventory containers whose
    bytes carry write times (their content is compared separately)."""
    skip = {"run.json", "predict_config.json", "inventory.gpkg", "inventory.parquet"}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in skip}


def test_resume_after_a_kill_gives_the_same_outputs(scene, swept, tmp_path):
    out, _ = swept
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    keys = sorted(p.stem for p in (out / "done").glob("*.json"))
    for key in keys[:3]:  # killed before anything of these chunks was published
        for sub in ("done", "prob", "mask"):
            (resumed / sub / f"{key}.{'json' if sub == 'done' else 'tif'}").unlink()
    (resumed / "done" / f"{keys[5]}.json").unlink()  # killed after the COGs, before done
    (resumed / "prob" / f"{keys[7]}.tif").write_bytes(b"half")  # done, but a file broken
    for sub in ("mosaic", "stac"):
        shutil.rmtree(resumed / sub)
    (resumed / "inventory.gpkg").unlink()
    runs = run_predict(_config(scene, resumed))
    c = runs[0]["counts"]
    assert (c["chunks_computed"], c["chunks_skipped"]) == (5, 11)
    # keys[7]: its done-record names a file of another size, so it was redone too
    a, b = _tree(out), _tree(resumed)
    assert a.keys() == b.keys()
    diff = [k for k in a if a[k] != b[k]]
    assert diff == [], diff
    ga = gpd.read_file(out / "inventory.gpkg")
    gb = gpd.read_file(resumed / "inventory.gpkg")
    assert ga.drop(columns="geometry").equals(gb.drop(columns="geometry"))
    assert all(x.equals_exact(y, 0) for x, y in zip(ga.geometry, gb.geometry))
    # an unchanged rerun recomputes nothing
    again = run_predict(_config(scene, resumed))[0]["counts"]
    assert (again["chunks_computed"], again["chunks_skipped"]) == (0, 16)


def test_an_input_replaced_at_the_same_path_is_read_again(scene, tmp_path):
    """Issue 17, case 1: resume signatures hold what was read, not only its path."""
    img = tmp_path / "s2.tif"
    shutil.copyfile(scene["dir"] / "s2.tif", img)
    cfg = dict(source={"kind": "geotiff", "images": [str(img)]})
    first = run_predict(_config(scene, tmp_path / "out", **cfg))[0]["counts"]
    assert first["chunks_computed"] == 16 and first["landslide_px"] > 0
    dn = scene["dn"].copy()
    dn[1][dn[1] > 0] = 1600  # the same place, no landslide-bright B8 any more
    os.utime(img, ns=(1, 1))  # even with an old timestamp the size or time differs
    _write_tif(img, dn)
    again = run_predict(_config(scene, tmp_path / "out", **cfg))[0]
    assert (again["counts"]["chunks_computed"], again["counts"]["chunks_skipped"]) == (16, 0)
    assert again["counts"]["landslide_px"] == 0
    assert again["source"]["fingerprints"] != [None]
    fresh = run_predict(_config(scene, tmp_path / "fresh", **cfg))[0]
    a, b = _tree(tmp_path / "out"), _tree(tmp_path / "fresh")
    cogs = [k for k in a if k.endswith(".tif")]
    assert cogs and all(a[k] == b[k] for k in cogs)  # byte for byte as a fresh run
    assert fresh["counts"]["landslide_px"] == 0


def test_a_sweep_of_other_dates_into_the_same_folder_is_refused(scene, tmp_path):
    """Issue 17, case 5: another date range never mixes its chunks with an older sweep's."""
    out = tmp_path / "out"
    run_predict(_config(scene, out))
    before = _tree(out)
    with pytest.raises(ConfigError, match="--overwrite"):
        run_predict(_config(scene, out, start="2017-01-01", end="2017-12-31"))
    assert _tree(out) == before  # nothing touched
    # the same dates resume as before; --overwrite replaces the old sweep entirely
    run_predict(_config(scene, out, start="2017-01-01", end="2017-12-31", overwrite=True))
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["chunks_computed"] == 16 and run["counts"]["chunks_skipped"] == 0
    fresh = tmp_path / "fresh"
    run_predict(_config(scene, fresh, start="2017-01-01", end="2017-12-31"))
    a, b = _tree(out), _tree(fresh)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k.endswith(".tif"))


# ----------------------------------------------------------------------------- failures
def _corrupt_first_tile(path: Path) -> None:
    """Overwrite the first compressed tile's stream header: the file still opens."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)


def _cli_args(scene, out, *extra, images=None):
    return ["predict", "--model", scene["thr"], "--out", str(out), "--source", "geotiff",
            "--images", str(images or scene["dir"] / "s2.tif"), "--start", START, "--end", END,
            "--retries", "1", "--retry-delay", "0.01", *extra]


def test_failed_chunks_are_dead_lettered_and_a_rerun_completes(scene, swept, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    swept_out, _ = swept
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(scene["dir"] / "s2.tif", images / "s2.tif")
    _corrupt_first_tile(images / "s2.tif")
    out = tmp_path / "out"
    args = _cli_args(scene, out, "--aoi", scene["aoi"], "--chunk-size", "64",
                     images=images / "s2.tif")
    assert cli.main(args) == 1
    failed = [json.loads(line) for line in (out / "failed_chunks.jsonl").read_text().splitlines()]
    run = json.loads((out / "run.json").read_text())
    n = run["counts"]["chunks_failed"]
    assert n == len(failed) == 9  # every chunk whose read area meets the broken tile
    assert all(f["stage"] == "read" and f["reason"] == "SourceError" for f in failed)
    assert all(f["class"] == "permanent" for f in failed)  # a corrupt file: no retry
    assert "retrying a chunk read" not in caplog.text
    assert "Cannot read raster" in failed[0]["error"]
    assert f"{n} chunk(s) failed" in caplog.text and "SourceError" in caplog.text
    assert run["status"] == "partial" and run["counts"]["chunks_computed"] == 16 - n
    for f in failed:  # failed chunks leave no trace that a rerun could mistake for done
        assert not (out / "done" / f"{f['chunk']}.json").exists()
        assert not (out / "prob" / f"{f['chunk']}.tif").exists()
    # the rest is written and mosaicked: the VRT lists only the chunks that succeeded
    assert len(list((out / "prob").glob("*.tif"))) == 16 - n
    # ... under names that say it is partial: nothing looks like a complete map
    assert not (out / "inventory.gpkg").exists() and not (out / "mosaic" / "mask.vrt").exists()
    assert (out / "inventory.partial.gpkg").exists()
    assert (out / "mosaic" / "mask.partial.vrt").exists()
    import pystac
    from shapely.geometry import shape

    cat = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    mosaic_item = next(i for i in cat.get_items(recursive=True) if i.id == "mosaic")
    assert mosaic_item.properties["landslides:partial"] is True
    aoi = gpd.read_file(scene["aoi"]).to_crs(4326).union_all()
    assert shape(mosaic_item.geometry).area < 0.95 * aoi.area  # the computed chunks only
    # a rerun with the input unchanged retries only the failed chunks
    assert cli.main(args) == 1
    run = json.loads((out / "run.json").read_text())
    assert (run["counts"]["chunks_computed"], run["counts"]["chunks_skipped"]) == (0, 16 - n)
    # repair the input and run the same command again: the file changed, so every chunk
    # that read it is done again (the signature holds the file's fingerprint)
    shutil.copy(scene["dir"] / "s2.tif", images / "s2.tif")
    assert cli.main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["counts"]["chunks_computed"], run["counts"]["chunks_skipped"]) == (16, 0)
    assert not (out / "failed_chunks.jsonl").exists()
    assert not list(out.rglob("*.partial.*"))  # the complete run replaced them
    for name in ("mask.tif", "prob.tif"):
        np.testing.assert_array_equal(_read(out / "mosaic" / name),
                                      _read(swept_out / "mosaic" / name))
    a, b = gpd.read_file(swept_out / "inventory.gpkg"), gpd.read_file(out / "inventory.gpkg")
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))


def test_unwritable_outputs_fail_cleanly(scene, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="file.txt"):
        run_predict(_config(scene, blocker / "out"))
    # a folder that breaks half way (a full disk, a lost mount): chunks are dead-lettered,
    # nothing half-written is published and nothing written before is touched
    out = tmp_path / "out"
    out.mkdir()
    (out / "mask").write_text("the mask folder cannot be created")
    run = run_predict(_config(scene, out, chunk_size=128))[0]
    assert run["counts"]["chunks_failed"] == 4 and run["status"] == "partial"
    failed = [json.loads(x) for x in (out / "failed_chunks.jsonl").read_text().splitlines()]
    assert {f["reason"] for f in failed} == {"OutputError"} and failed[0]["stage"] == "write"
    assert not list(out.glob("done/*.json"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert (out / "mask").read_text() == "the mask folder cannot be created"


def test_bad_inputs_are_refused_before_launch(scene, tmp_path):
    art = _save_threshold_model(tmp_path / "b11", bands=("B4", "B11"))
    with pytest.raises(BandError, match="B11") as err:
        run_predict(_config(scene, tmp_path / "o1", model=art))
    assert "model lsm-" in str(err.value)
    assert cli.main(_cli_args(scene, tmp_path / "o1", "--aoi", scene["aoi"], "--model",
                              art)) == 2
    with pytest.raises(RegionError, match="outside the data"):
        run_predict(_config(scene, tmp_path / "o2", aoi="10.0,45.0,10.01,45.01"))
    with pytest.raises(ConfigError, match="end must be after the start"):
        _config(scene, tmp_path / "o3", start="2020-06-01", end="2020-05-01")
    with pytest.raises(DataNotFoundError, match="2020"):
        run_predict(_config(scene, tmp_path / "o4", source={
            "kind": "geotiff", "images": [str(scene["dir"] / "s2_{year}.tif")]}))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF signature, then nothing
    with pytest.raises(SourceError, match="broken.tif"):
        run_predict(_config(scene, tmp_path / "o8", source={
            "kind": "geotiff", "images": [str(scene["dir"] / "s2.tif"), str(broken)]}))
    bad = tmp_path / "bad_model"
    shutil.copytree(scene["thr"], bad)
    (bad / "model.keras").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="Cannot load the Keras model"):
        run_predict(_config(scene, tmp_path / "o5", model=str(bad)))
    with pytest.raises(ConfigError, match="exactly one of"):
        run_predict(_config(scene, tmp_path / "o6", point="29.0,85.0"))
    with pytest.raises(ConfigError, match="not a multiple of 4"):
        run_predict(_config(scene, tmp_path / "o7", model=scene["unet"], window=30))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 9))


def test_a_window_without_imagery_is_a_clear_error(scene, tmp_path):
    empty = tmp_path / "empty.tif"
    _write_tif(empty, np.zeros((2, N, N), np.uint16))
    cfg = _config(scene, tmp_path / "out", source={"kind": "geotiff", "images": [str(empty)]},
                  chunk_size=128)
    with pytest.raises(NoDataError, match="No valid imagery"):
        run_predict(cfg)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "no_data" and run["counts"]["chunks_empty"] == 4
    assert not (tmp_path / "out" / "prob").exists()


# ----------------------------------------------------------------------------- pieces
def test_keras_model_handler_in_run_inference(scene, tmp_path):
    from model.artifact import load_artifact
    from pipelines.geo.blend import cut_windows
    from pipelines.predict import ChunkTiles, plan_predict
    from pipelines.predict.pipeline import inference_failures

    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 0.5, (3, 32, 32, 2)).astype(np.float32)
    image = rng.uniform(0.1, 0.5, (48, 48, 2)).astype(np.float32)
    origins = np.array([[0, 0], [0, 16], [16, 0], [16, 16], [8, 4]])
    b = cut_windows(image, origins, 32)  # what the model gets of the chunk below
    tiles = ChunkTiles(0, "k", {}, b"", "sig", origins, np.ones((4, 4), bool), 32, image)
    art = load_artifact(scene["thr"])
    want = {"a": art.predict(a), "b": art.predict(b)}
    two = KerasModelHandler(scene["thr"], batch_size=2, max_chunks_per_batch=2)
    assert two.get_num_bytes([a, tiles]) == a.nbytes + b.nbytes
    assert two.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 2}
    both = two.run_inference([a, tiles], two.load_model())  # each example on its own
    assert both[0].example is a  # a plain array example is kept as it is
    np.testing.assert_allclose(both[0].inference, want["a"], atol=1e-6)
    np.testing.assert_allclose(both[1].inference, want["b"], atol=1e-6)
    handler = KerasModelHandler(scene["thr"], batch_size=2)  # one chunk per batch

    def check(results):
        got = dict(results)
        assert set(got) == {"a", "b"}
        for key, res in got.items():
            assert res.model_id == art.model_id
            np.testing.assert_allclose(res.inference, want[key], atol=1e-6)
            expected = 1 / (1 + np.exp(-40 * ((a if key == "a" else b)[..., 1] - 0.3)))
            np.testing.assert_allclose(res.inference, expected, atol=1e-5)

    def check_failed(items):
        assert len(items) == 1
        job, rec = items[0]
        assert (job, rec["chunk"], rec["stage"], rec["reason"]) == (
            0, "c", "inference", "ArtifactError")
        assert "(n, h, w, 2)" in rec["error"]

    plan, _ = plan_predict(_config(scene, tmp_path))
    bad = np.zeros((2, 32, 32, 3), np.float32)  # three bands for a two-band model
    with TestPipeline() as p:
        out, dlq = (p | beam.Create([((0, "a"), a), ((0, "b"), tiles), ((0, "c"), bad)])
                    | RunInference(KeyedModelHandler(handler)).with_exception_handling())
        good = out | beam.MapTuple(lambda key, res: (key[1], res))
        assert_that(good, check)
        failed = dlq.failed_inferences | beam.FlatMap(inference_failures, plan=plan)
        assert_that(failed, check_failed, label="failed")


def test_the_sweep_writes_bit_for_bit_what_windows_cut_at_read_time_give(scene, tmp_path):
    """A chunk carries its image and the handler cuts its windows, through Beam and the
    edges typed with ChunkTilesCoder; the sweep used to cut them right after the read.
    Same windows, same model calls: the same COGs, bit for bit (a U-Net, float32)."""
    from pipelines.geo.blend import chunk_windows, cut_windows
    from pipelines.geo.grid import Chunk, ChunkKey, GridSpec
    from pipelines.geo.patches import channels_last
    from pipelines.predict import ChunkTiles, plan_predict
    from pipelines.predict.chunk import finish_chunk
    from pipelines.predict.plan import chunk_signature

    cfg = {"model": scene["unet"], "prob_dtype": "float32"}
    run = run_predict(_config(scene, tmp_path / "beam", **cfg))[0]
    plan, elements = plan_predict(_config(scene, tmp_path / "by_hand", **cfg))
    handler = KerasModelHandler(scene["unet"], batch_size=plan.config.batch_size)
    model = handler.load_model()
    h, written = plan.halo, 0
    for source in plan.sources:
        source.open()
    try:
        for job_i, key, region_wkb, spec_d in elements:  # the windows cut at read time
            chunk = Chunk(ChunkKey.parse(key), GridSpec(**spec_d), region_wkb)
            raster = plan.sources[plan.jobs[job_i].source].read(chunk.read_grid, plan.bands)
            valid = (raster.valid[h:h + chunk.grid.height, h:h + chunk.grid.width]
                     & chunk.region_mask())
            origins = chunk_windows(plan.lattice, chunk.read_grid, h, needed=valid)
            windows = cut_windows(channels_last(raster.data, raster.valid), origins,
                                  plan.lattice.window)
            probs = handler.run_inference([windows], model)[0].inference
            sig = chunk_signature(plan.jobs[job_i], key, region_wkb)
            rec = finish_chunk(plan, ChunkTiles(job_i, key, spec_d, region_wkb, sig, origins,
                                                valid, plan.lattice.window), probs)
            for name in ("prob", "mask"):
                beam_px = _read(tmp_path / "beam" / rec["files"][name])
                assert beam_px.tobytes() == _read(tmp_path / "by_hand" / rec["files"][name]
                                                  ).tobytes(), (key, name)
            written += 1
    finally:
        for source in plan.sources:
            source.close()
    assert written == run["counts"]["chunks_computed"] == 16


def test_a_handler_result_holds_the_chunk_without_its_pixels(scene):
    """Runners encode RunInference's results (or pickle them to estimate their size): a
    result carries the chunk's blending data and probabilities, not its pixels again; the
    chunk handed in keeps them (other consumers may still read it)."""
    import pickle

    from pipelines.predict import ChunkTiles
    from pipelines.transforms.inference import InferenceError

    rng = np.random.default_rng(1)
    origins = np.array([[0, 0], [0, 32], [32, 0], [32, 32]])

    def chunk(key: str, bands: int) -> ChunkTiles:
        image = rng.uniform(0.1, 0.5, (96, 96, bands)).astype(np.float32)
        return ChunkTiles(0, key, {"epsg": 32645}, b"wkb", f"sig-{key}", origins,
                          np.ones((8, 8), bool), 32, image)

    good, bad = chunk("good", 2), chunk("bad", 3)  # three bands for a two-band model
    handler = KerasModelHandler(scene["thr"], batch_size=2, capture_errors=True)
    results = handler.run_inference([good, bad], handler.load_model())
    assert isinstance(results[1].inference, InferenceError)
    assert results[0].inference.shape == (4, 32, 32)
    for res, sent in zip(results, (good, bad)):
        kept = res.example
        assert isinstance(kept, ChunkTiles) and kept is not sent
        assert kept.image is None and kept.windows_nbytes == 0
        assert (kept.job, kept.key, kept.signature, kept.size, kept.spec, kept.region_wkb) == (
            sent.job, sent.key, sent.signature, sent.size, sent.spec, sent.region_wkb)
        np.testing.assert_array_equal(kept.origins, sent.origins)
        np.testing.assert_array_equal(kept.valid, sent.valid)
        assert sent.image is not None and sent.image.shape[:2] == (96, 96)  # not mutated
        with pytest.raises(ValueError, match="no pixels"):
            kept.windows()
    # the probabilities (16 KiB) and a little more; the image alone is 72 KiB
    assert len(pickle.dumps(results[0])) < results[0].inference.nbytes + 4096


def test_a_unet_sweep_with_explain_writes_gradcam_cogs_mosaics_and_stac(scene, tmp_path,
                                                                        capsys):
    """``--explain`` through Beam (RunInference and the writer) with a real U-Net."""
    out = tmp_path / "explained"
    assert cli.main(["predict", "--model", scene["unet"], "--source", "geotiff", "--images",
                     str(scene["dir"] / "s2.tif"), "--aoi", scene["aoi"], "--start", START,
                     "--end", END, "--chunk-size", "128", "--threshold", "0.01",
                     "--explain", "--out", str(out)]) == 0
    done = [json.loads(p.read_text()) for p in sorted((out / "done").glob("*.json"))]
    written = [d for d in done if d["files"]]
    assert written and all("explain" in d["files"] for d in written)
    for d in written:
        with rasterio.open(out / d["files"]["explain"]) as src:
            cam = src.read(1)
            assert src.tags()["layer"] == "enc2_relu2"  # the U-Net's bottleneck
            assert src.transform == rasterio.open(out / d["files"]["prob"]).transform
        prob = _read(out / d["files"]["prob"])
        np.testing.assert_array_equal(np.isnan(cam), prob == 255)
        assert (cam[~np.isnan(cam)] >= 0).all()
    assert np.nanmax(_read(out / "mosaic" / "explain.tif")) > 0
    catalog = json.loads((out / "stac" / "catalog.json").read_text())
    assert catalog["type"] == "Catalog"
    item = next(json.loads(p.read_text()) for p in (out / "stac").rglob("*.json")
                if "gradcam" in json.loads(p.read_text()).get("assets", {}))
    assert item["assets"]["gradcam"]["href"].endswith(".tif")


def test_merge_chunk_polygons_joins_across_edges_only():
    sq = lambda x0, y0, x1, y1: box(x0, y0, x1, y1)  # noqa: E731
    gdf = gpd.GeoDataFrame({
        "chunk": ["a", "b", "b", "c", "a"],
        "edge": [True, True, True, True, False],
        "area_m2": [200.0, 100.0, 100.0, 100.0, 300.0],
        "n_pixels": [2, 1, 1, 1, 3],
        "prob_mean": [0.9, 0.6, 0.7, 0.8, 0.5],
        "prob_max": [0.95, 0.6, 0.99, 0.8, 0.5],
    }, geometry=[sq(0, 0, 20, 10), sq(20, 0, 30, 10),    # a|b share an edge
                 sq(30, 10, 40, 20),                     # b: touches b's first at a corner
                 sq(40, 20, 50, 30),                     # c: touches b's second at a corner
                 sq(100, 0, 130, 10)], crs="EPSG:32645")
    four = merge_across_edges(gdf, connectivity=4)
    assert len(four) == 4  # only the shared edge joins
    first = four.iloc[0]
    assert first["area_m2"] == 300.0 and first["n_pixels"] == 3 and first["chunks"] == 2
    assert first["prob_mean"] == pytest.approx((0.9 * 2 + 0.6) / 3)
    assert first["prob_max"] == 0.95 and first.geometry.equals(sq(0, 0, 30, 10))
    eight = merge_across_edges(gdf, connectivity=8)
    # corners join different chunks (b-c), never two pieces of the same chunk (b-b)
    assert sorted(eight["n_pixels"]) == [2, 3, 3]
    assert merge_across_edges(gdf.iloc[:0], 4).empty


def test_merge_chunk_polygons_aggregates_nan_and_distinct_chunks():
    sq = lambda x0: box(x0, 0, x0 + 10, 10)  # noqa: E731
    nan = float("nan")
    gdf = gpd.GeoDataFrame({
        "chunk": ["z", "a", "c", "d", "b", "c"],
        "edge": [False, True, True, True, True, True],
        "area_m2": [100.0] * 6,
        "n_pixels": [1, 1, 3, 1, 1, 1],
        "prob_mean": [nan, nan, 0.2, 0.8, 0.5, nan],
        "prob_max": [nan, nan, 0.3, 0.9, 0.6, nan],
    }, geometry=[sq(500), sq(0), sq(50), sq(60), sq(10), sq(70)], crs="EPSG:32645")
    out = merge_across_edges(gdf, connectivity=4)
    # groups in the order of their first member: z | a+b | c+d+c
    assert list(out["n_pixels"]) == [1, 2, 5]
    assert list(out["chunks"]) == [1, 2, 2]  # c counted once though two of its parts join
    assert np.isnan(out["prob_mean"][0]) and np.isnan(out["prob_max"][0])
    assert out["prob_mean"][1] == pytest.approx(0.5) and out["prob_max"][1] == 0.6
    assert out["prob_mean"][2] == pytest.approx((0.2 * 3 + 0.8) / 4)
    assert out["prob_max"][2] == 0.9 and list(out["area_m2"]) == [100.0, 200.0, 300.0]
    assert out.geometry[2].equals(box(50, 0, 80, 10))
    assert out.geometry[0].equals(sq(500))


def test_event_catalogue_and_point_parsing(tmp_path):
    csv = tmp_path / "glc.csv"
    csv.write_text("Event ID,Event Date,Latitude,Longitude,event_title\n"
                   "ev 1,2015/04/25 06:11:00,28.2,85.4,Gorkha\n"
                   "ev 1,04/26/2015 12:00:00 AM,28.3,85.5,again\n")
    aois = read_events(str(csv), buffer_m=500, days_before=5, days_after=30)
    assert [a.name for a in aois] == ["ev_1", "ev_1-1"]
    assert (aois[0].start, aois[0].end, aois[0].event_date) == (
        "2015-04-20", "2015-05-25", "2015-04-25")
    assert aois[1].event_date == "2015-04-26"
    minx, miny, maxx, maxy = aois[0].region.geometry.bounds
    assert minx < 85.4 < maxx and miny < 28.2 < maxy and (maxy - miny) * 111e3 == \
        pytest.approx(1000, rel=0.02)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,date,lat,lon\n1,2015-04-25,28.2,85.4\n2,someday,28.2,85.4\n")
    with pytest.raises(InputError, match="row 3: cannot read the date 'someday'"):
        read_events(str(bad), 500)
    nolat = tmp_path / "nolat.csv"
    nolat.write_text("id,date,lon\n1,2015-04-25,85.4\n")
    with pytest.raises(InputError, match="no latitude column"):
        read_events(str(nolat), 500)
    with pytest.raises(ConfigError, match="empty window"):
        read_events(str(csv), 500, days_before=0, days_after=0)
    assert parse_point("28.16, 85.36") == (28.16, 85.36)
    with pytest.raises(ConfigError, match="LAT,LON"):
        parse_point("128.1,85.36")  # swapped: LON,LAT


def _lat_lon(row: float, col: float) -> tuple[float, float]:
    lon, lat = Transformer.from_crs(GRID.crs, "EPSG:4326", always_xy=True).transform(
        LEFT + col * 10, TOP - row * 10)
    return lat, lon


def test_events_make_one_sweep_per_event(scene, swept, tmp_path, caplog):
    lat, lon = _lat_lon(128, 64)  # landslide A
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,event_date,latitude,longitude\n"
                   f"gorkha-A,2020/06/15 00:00:00,{lat},{lon}\n"
                   "far-away,2020-06-20,45.0,10.0\n")
    out = tmp_path / "out"
    runs = run_predict(_config(scene, out, aoi=None, events=str(csv), start=None, end=None,
                               buffer_m=400, days_after=60, chunk_size=128))
    assert len(runs) == 1 and "far-away" in caplog.text
    run = json.loads((out / "gorkha-A" / "run.json").read_text())
    assert (run["aoi"]["start"], run["aoi"]["end"], run["aoi"]["date"]) == (
        "2020-06-15", "2020-08-14", "2020-06-15")
    inv = gpd.read_file(out / "gorkha-A" / "inventory.gpkg")
    assert len(inv) == 1 and (inv["date"] == "2020-06-15").all()
    # the whole landslide lies inside the 800 m square: same polygon as the full sweep
    full = gpd.read_file(swept[0] / "inventory.gpkg")
    assert inv.loc[0, "area_m2"] == full["area_m2"].max()
    summary = json.loads((out / "events.json").read_text())
    assert [e["name"] for e in summary["events"]] == ["gorkha-A"]
    assert not (out / "far-away").exists()


def test_gcs_output_and_resume(scene, swept, gcs_bucket):
    out = f"{gcs_bucket}/sweep"
    run = run_predict(_config(scene, out, chunk_size=128))[0]
    assert run["counts"]["chunks_computed"] == 4
    names = {p.split("/sweep/", 1)[1] for p in fsio.glob(f"{out}/**")}
    assert {"run.json", "inventory.gpkg", "inventory.parquet", "mosaic/mask.vrt",
            "mosaic/mask.tif", "stac/catalog.json", "done/32645_r5375_c250.json",
            "prob/32645_r5375_c250.tif"} <= names
    np.testing.assert_array_equal(_read(f"{out}/mosaic/mask.tif"),
                                  _read(swept[0] / "mosaic" / "mask.tif"))
    from rio_cogeo.cogeo import cog_validate

    with fsio.local_copy(f"{out}/prob/32645_r5375_c250.tif") as local:
        assert cog_validate(local)[0]
    again = run_predict(_config(scene, out, chunk_size=128))[0]
    assert (again["counts"]["chunks_computed"], again["counts"]["chunks_skipped"]) == (0, 4)
    assert again["counts"]["polygons"] == run["counts"]["polygons"] == 3
    with pytest.raises(OutputError, match="not writable|Cannot"):
        run_predict(_config(scene, "gs://no-such-bucket-for-landslides/x", chunk_size=128))


@pytest.mark.slow
def test_cli_point_in_multiprocess_direct_runner(scene, swept, tmp_path):
    lat, lon = _lat_lon(128, 128)
    out = tmp_path / "mp"
    args = _cli_args(scene, out, "--point", f"{lat},{lon}", "--buffer-m", "1100",
                     "--chunk-size", "128", "--direct_num_workers", "2",
                     "--direct_running_mode", "multi_processing")
    assert cli.main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["chunks_computed"] == 4 and run["aoi"]["name"].startswith("point(")
    full_mask = _read(swept[0] / "mosaic" / "mask.tif")
    full_prob = _read(swept[0] / "mosaic" / "prob.tif")
    with rasterio.open(out / "mosaic" / "mask.tif") as src:
        assert src.transform == GRID.affine  # the 2 x 2 chunks around the scene's centre
        mask = src.read(1)
    prob = _read(out / "mosaic" / "prob.tif")
    inside = mask != 255
    assert 0.6 < inside.mean() < 0.8  # the 2.2 km square inside the 2.56 km chunks
    np.testing.assert_array_equal(mask[inside], full_mask[inside])
    assert np.abs(prob[inside].astype(int) - full_prob[inside]).max() <= 1
    # pixels outside the AOI are nodata even where imagery exists
    assert (full_mask[~inside] != 255).any()


def test_region_across_utm_zones(tmp_path):
    """A lon/lat scene across 84 E: chunks in zones 44 and 45, one landslide on the limit."""
    from rasterio.transform import from_origin

    n, res = 400, 0.0001
    yy, xx = np.mgrid[0:n, 0:n]
    b8 = 1500 + (xx * 5 + yy * 3) % 800
    slide = ((yy - 200) / 40.0) ** 2 + ((xx - 200) / 60.0) ** 2 <= 1.0  # centred on 84.0 E
    b8[slide] = 5000
    with rasterio.open(tmp_path / "ll.tif", "w", driver="GTiff", width=n, height=n, count=2,
                       dtype="uint16", crs="EPSG:4326", transform=from_origin(83.98, 28.02,
                                                                             res, res),
                       nodata=0) as dst:
        dst.write(np.stack([1000 + xx % 300, b8]).astype("uint16"))
        dst.descriptions = BANDS
    model = _save_threshold_model(tmp_path / "thr")
    run = run_predict(PredictConfig(
        model=model, source={"kind": "geotiff", "images": [str(tmp_path / "ll.tif")]},
        out=str(tmp_path / "out"), aoi="83.985,27.985,84.015,28.015", chunk_size=256))[0]
    assert run["aoi"]["epsg"] == [32644, 32645]
    assert set(run["outputs"]["mosaics"]) == {"prob_32644", "prob_32645", "mask_32644",
                                              "mask_32645"}
    inv = gpd.read_file(tmp_path / "out" / "inventory.gpkg")
    assert inv.crs.to_epsg() == 4326
    assert len(inv) == 1  # joined across the zone limit
    px_area = (res * 111320 * np.cos(np.radians(28.0))) * (res * 110700)
    assert inv.loc[0, "area_m2"] == pytest.approx(slide.sum() * px_area, rel=0.03)
    assert inv.geometry[0].geom_type == "Polygon"
    assert inv.geometry[0].bounds[0] < 84.0 < inv.geometry[0].bounds[2]


def run_area(out: Path) -> float:
    return json.loads((out / "run.json").read_text())["aoi"]["area_km2"]


def test_sweep_from_earth_engine(tmp_path, monkeypatch):
    """The loopback Earth Engine endpoint answers with coordinate-coded bands (B1 = x mod
    1 km): a model thresholding B1 at 500 m must map exact 500 m stripes, seamlessly."""
    from scipy import ndimage

    from tests.ee_server import EEServer, Faults

    monkeypatch.setenv("LSM_TEST_EE_TOKEN", "test-token")
    model = _save_threshold_model(tmp_path / "thr", bands=("B1", "B2"), k=0.05, t=500.0,
                                  on="B1")
    out = tmp_path / "out"
    with EEServer() as server:
        server.configure(faults=Faults(status=429, every=4))  # throttled now and then
        assert cli.main([
            "predict", "--model", model, "--out", str(out), "--source", "earthengine",
            "--ee-endpoint", server.url, "--ee-project", "test-project",
            "--ee-token-env", "LSM_TEST_EE_TOKEN", "--start", "2021-03-01",
            "--end", "2021-06-01", "--aoi", "85.300,28.100,85.309,28.106",
            "--chunk-size", "32", "--min-area", "0"]) == 0
    with rasterio.open(out / "mosaic" / "mask.vrt") as src:
        mask = src.read(1)
        x = src.transform.c + (np.arange(src.width)[None, :] + 0.5) * src.transform.a
        x = np.broadcast_to(x, mask.shape)
    inside = mask != 255  # the ~880 x 660 m AOI in 4 x 4 chunks of 320 m
    assert inside.sum() * 100 == pytest.approx(run_area(out) * 1e6, rel=0.01)
    np.testing.assert_array_equal(mask[inside] == 1, (np.mod(x, 1000.0) >= 500.0)[inside])
    inv = gpd.read_file(out / "inventory.gpkg")
    _, stripes = ndimage.label(mask == 1)
    assert len(inv) == stripes >= 1 and inv["chunks"].max() >= 4  # one per stripe
    run = json.loads((out / "run.json").read_text())
    assert run["source"]["kind"] == "earthengine" and run["counts"]["chunks_failed"] == 0

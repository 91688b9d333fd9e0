"""Export end to end: GeoTIFFs + inventory -> shards that model.schema parses back exactly."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from pipelines import cli, fsio
from pipelines.errors import BandError, ConfigError, OutputError, RegionError
from pipelines.geo.grid import ChunkKey, GridSpec, PixelGrid
from tests.conftest import read_shards

LEFT, TOP, N = 320000.0, 3120000.0, 512  # aligned with 128-px chunks of 10 m
GRID = PixelGrid("EPSG:32645", (10.0, 0.0, LEFT, 0.0, -10.0, TOP), N, N)
BANDS4 = ("B2", "B3", "B4", "B8")


def _write_tif(path, data, descriptions, dtype, nodata=None, crs="EPSG:32645"):
    with rasterio.open(path, "w", driver="GTiff", width=N, height=N, count=len(data),
                       dtype=dtype, crs=crs, transform=GRID.affine, nodata=nodata,
                       tiled=True, blockxsize=128, blockysize=128, compress="deflate") as dst:
        dst.write(np.asarray(data, dtype=dtype))
        for i, d in enumerate(descriptions, 1):
            dst.set_band_description(i, d)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 5 km UTM scene: 4-band S2 DNs, a DEM, landslide polygons in WGS84, an AOI."""
    d = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:N, 0:N]
    dn = np.stack([1000 + 40 * b + (xx + 3 * yy + 7 * b) % 500 for b in range(4)])
    dn[:, 300:310, 0:40] = 0  # a nodata gash (all bands 0 = nodata)
    _write_tif(d / "s2.tif", dn, BANDS4, "uint16", nodata=0)
    dem = 2000 + 0.8 * xx * 10 * 0.3 + rng.normal(0, 0.5, (N, N))
    _write_tif(d / "dem.tif", dem[None], ["DEM"], "float32")
    polys = [box(LEFT + 200, TOP - 900, LEFT + 600, TOP - 400),
             box(LEFT + 3000, TOP - 3200, LEFT + 3400, TOP - 2500),
             box(LEFT + 4000, TOP - 1000, LEFT + 4100, TOP - 900)]
    gdf = gpd.GeoDataFrame({"kind": ["scarp", "deposit", "scarp"]}, geometry=polys,
                           crs="EPSG:32645").to_crs("EPSG:4326")
    gdf.to_file(d / "inv.gpkg")
    aoi = gpd.GeoDataFrame(geometry=[box(LEFT + 5, TOP - N * 10 + 5, LEFT + N * 10 - 5, TOP - 5)],
                           crs="EPSG:32645")
    aoi.to_file(d / "aoi.geojson")
    return {"dir": d, "dn": dn, "dem": dem, "polys": polys}


def _export_args(scene, out, *extra):
    d = scene["dir"]
    return ["export", "--out", str(out), "--aoi", str(d / "aoi.geojson"),
            "--inventory", str(d / "inv.gpkg"), "--source", "geotiff",
            "--images", str(d / "s2.tif"), "--dem", str(d / "dem.tif"),
            "--bands", "B2,B3,B4,B8,DEM,slope", "--chunk-size", "128", "--patch-size", "64",
            "--split", "0.5,0.25,0.25", "--split-block", "1", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def exported(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    assert cli.main(_export_args(scene, out, "--negative-fraction", "0.5")) == 0
    return out, read_shards(out), json.loads((out / "manifest.json").read_text())


def test_records_parse_back_with_exact_georeferencing_and_values(scene, exported):
    _, recs, manifest = exported
    spec = GridSpec(32645, 10.0, 128, 0)
    n = 0
    for patches in recs.values():
        for p in patches:
            n += 1
            chunk, _, offs = p.key.partition("/")
            r, c = map(int, offs.split("_"))
            g = spec.chunk_grid(ChunkKey.parse(chunk))
            a, b, x0, d, e, y0 = g.transform
            assert p.crs == "EPSG:32645" and p.bands == ("B2", "B3", "B4", "B8", "DEM", "slope")
            assert p.transform == (a, b, x0 + c * a, d, e, y0 + r * e)  # exact, float64
            row0 = round((TOP - p.transform[5]) / 10)
            col0 = round((p.transform[2] - LEFT) / 10)
            dn = scene["dn"][:, row0:row0 + 64, col0:col0 + 64]
            valid = p.mask != 255  # valid imagery inside the AOI
            assert not valid[(dn == 0).all(0)].any()  # source nodata is never valid
            assert valid.mean() > 0.85
            np.testing.assert_allclose(p.image[..., :4][valid],
                                       np.moveaxis(dn, 0, -1)[valid] * 1e-4, rtol=1e-6)
            dem = scene["dem"][row0:row0 + 64, col0:col0 + 64]
            np.testing.assert_allclose(p.image[..., 4][valid], dem[valid], rtol=1e-5)
            assert (p.image[~valid] == 0).all()
            assert 5 < float(np.median(p.image[..., 5][valid])) < 20  # slope of a 0.24 gradient
            assert p.date == ""
    assert n == sum(manifest["patches"].values()) > 0


def test_masks_match_the_inventory(scene, exported):
    _, recs, manifest = exported
    positive_area = 0
    for patches in recs.values():
        for p in patches:
            positive_area += int((p.mask == 1).sum()) * 100
    # every landslide pixel lies in a kept patch (positives are always kept)
    total = sum(poly.area for poly in scene["polys"])
    assert positive_area == pytest.approx(total, rel=0.02)
    assert sum(manifest["positive_patches"].values()) >= 3


def test_splits_are_disjoint_and_counted(exported):
    _, recs, manifest = exported
    chunks = {s: {p.key.split("/")[0] for p in ps} for s, ps in recs.items()}
    assert not chunks["train"] & chunks["val"]
    assert not chunks["train"] & chunks["test"]
    assert not chunks["val"] & chunks["test"]
    for s in recs:
        assert manifest["patches"][s] == len(recs[s])
        assert len(manifest["files"][s]) >= 1
    assert manifest["dropped"]["nodata"] >= 1  # the AOI edges and the nodata gash
    assert manifest["chunks_failed"] == 0


def test_manifest_stats_match_train_patches(exported):
    _, recs, manifest = exported
    train = recs["train"]
    px = np.concatenate([p.image[p.mask != 255] for p in train])
    for i, b in enumerate(manifest["bands"]):
        assert manifest["stats"][b]["count"] == px.shape[0]
        assert manifest["stats"][b]["mean"] == pytest.approx(px[:, i].mean(), rel=1e-5)
        assert manifest["stats"][b]["std"] == pytest.approx(px[:, i].std(), rel=1e-4)
    assert manifest["source"]["kind"] in ("stack", "geotiff")
    assert manifest["config"]["patch"]["size"] == 64


def test_rerun_is_deterministic(scene, exported, tmp_path):
    _, recs, _ = exported
    assert cli.main(_export_args(scene, tmp_path, "--negative-fraction", "0.5")) == 0
    again = read_shards(tmp_path)
    for s in recs:
        assert sorted(p.key for p in recs[s]) == sorted(p.key for p in again[s])


def test_fixed_shard_count_and_uncompressed_shards(scene, exported, tmp_path):
    _, recs, _ = exported
    args = _export_args(scene, tmp_path, "--negative-fraction", "0.5", "--num-shards", "2",
                        "--compression", "none")
    assert cli.main(args) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.startswith(".")]  # no temp folder left behind
    for split in recs:
        files = manifest["files"][split]
        assert 1 <= len(files) <= 2 and all(f.endswith(".tfrecord") for f in files)
        assert all(f"-of-{len(files):05d}.tfrecord" in f for f in files)
    again = read_shards(tmp_path, "*.tfrecord")
    for s in recs:
        assert sorted(p.key for p in recs[s]) == sorted(p.key for p in again[s])


def test_no_negatives_keeps_only_positive_patches(scene, tmp_path):
    assert cli.main(_export_args(scene, tmp_path, "--negative-fraction", "0")) == 0
    recs = read_shards(tmp_path)
    for ps in recs.values():
        assert all((p.mask == 1).any() for p in ps)


def test_export_to_cloud_storage_emulator(scene, gcs_bucket):
    out = f"{gcs_bucket}/shards"
    assert cli.main(_export_args(scene, out, "--negative-fraction", "0")) == 0
    manifest = fsio.read_json(fsio.join(out, "manifest.json"))
    assert sum(manifest["patches"].values()) >= 3
    files = fsio.glob(fsio.join(out, "train", "*.tfrecord.gz"))
    assert files and all(f.startswith(gcs_bucket) for f in files)


def test_corrupt_tiles_go_to_the_dead_letter_file(scene, tmp_path):
    _corrupt_export(scene, tmp_path)


def _corrupt_export(scene, tmp_path):
    """An export of a scene with corrupt tiles: exit 1, the failures listed."""
    src = scene["dir"] / "s2.tif"
    bad = tmp_path / "s2_bad.tif"
    data = bytearray(src.read_bytes())
    with rasterio.open(src) as ds:  # corrupt the compressed bytes of a few tiles
        offsets = [int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
                   for r in (0, 1) for c in (0, 1)]
    for off in offsets:
        data[off:off + 64] = os.urandom(64)
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    args = _export_args(scene, out, "--negative-fraction", "1")
    args[args.index("--images") + 1] = str(bad)
    assert cli.main(args) == 1  # partial failure: non-zero exit
    manifest = json.loads((out / "manifest.json").read_text())
    lines = (out / "failed_chunks.jsonl").read_text().splitlines()
    assert manifest["chunks_failed"] == len(lines) >= 1
    assert all("error" in json.loads(line) for line in lines)
    assert manifest["chunks_done"] + manifest["chunks_failed"] == manifest["chunks"]
    assert manifest["chunks_done"] >= 1
    return out, manifest


def test_train_and_evaluate_refuse_a_partial_export(scene, tmp_path, capsys):
    """A failed export is not silently trained on: refused with the count, unless asked."""
    out, manifest = _corrupt_export(scene, tmp_path)
    capsys.readouterr()
    tiny = ["--base-filters", "4", "--depth", "2", "--epochs", "1", "--batch-size", "8",
            "--no-saved-model"]
    model = tmp_path / "model"
    assert cli.main(["train", "--data", str(out), "--out", str(model), *tiny]) == 2
    err = capsys.readouterr().err
    assert f"{manifest['chunks_failed']} of {manifest['chunks']} chunk(s) failed" in err
    assert "--allow-partial" in err and "failed_chunks.jsonl" in err
    assert not model.exists()  # refused before anything was written
    assert cli.main(["train", "--data", str(out), "--out", str(model), *tiny,
                     "--allow-partial"]) == 0
    assert (model / "artifact.json").exists()
    assert cli.main(["evaluate", "--model", str(model), "--data", str(out)]) == 2
    assert "--allow-partial" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(model), "--data", str(out),
                     "--allow-partial"]) == 0


def test_bad_input_is_refused_before_launch(scene, tmp_path):
    from pipelines.export import ExportConfig, run_export

    d = scene["dir"]
    base = {"source": {"kind": "geotiff", "images": [str(d / "s2.tif")]},
            "aoi": str(d / "aoi.geojson"), "out": str(tmp_path / "o"),
            "inventory": str(d / "inv.gpkg")}
    with pytest.raises(BandError, match="B11"):
        run_export(ExportConfig(**base, bands=("B2", "B11")))
    with pytest.raises(ConfigError, match="Empty date window"):
        ExportConfig(**base, start="2016-05-01", end="2016-04-01")
    far = dict(base, aoi="10.0,45.0,10.1,45.1")
    with pytest.raises(RegionError):
        run_export(ExportConfig(**far, bands=BANDS4))
    empty_inv = gpd.GeoDataFrame(geometry=[box(LEFT + 90000, TOP, LEFT + 91000, TOP + 1000)],
                                 crs="EPSG:32645")
    empty_inv.to_file(tmp_path / "elsewhere.gpkg")
    from pipelines.geo.patches import PatchRules

    with pytest.raises(RegionError, match="No landslide"):
        run_export(ExportConfig(**dict(base, inventory=str(tmp_path / "elsewhere.gpkg")),
                                bands=BANDS4, patch=PatchRules(negative_fraction=0)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        run_export(ExportConfig(**dict(base, out=str(blocker / "sub")), bands=BANDS4))
    assert not os.path.exists(tmp_path / "o")  # nothing written for refused runs


def test_multi_process_direct_runner(scene, exported, tmp_path):
    """Two worker processes: catches pickling bugs; same patches as the in-process run."""
    _, recs, _ = exported
    args = _export_args(scene, tmp_path, "--negative-fraction", "0.5",
                        "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert cli.main(args) == 0
    again = read_shards(tmp_path)
    for s in recs:
        assert sorted(p.key for p in recs[s]) == sorted(p.key for p in again[s])

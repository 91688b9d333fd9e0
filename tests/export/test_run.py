"""Running an export (pipelines.export.run): what the manifest says is what was written."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from pipelines import cli
from tests.conftest import read_shards
from tests.export.conftest import LEFT, TOP, small_export_args


@pytest.fixture(scope="module")
def landslide(tmp_path_factory):
    """One landslide polygon in the small scene."""
    path = tmp_path_factory.mktemp("inventory") / "inv.gpkg"
    gpd.GeoDataFrame(geometry=[box(LEFT + 200, TOP - 900, LEFT + 600, TOP - 400)],
                     crs="EPSG:32645").to_file(path)
    return path


def _listed(manifest: dict) -> list[str]:
    return sorted(os.path.basename(f) for fs in manifest["files"].values() for f in fs)


def test_a_relative_out_with_a_dot_lists_its_shards(small_scene, landslide, tmp_path,
                                                    monkeypatch):
    """``--out ./shards``: the manifest lists the shards written, as for ``--out shards``."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(small_export_args(small_scene, "./shards", landslide)) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    on_disk = sorted(os.listdir(tmp_path / "shards" / "train"))
    assert on_disk and _listed(manifest) == on_disk
    assert sum(manifest["patches"].values()) == len(read_shards(tmp_path / "shards")["train"])


def test_a_rerun_that_dies_before_its_manifest_leaves_no_stale_one(small_scene, landslide,
                                                                   tmp_path, monkeypatch,
                                                                   capsys):
    """A rerun into the same folder removes the earlier manifest, failure list and config
    when it starts (after its checks), and writes its own config with its manifest."""
    import pipelines.export.run as run

    out = tmp_path / "out"
    args = small_export_args(small_scene, out, landslide, "--num-shards", "1")
    assert cli.main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "export_config.json").read_text()) == first["config"]
    # a refused rerun touches nothing
    assert cli.main([*args, "--bands", "B2,B11"]) == 2
    assert json.loads((out / "manifest.json").read_text()) == first
    # a complete rerun without failures removes an earlier run's failure list
    (out / "failed_chunks.jsonl").write_text('{"chunk": "32645_r1_c1", "error": "old"}\n')
    assert cli.main([*args, "--negative-fraction", "0.5"]) == 0
    assert not (out / "failed_chunks.jsonl").exists()
    second = json.loads((out / "manifest.json").read_text())
    assert second["config"]["patch"]["negative_fraction"] == 0.5

    def lost(*a, **k):
        raise RuntimeError("simulated: the launcher is killed before the manifest step")

    monkeypatch.setattr(run, "_write_manifest", lost)
    capsys.readouterr()
    assert cli.main([*args, "--negative-fraction", "0"]) != 0
    assert "simulated" in capsys.readouterr().err
    # no manifest (nor config) of an earlier run describes the shards now in the folder
    assert not (out / "manifest.json").exists()
    assert not (out / "export_config.json").exists()
    assert (out / "train" / "train-00000-of-00001.tfrecord.gz").exists()  # shards stay
    # and training refuses the half-rewritten folder instead of reading whatever is there
    from model.data import EXPORT_RUNNING, find_shards
    from model.errors import ConfigError

    assert EXPORT_RUNNING == run.RUNNING and (out / EXPORT_RUNNING).exists()
    with pytest.raises(ConfigError, match="started and did not finish"):
        find_shards(str(out))
    monkeypatch.undo()
    assert cli.main(args) == 0  # a finished rerun: the marker goes, training reads it
    assert not (out / EXPORT_RUNNING).exists()
    assert find_shards(str(out)).manifest is not None


def test_numeric_class_codes_must_be_declared_classes(small_scene, tmp_path):
    """A numeric --class-attribute holds mask ids: every one must be a declared class
    (255 would become "ignore"), and the manifest's classes are those of the masks."""
    polygons = [box(LEFT + 100, TOP - 300, LEFT + 300, TOP - 100),
                box(LEFT + 700, TOP - 900, LEFT + 900, TOP - 700),
                box(LEFT + 100, TOP - 900, LEFT + 300, TOP - 700)]
    inv = tmp_path / "codes.gpkg"
    gpd.GeoDataFrame({"code": [1, 2, 255]}, geometry=polygons, crs="EPSG:32645").to_file(inv)
    out = tmp_path / "out"
    coded = ["--class-attribute", "code"]
    assert cli.main(small_export_args(small_scene, out, inv, *coded)) == 2  # no --classes
    assert cli.main(small_export_args(small_scene, out, inv, *coded,
                                      "--classes", "scarp=1,deposit=2")) == 2  # 255
    assert not out.exists()  # refused before anything was written
    inv_ok = tmp_path / "codes_ok.gpkg"
    gpd.GeoDataFrame({"code": [1, 2, 0]}, geometry=polygons, crs="EPSG:32645").to_file(inv_ok)
    assert cli.main(small_export_args(small_scene, out, inv_ok, *coded,
                                      "--classes", "scarp=1,deposit=2")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"background": 0, "scarp": 1, "deposit": 2}
    masks = np.concatenate([p.mask.ravel() for p in read_shards(out)["train"]])
    assert set(np.unique(masks).tolist()) - {255} == {0, 1, 2}


def test_forget_previous_run_on_cloud_storage(gcs_bucket):
    """Through fsio on gs://: the earlier run's manifest, failures and config go; its
    shards and any other object stay."""
    from pipelines import fsio
    from pipelines.export.run import forget_previous_run

    out = f"{gcs_bucket}/shards"
    names = ("manifest.json", "failed_chunks.jsonl", "export_config.json",
             "train/train-00000-of-00001.tfrecord.gz", "notes.txt")
    for name in names:
        fsio.write_bytes(fsio.join(out, name), b"{}")
    forget_previous_run(out)
    assert [fsio.exists(fsio.join(out, n)) for n in names] == [False, False, False, True, True]
    forget_previous_run(out)  # nothing left to remove: no error

"""Export and predict on a real distributed engine: Beam's Dask runner on a loopback
dask.distributed cluster of two worker processes, compared with the DirectRunner.

Sinks are compared by content (records, pixels, inventory), not by the files' presence:
Beam 2.77's Dask runner computes only a pipeline's last step and what it reads, mixes
the outputs of multi-output steps and drops what ``finish_bundle`` emits; the pipelines
are built so that none of that changes their products.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from pipelines import cli
from tests.export import test_export as ex
from tests.predict.test_large_model import assert_same_sweep
from tests.scenes import make_export_scene, make_predict_scene, predict_args

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                                        "(apache-beam[dask])")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes on 127.0.0.1 that import this checkout; and a client."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([old] if old else [])])
    try:
        lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    client = distributed.Client(lc)
    yield lc, client
    client.close()
    lc.close()


def _executed(client) -> dict[str, tuple[int, int]]:
    """Tasks each worker has run and its process id."""
    return client.run(lambda dask_worker: (dask_worker.state.executed_count, os.getpid()))


def _dask_args(lc) -> list[str]:
    return ["--runner", "dask", "--dask_client_address", lc.scheduler_address]


def _records(out: Path) -> dict[str, list[bytes]]:
    import tensorflow as tf

    return {s: sorted(r.numpy() for r in tf.data.TFRecordDataset(
        sorted(glob.glob(str(out / s / "*.tfrecord.gz"))), compression_type="GZIP"))
        for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def export_scene(tmp_path_factory):
    """The export tests' 5 km scene (4-band S2, DEM, two landslides)."""
    return make_export_scene(tmp_path_factory.mktemp("dask_export_scene"))


def test_export_on_dask_equals_direct_runner(cluster, export_scene, tmp_path):
    lc, client = cluster
    before = _executed(client)
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    assert cli.main(ex._export_args(export_scene, direct, "--negative-fraction", "0.5")) == 0
    assert cli.main([*ex._export_args(export_scene, dask, "--negative-fraction", "0.5"),
                     *_dask_args(lc)]) == 0
    after = _executed(client)
    # both worker processes (not this one) ran tasks of the export
    assert all(after[w][0] > before[w][0] for w in after) and len(after) == 2
    assert os.getpid() not in {pid for _, pid in after.values()}

    want, got = _records(direct), _records(dask)
    assert sum(map(len, want.values())) > 10
    assert got == want  # the same records in every split
    m_direct, m_dask = (json.loads((o / "manifest.json").read_text()) for o in (direct, dask))
    for field in ("patches", "positive_patches", "dropped", "candidates", "chunks_done",
                  "chunks_failed"):
        assert m_dask[field] == m_direct[field], field
    # band statistics: equal up to the float sums' order (the runners merge differently)
    assert m_dask["stats"].keys() == m_direct["stats"].keys()
    for band, st in m_direct["stats"].items():
        assert m_dask["stats"][band] == pytest.approx(st, rel=1e-9), band
    rel = {s: [Path(f).name for f in fs] for s, fs in m_dask["files"].items()}
    assert rel == {s: [Path(f).name for f in fs] for s, fs in m_direct["files"].items()}
    for split, names in rel.items():  # same shard files, byte for byte
        for name in names:
            assert (dask / split / name).read_bytes() == (direct / split / name).read_bytes()
    assert not list(dask.glob(".shards-tmp-*"))


@pytest.fixture(scope="module")
def predict_scene(tmp_path_factory):
    """The predict tests' scene: B4/B8 DNs with landslide-like B8 blobs, a threshold model."""
    return make_predict_scene(tmp_path_factory.mktemp("dask_predict_scene"))


def test_predict_on_dask_equals_direct_runner(cluster, predict_scene, tmp_path):
    lc, client = cluster
    before = _executed(client)
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    assert cli.main(predict_args(predict_scene, direct)) == 0
    assert cli.main([*predict_args(predict_scene, dask), *_dask_args(lc)]) == 0
    after = _executed(client)
    assert all(after[w][0] > before[w][0] for w in after) and len(after) == 2

    run_direct, run_dask = (json.loads((o / "run.json").read_text()) for o in (direct, dask))
    assert run_dask["status"] == run_direct["status"] == "ok"
    assert run_dask["counts"] == run_direct["counts"]
    assert run_dask["counts"]["chunks_computed"] == 16
    chunks = sorted(p.name for p in (direct / "prob").glob("*.tif"))
    assert len(chunks) == 16 and chunks == sorted(p.name for p in (dask / "prob").glob("*.tif"))
    for folder in ("prob", "mask"):
        for name in chunks:
            with rasterio.open(direct / folder / name) as a, rasterio.open(
                    dask / folder / name) as b:
                assert a.transform == b.transform and a.crs == b.crs
                np.testing.assert_array_equal(a.read(), b.read())
    for name in ("mask.tif", "prob.tif"):
        with rasterio.open(direct / "mosaic" / name) as a, rasterio.open(
                dask / "mosaic" / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    inv_a, inv_b = (gpd.read_file(o / "inventory.gpkg") for o in (direct, dask))
    assert len(inv_a) == len(inv_b) > 0
    assert inv_b.geometry.area.sum() == pytest.approx(inv_a.geometry.area.sum())
    assert sorted(inv_b["area_m2"]) == pytest.approx(sorted(inv_a["area_m2"]))
    assert not (dask / "failed_chunks.jsonl").exists()


def _holds_artifact(path: str) -> bool:
    """In a worker: has this process loaded the artifact at ``path``?"""
    from model import artifact

    return any(stamp[0] == os.path.abspath(path) for stamp in artifact._LOADED)


def test_large_model_predict_on_dask_loads_the_model_in_one_worker(cluster, predict_scene,
                                                                   tmp_path):
    lc, client = cluster
    # a fresh copy: the other tests' sweeps loaded the original in both workers
    scene = {**predict_scene, "thr": str(shutil.copytree(predict_scene["thr"],
                                                         tmp_path / "model"))}
    before = _executed(client)
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    assert cli.main(predict_args(scene, direct)) == 0
    assert cli.main([*predict_args(scene, dask), "--large-model", *_dask_args(lc)]) == 0
    after = _executed(client)
    assert all(after[w][0] > before[w][0] for w in after) and len(after) == 2
    # one of the two worker processes loaded the model and served it to the other
    held = client.run(_holds_artifact, scene["thr"])
    assert sorted(held.values()) == [False, True]
    assert_same_sweep(direct, dask, chunks=16)

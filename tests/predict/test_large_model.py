"""``large_model``: one model per machine, served to every worker process by Beam's
``multi_process_shared``, gives the same sweep as a model per process.

The model a handler gets with ``large_model`` is a proxy on which only methods can be
called; these tests run the handler against that real proxy and the whole sweep on the
DirectRunner's multi-process mode (two SDK worker processes), counting model loads with
RunInference's own metrics. tests/distributed/ runs the same on the Dask runner.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import apache_beam as beam
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from apache_beam.options.pipeline_options import PipelineOptions

from model.errors import ArtifactError
from pipelines.predict import PredictConfig
from pipelines.transforms.inference import (
    InferenceError,
    KerasModelHandler,
    acquire_model,
    new_model_tag,
)
from tests.predict import test_predict as pr
from tests.scenes import make_predict_scene

MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    """B4/B8 DNs with landslide-like B8 blobs over 16 chunks of 64 px; a threshold model."""
    return make_predict_scene(tmp_path_factory.mktemp("large_model_scene"))


def _config(scene, out: Path, **kw) -> PredictConfig:
    return PredictConfig(model=scene["thr"], source={"kind": "geotiff",
                                                     "images": [str(scene["dir"] / "s2.tif")]},
                         out=str(out), aoi=str(scene["dir"] / "aoi.geojson"), start=pr.START,
                         end=pr.END, chunk_size=64, **kw)


# ----------------------------------------------------------------------------- the handler
def test_the_handler_predicts_through_beams_shared_model_proxy(small_scene):
    from model.artifact import load_artifact

    art = load_artifact(small_scene["thr"])
    handler = KerasModelHandler(small_scene["thr"], batch_size=3, large_model=True,
                                capture_errors=True)
    assert handler.share_model_across_processes()
    proxy = acquire_model(handler, new_model_tag())
    assert not isinstance(proxy, type(art))
    with pytest.raises(AttributeError):  # what broke every batch: no attributes on it
        _ = proxy.model_id
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 0.5, (5, 32, 32, 2)).astype(np.float32)
    bad = np.zeros((2, 32, 32, 3), np.float32)  # three bands for a two-band model
    empty = np.zeros((0, 32, 32, 2), np.float32)
    good, wrong, none = handler.run_inference([x, bad, empty], proxy)
    assert good.model_id == wrong.model_id == art.model_id  # from artifact.json
    np.testing.assert_array_equal(good.inference, art.predict(x, batch_size=3))
    assert isinstance(wrong.inference, InferenceError)  # refused here, not in the server
    assert wrong.inference.reason == "ArtifactError" and "(n, h, w, 2)" in wrong.inference.text
    assert none.inference.shape == (0, 32, 32)
    assert handler.bands == ("B4", "B8")


def test_a_model_replaced_after_planning_is_refused(small_scene, tmp_path):
    from model.artifact import read_meta

    meta = read_meta(small_scene["thr"])
    handler = KerasModelHandler(small_scene["thr"], meta={**meta, "model_id": "lsm-planned"})
    with pytest.raises(ArtifactError, match="lsm-planned.*replaced"):
        handler.load_model()
    with pytest.raises(ArtifactError, match="model_id"):
        KerasModelHandler(small_scene["thr"], meta={"bands": ["B4"]})


# ----------------------------------------------------------------------------- sweeps
def _sweep(config: PredictConfig, beam_args: list[str]) -> dict[str, int]:
    """Run the sweep's pipeline; RunInference's model loads and inferences."""
    from pipelines.predict.pipeline import build_pipeline
    from pipelines.predict.plan import plan_predict

    plan, elements = plan_predict(config)
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    build_pipeline(p, plan, elements)
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query()
    loads = [m.committed.count for m in metrics["distributions"]
             if m.key.metric.name == "load_model_latency_milli_secs"]
    inferred = [m.committed for m in metrics["counters"]
                if m.key.metric.name == "num_inferences"]
    return {"loads": sum(loads), "inferences": sum(inferred)}


def assert_same_sweep(a: Path, b: Path, chunks: int) -> None:
    """Same run counts, chunk and mosaic COG pixels and inventory; no dead letters."""
    import json

    run_a, run_b = (json.loads((o / "run.json").read_text()) for o in (a, b))
    assert run_a["status"] == run_b["status"] == "ok"
    assert run_a["counts"] == run_b["counts"]
    assert run_b["counts"]["chunks_computed"] == chunks and run_b["counts"]["chunks_failed"] == 0
    names = sorted(p.name for p in (a / "prob").glob("*.tif"))
    assert len(names) == chunks and names == sorted(p.name for p in (b / "prob").glob("*.tif"))
    for folder in ("prob", "mask"):
        for name in names:
            with rasterio.open(a / folder / name) as fa, rasterio.open(b / folder / name) as fb:
                assert fa.transform == fb.transform and fa.crs == fb.crs
                np.testing.assert_array_equal(fa.read(), fb.read())
    for name in ("prob.tif", "mask.tif"):
        with rasterio.open(a / "mosaic" / name) as fa, rasterio.open(b / "mosaic" / name) as fb:
            np.testing.assert_array_equal(fa.read(), fb.read())
    inv_a, inv_b = (gpd.read_file(o / "inventory.gpkg") for o in (a, b))
    assert len(inv_a) == len(inv_b) > 0
    assert sorted(inv_b["area_m2"]) == pytest.approx(sorted(inv_a["area_m2"]))
    assert sorted(inv_b["prob_max"]) == pytest.approx(sorted(inv_a["prob_max"]))
    assert set(inv_b["model_id"]) == set(inv_a["model_id"]) == {run_a["model"]["model_id"]}
    assert not (b / "failed_chunks.jsonl").exists()


def test_large_model_sweep_on_two_worker_processes_loads_the_model_once(small_scene,
                                                                       tmp_path):
    # a fresh copy: no process of this session has this artifact cached
    scene = {**small_scene, "thr": str(shutil.copytree(small_scene["thr"], tmp_path / "m"))}
    per_process = _sweep(_config(scene, tmp_path / "per_process"), MULTI_PROCESS)
    shared = _sweep(_config(scene, tmp_path / "shared", large_model=True), MULTI_PROCESS)
    assert per_process["inferences"] == shared["inferences"] == 16  # every chunk inferred
    assert per_process["loads"] == 2  # both workers ran inference, each loaded the model
    assert shared["loads"] == 1  # one load served both
    assert_same_sweep(tmp_path / "per_process", tmp_path / "shared", chunks=16)

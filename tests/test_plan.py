"""``landslides plan``: the Himalaya example through the real CLI, and tiny real models.

Numbers are checked for consistency with the pieces the sweep uses (the predict planner's
chunks, the Earth Engine source's request cutting, the lattice's windows), not for speed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines import cli
from pipelines.geo.blend import Lattice
from pipelines.geo.grid import load_region, plan_chunks
from pipelines.options.fields import default_of
from pipelines.options.plan import PlanOptions, Prices
from pipelines.options.predict import PredictConfig

ROOT = Path(__file__).resolve().parents[1]
HIMALAYA = str(ROOT / "infra" / "examples" / "himalaya.geojson")


def _plan(capsys, *args: str) -> dict:
    assert cli.main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def himalaya():
    """The plan of the Himalaya example, its text table and the seconds it took."""
    import contextlib
    import io

    out = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out):
        assert cli.main(["plan", "--aoi", HIMALAYA, "--json"]) == 0
    took = time.monotonic() - t0
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        assert cli.main(["plan", "--aoi", HIMALAYA]) == 0
    return json.loads(out.getvalue()), table.getvalue(), took


def test_himalaya_chunks_are_the_predict_planners(himalaya):
    plan, _, took = himalaya
    assert took < 60  # answers promptly (the goal is 10 s; not timed strictly here)
    g = plan["grid"]
    # the default model: 128-px windows overlapping by half -> a 64-px halo at 512 px
    assert (g["window_px"], g["stride_px"], g["halo_px"], g["pixel_size_m"]) == (
        128, 64, 64, 10.0)
    chunks = plan_chunks(load_region(HIMALAYA), 10.0, 512, halo=64)
    assert plan["chunks"] == len(chunks) == 22_655 == sum(plan["aoi"]["chunks_per_zone"].values())
    zones = sorted({f"EPSG:{c.key.epsg}" for c in chunks})
    assert plan["aoi"]["utm_zones"] == zones == ["EPSG:32643", "EPSG:32644", "EPSG:32645",
                                                 "EPSG:32646"]
    for zone, n in plan["aoi"]["chunks_per_zone"].items():
        assert n == sum(1 for c in chunks if f"EPSG:{c.key.epsg}" == zone)
    import shapely

    area = sum(shapely.from_wkb(c.region_wkb).area for c in chunks) / 1e6
    assert plan["aoi"]["area_km2"] == pytest.approx(area, rel=1e-6)


def test_himalaya_numbers_add_up(himalaya):
    plan, table, _ = himalaya
    ee, m, w, t, c = (plan[k] for k in ("earth_engine", "model", "workers", "time", "cost"))
    side = 512 + 2 * 64
    # one request per chunk: 8 float32 bands of the 640-px read fit in 48 MiB
    assert ee["dates"] == {"target": {"bands": ["B2", "B3", "B4", "B8", "B11", "B12", "DEM",
                                                "slope"],
                                      "requests": 1, "bytes": side * side * 8 * 4}}
    assert ee["requests"] == plan["chunks"] and ee["bytes"] == plan["chunks"] * side ** 2 * 32
    # the quota bound: 22,655 requests x 10 s / 40 in flight (the rate, 100/s, is looser)
    assert ee["quota_bound_s"] == pytest.approx(22_655 * 10 / 40, abs=0.1)
    assert ee["rate_bound_s"] == pytest.approx(226.6, abs=0.1)
    windows = len(Lattice(128, 64).origins(0, 512)) ** 2
    assert m["windows_per_chunk"] == windows == 81
    assert m["megapixels"] == pytest.approx(22_655 * 81 * 128 * 128 / 1e6, abs=0.1)
    assert m["rate_source"].startswith("default U-Net")
    # workers: never more processes than the budget's 40 requests in flight
    assert w["most_within_budget"] == 10 and 1 <= w["suggested"] <= 10
    assert w["processes"] == w["used"] * 4 <= 40
    assert t["wall_s"] == pytest.approx(t["startup_s"] + max(t["earth_engine_s"],
                                                             t["compute_s"]), abs=0.2)
    assert t["earth_engine_s"] >= ee["quota_bound_s"]
    hourly = 4 * 0.056 + 32 * 0.003557 + 50 * 0.000054
    assert c["workers_usd"] == pytest.approx(c["worker_hours"] * hourly, rel=1e-3)
    assert c["worker_hours"] == pytest.approx(w["used"] * t["wall_s"] / 3600, rel=1e-3)
    per_chunk = plan["outputs"]["cog_bytes_per_chunk"]
    assert 0 < per_chunk["least"] < per_chunk["most"] < 2 * 512 * 512 * 2
    assert plan["outputs"]["bytes"]["most"] == per_chunk["most"] * plan["chunks"]
    for label in ("Area", "UTM zones", "Chunks", "Earth Engine", "Quota bound", "Model",
                  "Workers", "Wall time", "Cost", "Outputs"):
        assert f"\n{label} " in f"\n{table}", label
    assert "22,655" in table and "EPSG:32646 (5,138 chunks)" in table


def test_years_workers_and_prices_change_what_they_should(capsys):
    aoi = "85.3,28.1,85.5,28.3"
    base = _plan(capsys, "--aoi", aoi)
    years = _plan(capsys, "--aoi", aoi, "--years", "2016-2023")
    assert years["periods"] == 8 and years["chunk_reads"] == 8 * base["chunks"]
    assert years["earth_engine"]["requests"] == 8 * base["earth_engine"]["requests"]
    many = _plan(capsys, "--aoi", aoi, "--workers", "64")
    assert any("would be refused" in n and "at most 10 workers" in n for n in many["notes"])
    dear = _plan(capsys, "--aoi", aoi, "--price-vcpu-hour", "0.112", "--price-gb-hour", "0",
                 "--price-disk-gb-hour", "0", "--workers", "2")
    two = _plan(capsys, "--aoi", aoi, "--price-gb-hour", "0", "--price-disk-gb-hour", "0",
                "--workers", "2")
    assert dear["cost"]["workers_usd"] == pytest.approx(2 * two["cost"]["workers_usd"],
                                                        rel=1e-3)
    budget = _plan(capsys, "--aoi", aoi, "--ee-max-concurrent-requests", "80")
    assert budget["workers"]["most_within_budget"] == 20


def _threshold_model(path: Path, bands: tuple[str, ...], **extra) -> str:
    import keras

    from model.artifact import save_artifact

    inp = keras.Input((None, None, len(bands)))
    m = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid", name="s")(inp))
    save_artifact(m, str(path), bands, patch_size=32, size_multiple=1, threshold=0.5,
                  saved_model=False, extra=extra)
    return str(path)


def test_a_tiny_real_model_is_calibrated_and_chunks_match_a_sweep(tiny_world, tmp_path,
                                                                   capsys):
    from pipelines.predict.plan import plan_predict

    model = _threshold_model(tmp_path / "thr", ("B4", "B8"))
    plan = _plan(capsys, "--aoi", tiny_world["aoi"], "--model", model, "--chunk-size", "64")
    _, elements = plan_predict(PredictConfig(
        model=model, source=tiny_world["spec"], out=str(tmp_path / "out"),
        aoi=tiny_world["aoi"], start="2016-01-01", end="2016-12-31", chunk_size=64))
    assert plan["chunks"] == len(elements) >= 4
    assert plan["grid"]["window_px"] == 32 and plan["grid"]["halo_px"] == 16
    m = plan["model"]
    assert m["rate_source"].startswith("calibrated here") and m["mpx_per_vcpu_s"] > 0
    assert m["channels"] == 2 and m["windows_per_chunk"] == len(Lattice(32, 16).origins(
        0, 64)) ** 2
    assert plan["earth_engine"]["dates"]["target"]["bands"] == ["B4", "B8"]


def test_recorded_throughput_and_stack_dates(tmp_path, capsys):
    from pipelines.geo.stack import StackSpec, parse_references

    spec = StackSpec(("B8", "B4"), parse_references("prev=-1y"), change=("B4",))
    model = _threshold_model(tmp_path / "stack", spec.channels, stack=spec.to_dict(),
                             throughput={"mpx_per_vcpu_s": 1.5, "device": "test vCPU"})
    plan = _plan(capsys, "--aoi", "85.3,28.1,85.32,28.12", "--model", model)
    assert plan["model"]["rate_source"] == "recorded in the artifact"
    assert plan["model"]["mpx_per_vcpu_s"] == 1.5
    dates = plan["earth_engine"]["dates"]
    assert set(dates) == {"target", "prev"} and plan["earth_engine"]["requests_per_chunk"] == 2
    assert plan["earth_engine"]["requests"] == 2 * plan["chunks"]


@pytest.mark.parametrize("args, message", [
    (["--machine-type", "quantum-4"], "Unknown machine type 'quantum-4'"),
    (["--model", "/nonexistent/model"], "Model artifact '/nonexistent/model' cannot be read"),
    (["--overlap", "1.2"], "--overlap must be in [0, 1)"),
    (["--years", "2020-2016"], "the end comes before the start"),
    (["--worker-gpus", "1"], "--worker-gpus needs the model's rate on that GPU"),
])
def test_bad_input_names_the_value_and_the_fix(args, message, capsys):
    assert cli.main(["plan", "--aoi", "85.3,28.1,85.32,28.12", *args]) == 2
    assert message in capsys.readouterr().err


def test_defaults_are_the_sweeps_and_beams_prices():
    from apache_beam.testing.load_tests import dataflow_cost_consts as beam_prices

    prices = Prices()
    assert (prices.vcpu_hour, prices.memory_gb_hour, prices.disk_gb_hour, prices.gpu_hour) == (
        beam_prices.VCPU_PER_HR_BATCH, beam_prices.MEM_PER_GB_HR_BATCH,
        beam_prices.PD_PER_GB_HR, beam_prices.L4_PER_GPU_PER_HOUR)
    plan_fields = {f.name: f for f in dataclasses.fields(PlanOptions)}
    for f in dataclasses.fields(PredictConfig):
        if f.name in plan_fields and f.name not in ("model", "aoi"):
            assert default_of(plan_fields[f.name]) == default_of(f), f.name
    assert np.isclose(default_of(plan_fields["overlap"]), 0.5)


@pytest.mark.parametrize("chunk_size", [512, 500, 600])
def test_windows_are_the_ones_the_sweep_infers_over_the_planned_chunks(chunk_size, capsys):
    """With a chunk size that is not a multiple of the stride (64), chunks at different
    places on the lattice infer different numbers of windows; the plan counts them all."""
    from pipelines.geo.blend import chunk_windows
    from pipelines.plan import model_meta
    from pipelines.predict.plan import sweep_geometry

    aoi = "85.0,27.5,85.3,27.8"
    plan = _plan(capsys, "--aoi", aoi, "--chunk-size", str(chunk_size), "--years",
                 "2016-2017")
    lattice, halo, pixel_size = sweep_geometry(model_meta(None), None, 0.5, chunk_size, None)
    chunks = plan_chunks(load_region(aoi), pixel_size, chunk_size, halo=halo)
    swept = sum(len(chunk_windows(lattice, c.read_grid, halo)) for c in chunks)
    m = plan["model"]
    assert plan["chunks"] == len(chunks)
    assert m["megapixels"] == pytest.approx(2 * swept * 128 * 128 / 1e6, abs=0.1)
    assert m["windows_per_chunk"] * len(chunks) == pytest.approx(swept, abs=0.5)
    assert m["windows"] == swept


def _gpu_plan(capsys, machine: str, *args: str) -> dict:
    return _plan(capsys, "--aoi", "85.0,27.5,85.5,28.0", "--machine-type", machine,
                 "--workers", "1", "--ee-seconds-per-request", "0.01", *args)


def test_gpu_workers_need_a_gpu_rate_not_the_artifacts_cpu_rate(tmp_path, capsys):
    model = _threshold_model(tmp_path / "cpu", ("B4", "B8"),
                             throughput={"mpx_per_vcpu_s": 0.43})
    args = ["plan", "--aoi", "85.3,28.1,85.32,28.12", "--model", model, "--worker-gpus", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--worker-gpus needs the model's rate on that GPU" in err
    assert "--model-rate" in err and "mpx_per_gpu_s" in err
    # a calibration here (no recorded rate) is a CPU rate too: refused, not measured
    bare = _threshold_model(tmp_path / "bare", ("B4", "B8"))
    assert cli.main(["plan", "--aoi", "85.3,28.1,85.32,28.12", "--model", bare,
                     "--worker-gpus", "1"]) == 2
    assert "--worker-gpus needs the model's rate on that GPU" in capsys.readouterr().err

    gpu = _threshold_model(tmp_path / "gpu", ("B4", "B8"),
                           throughput={"mpx_per_vcpu_s": 0.43, "mpx_per_gpu_s": 25.0})
    plan = _plan(capsys, "--aoi", "85.3,28.1,85.32,28.12", "--model", gpu, "--worker-gpus",
                 "1")
    m = plan["model"]
    assert m["rate_source"] == "recorded in the artifact, per GPU"
    assert m["rate_unit"] == "GPU" and m["mpx_per_gpu_s"] == 25.0
    assert "mpx_per_vcpu_s" not in m
    assert m["gpu_hours"] == pytest.approx(m["megapixels"] / 25.0 / 3600, abs=1e-4)


def test_gpu_compute_is_spread_over_gpus_not_vcpus(capsys):
    """One GPU is as fast on a VM with 4 vCPUs as on one with 16; a GPU worker runs one
    SDK process (no_use_multiple_sdk_containers), which the Earth Engine split uses."""
    plans = {mt: _gpu_plan(capsys, mt, "--worker-gpus", "1", "--model-rate", "20")
             for mt in ("n1-standard-4", "n1-standard-8", "n1-standard-16")}
    for mt, plan in plans.items():
        t, w, m = plan["time"], plan["workers"], plan["model"]
        assert t["compute_s"] == pytest.approx(m["megapixels"] / 20, abs=0.1), mt
        assert w["processes"] == 1 and w["processes_per_worker"] == 1, mt
        assert m["rate_source"] == "given (--model-rate), per GPU"
        assert w["most_within_budget"] == 40, mt  # one process per worker: 40 workers
        assert plan["earth_engine"]["requests_in_flight"] == 40, mt
        assert any("no_use_multiple_sdk_containers" in n for n in plan["notes"]), mt
    two = _gpu_plan(capsys, "n1-standard-8", "--worker-gpus", "2", "--model-rate", "20")
    assert two["time"]["compute_s"] == pytest.approx(
        plans["n1-standard-8"]["time"]["compute_s"] / 2, abs=0.1)
    # CPU workers are unchanged: one SDK process per vCPU, the rate per vCPU
    cpu = _gpu_plan(capsys, "n1-standard-8", "--model-rate", "0.5")
    assert cpu["workers"]["processes"] == 8 and cpu["model"]["rate_unit"] == "vCPU"
    assert cpu["time"]["compute_s"] == pytest.approx(cpu["model"]["megapixels"] / 0.5 / 8,
                                                     abs=0.1)

"""Planning a sweep of an event catalogue: one output folder per event, or a refusal."""

from __future__ import annotations

import json

import pytest
from pyproj import Transformer

from pipelines.errors import ConfigError
from pipelines.geo import aoi_inputs
from pipelines.geo.aoi_inputs import AOI
from pipelines.geo.grid import Region, point_region
from pipelines.predict import PredictConfig, plan_predict, run_predict
from tests.predict.conftest import TINY_GRID, TINY_LEFT, TINY_TOP

#: Two events with the same id, and a third whose own id is the name the second one gets
#: as a repeat in earlier versions: three events, three folders.
EVENTS = ("event_id,event_date,latitude,longitude\n"
          "a,2020-06-01,{lat},{lon}\n"
          "a,2020-07-01,{lat},{lon}\n"
          "a-1,2021-01-01,{lat},{lon}\n")


def _centre() -> tuple[float, float]:
    """(lat, lon) of the landslide of the tiny scene (row 25, col 33)."""
    lon, lat = Transformer.from_crs(TINY_GRID.crs, "EPSG:4326", always_xy=True).transform(
        TINY_LEFT + 33 * 10, TINY_TOP - 25 * 10)
    return lat, lon


def _config(scene: dict, out, events: str) -> PredictConfig:
    return PredictConfig(model=scene["thr"], out=str(out), events=events, buffer_m=120.0,
                         days_after=60, source={"kind": "geotiff", "images": [scene["tif"]]},
                         chunk_size=32, retries=0)


def test_events_named_like_a_repeated_id_sweep_into_folders_of_their_own(tiny_scene,
                                                                          tmp_path):
    lat, lon = _centre()
    csv = tmp_path / "events.csv"
    csv.write_text(EVENTS.format(lat=lat, lon=lon))
    out = tmp_path / "out"
    config = _config(tiny_scene, out, str(csv))
    plan, _ = plan_predict(config)
    assert len({j.out for j in plan.jobs}) == 3
    runs = run_predict(config)
    assert [r["status"] for r in runs] == ["ok"] * 3
    # each event's products, run.json last, in its own folder: none overwrote another's
    starts = {}
    for job in plan.jobs:
        run = json.loads((out / job.name / "run.json").read_text())
        starts[job.name] = run["aoi"]["start"]
        assert run["counts"]["polygons"] == 1
    assert starts == {"a": "2020-06-01", "a-2": "2020-07-01", "a-1": "2021-01-01"}
    summary = json.loads((out / "events.json").read_text())["events"]
    assert sorted(e["out"] for e in summary) == sorted(str(out / n) for n in starts)


def test_two_sweeps_into_one_folder_are_refused_before_any_work(tiny_scene, tmp_path,
                                                                 monkeypatch):
    """The last guard, whatever names the AOIs come with: a clear error, nothing written."""
    lat, lon = _centre()
    wkb = point_region(lat, lon, 120.0).wkb
    twins = [AOI("a", Region("event a", wkb), "2020-06-01", "2020-07-31", "2020-06-01"),
             AOI("b", Region("event b", wkb), "2020-06-01", "2020-07-31", "2020-06-01"),
             AOI("a", Region("event a", wkb), "2020-07-01", "2020-08-30", "2020-07-01")]
    out = tmp_path / "out"
    config = _config(tiny_scene, out, str(tmp_path / "events.csv"))
    match = (r"2 sweeps would write into the same folder '.*out/a' \(event a "
             r"2020-06-01\.\.2020-07-31; event a 2020-07-01\.\.2020-08-30\) and overwrite.*"
             r"Give each event of '.*events.csv' an id of its own")
    # an event reader that named two events alike (the catalogue is never read here)
    monkeypatch.setattr(aoi_inputs, "resolve_aois", lambda *args, **kwargs: twins)
    with pytest.raises(ConfigError, match=match):
        run_predict(config)
    assert not out.exists()

    from pipelines.predict.plan import job_folders

    assert job_folders(config, twins[:2]) == [str(out / "a"), str(out / "b")]
    with pytest.raises(ConfigError, match=match):
        job_folders(config, twins)


# ----------------------------------------------------------------- events outside the source
def test_events_outside_the_source_are_listed_in_events_json_and_the_last_log_line(
        tiny_scene, tmp_path, caplog):
    """A catalogue wider than the imagery: the event inside is swept, the one outside is
    skipped by design (exit 0: no rerun could sweep it), but the outputs say so, not
    only a log line of the planning."""
    from pipelines.predict.run import predict_command

    lat, lon = _centre()
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,event_date,latitude,longitude\n"
                   f"inside,2020-06-01,{lat},{lon}\n"
                   "far-away,2020-06-20,45.0,10.0\n")
    out = tmp_path / "out"
    config = _config(tiny_scene, out, str(csv))
    plan, _ = plan_predict(config)
    assert [j.name for j in plan.jobs] == ["inside"]
    assert [e["name"] for e in plan.skipped] == ["far-away"]
    caplog.clear()
    assert predict_command(config) == 0
    summary = json.loads((out / "events.json").read_text())
    assert [e["name"] for e in summary["events"]] == ["inside"]
    (skipped,) = summary["skipped"]
    assert {k: skipped[k] for k in ("name", "date", "start", "end", "reason")} == {
        "name": "far-away", "date": "2020-06-20", "start": "2020-06-20",
        "end": "2020-08-19", "reason": "outside_source"}
    assert (skipped["latitude"], skipped["longitude"]) == pytest.approx((45.0, 10.0),
                                                                        abs=1e-4)
    assert "lies outside the data of geotiff source" in skipped["error"]
    assert not (out / "far-away").exists()
    last = caplog.records[-1]
    assert last.levelname == "WARNING" and last.name == "pipelines.predict.run"
    assert "far-away" in last.getMessage() and str(out / "events.json") in last.getMessage()


def test_a_catalogue_all_inside_the_source_lists_no_skipped_event(tiny_scene, tmp_path):
    lat, lon = _centre()
    csv = tmp_path / "events.csv"
    csv.write_text(f"event_id,event_date,latitude,longitude\ninside,2020-06-01,{lat},{lon}\n")
    out = tmp_path / "out"
    run_predict(_config(tiny_scene, out, str(csv)))
    assert json.loads((out / "events.json").read_text())["skipped"] == []


# ----------------------------------------------------------------- resume across runs
def _sweep(scene: dict, out, **changes) -> dict:
    """Sweep the tiny scene's AOI into ``out``; returns run.json and the masks' pixels."""
    import numpy as np
    import rasterio

    from pipelines.predict.run import run_predict

    config = PredictConfig(**{"model": scene["thr"], "out": str(out), "aoi": scene["aoi"],
                              "start": "2020-01-01", "end": "2020-12-31",
                              "source": {"kind": "geotiff", "images": [scene["tif"]]},
                              "chunk_size": 32, "retries": 0, **changes})
    (run,) = run_predict(config)
    masks = {}
    for path in sorted((out / "mask").glob("*.tif")):
        with rasterio.open(path) as src:
            masks[path.name] = np.asarray(src.read(1))
    return {"run": run, "masks": masks}


def _same_products(a: dict, b: dict) -> None:
    import numpy as np

    assert a["run"]["counts"]["landslide_px"] == b["run"]["counts"]["landslide_px"]
    assert a["run"]["counts"]["polygons"] == b["run"]["counts"]["polygons"]
    assert a["masks"].keys() == b["masks"].keys()
    for name in a["masks"]:
        np.testing.assert_array_equal(a["masks"][name], b["masks"][name])


def test_a_rerun_with_another_threshold_or_model_reuses_no_chunk(tiny_scene, tmp_path):
    """The done-records of an earlier run into the same --out are reused only for the same
    threshold and model: each chunk's signature holds both (``check_precision`` never
    sees them), so a rerun with another of either recomputes every chunk and writes what
    a sweep into an empty folder writes."""
    import geopandas as gpd

    out = tmp_path / "out"
    first = _sweep(tiny_scene, out)
    assert first["run"]["counts"]["chunks_computed"] == 4
    again = _sweep(tiny_scene, out)  # the control: the same inputs reuse every chunk
    assert (again["run"]["counts"]["chunks_computed"],
            again["run"]["counts"]["chunks_skipped"]) == (0, 4)

    # another threshold: at 0.05 bright background pixels join the landslide
    lower = _sweep(tiny_scene, out, threshold=0.05)
    assert (lower["run"]["counts"]["chunks_computed"],
            lower["run"]["counts"]["chunks_skipped"]) == (4, 0)
    assert lower["run"]["model"]["threshold"] == 0.05
    fresh = _sweep(tiny_scene, tmp_path / "fresh_low", threshold=0.05)
    _same_products(lower, fresh)
    assert lower["run"]["counts"]["landslide_px"] > first["run"]["counts"]["landslide_px"]

    # another model (another model id), at the same threshold
    other = _sweep(tiny_scene, out, threshold=0.05, model=tiny_scene["explainable"])
    assert (other["run"]["counts"]["chunks_computed"],
            other["run"]["counts"]["chunks_skipped"]) == (4, 0)
    model_id = other["run"]["model"]["model_id"]
    assert model_id != lower["run"]["model"]["model_id"]
    assert set(gpd.read_file(out / "inventory.gpkg")["model_id"]) == {model_id}
    _same_products(other, _sweep(tiny_scene, tmp_path / "fresh_other", threshold=0.05,
                                 model=tiny_scene["explainable"]))

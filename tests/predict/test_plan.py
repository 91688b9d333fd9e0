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

"""Submitted sweeps that end badly, periods not ended yet, reference edits, stale sweeps."""

from __future__ import annotations

import datetime as dt
import json
import types

import pytest

from tests.scan.conftest import MODEL_ID


@pytest.fixture
def submit_jobs(stub_scan, monkeypatch):
    """``--submit-only`` sweeps that run elsewhere: submitting writes no ``run.json``."""
    import pipelines.beam_util
    import pipelines.predict
    import pipelines.predict.pipeline

    jobs: list[str] = []

    base = dt.datetime.now(dt.UTC)

    def plan_predict(config):  # each launch a second later than the last (run.json's key)
        started = base + dt.timedelta(seconds=len(jobs))
        return (types.SimpleNamespace(sources=(), started=started.isoformat(
            timespec="seconds")), [])

    def build_pipeline(p, sweep, elements):
        jobs.append(sweep.started)

    class Result:
        def job_id(self) -> str:
            return f"job-{len(jobs)}"

    monkeypatch.setattr(pipelines.predict, "plan_predict", plan_predict)
    monkeypatch.setattr(pipelines.predict.pipeline, "build_pipeline", build_pipeline)
    monkeypatch.setattr(pipelines.beam_util, "submit", lambda p, opts: Result())
    return jobs


def test_a_submitted_sweep_that_ended_partial_fails_and_resubmission_is_bounded(
        stub_scan, submit_jobs):
    """--submit-only: a sweep that ended 'partial' fails its period (exit 1) instead of
    being reported in flight, is submitted again on the next run, and after
    MAX_SUBMISSIONS attempts is not submitted again."""
    from pipelines import cli
    from pipelines.scan import ScanConfig
    from pipelines.scan.run import MAX_SUBMISSIONS

    stub_scan.write_reference(2016)
    path = stub_scan.config()
    cfg = ScanConfig.from_yaml(path)
    sweep = stub_scan.out / "periods" / "2016" / "sweep"

    def job_ends_partial() -> None:
        run = {"status": "partial", "model": {"model_id": MODEL_ID},
               "config": cfg.predict_config(cfg.periods[0]).to_dict(),
               "counts": {"chunks_failed": 7}, "failures": {"reasons": {"quota": 7}},
               "timings": {"started": submit_jobs[-1]}}
        (sweep / "run.json").write_text(json.dumps(run))

    def actions() -> list[str]:
        return [p["action"] for p in stub_scan.scan_record()["periods"]]

    for attempt in range(1, MAX_SUBMISSIONS + 1):
        assert cli.main(["scan", "--config", path, "--submit-only"]) == 0
        assert actions() == ["submitted"]
        assert len(submit_jobs) == attempt
        job_ends_partial()
        assert cli.main(["scan", "--config", path, "--submit-only"]) == 1
        assert actions() == ["failed"]
        error = stub_scan.scan_record()["periods"][0]["error"]
        assert "7 chunk(s) failed" in error and f"attempt {attempt} of" in error
        sub = json.loads((stub_scan.out / "periods" / "2016" / "submitted.json").read_text())
        assert sub["attempts"] == attempt
    # the bound: not submitted a fourth time, the period keeps failing, naming the attempts
    assert cli.main(["scan", "--config", path, "--submit-only"]) == 1
    assert len(submit_jobs) == MAX_SUBMISSIONS
    assert f"submitted {MAX_SUBMISSIONS} times" in stub_scan.scan_record()["periods"][0]["error"]


def test_a_period_whose_window_has_not_ended_is_not_swept_and_the_scan_does_not_fail(
        stub_scan):
    """A period ending in the future is left out with its own action, listed as not done,
    and the scan still exits 0; a period recorded done before its end is not done."""
    from pipelines import cli

    stub_scan.write_reference(2016)
    path = stub_scan.config(periods=[
        {"name": "y2016", "start": "2016-01-01", "end": "2017-01-01"},
        {"name": "future", "start": "2016-06-01", "end": "2099-01-01"}])
    assert cli.main(["scan", "--config", path]) == 0
    record = stub_scan.scan_record()
    assert [(p["period"], p["action"]) for p in record["periods"]] == \
        [("y2016", "done"), ("future", "not_ended")]
    assert record["failed"] == []
    assert len(stub_scan.sweeps) == 1
    summary = json.loads((stub_scan.out / "summary" / "trends.json").read_text())
    assert summary["periods_not_done"] == ["future"]


def test_a_period_recorded_done_before_its_window_ended_is_redone(stub_scan):
    """A done-record completed before the period's end (made while its imagery was still
    coming in) does not count: the period is done again."""
    from pipelines import cli

    stub_scan.write_reference(2016)
    path = stub_scan.config()
    assert cli.main(["scan", "--config", path]) == 0
    record_path = stub_scan.out / "periods" / "2016" / "period.json"
    rec = json.loads(record_path.read_text())
    rec["completed"] = "2016-11-30T12:00:00+00:00"
    record_path.write_text(json.dumps(rec))
    assert cli.main(["scan", "--config", path]) == 0
    assert [p["action"] for p in stub_scan.scan_record()["periods"]] == ["done"]


def test_a_corrected_reference_file_is_compared_again_without_a_new_sweep(stub_scan):
    """The reference inventory's content is in the period's fingerprint: edited in place,
    the period is compared again (new metrics), its sweep is kept."""
    import geopandas as gpd
    from shapely.geometry import box

    from pipelines import cli
    from tests.scan.conftest import LANDSLIDE

    stub_scan.write_reference(2016)
    path = stub_scan.config()
    assert cli.main(["scan", "--config", path]) == 0
    trends = stub_scan.out / "summary" / "trends.json"
    assert json.loads(trends.read_text())["rows"][0]["reference_count"] == 1
    gpd.GeoDataFrame(geometry=[LANDSLIDE, box(85.010, 27.010, 85.011, 27.011)],
                     crs="EPSG:4326").to_file(stub_scan.folder / "ref_2016.gpkg", mode="w")
    assert cli.main(["scan", "--config", path]) == 0
    assert [p["action"] for p in stub_scan.scan_record()["periods"]] == ["done"]
    assert json.loads(trends.read_text())["rows"][0]["reference_count"] == 2
    assert len(stub_scan.sweeps) == 1  # only the comparison ran again


def test_a_done_period_whose_run_json_an_older_job_overwrote_is_redone(stub_scan):
    """An older job (another predict configuration) that ends after the period was done
    writes over its sweep's run.json: the period is no longer done, it is swept again."""
    from pipelines import cli
    from pipelines.scan import ScanConfig

    stub_scan.write_reference(2016)
    path = stub_scan.config(predict={"threshold": 0.7})
    assert cli.main(["scan", "--config", path]) == 0
    old = ScanConfig.from_yaml(stub_scan.config("old", predict={"threshold": 0.5}))
    run = {"status": "ok", "model": {"model_id": MODEL_ID},
           "config": old.predict_config(old.periods[0]).to_dict(),
           "timings": {"started": "2020-01-01T00:00:00+00:00"}}
    (stub_scan.out / "periods" / "2016" / "sweep" / "run.json").write_text(json.dumps(run))
    assert cli.main(["scan", "--config", path]) == 0
    assert [p["action"] for p in stub_scan.scan_record()["periods"]] == ["done"]
    assert len(stub_scan.sweeps) == 2

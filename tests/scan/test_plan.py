"""What a scan run decides per period: a finished sweep counts only for the inputs it was
made from (the region's content included), and a sweep in flight stays in flight when
only a compare option changes."""

from __future__ import annotations

from pipelines import cli


def test_an_edited_region_file_is_swept_again(stub_scan):
    stub_scan.write_reference(2016)
    path = stub_scan.config()
    assert cli.main(["scan", "--config", path]) == 0
    assert len(stub_scan.sweeps) == 1
    assert cli.main(["scan", "--config", path]) == 0  # done: skipped
    assert len(stub_scan.sweeps) == 1

    stub_scan.write_region(85.03)  # the same file, a larger region
    assert cli.main(["scan", "--config", path]) == 0
    assert len(stub_scan.sweeps) == 2  # not the old region's sweep, compared again
    assert [p["action"] for p in stub_scan.scan_record()["periods"]] == ["done"]

    # a compare option alone changed: the sweep of these inputs is kept, compared again
    assert cli.main(["scan", "--config", stub_scan.config(
        compare={"figures": False, "resolution": 10.0, "min_area": 50.0})]) == 0
    assert len(stub_scan.sweeps) == 2
    assert [p["action"] for p in stub_scan.scan_record()["periods"]] == ["done"]


def test_a_sweep_in_flight_is_not_submitted_again_for_a_compare_option(stub_scan,
                                                                      monkeypatch):
    """--submit-only: the submitted sweep has not finished; a run whose compare options
    changed waits for it instead of submitting the same sweep a second time."""
    import types

    import apache_beam as beam

    import pipelines.predict
    import pipelines.predict.pipeline
    from pipelines.scan import ScanConfig, plan_scan
    from pipelines.scan.run import check_inputs, run_scan

    submitted: list[str] = []

    def plan_predict(config):
        return (types.SimpleNamespace(sources=(), started="2024-01-01T00:00:00+00:00"),
                [])

    def build_pipeline(p, sweep, elements):  # a job that will finish later: writes nothing
        submitted.append("job")
        _ = p | beam.Create([0])

    monkeypatch.setattr(pipelines.predict, "plan_predict", plan_predict)
    monkeypatch.setattr(pipelines.predict.pipeline, "build_pipeline", build_pipeline)
    first = ScanConfig.from_yaml(stub_scan.config())
    record = run_scan(first, submit_only=True)
    assert [p["action"] for p in record["periods"]] == ["submitted"]
    assert len(submitted) == 1

    other = ScanConfig.from_yaml(stub_scan.config(
        "other", compare={"figures": False, "resolution": 10.0, "min_area": 50.0}))
    inputs = check_inputs(other)
    assert [(e.action, e.note[:16]) for e in plan_scan(other, inputs, other.periods,
                                                       submit_only=True)] == \
        [("wait", "sweep submitted ")]
    record = run_scan(other, submit_only=True)
    assert [p["action"] for p in record["periods"]] == ["in_flight"]
    assert len(submitted) == 1
    # a predict option is another sweep: it is submitted
    third = ScanConfig.from_yaml(stub_scan.config("third", predict={"threshold": 0.7}))
    assert [e.action for e in plan_scan(third, inputs, third.periods, submit_only=True)] == \
        ["run"]

"""Running a scan: a period is done only when its sweep and its comparison are complete."""

from __future__ import annotations

from pipelines import cli


def test_a_partial_comparison_fails_the_period_and_is_retried(stub_scan):
    """The 2017 reference is missing: compare is ``partial``, so 2017 is not done, the scan
    exits 1, and once the reference exists the next run compares it (its sweep kept)."""
    stub_scan.write_reference(2016)
    path = stub_scan.config(periods={"years": "2016-2017"})
    assert cli.main(["scan", "--config", path]) == 1
    record = stub_scan.scan_record()
    assert record["failed"] == ["2017"] and record["done_periods"] == ["2016"]
    error = next(p["error"] for p in record["periods"] if p["period"] == "2017")
    assert "incomplete" in error and "ref_2017.gpkg" in error
    periods = stub_scan.out / "periods"
    assert (periods / "2016" / "period.json").exists()
    assert not (periods / "2017" / "period.json").exists()
    assert len(stub_scan.sweeps) == 2

    stub_scan.write_reference(2017)  # the reference arrives
    assert cli.main(["scan", "--config", path]) == 0
    record = stub_scan.scan_record()
    assert [p["action"] for p in record["periods"]] == ["skipped", "done"]
    assert record["done_periods"] == ["2016", "2017"]
    assert len(stub_scan.sweeps) == 2  # compared again, not swept again

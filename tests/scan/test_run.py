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


def test_a_reference_without_year_is_the_same_in_every_period_and_the_summary_says_so(
        stub_scan):
    """One reference inventory (no {year}, no {period}) against three yearly sweeps: each
    period is compared with it, and the summary gives it no trend, peak or correlation."""
    import json

    import geopandas as gpd

    from tests.scan.conftest import LANDSLIDE

    gpd.GeoDataFrame(geometry=[LANDSLIDE], crs="EPSG:4326").to_file(
        stub_scan.folder / "ref.gpkg")
    path = stub_scan.config(periods={"years": "2016-2018"}, reference="ref.gpkg")
    assert cli.main(["scan", "--config", path]) == 0
    summary = stub_scan.out / "summary"
    trends = json.loads((summary / "trends.json").read_text())
    assert trends["reference_same_every_period"] is True
    assert [r["reference_count"] for r in trends["rows"]] == [1, 1, 1]
    for name in ("predicted_vs_reference_count", "predicted_vs_reference_total_area",
                 "reference_count_vs_time"):
        assert trends["correlations"][name]["r"] is None
        assert trends["correlations"][name]["note"] == (
            "undefined: the reference is the same inventory every period")
    page = (summary / "summary.html").read_text()
    assert "it is the same inventory in every period" in page


def test_a_reference_with_year_is_not_marked_static(stub_scan):
    import json

    for year in (2016, 2017):
        stub_scan.write_reference(year)
    assert cli.main(["scan", "--config", stub_scan.config(
        periods={"years": "2016-2017"})]) == 0
    summary = stub_scan.out / "summary"
    assert json.loads((summary / "trends.json").read_text())[
        "reference_same_every_period"] is False
    assert "same inventory in every period" not in (summary / "summary.html").read_text()

"""``--years`` with paths that hold no ``{year}``: refused, or one side marked static.

Without ``{year}`` in any path, every year compared the same files and the report showed
one result as a multi-temporal one. One reference inventory against yearly predictions
is a real use (an event or multi-year inventory as the truth for each year's map): it
runs, and metrics.json, stats.csv and the report say the reference is the same every year.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from pipelines.cli import main
from pipelines.compare import CompareConfig, run_compare
from pipelines.errors import ConfigError

UTM = "EPSG:32645"
X0, Y0 = 340000.0, 3100000.0


def _write(path: Path, n: int) -> str:
    polys = [box(X0 + i * 100, Y0, X0 + i * 100 + 50, Y0 + 50) for i in range(n)]
    gpd.GeoDataFrame(geometry=polys, crs=UTM).to_file(path)
    return str(path)


@pytest.fixture
def files(tmp_path) -> dict:
    """A static reference (6 landslides) and predictions of 2015-2017 (3, 4, 5 of them)."""
    for year in (2015, 2016, 2017):
        _write(tmp_path / f"pred_{year}.gpkg", year - 2012)
        _write(tmp_path / f"ref_{year}.gpkg", 6)
    return {"ref": _write(tmp_path / "ref.gpkg", 6), "pred": _write(tmp_path / "pred.gpkg", 4),
            "ref_t": str(tmp_path / "ref_{year}.gpkg"),
            "pred_t": str(tmp_path / "pred_{year}.gpkg")}


def test_years_without_year_in_any_path_are_refused(files, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--years 2015-2017 was given but the reference "
                       r"path '.*ref\.gpkg' and the predicted path '.*pred\.gpkg' hold no "
                       r"\{year\}.*Put \{year\} in the paths"):
        CompareConfig(reference=files["ref"], predicted=files["pred"], out=str(tmp_path / "o"),
                      years=(2015, 2016, 2017))
    with pytest.raises(ConfigError, match=r"--years 2015,2017 was given but the reference "
                       r"path '.*ref\.gpkg' holds no \{year\}"):  # statistics only
        CompareConfig(reference=files["ref"], out=str(tmp_path / "o"), years="2015,2017")
    out = tmp_path / "cli"
    assert main(["-q", "compare", "--reference", files["ref"], "--predicted", files["pred"],
                 "--years", "2015-2017", "--no-figures", "--out", str(out)]) == 2
    assert "Put {year} in the paths" in capsys.readouterr().err
    assert not out.exists()
    # one side with {year} is enough; no years and no {year} is a single comparison
    CompareConfig(reference=files["ref"], predicted=files["pred_t"], out=str(out),
                  years=(2015, 2016))
    assert CompareConfig(reference=files["ref"], predicted=files["pred"],
                         out=str(out)).static_sides == ()


def test_a_static_reference_against_yearly_predictions_says_so(files, tmp_path):
    out = tmp_path / "o"
    m = run_compare(CompareConfig(reference=files["ref"], predicted=files["pred_t"],
                                  out=str(out), years=(2015, 2016, 2017), resolution=10.0))
    assert m["status"] == "ok" and m["same_every_year"] == ["reference"]
    # each year's prediction is scored against the one reference
    assert [m["years"][y]["object"]["n_found"] for y in ("2015", "2016", "2017")] == [3, 4, 5]
    mt = m["multitemporal"]
    assert mt["same_every_year"] == ["reference"]
    assert "'" + files["ref"] + "' holds no {year}" in mt["note"]
    assert "same inventory in every year (2015, 2016, 2017)" in mt["note"]
    # no trend of the reference: no peak year, no change, no correlation with it
    assert mt["peak_year"] == {"reference": None, "predicted": 2017}
    assert [r["reference_count_change"] for r in mt["rows"]] == [None, None, None]
    assert [r["predicted_count"] for r in mt["rows"]] == [3, 4, 5]
    for name in ("pearson_count", "pearson_total_area"):
        assert mt[name]["r"] is None
        assert mt[name]["note"] == "undefined: the reference is the same inventory every year"
    assert json.loads((out / "metrics.json").read_text())["same_every_year"] == ["reference"]
    with (out / "stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    notes = {(r["inventory"], r["year"]): r["notes"] for r in rows}
    for year in ("2015", "2016", "2017"):
        assert "the same reference inventory every year" in notes[("reference", year)]
        assert "same" not in notes[("predicted", year)]
    page = (out / "report.html").read_text()
    assert "About this comparison" in page and "same inventory in every year" in page
    # the reference has no peak year: the report names the predicted one's only
    assert "reference None" not in page and "Peak year: predicted 20" in page


def test_a_static_prediction_against_yearly_references_says_so(files, tmp_path):
    m = run_compare(CompareConfig(reference=files["ref_t"], predicted=files["pred"],
                                  out=str(tmp_path / "o"), years=(2015, 2016), resolution=10.0,
                                  figures=False))
    assert m["status"] == "ok" and m["same_every_year"] == ["predicted"]
    mt = m["multitemporal"]
    assert mt["peak_year"]["predicted"] is None and mt["peak_year"]["reference"] == 2015
    assert "The predicted path" in mt["note"]


def test_paths_with_year_are_not_marked(files, tmp_path):
    m = run_compare(CompareConfig(reference=files["ref_t"], predicted=files["pred_t"],
                                  out=str(tmp_path / "o"), years=(2015, 2016, 2017),
                                  resolution=10.0, figures=False))
    assert m["same_every_year"] == [] and "note" not in m["multitemporal"]
    assert m["multitemporal"]["peak_year"] == {"reference": 2015, "predicted": 2017}
    assert "same inventory" not in (tmp_path / "o" / "report.html").read_text()

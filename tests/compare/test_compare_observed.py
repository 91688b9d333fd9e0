"""`compare --observed-only`: reference landslides a raster prediction never saw are not scored.

A 60 x 60 px (10 m) sweep-like mask (0/1, 255 = no data) with a 20 x 20 px block of no
data in its north-west corner, and a handful of pixel-aligned reference boxes: one fully
under the no data, one 70 % observed, one 40 % observed, one exactly half observed, and
fully observed ones (one found, one missed). Shares are exact: every edge is a pixel edge.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from pipelines.cli import main
from pipelines.compare import CompareConfig, run_compare
from pipelines.geo.cog import CATEGORICAL, write_cog
from pipelines.geo.grid import PixelGrid

UTM = "EPSG:32645"
X0, Y0, RES, N = 330_000.0, 3_110_000.0, 10.0, 60
GRID = PixelGrid(UTM, (RES, 0.0, X0, 0.0, -RES, Y0), N, N)
NODATA = (slice(0, 20), slice(0, 20))  # rows, cols of the no-data block
RULE = "at least half outside"  # from the report's sentence on the rule


def px_box(r0: int, r1: int, c0: int, c1: int):
    """The map polygon of pixel rows r0..r1-1 and columns c0..c1-1."""
    return box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES)


# reference landslides (rows, cols)
HIDDEN = (5, 10, 5, 10)       # entirely under the no data
SEVENTY = (5, 10, 17, 27)     # cols 17-19 under the no data: 70 % observed, predicted
FORTY = (14, 24, 10, 15)      # rows 14-19 under the no data: 40 % observed
FOUND = (30, 36, 30, 36)      # observed, predicted exactly
MISSED = (40, 45, 5, 10)      # observed, not predicted
FALSE_ALARM = (50, 55, 45, 50)


def write_ref(path: Path, boxes) -> None:
    gpd.GeoDataFrame(geometry=[px_box(*b) for b in boxes], crs=UTM).to_file(path)


def write_mask(path: Path, predicted, nodata=NODATA) -> np.ndarray:
    mask = np.zeros((N, N), np.uint8)
    for r0, r1, c0, c1 in predicted:
        mask[r0:r1, c0:c1] = 1
    if nodata is not None:
        mask[nodata] = 255
    write_cog(str(path), mask, GRID, nodata=255, profile=CATEGORICAL, overviews=False)
    return mask


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def inputs(tmp_path) -> dict:
    write_ref(tmp_path / "ref.gpkg", (HIDDEN, SEVENTY, FOUND, MISSED))
    mask = write_mask(tmp_path / "mask.tif", (SEVENTY, FOUND, FALSE_ALARM))
    return {"ref": str(tmp_path / "ref.gpkg"), "pred": str(tmp_path / "mask.tif"),
            "mask": mask, "dir": tmp_path}


def compare(inputs: dict, name: str, **kw) -> dict:
    return run_compare(CompareConfig(reference=inputs["ref"], predicted=inputs["pred"],
                                     out=str(inputs["dir"] / name), resolution=RES,
                                     tile_size=64, figures=False, **kw))


def test_hidden_landslide_is_not_counted_and_pixels_are_unchanged(inputs):
    on = compare(inputs, "on")
    off = compare(inputs, "off", observed_only=False)
    assert on["status"] == off["status"] == "ok"
    yo, yf = on["years"]["all"], off["years"]["all"]

    # observed only: the hidden landslide is out of counts, statistics and object metrics
    assert on["inputs"]["reference"]["all"]["n_unobserved"] == 1
    assert yo["stats"]["reference"]["count"] == 3
    assert yo["stats"]["reference"]["total_area_m2"] == pytest.approx((50 + 36 + 25) * 100)
    obj = yo["object"]
    assert (obj["n_reference"], obj["n_found"], obj["n_missed"]) == (3, 2, 1)
    assert obj["recall"] == pytest.approx(2 / 3)
    assert (obj["n_predicted"], obj["n_false_alarms"]) == (3, 1)

    # all landslides: the hidden one is a miss
    assert "n_unobserved" not in off["inputs"]["reference"]["all"]
    assert yf["stats"]["reference"]["count"] == 4
    obj = yf["object"]
    assert (obj["n_reference"], obj["n_found"], obj["n_missed"]) == (4, 2, 2)
    assert obj["recall"] == pytest.approx(0.5)
    assert yf["object"]["precision"] == yo["object"]["precision"]

    # pixel metrics: valid pixels only, the same either way
    assert yo["pixel"] == yf["pixel"]
    pix = yo["pixel"]
    assert pix["valid_area_m2"] == pytest.approx((N * N - 400) * RES * RES)
    assert pix["tp_px"] == 35 + 36  # SEVENTY's observed part + FOUND
    assert pix["fn_px"] == 25  # MISSED; HIDDEN and SEVENTY's hidden part are no data
    assert pix["fp_px"] == 25  # FALSE_ALARM
    assert pix["tn_px"] == N * N - 400 - 35 - 36 - 25 - 25

    # the written outputs say the same
    saved = json.loads((inputs["dir"] / "on" / "metrics.json").read_text())
    assert saved["inputs"]["reference"]["all"]["n_unobserved"] == 1
    rows = {r["inventory"]: r for r in read_csv(inputs["dir"] / "on" / "stats.csv")}
    assert int(rows["reference"]["count"]) == 3
    rows = {r["inventory"]: r for r in read_csv(inputs["dir"] / "off" / "stats.csv")}
    assert int(rows["reference"]["count"]) == 4
    matches = read_csv(inputs["dir"] / "on" / "matches.csv")
    assert len(matches) == 2

    # the report states the rule only when it applies
    html_on = (inputs["dir"] / "on" / "report.html").read_text()
    html_off = (inputs["dir"] / "off" / "report.html").read_text()
    assert RULE in html_on and RULE not in html_off
    assert json.loads((inputs["dir"] / "on" / "compare_config.json").read_text())[
        "observed_only"] is True


def test_a_vector_prediction_keeps_every_reference(inputs):
    pred = inputs["dir"] / "pred.gpkg"
    write_ref(pred, (SEVENTY, FOUND, FALSE_ALARM))
    inputs = {**inputs, "pred": str(pred)}
    m = compare(inputs, "vec")
    assert "n_unobserved" not in m["inputs"]["reference"]["all"]
    assert m["years"]["all"]["stats"]["reference"]["count"] == 4
    assert m["years"]["all"]["object"]["n_reference"] == 4


def test_a_raster_without_nodata_leaves_everything_in(inputs):
    write_mask(inputs["dir"] / "full.tif", (SEVENTY, FOUND, FALSE_ALARM), nodata=None)
    m = compare({**inputs, "pred": str(inputs["dir"] / "full.tif")}, "full")
    assert m["inputs"]["reference"]["all"]["n_unobserved"] == 0
    assert m["years"]["all"]["object"]["n_reference"] == 4


def test_half_observed_rule_per_year_through_the_cli(tmp_path):
    """2020 has the no-data block, 2021 none; shares 0, 0.4, 0.5 and 0.7 around the rule."""
    half = (15, 25, 3, 8)  # rows 15-19 under the no data, 20-24 observed: exactly 50 %
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    boxes = (HIDDEN, SEVENTY, FORTY, half, FOUND, MISSED)
    for y in (2020, 2021):
        write_ref(tmp_path / "ref" / f"{y}.gpkg", boxes)
        write_mask(tmp_path / "pred" / f"{y}.tif", (SEVENTY, FOUND, FALSE_ALARM),
                   nodata=NODATA if y == 2020 else None)
    args = ["-q", "compare", "--reference", str(tmp_path / "ref" / "{year}.gpkg"),
            "--predicted", str(tmp_path / "pred" / "{year}.tif"), "--years", "2020-2021",
            "--resolution", "10", "--no-figures"]
    assert main([*args, "--out", str(tmp_path / "on")]) == 0
    assert main([*args, "--out", str(tmp_path / "off"), "--no-observed-only"]) == 0
    on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())

    # 2020: HIDDEN (0 %) and FORTY (40 %) left out; half (50 %) and SEVENTY (70 %) stay
    assert on["inputs"]["reference"]["2020"]["n_unobserved"] == 2
    assert on["years"]["2020"]["stats"]["reference"]["count"] == 4
    assert on["years"]["2020"]["object"]["n_reference"] == 4
    assert on["years"]["2020"]["object"]["n_missed"] == 2  # MISSED and the half one
    # 2021 observed everything: nothing left out
    assert on["inputs"]["reference"]["2021"]["n_unobserved"] == 0
    assert on["years"]["2021"]["stats"]["reference"]["count"] == 6
    assert on["years"]["2021"]["object"] == off["years"]["2021"]["object"]
    # --no-observed-only counts all six both years
    assert "n_unobserved" not in off["inputs"]["reference"]["2020"]
    assert off["years"]["2020"]["stats"]["reference"]["count"] == 6
    assert off["years"]["2020"]["object"]["n_missed"] == 4
    for y in ("2020", "2021"):
        assert on["years"][y]["pixel"] == off["years"][y]["pixel"]
    # the observed pixels of the left-out FORTY (4 x 5) are still missed pixels
    assert on["years"]["2020"]["pixel"]["fn_px"] == 25 + 25 + 20  # MISSED, half, FORTY
    assert on["years"]["2021"]["pixel"]["fn_px"] == 25 + 50 + 50 + 25  # all four, whole
    # the per-year counts feed the multi-temporal rows
    rows = {r["year"]: r for r in on["multitemporal"]["rows"]}
    assert rows[2020]["reference_count"] == 4 and rows[2021]["reference_count"] == 6
    stats = {(r["inventory"], r["year"]): int(r["count"])
             for r in read_csv(tmp_path / "on" / "stats.csv")}
    assert stats[("reference", "2020")] == 4 and stats[("reference", "2021")] == 6


def test_nodata_hole_inside_the_observed_area(tmp_path):
    """A cloud in the middle of the imagery: the valid area has a hole, not just an edge."""
    hole = (slice(20, 40), slice(20, 40))
    inside, straddling = (25, 30, 25, 30), (30, 35, 35, 45)  # 0 % and 50 % observed
    write_ref(tmp_path / "ref.gpkg", (inside, straddling, MISSED))
    write_mask(tmp_path / "mask.tif", (), nodata=hole)
    m = run_compare(CompareConfig(reference=str(tmp_path / "ref.gpkg"),
                                  predicted=str(tmp_path / "mask.tif"), out=str(tmp_path / "o"),
                                  resolution=RES, tile_size=64, figures=False))
    assert m["inputs"]["reference"]["all"]["n_unobserved"] == 1
    assert m["years"]["all"]["object"]["n_reference"] == 2
    assert m["years"]["all"]["pixel"]["fn_px"] == 25 + 25


def test_report_inputs_table_gives_the_unobserved_count(inputs):
    compare(inputs, "on")
    html = (inputs["dir"] / "on" / "report.html").read_text()
    table = html[html.index("<h2>Inputs</h2>"):]
    assert "unobserved" in table.split("</table>")[0]


def test_a_prediction_on_an_unobserved_landslide_is_left_out_too(tmp_path):
    """The rule is symmetric: the visible piece the model found of a landslide left out as
    unobserved is neither a correct detection nor a false alarm, and is not counted."""
    forty_seen = (20, 24, 10, 15)  # FORTY's observed rows: the model found them
    write_ref(tmp_path / "ref.gpkg", (FORTY, FOUND, MISSED))
    write_mask(tmp_path / "mask.tif", (forty_seen, FOUND, FALSE_ALARM))
    kw = {"reference": str(tmp_path / "ref.gpkg"), "predicted": str(tmp_path / "mask.tif"),
          "resolution": RES, "tile_size": 64, "figures": False}
    on = run_compare(CompareConfig(out=str(tmp_path / "on"), **kw))
    off = run_compare(CompareConfig(out=str(tmp_path / "off"), observed_only=False, **kw))

    assert on["inputs"]["reference"]["all"]["n_unobserved"] == 1
    assert on["inputs"]["predicted"]["all"]["n_on_unobserved"] == 1
    obj = on["years"]["all"]["object"]
    assert (obj["n_reference"], obj["n_predicted"]) == (2, 2)  # FOUND, MISSED / FOUND, FALSE
    assert (obj["n_correct_predicted"], obj["n_false_alarms"]) == (1, 1)
    assert on["years"]["all"]["stats"]["predicted"]["count"] == 2
    # scoring every landslide: the piece is a correct detection of FORTY
    obj = off["years"]["all"]["object"]
    assert (obj["n_reference"], obj["n_predicted"], obj["n_correct_predicted"]) == (3, 3, 2)
    assert "n_on_unobserved" not in off["inputs"]["predicted"]["all"]
    # pixels are scored the same either way
    assert on["years"]["all"]["pixel"] == off["years"]["all"]["pixel"]


def test_a_prediction_on_both_an_observed_and_an_unobserved_landslide_stays(tmp_path):
    both = (20, 24, 10, 36)  # FORTY's observed rows and on across to an observed landslide
    observed = (20, 24, 30, 36)
    write_ref(tmp_path / "ref.gpkg", (FORTY, observed))
    write_mask(tmp_path / "mask.tif", (both,))
    m = run_compare(CompareConfig(reference=str(tmp_path / "ref.gpkg"),
                                  predicted=str(tmp_path / "mask.tif"), out=str(tmp_path / "o"),
                                  resolution=RES, tile_size=64, figures=False))
    assert m["inputs"]["predicted"]["all"]["n_on_unobserved"] == 0
    obj = m["years"]["all"]["object"]
    assert (obj["n_reference"], obj["n_predicted"], obj["n_found"]) == (1, 1, 1)


def write_vector(path: Path, boxes) -> None:
    gpd.GeoDataFrame(geometry=[px_box(*b) for b in boxes], crs=UTM).to_file(path)


def test_a_prediction_mostly_where_a_reference_raster_has_no_label_is_not_scored(tmp_path):
    """The mirror rule: a label raster's no data (unlabelled, ignore = 255) is never scored
    pixel by pixel, and a predicted landslide at least half on it is neither a correct
    detection nor a false alarm (it was once counted as a false alarm)."""
    write_mask(tmp_path / "labels.tif", (FOUND,))  # the reference: 255 in the NW block
    write_vector(tmp_path / "pred.gpkg", (HIDDEN, SEVENTY, FORTY, FOUND, FALSE_ALARM))
    kw = {"reference": str(tmp_path / "labels.tif"), "predicted": str(tmp_path / "pred.gpkg"),
          "resolution": RES, "tile_size": 64, "figures": False}
    on = run_compare(CompareConfig(out=str(tmp_path / "on"), **kw))
    off = run_compare(CompareConfig(out=str(tmp_path / "off"), observed_only=False, **kw))
    assert on["inputs"]["predicted"]["all"]["n_on_unlabelled"] == 2  # HIDDEN, FORTY (60%)
    obj = on["years"]["all"]["object"]
    # SEVENTY lies 30% on the block: scored, a false alarm like FALSE_ALARM
    assert (obj["n_predicted"], obj["n_correct_predicted"], obj["n_false_alarms"]) == (3, 1, 2)
    assert on["years"]["all"]["stats"]["predicted"]["count"] == 3
    obj = off["years"]["all"]["object"]
    assert (obj["n_predicted"], obj["n_false_alarms"]) == (5, 4)
    assert on["years"]["all"]["pixel"] == off["years"]["all"]["pixel"]
    # the pixels off the block: SEVENTY's 5 x 7, FORTY's 4 x 5, FALSE_ALARM's 5 x 5
    assert on["years"]["all"]["pixel"]["fp_px"] == 35 + 20 + 25


def test_no_data_on_both_rasters_applies_both_rules(tmp_path):
    """A raster reference with an unlabelled block and a raster prediction with a cloud
    block: the prediction's polygon on the unlabelled block is left out and counted in the
    inputs' left-out figure."""
    write_mask(tmp_path / "labels.tif", (FOUND, MISSED))  # 255 in the NW block
    cloud = (slice(40, 60), slice(40, 60))
    write_mask(tmp_path / "mask.tif", (HIDDEN, FOUND, FALSE_ALARM, (22, 28, 2, 8)),
               nodata=cloud)
    m = run_compare(CompareConfig(reference=str(tmp_path / "labels.tif"),
                                  predicted=str(tmp_path / "mask.tif"), out=str(tmp_path / "o"),
                                  resolution=RES, tile_size=64, figures=False))
    pred = m["inputs"]["predicted"]["all"]
    assert pred["n_on_unlabelled"] == 1 and pred["n_left_out"] == 1  # HIDDEN
    obj = m["years"]["all"]["object"]
    # FALSE_ALARM lies under the cloud (255 in the prediction): never a polygon
    assert (obj["n_predicted"], obj["n_correct_predicted"]) == (2, 1)
    assert (obj["n_reference"], obj["n_found"]) == (2, 1)  # FOUND, MISSED

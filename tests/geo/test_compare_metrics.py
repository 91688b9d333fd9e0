"""Comparison metrics against hand-computed cases (pixel, object, statistics, density)."""

from __future__ import annotations

import contextlib
import math

import geopandas as gpd
import numpy as np
import pytest
from rasterio.windows import Window
from scipy import stats
from shapely.geometry import box

from pipelines.compare import RasterMask, VectorMask, common_grid, streaming_pixel_counts
from pipelines.errors import InputError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.cog import CATEGORICAL, write_cog
from pipelines.geo.grid import PixelGrid
from pipelines.geo.inventory import rasterize

UTM = "EPSG:32645"
X0, Y0 = 330_000.0, 3_110_000.0


def sq(x: float, y: float, w: float, h: float | None = None):
    """A box with its lower-left corner (x, y) metres from the Rasuwa origin."""
    return box(X0 + x, Y0 + y, X0 + x + w, Y0 + y + (w if h is None else h))


def gdf(*geoms) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=list(geoms), crs=UTM)


# --------------------------------------------------------------------------- pixel metrics
@pytest.mark.parametrize(("dx", "dy"), [(20, -30), (0, 0), (55, 10), (100, 0)])
def test_offset_squares_pixel_metrics_at_5m(dx, dy):
    ref = gdf(sq(0, 0, 100))
    pred = gdf(sq(dx, dy, 100))
    grid = common_grid((X0 - 200, Y0 - 200, X0 + 300, Y0 + 300), UTM, 5.0)
    counts = cm.pixel_counts(rasterize(ref, grid), rasterize(pred, grid), pixel_area_m2=25.0)
    m = counts.metrics()
    inter = max(0, 100 - abs(dx)) * max(0, 100 - abs(dy))  # hand-computed overlap (m2)
    assert m["tp_area_m2"] == pytest.approx(inter)
    assert m["fp_area_m2"] == pytest.approx(10_000 - inter)
    assert m["fn_area_m2"] == pytest.approx(10_000 - inter)
    assert m["precision"] == pytest.approx(inter / 10_000)
    assert m["recall"] == pytest.approx(inter / 10_000)
    assert m["f1"] == pytest.approx(inter / 10_000)
    assert m["iou"] == pytest.approx(inter / (20_000 - inter))
    assert counts.n_valid == grid.width * grid.height
    # The streaming path (tiles of 13 px, not aligned with anything) gives the same counts.
    stream = streaming_pixel_counts(VectorMask(ref), VectorMask(pred), grid, tile_size=13)
    assert stream == counts


def test_unequal_squares_and_conventions():
    # Reference 100 x 100 m; prediction 40 x 60 m inside it: precision 1, recall 0.24.
    grid = common_grid((X0, Y0, X0 + 200, Y0 + 200), UTM, 5.0)
    m = cm.pixel_counts(rasterize(gdf(sq(0, 0, 100)), grid),
                        rasterize(gdf(sq(10, 20, 40, 60)), grid), pixel_area_m2=25.0).metrics()
    assert (m["precision"], m["recall"]) == (1.0, pytest.approx(0.24))
    assert m["f1"] == pytest.approx(2 * 0.24 / 1.24)
    assert m["iou"] == pytest.approx(0.24)
    # 0/0 is reported as 0.0: an empty prediction has precision 0, not NaN.
    empty = cm.pixel_counts(np.ones((4, 4)), np.zeros((4, 4)), pixel_area_m2=1.0).metrics()
    assert empty["precision"] == 0.0 and empty["recall"] == 0.0 and empty["f1"] == 0.0
    none = cm.pixel_counts(np.zeros((4, 4)), np.zeros((4, 4))).metrics()
    assert none["iou"] == 0.0 and none["tn_px"] == 16


def test_valid_mask_excludes_pixels_and_counts_add():
    ref = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    pred = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    valid = np.array([[1, 1, 1], [1, 0, 1]], dtype=bool)  # the TP at (1, 1) is no data
    c = cm.pixel_counts(ref, pred, valid, pixel_area_m2=100.0)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 2, 1, 1)
    both = c + cm.pixel_counts(ref, pred, None, 100.0)
    assert (both.tp, both.fp, both.fn, both.tn) == (3, 4, 2, 2)
    with pytest.raises(InputError, match="same grid|one grid"):
        cm.pixel_counts(ref, pred[:, :2])
    with pytest.raises(InputError, match="pixel areas"):
        _ = c + cm.pixel_counts(ref, pred, None, 25.0)


def test_streaming_over_many_chunk_cogs_equals_one_shot(tmp_path, rng):
    """Chunk COGs (with nodata pixels) streamed in unaligned tiles == one-shot counts."""
    res, chunk, rows, cols = 10.0, 32, 3, 4
    full = PixelGrid(UTM, (res, 0.0, X0, 0.0, -res, Y0), cols * chunk, rows * chunk)
    pred = (rng.random(full.shape) < 0.3).astype("uint8")
    pred[rng.random(full.shape) < 0.05] = 255  # scattered no data
    pred[:chunk, :chunk] = 255  # one whole chunk of no data
    boxes = [sq(float(rng.integers(0, 1200)), -float(rng.integers(40, 900)),
                float(rng.integers(20, 200)), float(rng.integers(20, 200))) for _ in range(15)]
    ref = gdf(*boxes)
    paths = []
    for r in range(rows):
        for c in range(cols):
            sub = full.subgrid(Window(c * chunk, r * chunk, chunk, chunk))
            p = tmp_path / f"32645_r{r}_c{c}.tif"
            write_cog(str(p), pred[r * chunk:(r + 1) * chunk, c * chunk:(c + 1) * chunk], sub,
                      nodata=255, profile=CATEGORICAL, overviews=False)
            paths.append(str(p))
    with contextlib.ExitStack() as stack:
        layer = RasterMask(RasterMask.open(tuple(paths), stack), UTM)
        stream = streaming_pixel_counts(VectorMask(ref), layer, full, tile_size=23)
    valid = pred != 255
    one = cm.pixel_counts(rasterize(ref, full), (pred >= 1) & valid, valid, res * res)
    assert stream == one
    assert one.tp > 0 and one.fp > 0 and one.fn > 0
    assert one.n_valid == int(valid.sum())


# --------------------------------------------------------------------------- object metrics
def object_case():
    ref = gdf(
        sq(0, 0, 100),        # R1: found by two fragments
        sq(200, 0, 50),       # R2 \ both under one merged prediction
        sq(260, 0, 50),       # R3 /
        sq(400, 0, 50),       # R4: missed
        sq(700, 0, 100),      # R5: touched by 5 % only
    )
    pred = gdf(
        sq(0, 0, 50, 100),    # P1a: left half of R1
        sq(50, 0, 50, 100),   # P1b: right half of R1
        sq(200, 0, 110, 50),  # P23: covers R2 and R3 (merge)
        sq(600, 0, 50),       # false alarm
        sq(795, 0, 105, 100),  # 5 m x 100 m on R5: 5 % of R5, 4.8 % of itself
    )
    return ref, pred


def test_object_metrics_fragmentation_and_merge():
    ref, pred = object_case()
    m, matches = cm.object_metrics(ref, pred, min_overlap=0.1)
    assert (m["n_reference"], m["n_predicted"]) == (5, 5)
    assert (m["n_found"], m["n_missed"]) == (3, 2)
    assert (m["n_correct_predicted"], m["n_false_alarms"]) == (3, 2)
    assert m["recall"] == pytest.approx(0.6) and m["precision"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(0.6)
    assert m["fragmentation"] == pytest.approx(4 / 3)  # R1: 2 pieces, R2: 1, R3: 1
    assert m["n_fragmented"] == 1
    assert (m["merges"], m["n_reference_in_merges"]) == (1, 2)
    # Best match per found reference, with the hand-computed areas and IoU.
    assert matches["ref"].tolist() == [0, 1, 2]
    assert matches["pred"].tolist() == [0, 2, 2]
    assert matches["iou"].tolist() == pytest.approx([0.5, 2500 / 5500, 2500 / 5500])
    assert matches["pred_area_m2"].tolist() == pytest.approx([5000, 5500, 5500])
    assert matches["n_pieces"].tolist() == [2, 1, 1]


def test_object_threshold_and_iou_criterion():
    ref, pred = object_case()
    low, _ = cm.object_metrics(ref, pred, min_overlap=0.04)  # now R5 / its neighbour match
    assert (low["n_found"], low["n_correct_predicted"]) == (4, 4)
    iou, _ = cm.object_metrics(ref, pred, min_overlap=0.5, criterion="iou")
    # Only R1 vs P1a/P1b reaches IoU 0.5; the merged polygon has IoU 0.45 with R2 and R3.
    assert (iou["n_found"], iou["n_correct_predicted"]) == (1, 2)
    assert iou["recall"] == pytest.approx(0.2) and iou["precision"] == pytest.approx(0.4)
    with pytest.raises(InputError, match="criterion"):
        cm.object_metrics(ref, pred, criterion="dice")
    with pytest.raises(InputError, match="min_overlap"):
        cm.object_metrics(ref, pred, min_overlap=0)


def test_a_match_row_names_a_prediction_that_meets_the_criterion():
    """matches.csv (and the area scatter) once named the overlapping polygon of highest IoU
    even when it did not find the landslide: here a small polygon covering 4.8% of it."""
    ref = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs=UTM)
    pred = gpd.GeoDataFrame(geometry=[box(-100, -100, 1, 10),  # covers 10%: finds it
                                      box(5, 5, 7.2, 7.2)], crs=UTM)  # higher IoU, 4.8%
    metrics, matches = cm.object_metrics(ref, pred, min_overlap=0.1, criterion="overlap")
    assert metrics["n_found"] == 1
    assert matches["pred"].tolist() == [0]
    assert matches["pred_area_m2"].tolist() == [pytest.approx(101 * 110)]


def test_object_metrics_empty_sides_and_crs():
    ref, pred = object_case()
    m, matches = cm.object_metrics(ref, pred.iloc[0:0])
    assert m["recall"] == 0.0 and m["precision"] == 0.0 and m["fragmentation"] is None
    assert len(matches) == 0
    m, _ = cm.object_metrics(ref.iloc[0:0], pred)
    assert m["n_false_alarms"] == 5
    with pytest.raises(InputError, match="different CRSs"):
        cm.match_objects(ref, pred.to_crs("EPSG:4326"))


# --------------------------------------------------------------------------- statistics
def test_power_law_exponent_recovered_from_pareto(rng):
    beta = 2.5  # p(A) ~ A^-2.5 above 100 m2: numpy's Pareto with shape beta - 1
    areas = (rng.pareto(beta - 1, 5000) + 1.0) * 100.0
    fit = cm.fit_power_law(areas, 100.0)
    assert fit["beta"] == pytest.approx(beta, abs=0.1)
    assert fit["n_tail"] == 5000
    assert fit["beta_se"] == pytest.approx((fit["beta"] - 1) / math.sqrt(5000))
    # inventory_stats fits above the rollover (here the smallest bin: no rollover resolved).
    st = cm.inventory_stats(areas, area_km2=50.0)
    assert st["beta"] == pytest.approx(beta, abs=0.1)
    assert st["rollover_resolved"] is False
    assert 100.0 <= st["rollover_m2"] < 100.0 * 10 ** 0.1


def test_rollover_of_inverse_gamma(rng):
    # Malamud et al. (2004)'s landslide distribution is an inverse gamma; its density peaks
    # at scale / (shape + 1) = 1280 / 2.4 = 533 m2.
    areas = stats.invgamma(1.4, scale=1280.0).rvs(20_000, random_state=rng)
    st = cm.inventory_stats(areas, area_km2=100.0, bins_per_decade=10)
    assert st["rollover_resolved"] is True
    assert 533.3 / 1.3 < st["rollover_m2"] < 533.3 * 1.3
    fad = st["fad"]
    widths = np.diff(fad["edges_m2"])
    assert np.sum(np.asarray(fad["density"]) * widths) == pytest.approx(1.0)


def test_inventory_stats_counts_density_and_small_samples():
    st = cm.inventory_stats([100.0, 300.0, 200.0, 400.0, 1000.0], area_km2=2.5)
    assert st["count"] == 5
    assert st["total_area_m2"] == 2000.0
    assert (st["min_area_m2"], st["max_area_m2"], st["median_area_m2"]) == (100.0, 1000.0, 300.0)
    assert st["density_per_km2"] == pytest.approx(2.0)
    assert st["beta"] is None and st["rollover_m2"] is None
    assert any("need 10" in n for n in st["notes"])
    empty = cm.inventory_stats([], area_km2=3.0)
    assert empty["count"] == 0 and empty["density_per_km2"] == 0.0
    assert empty["min_area_m2"] is None


def test_pearson():
    assert cm.pearson([1, 2, 3, 4], [2, 4, 6, 8])["r"] == pytest.approx(1.0)
    assert cm.pearson([1, 2, 3, 4], [8, 6, 4, 2])["r"] == pytest.approx(-1.0)
    x, y = [10, 20, 60, 30, 15], [12, 18, 66, 25, 20]
    assert cm.pearson(x, y)["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    two = cm.pearson([1, 2], [3, 4])
    assert two["r"] is None and "at least 3" in two["note"]
    assert cm.pearson([1, 1, 1], [1, 2, 3])["r"] is None


def test_multitemporal_table():
    ref = {2013: {"count": 10, "total_area_m2": 1e4, "density_per_km2": 1.0},
           2014: {"count": 20, "total_area_m2": 3e4, "density_per_km2": 2.0},
           2015: {"count": 60, "total_area_m2": 9e4, "density_per_km2": 6.0},
           2016: {"count": 30, "total_area_m2": 4e4, "density_per_km2": 3.0}}
    pred = {2013: {"count": 12, "total_area_m2": 1.1e4, "density_per_km2": 1.2},
            2014: {"count": 18, "total_area_m2": 2.5e4, "density_per_km2": 1.8},
            2015: {"count": 66, "total_area_m2": 9.9e4, "density_per_km2": 6.6}}
    mt = cm.multitemporal(ref, pred)
    rows = {r["year"]: r for r in mt["rows"]}
    assert [rows[y]["diff_count"] for y in (2013, 2014, 2015)] == [2, -2, 6]
    assert rows[2016]["predicted_count"] is None and rows[2016]["diff_count"] is None
    assert rows[2015]["reference_count_change"] == 40
    assert mt["peak_year"] == {"reference": 2015, "predicted": 2015}
    assert mt["years_with_both"] == [2013, 2014, 2015]
    assert mt["pearson_count"]["r"] == pytest.approx(np.corrcoef([10, 20, 60], [12, 18, 66])[0, 1])
    only = cm.multitemporal(ref)
    assert "pearson_count" not in only and only["peak_year"] == {"reference": 2015}


def test_kde_density_units():
    # One point: the peak of a Gaussian of sigma 50 m is 1 / (2 pi sigma^2) per m2.
    d = cm.kde_density([X0 + 505.0], [Y0 + 505.0], (X0, Y0, X0 + 1000, Y0 + 1000), 10.0, 50.0)
    assert d.shape == (100, 100)
    assert d.max() == pytest.approx(1e6 / (2 * math.pi * 50.0**2), rel=0.01)
    # The map integrates to the number of points (all far from the edges).
    pts = np.array([[300.0, 300.0], [700.0, 400.0], [500.0, 650.0]])
    d3 = cm.kde_density(X0 + pts[:, 0], Y0 + pts[:, 1], (X0, Y0, X0 + 1000, Y0 + 1000),
                        10.0, 40.0)
    assert d3.sum() * (10.0 * 10.0) / 1e6 == pytest.approx(3.0, rel=1e-3)
    # Row 0 is the north: a point 100 m below the top edge peaks in the top rows.
    r, _ = np.unravel_index(np.argmax(cm.kde_density([X0 + 500.0], [Y0 + 900.0],
                                                     (X0, Y0, X0 + 1000, Y0 + 1000), 10, 30)),
                            (100, 100))
    assert r < 20

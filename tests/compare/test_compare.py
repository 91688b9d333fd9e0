"""`landslides compare` on the real Rasuwa inventory, on sweep-like chunk COGs, and bad input."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.windows import Window
from shapely.geometry import box

from pipelines import fsio
from pipelines.cli import main
from pipelines.compare import (
    CompareConfig,
    RasterMask,
    parse_years,
    resolve_input,
    run_compare,
)
from pipelines.errors import ConfigError, CRSError, DataNotFoundError
from pipelines.geo.cog import CATEGORICAL, write_cog
from pipelines.geo.grid import GridSpec, PixelGrid
from pipelines.geo.inventory import rasterize, read_inventory, vectorize
from pipelines.geo.polygons import merge_across_edges

UTM = "EPSG:32645"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def eroded_copies(rasuwa_dir: Path, out: Path, years, crs: dict | None = None) -> str:
    """Write Rasuwa's layers shrunk by 5 m as GeoPackages; returns the ``{year}`` template."""
    out.mkdir(parents=True, exist_ok=True)
    for y in years:
        g = read_inventory(str(rasuwa_dir / f"{y}.shp"))
        g = gpd.GeoDataFrame(geometry=g.buffer(-5.0), crs=g.crs)
        g = g[~g.geometry.is_empty]
        if crs and y in crs:
            g = g.to_crs(crs[y])
        g.to_file(out / f"{y}.gpkg")
    return str(out / "{year}.gpkg")


# --------------------------------------------------------------------------- configuration
def test_parse_years_and_config_validation(tmp_path):
    assert parse_years("2013-2016") == (2013, 2014, 2015, 2016)
    assert parse_years("2015, 2013,2013") == (2013, 2015)
    assert parse_years("2013-2014,2018") == (2013, 2014, 2018)
    assert parse_years(None) is None
    for bad in ("2019-2013", "13-19", "2013..2019", "2013,x"):
        with pytest.raises(ConfigError, match="year"):
            parse_years(bad)
    out = str(tmp_path)
    with pytest.raises(ConfigError, match=r"holds \{year\} but no years"):
        CompareConfig(reference="inv/{year}.shp", out=out)
    with pytest.raises(ConfigError, match="resolution"):
        CompareConfig(reference="a.shp", out=out, resolution=0)
    with pytest.raises(ConfigError, match="min_overlap"):
        CompareConfig(reference="a.shp", out=out, min_overlap=1.5)
    with pytest.raises(ConfigError, match="match"):
        CompareConfig(reference="a.shp", out=out, match="dice")
    with pytest.raises(CRSError, match="not a projected CRS"):
        CompareConfig(reference="a.shp", out=out, epsg=4326)
    cfg = CompareConfig(reference="r/{year}.tif", out=out, years="2013-2014")
    assert cfg.years == (2013, 2014) and cfg.mode == "stats-only"
    assert CompareConfig(**{**cfg.to_dict(), "years": tuple(cfg.years)}) == cfg


def test_resolve_input_names_template_and_year(tmp_path):
    (tmp_path / "mask").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        resolve_input(str(tmp_path / "{year}.shp"), 2016, "predicted")
    assert "2016.shp" in str(err.value) and "{year}" in str(err.value)
    assert "year 2016" in str(err.value)
    with pytest.raises(DataNotFoundError, match="No file matches"):
        resolve_input(str(tmp_path / "mask" / "*.tif"), None)
    (tmp_path / "mask" / "a.tif").write_bytes(b"")
    res = resolve_input(str(tmp_path / "mask" / "*.tif"), None)
    assert res.kind == "raster" and len(res.paths) == 1


# --------------------------------------------------------------------------- real data
def test_stats_only_rasuwa_through_the_cli(rasuwa_dir, tmp_path):
    out = tmp_path / "stats"
    rc = main(["-q", "compare", "--reference", str(rasuwa_dir / "{year}.shp"),
               "--years", "2013-2019", "--out", str(out), "--resolution", "10"])
    assert rc == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "ok" and metrics["mode"] == "stats-only"
    assert metrics["crs"] == UTM
    rows = {int(r["year"]): r for r in read_csv(out / "stats.csv")}
    assert sorted(rows) == list(range(2013, 2020))
    counts = {y: int(r["count"]) for y, r in rows.items()}
    assert all(c > 0 for c in counts.values())
    # The Gorkha earthquake (April 2015): many more landslides than the year before.
    assert counts[2015] > 3 * counts[2014]
    assert metrics["multitemporal"]["peak_year"]["reference"] == 2015
    mt_rows = {r["year"]: r for r in metrics["multitemporal"]["rows"]}
    assert mt_rows[2015]["reference_count_change"] == counts[2015] - counts[2014]
    # The invalid geometries of 2015 are repaired and counted, the other years have none.
    reps = metrics["inputs"]["reference"]
    assert reps["2015"]["n_invalid_repaired"] >= 1
    assert all(reps[str(y)]["n_invalid_repaired"] == 0 for y in range(2013, 2020) if y != 2015)
    assert int(rows[2015]["n_invalid_repaired"]) >= 1
    assert any("invalid" in p["message"] and p["year"] == 2015 for p in metrics["problems"])
    # Areas from the geometry, checked against an independent read (GDAL + make_valid).
    raw = gpd.read_file(rasuwa_dir / "2015.shp")
    total = float(shapely.area(shapely.make_valid(raw.geometry.values)).sum())
    assert float(rows[2015]["total_area_m2"]) == pytest.approx(total, rel=1e-3)
    # Density over the common extent, the same area for every year.
    dens = metrics["density_area"]
    assert dens["basis"].startswith("extent") and dens["area_km2"] > 1
    assert float(rows[2015]["density_per_km2"]) == pytest.approx(counts[2015] / dens["area_km2"])
    # Frequency-area fit where there are enough landslides.
    assert 1.1 < float(rows[2015]["beta"]) < 3.5
    assert float(rows[2015]["rollover_m2"]) > 0
    # Figures and the report.
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == sorted([*(f"density_{y}.png" for y in range(2013, 2020)),
                           "frequency_area.png", "trends.png"])
    html = (out / "report.html").read_text()
    for f in figs:
        assert f'src="figures/{f}"' in html
    assert read_json(out / "compare_config.json")["years"] == list(range(2013, 2020))


def test_compare_rasuwa_with_eroded_copy(rasuwa_dir, tmp_path):
    """Reference vs a copy shrunk by 5 m: no false alarms, partial recall, per-year rows.

    2015 is stored in WGS 84 (reprojected on the fly) and 2016 is missing from the
    prediction (reported from the reference alone).
    """
    pred = eroded_copies(rasuwa_dir, tmp_path / "pred", (2013, 2014, 2015),
                         crs={2015: "EPSG:4326"})
    out = tmp_path / "cmp"
    m = run_compare(CompareConfig(reference=str(rasuwa_dir / "{year}.shp"), predicted=pred,
                                  out=str(out), years=(2013, 2014, 2015, 2016),
                                  resolution=10.0))
    # predicted 2016 is missing: the comparison is incomplete (the command exits 1)
    assert m["status"] == "partial" and m["mode"] == "comparison"
    for y in ("2013", "2014", "2015"):
        pix, obj = m["years"][y]["pixel"], m["years"][y]["object"]
        # Pixel centres inside a polygon shrunk by 5 m are inside the original: no FP.
        assert pix["fp_px"] == 0 and pix["precision"] == 1.0
        assert 0.3 < pix["recall"] < 0.95
        assert pix["iou"] == pytest.approx(pix["recall"])
        assert pix["tp_area_m2"] + pix["fn_area_m2"] == pytest.approx(pix["reference_area_m2"])
        assert obj["precision"] == 1.0 and obj["n_false_alarms"] == 0
        assert 0.6 < obj["recall"] <= 1.0
        assert obj["fragmentation"] >= 1.0
        stats = m["years"][y]["stats"]
        assert stats["predicted"]["total_area_m2"] < stats["reference"]["total_area_m2"]
    assert m["inputs"]["predicted"]["2015"]["reprojected_from"] == "EPSG:4326"
    assert m["missing_years"] == {"reference": [], "predicted": ["2016"]}
    y16 = m["years"]["2016"]
    assert y16["pixel"] is None and y16["object"] is None
    assert list(y16["stats"]) == ["reference"]
    assert any(p["year"] == 2016 and "2016.gpkg" in p["message"] and p["level"] == "warning"
               for p in m["problems"])
    mt = m["multitemporal"]
    assert mt["years_with_both"] == [2013, 2014, 2015]
    assert mt["pearson_count"]["r"] > 0.9  # eroding keeps the landslides, year after year
    assert mt["pearson_total_area"]["n"] == 3
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"overlay_2013.png", "overlay_2015.png", "area_scatter.png", "trends.png"} <= figs
    assert "overlay_2016.png" not in figs
    matches = read_csv(out / "matches.csv")
    assert len(matches) == sum(m["years"][y]["object"]["n_found"]
                               for y in ("2013", "2014", "2015"))
    assert read_json(out / "metrics.json")["years"]["2014"]["pixel"]["tp_px"] == \
        m["years"]["2014"]["pixel"]["tp_px"]


def test_aoi_clips_and_sets_the_density_area(rasuwa_dir, tmp_path):
    ref = read_inventory(str(rasuwa_dir / "2015.shp"))
    # The western half of the inventory's extent, as a lon/lat bbox.
    minx, miny, maxx, maxy = ref.total_bounds
    west = gpd.GeoSeries([box(minx, miny, (minx + maxx) / 2, maxy)], crs=UTM).to_crs(4326)
    aoi = ",".join(f"{v:.6f}" for v in west.total_bounds)
    m = run_compare(CompareConfig(reference=str(rasuwa_dir / "2015.shp"), out=str(tmp_path),
                                  aoi=aoi, resolution=10.0, figures=False))
    st = m["years"]["all"]["stats"]["reference"]
    assert 0 < st["count"] < len(ref)
    assert m["density_area"]["basis"] == "aoi"
    aoi_utm = gpd.GeoSeries([box(*west.total_bounds)], crs=4326).to_crs(UTM)
    assert m["density_area"]["area_km2"] == pytest.approx(aoi_utm.area.iloc[0] / 1e6, rel=1e-3)
    assert st["density_per_km2"] == pytest.approx(st["count"] / m["density_area"]["area_km2"])


# --------------------------------------------------------------------------- sweep outputs
def write_chunks(gdf: gpd.GeoDataFrame, folder: Path, chunk: int = 256, res: float = 10.0,
                 nodata_chunk: bool = False) -> list[str]:
    """Rasterise ``gdf`` into sweep-like chunk mask COGs (uint8, 255 = no data)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = GridSpec(32645, res, chunk, 0)
    keys = spec.keys_covering(box(*gdf.total_bounds))
    paths = []
    for i, key in enumerate(keys):
        grid = spec.chunk_grid(key)
        mask = rasterize(gdf, grid)
        if nodata_chunk and i == 0:
            mask[:] = 255
        p = folder / f"{key}.tif"
        write_cog(str(p), mask, grid, nodata=255, profile=CATEGORICAL, overviews=False)
        paths.append(str(p))
    return paths


def test_sweep_chunk_cogs_equal_the_vector_comparison(rasuwa_dir, tmp_path):
    pred_t = eroded_copies(rasuwa_dir, tmp_path / "pred", (2015,))
    pred = read_inventory(pred_t.format(year=2015))
    chunks = write_chunks(pred, tmp_path / "sweep" / "mask")
    assert len(chunks) > 4
    ref = str(rasuwa_dir / "2015.shp")
    common = {"reference": ref, "resolution": 10.0, "tile_size": 300, "figures": False}
    vv = run_compare(CompareConfig(predicted=pred_t.format(year=2015),
                                   out=str(tmp_path / "vv"), **common))["years"]["all"]
    rv = run_compare(CompareConfig(predicted=str(tmp_path / "sweep" / "mask" / "*.tif"),
                                   out=str(tmp_path / "rv"), **common))["years"]["all"]
    # On the chunks' own 10 m grid the pixel metrics are identical.
    for k in ("tp_px", "fp_px", "fn_px", "precision", "recall", "f1", "iou"):
        assert rv["pixel"][k] == pytest.approx(vv["pixel"][k]), k
    # Objects: the vectorised chunks, merged across chunk edges, match the vector polygons
    # within rasterisation (thin parts of a polygon may split at 10 m).
    assert rv["object"]["recall"] == pytest.approx(vv["object"]["recall"], abs=0.1)
    assert rv["object"]["precision"] == pytest.approx(vv["object"]["precision"], abs=0.05)
    assert rv["stats"]["predicted"]["total_area_m2"] == pytest.approx(
        vv["stats"]["predicted"]["total_area_m2"], rel=0.1)
    # Polygons cut by chunk edges are merged: as many as vectorising the mosaic at once.
    mosaic = PixelGrid(UTM, (10.0, 0.0, 322_560.0, 0.0, -10.0, 3_115_520.0), 1024, 1024)
    whole = vectorize(rasterize(pred, mosaic), mosaic, min_area_m2=0.0)
    assert rv["stats"]["predicted"]["count"] == len(whole)
    # At 5 m the chunk masks are resampled: the metrics stay within rasterisation error.
    rv5 = run_compare(CompareConfig(predicted=str(tmp_path / "sweep" / "mask" / "*.tif"),
                                    out=str(tmp_path / "rv5"), reference=ref, resolution=5.0,
                                    tile_size=512, figures=False))["years"]["all"]["pixel"]
    assert rv5["f1"] == pytest.approx(vv["pixel"]["f1"], abs=0.05)


@pytest.mark.skipif(shutil.which("gdalbuildvrt") is None, reason="gdal-bin is not installed")
def test_vrt_mosaic_equals_the_chunk_glob(rasuwa_dir, tmp_path):
    """A sweep's VRT mosaic (read in windows across chunk edges) == its chunk COGs."""
    pred = read_inventory(eroded_copies(rasuwa_dir, tmp_path / "pred", (2017,)).format(year=2017))
    chunks = write_chunks(pred, tmp_path / "mask", chunk=128, nodata_chunk=True)
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), *chunks], check=True, timeout=60)
    common = {"reference": str(rasuwa_dir / "2017.shp"), "resolution": 10.0, "tile_size": 200,
              "figures": False}
    a = run_compare(CompareConfig(predicted=str(vrt), out=str(tmp_path / "a"), **common))
    b = run_compare(CompareConfig(predicted=str(tmp_path / "mask" / "*.tif"),
                                  out=str(tmp_path / "b"), **common))
    pa, pb = a["years"]["all"]["pixel"], b["years"]["all"]["pixel"]
    assert (pa["tp_px"], pa["fp_px"], pa["fn_px"], pa["tn_px"]) == (
        pb["tp_px"], pb["fp_px"], pb["fn_px"], pb["tn_px"])
    assert pa["tp_px"] > 0
    assert a["years"]["all"]["object"] == b["years"]["all"]["object"]


def test_raster_nodata_is_excluded_and_windows_merge(tmp_path, rng):
    """A single mask COG read in small windows; its no-data chunk is not counted."""
    geoms = [box(330_000 + x, 3_110_000 - y - h, 330_000 + x + w, 3_110_000 - y)
             for x, y, w, h in rng.integers(0, 2000, size=(40, 4)) // [1, 1, 4, 4] + 30]
    ref = gpd.GeoDataFrame(geometry=geoms, crs=UTM)
    ref = gpd.GeoDataFrame(geometry=list(shapely.get_parts(ref.union_all())), crs=UTM)
    ref.to_file(tmp_path / "ref.gpkg")
    grid = PixelGrid(UTM, (10.0, 0.0, 329_900.0, 0.0, -10.0, 3_110_100.0), 300, 300)
    mask = rasterize(ref, grid)
    mask[:100, :100] = 255  # a block of no data
    write_cog(str(tmp_path / "mask.tif"), mask, grid, nodata=255, profile=CATEGORICAL,
              overviews=False)
    m = run_compare(CompareConfig(reference=str(tmp_path / "ref.gpkg"),
                                  predicted=str(tmp_path / "mask.tif"), out=str(tmp_path / "o"),
                                  resolution=10.0, tile_size=64, figures=False))
    pix = m["years"]["all"]["pixel"]
    assert pix["fp_px"] == 0 and pix["fn_px"] == 0  # identical where both have data
    assert pix["valid_area_m2"] == pytest.approx((300 * 300 - 100 * 100) * 100.0)
    # Vectorised window by window (64 px), merged back: one polygon per region.
    expect = vectorize(np.where(mask == 1, 1, 0), grid, min_area_m2=0.0)
    assert m["years"]["all"]["stats"]["predicted"]["count"] == len(expect)


def test_merge_across_edges_joins_shared_edges_only():
    a = box(0, 0, 10, 10)
    b = box(10, 0, 20, 10)  # shares an edge with a (other piece)
    c = box(20, 10, 30, 20)  # touches b at a corner only
    d = box(40, 0, 50, 10)
    g = gpd.GeoDataFrame({"piece": [0, 1, 2, 2]}, geometry=[a, b, c, d], crs=UTM)
    four = merge_across_edges(g, connectivity=4, tolerance=0.0, piece="piece")
    assert sorted(four.area.tolist()) == [100.0, 100.0, 200.0]
    eight = merge_across_edges(g, connectivity=8, tolerance=0.0, piece="piece")
    assert sorted(eight.area.tolist()) == [100.0, 300.0]


def test_merge_across_edges_keeps_the_first_part_of_each_landslide():
    """``first`` columns come from each group's first row (how finalize places a joined
    landslide in the inventory), in the order of the groups' first rows."""
    g = gpd.GeoDataFrame({"piece": ["c2", "c1", "c2", "c3"], "pos": [0, 5, 1, 2]},
                         geometry=[box(0, 0, 10, 10), box(40, 0, 50, 10), box(10, 0, 20, 10),
                                   box(50, 0, 60, 10)], crs=UTM)
    out = merge_across_edges(g, connectivity=4, tolerance=0.0, piece="piece",
                             first=("piece", "pos"))
    # rows 0+2 are one piece (no join inside a piece); 1 (c1) and 3 (c3) join
    assert list(zip(out["piece"], out["pos"], out.area, out["chunks"])) == [
        ("c2", 0, 100.0, 1), ("c1", 5, 200.0, 2), ("c2", 1, 100.0, 1)]


def test_edges_computed_from_two_origins_join_as_one_line(tmp_path):
    """A mask in degrees (Earth Engine's 10 m scale in EPSG:4326 at 33 N): each window's
    polygons come from its own origin, so the same window edge differed in its last bits
    and a landslide across it stayed two polygons (or two meeting at a corner joined)."""
    from rasterio.transform import Affine

    a = 8.983152841195214e-05
    x0, y0, n = 86.251, 33.4582, 192
    m = np.zeros((n, n), np.uint8)
    m[122:134, 20:26] = 1  # across the row-128 window edge
    m[122:134, 80:86] = 1  # across it too
    m[20:26, 122:134] = 1  # across the column-128 edge
    m[126:128, 150:152] = 1  # two landslides meeting at one corner on the row-128 edge
    m[128:130, 152:154] = 1
    grid = PixelGrid("EPSG:4326", tuple(Affine(a, 0, x0, 0, -a, y0))[:6], n, n)
    write_cog(str(tmp_path / "m.tif"), m, grid, nodata=255, profile=CATEGORICAL,
              overviews=False)
    above, below = grid.subgrid(Window(0, 64, 64, 64)), grid.subgrid(Window(0, 128, 64, 64))
    assert above.affine.f + 64 * above.affine.e != below.affine.f  # the case itself
    with contextlib.ExitStack() as stack:
        rm = RasterMask(RasterMask.open((str(tmp_path / "m.tif"),), stack), "EPSG:4326")
        for connectivity, whole in ((4, 5), (8, 4)):
            assert len(vectorize(m, grid, 0.0, connectivity=connectivity)) == whole
            got = rm.vectorize(None, block=64, connectivity=connectivity)
            assert len(got) == whole, connectivity


# --------------------------------------------------------------------------- bad input
def test_aoi_outside_the_data_still_writes_the_report(rasuwa_dir, tmp_path, capsys):
    out = tmp_path / "far"
    rc = main(["-q", "compare", "--reference", str(rasuwa_dir / "2015.shp"),
               "--aoi", "10.0,10.0,10.1,10.1", "--out", str(out), "--resolution", "10"])
    assert rc == 2
    assert "does not intersect" in capsys.readouterr().err
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "failed"
    assert any(p["type"] == "RegionError" for p in metrics["problems"])
    assert "does not intersect" in (out / "report.html").read_text()


def test_missing_file_and_empty_inventory(rasuwa_dir, tmp_path, capsys):
    rc = main(["-q", "compare", "--reference", str(tmp_path / "nope" / "{year}.shp"),
               "--years", "2015", "--out", str(tmp_path / "o1")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope/2015.shp" in err and "{year}" in err
    # An empty prediction: statistics with count 0, recall 0, a warning, nothing fails.
    empty = gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=UTM), crs=UTM)
    empty.to_file(tmp_path / "empty.gpkg")
    m = run_compare(CompareConfig(reference=str(rasuwa_dir / "2014.shp"),
                                  predicted=str(tmp_path / "empty.gpkg"),
                                  out=str(tmp_path / "o2"), resolution=10.0, figures=False))
    y = m["years"]["all"]
    assert m["status"] == "ok"
    assert y["stats"]["predicted"]["count"] == 0
    assert y["pixel"]["recall"] == 0.0 and y["pixel"]["precision"] == 0.0
    assert y["pixel"]["fn_px"] > 0
    assert y["object"]["recall"] == 0.0 and y["object"]["n_missed"] == 21
    assert any("holds no landslides" in p["message"] for p in m["problems"])


def test_output_to_a_bucket(rasuwa_dir, tmp_path, gcs_bucket):
    out = fsio.join(gcs_bucket, "cmp")
    m = run_compare(CompareConfig(reference=str(rasuwa_dir / "2018.shp"), out=out,
                                  resolution=10.0))
    assert m["status"] == "ok"
    assert fsio.read_json(fsio.join(out, "metrics.json"))["years"]["all"]["stats"][
        "reference"]["count"] == 12
    names = fsio.glob(fsio.join(out, "**"))
    assert fsio.join(out, "report.html") in names
    assert fsio.join(out, "figures", "density_all.png") in names


def test_cli_exit_code_says_when_an_inventory_could_not_be_read(tmp_path, caplog):
    """A missing or truncated inventory makes compare exit 1, not 0 with null metrics."""
    polys = [box(330000 + 100 * i, 3110000, 330000 + 100 * i + 60, 3110060) for i in range(5)]
    for year in (2015, 2016):
        gdf = gpd.GeoDataFrame(geometry=polys, crs=UTM)
        gdf.to_file(tmp_path / f"ref_{year}.gpkg")
        gdf.iloc[:4].to_file(tmp_path / f"pred_{year}.gpkg")
    base = ["-q", "compare", "--reference", str(tmp_path / "ref_{year}.gpkg"),
            "--predicted", str(tmp_path / "pred_{year}.gpkg"), "--years", "2015,2016",
            "--resolution", "10", "--no-figures"]
    assert main([*base, "--out", str(tmp_path / "ok")]) == 0
    (tmp_path / "pred_2016.gpkg").unlink()  # one predicted year missing
    caplog.clear()
    assert main([*base, "--out", str(tmp_path / "missing")]) == 1
    assert "predicted 2016" in caplog.text
    m = json.loads((tmp_path / "missing" / "metrics.json").read_text())
    assert m["missing_years"]["predicted"] == ["2016"] and m["years"]["2015"]["pixel"]
    data = (tmp_path / "ref_2015.gpkg").read_bytes()  # a truncated reference
    (tmp_path / "ref_2015.gpkg").write_bytes(data[: len(data) // 3])
    (tmp_path / "pred_2016.gpkg").write_bytes((tmp_path / "pred_2015.gpkg").read_bytes())
    assert main([*base, "--out", str(tmp_path / "truncated")]) == 1
    m = json.loads((tmp_path / "truncated" / "metrics.json").read_text())
    assert m["status"] == "partial" and any(
        p["level"] == "error" and p.get("year") == 2015 for p in m["problems"])


def test_the_report_shows_grad_cam_overlays_when_given(tmp_path):
    """``--explanations``: the PNGs are copied beside the report and shown in a section."""
    import rasterio

    geoms = [box(330_000, 3_110_000, 330_200, 3_110_300)]
    gpd.GeoDataFrame(geometry=geoms, crs=UTM).to_file(tmp_path / "ref.gpkg")
    shots = tmp_path / "explained"
    shots.mkdir()
    for name in ("a_patch", "b_patch"):
        with rasterio.open(shots / f"{name}.png", "w", driver="PNG", width=8, height=8,
                           count=3, dtype="uint8") as dst:
            dst.write(np.full((3, 8, 8), 200, np.uint8))
    out = tmp_path / "report"
    assert main(["compare", "--reference", str(tmp_path / "ref.gpkg"), "--out", str(out),
                 "--no-figures", "--explanations", str(shots / "*.png"),
                 "--explanations", str(tmp_path / "none" / "*.png")]) == 0
    page = (out / "report.html").read_text()
    assert "Grad-CAM" in page
    copied = sorted(p.name for p in (out / "figures" / "explain").iterdir())
    assert copied == ["000_a_patch.png", "001_b_patch.png"]
    assert 'src="figures/explain/000_a_patch.png"' in page
    metrics = read_json(out / "metrics.json")
    assert any("no PNG found" in p["message"] for p in metrics["problems"])
    plain = tmp_path / "plain"
    assert main(["compare", "--reference", str(tmp_path / "ref.gpkg"), "--out", str(plain),
                 "--no-figures"]) == 0
    assert "Grad-CAM" not in (plain / "report.html").read_text()


@pytest.mark.parametrize("kind", ["probability", "nodata0", "undeclared"])
def test_a_raster_that_only_looks_like_a_mask_is_refused(kind, tmp_path):
    """A quantised probability COG (stored 0..250, scale 0.004) once counted every pixel
    above p = 0.004 as a landslide, a mask with nodata 0 made every 'not landslide' pixel
    unobserved (recall 1.0), and an undeclared -9999 counted as 'not landslide': all are
    refused, naming the fix; the 0/1 mask with nodata 255 beside them scores as it should."""
    x0, y0 = 330_000.0, 3_110_000.0
    grid = PixelGrid(UTM, (10.0, 0.0, x0, 0.0, -10.0, y0), 50, 50)
    ref = gpd.GeoDataFrame(geometry=[box(x0 + 100, y0 - 200, x0 + 200, y0 - 100),
                                     box(x0 + 300, y0 - 400, x0 + 400, y0 - 300)], crs=UTM)
    ref.to_file(tmp_path / "ref.gpkg")
    mask = np.zeros((50, 50), "uint8")
    mask[10:20, 10:20] = 1  # the first landslide only
    write_cog(str(tmp_path / "mask.tif"), mask, grid, nodata=255, profile=CATEGORICAL,
              overviews=False)
    if kind == "probability":
        stored = np.where(mask == 1, 225, 5).astype("uint8")  # p 0.9 and 0.02
        write_cog(str(tmp_path / "bad.tif"), stored, grid, nodata=255, profile=CATEGORICAL,
                  overviews=False, scales=[0.004])
        fix = "mask COG"
    elif kind == "nodata0":
        write_cog(str(tmp_path / "bad.tif"), mask, grid, nodata=0, profile=CATEGORICAL,
                  overviews=False)
        fix = "-a_nodata 255"
    else:  # -9999 marks no data but is not declared: it counted as "not landslide"
        edged = mask.astype("int16")
        edged[:, :5] = -9999
        write_cog(str(tmp_path / "bad.tif"), edged, grid, nodata=None, profile=CATEGORICAL,
                  overviews=False)
        fix = "-a_nodata -9999"
    base = ["-q", "compare", "--reference", str(tmp_path / "ref.gpkg"), "--resolution", "10",
            "--no-figures"]
    assert main([*base, "--predicted", str(tmp_path / "mask.tif"),
                 "--out", str(tmp_path / "good")]) == 0
    good = read_json(tmp_path / "good" / "metrics.json")["years"]["all"]
    assert good["pixel"]["recall"] == pytest.approx(0.5)
    assert good["object"]["n_reference"] == 2 and good["object"]["n_found"] == 1
    assert main([*base, "--predicted", str(tmp_path / "bad.tif"),
                 "--out", str(tmp_path / "bad")]) == 1
    m = read_json(tmp_path / "bad" / "metrics.json")
    assert m["status"] == "partial" and m["years"]["all"]["pixel"] is None
    errors = [p for p in m["problems"] if p["level"] == "error"]
    assert len(errors) == 1 and "bad.tif" in errors[0]["message"]
    assert fix in errors[0]["message"]


def test_min_area_drops_the_same_landslides_from_a_raster_and_a_vector_prediction(tmp_path):
    """--min-area dropped a raster's small blobs from the object metrics but kept their
    pixels in the pixel metrics; the same prediction as polygons lost both."""
    x0, y0 = 330_000.0, 3_110_000.0
    grid = PixelGrid(UTM, (10.0, 0.0, x0, 0.0, -10.0, y0), 60, 60)
    mask = np.zeros((60, 60), "uint8")
    mask[10:20, 10:20] = 1  # 10 000 m2, on the reference landslide
    mask[40:42, 40:42] = 1  # 400 m2 false alarms
    mask[50, 5:8] = 1  # 300 m2
    mask[0:30, 59] = 255  # an unobserved strip
    write_cog(str(tmp_path / "pred.tif"), mask, grid, nodata=255, profile=CATEGORICAL,
              overviews=False)
    vectorize(mask == 1, grid, min_area_m2=0.0).to_file(tmp_path / "pred.gpkg")
    gpd.GeoDataFrame(geometry=[box(x0 + 100, y0 - 200, x0 + 200, y0 - 100)],
                     crs=UTM).to_file(tmp_path / "ref.gpkg")
    common = {"reference": str(tmp_path / "ref.gpkg"), "resolution": 10.0, "figures": False}

    def years(predicted: str, name: str, min_area: float) -> dict:
        return run_compare(CompareConfig(predicted=str(tmp_path / predicted), min_area=min_area,
                                         out=str(tmp_path / name), **common))["years"]["all"]

    everything = years("pred.tif", "all", 0.0)
    assert everything["pixel"]["fp_px"] == 7
    raster, vector = years("pred.tif", "r", 500.0), years("pred.gpkg", "v", 500.0)
    for k in ("tp_px", "fp_px", "fn_px"):
        assert raster["pixel"][k] == vector["pixel"][k], k
    assert raster["pixel"]["fp_px"] == 0 and raster["pixel"]["tp_px"] == 100
    assert raster["object"]["n_predicted"] == vector["object"]["n_predicted"] == 1
    # the unobserved strip stays unobserved: only the landslide pixels are filtered
    assert raster["pixel"]["tn_px"] == everything["pixel"]["tn_px"] + 7


def test_a_web_mercator_reference_is_compared_in_utm(tmp_path):
    """A reference in EPSG:3857 was chosen as the comparison CRS (projected, in metres), and
    each 5 'm' pixel counted as 25 m2: at 60 N the pixel areas came out 4x too large."""
    utm = box(500_000, 6_650_000, 500_200, 6_650_200)  # 200 x 200 m in UTM 32N, ~60 N
    ref = gpd.GeoDataFrame(geometry=[utm], crs="EPSG:32632").to_crs("EPSG:3857")
    ref.to_file(tmp_path / "ref.gpkg")
    ref.to_file(tmp_path / "pred.gpkg")
    m = run_compare(CompareConfig(reference=str(tmp_path / "ref.gpkg"),
                                  predicted=str(tmp_path / "pred.gpkg"), out=str(tmp_path / "o"),
                                  resolution=5.0, figures=False))
    assert m["crs"] == "EPSG:32632"
    pixel = m["years"]["all"]["pixel"]
    assert pixel["reference_area_m2"] == pytest.approx(40_000, rel=0.02)
    assert m["years"]["all"]["stats"]["reference"]["total_area_m2"] == pytest.approx(40_000,
                                                                                     rel=0.001)
    with pytest.raises(CRSError, match="Mercator"):
        CompareConfig(reference=str(tmp_path / "ref.gpkg"), out=str(tmp_path / "x"), epsg=3857)

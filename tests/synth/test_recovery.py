"""Recovery of the synthetic landslide scars: the raster, the regenerated landslides, and
bench/quality.py's breakdown of a sweep's mask by recovery stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import box

from model.cpu import numpy_kernels
from pipelines.errors import InputError
from pipelines.geo.grid import PixelGrid
from pipelines.synth import WorldConfig, generate_world, world_landslides
from pipelines.synth.landslides import (
    Disturbance,
    Landslide,
    drawn_failures,
    inventory_rows,
    recovery_raster,
    scar_raster,
)
from pipelines.synth.world import landslides_fingerprint
from tests.scripts import load_script

SMALL = {"size_km": 4.0, "seed": 42}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(str(out), WorldConfig(**SMALL, clouds=False))


@pytest.fixture(scope="module")
def slides(world: tuple[Path, dict]) -> tuple[list[Landslide], PixelGrid]:
    return world_landslides(str(world[0]))


def _burn(geoms: list, grid: PixelGrid) -> np.ndarray:
    if not geoms:
        return np.zeros(grid.shape, dtype=bool)
    return features.rasterize([(g, 1) for g in geoms], out_shape=grid.shape,
                              transform=grid.affine) > 0


def _slide(lid: int, geom, *failures: tuple[int, float]) -> Landslide:
    ls = Landslide(lid, failures[0][0], 0.5, 1.0)
    for i, (year, visible) in enumerate(failures):
        ls.history.append(Disturbance(year, "new" if i == 0 else "reactivated", geom, visible,
                                      np.zeros(2), 100.0, 50.0))
    return ls


# ------------------------------------------------------------------------- the raster
def test_recovery_below_half_is_the_inventory(slides: tuple[list[Landslide], PixelGrid],
                                              world: tuple[Path, dict]) -> None:
    """rec < 0.5 marks exactly the inventory's pixels wherever one scar is drawn.

    Where drawn scars overlap, the image shows the most recent failure and so does the
    raster, while the inventory holds every landslide not yet half regrown: an inventoried
    scar overdrawn by a newer one already more than half regrown (a small scar regrows
    faster) is in the inventory but its pixels carry the newer scar's rec >= 0.5 (7 pixels
    in 2017 on this world). So equality is asserted on single-scar pixels, and the
    overlap pixels are checked to be that case only, and rare.
    """
    ls, grid = slides
    total_inv = 0
    for year in world[1]["years"]:
        rec = recovery_raster(ls, year, grid)
        assert rec.dtype == np.float32 and rec.shape == grid.shape
        inv = _burn([r["geometry"] for r in inventory_rows(ls, year)], grid)
        layers = [_burn([d.geometry], grid) for _, d, _ in drawn_failures(ls, year)]
        count = np.sum(layers, axis=0)
        drawn = count > 0
        assert np.array_equal(np.isfinite(rec), drawn)
        low = rec < 0.5
        single = count == 1
        assert inv[single].sum() > 100
        assert np.array_equal(low[single], inv[single]), year
        # an inventoried scar on top is always in the inventory; the inventory also holds
        # scars overdrawn by newer ones, on overlap pixels only
        assert not (low & ~inv).any()
        extra = inv & ~low
        assert (count[extra] >= 2).all()
        assert extra.sum() <= 0.01 * inv.sum()
        total_inv += inv.sum()
    assert total_inv > 5000


def test_new_failures_have_recovery_zero(slides: tuple[list[Landslide], PixelGrid],
                                         world: tuple[Path, dict]) -> None:
    ls, grid = slides
    for year in world[1]["years"]:
        rec = recovery_raster(ls, year, grid)
        fresh = [d.geometry for _, d, _ in drawn_failures(ls, year) if d.year == year]
        older = [d.geometry for _, d, _ in drawn_failures(ls, year) if d.year < year]
        # a failure of the year is drawn above every older one
        on_fresh = _burn(fresh, grid)
        assert on_fresh.any()
        assert (rec[on_fresh] == 0.0).all()
        assert (rec[_burn(older, grid) & ~on_fresh] > 0.0).all()


def test_most_recent_failure_on_top_and_regrown_scars_dropped() -> None:
    grid = PixelGrid("EPSG:32645", (10.0, 0.0, 0.0, 0.0, -10.0, 100.0), 10, 10)
    left, right = box(0, 0, 60, 100), box(40, 0, 100, 100)
    slides = [
        _slide(2, left, (2014, 4.0)),               # older, slower to regrow, below
        _slide(1, right, (2016, 1.0)),              # newer, on top where they overlap
    ]
    rec = recovery_raster(slides, 2017, grid)
    a, b = 1 - 2 ** (-3 / 4.0), 1 - 2 ** (-1 / 1.0)
    assert np.allclose(rec[:, :4], a) and np.allclose(rec[:, 4:], b)
    assert rec[0, 5] == np.float32(0.5)  # exactly half regrown: out of the inventory
    assert [r["id"] for r in inventory_rows(slides, 2017)] == [2]
    # same failure year: the higher id on top (the images' order)
    same = [_slide(7, right, (2016, 1.0)), _slide(3, left, (2016, 3.0))]
    assert np.allclose(recovery_raster(same, 2017, grid)[:, 4:6], 0.5)
    # before any failure: no scar; a reactivation restarts the clock
    assert np.isnan(recovery_raster(slides, 2013, grid)).all()
    react = [_slide(1, left, (2014, 1.0), (2018, 2.0))]
    assert (recovery_raster(react, 2018, grid)[:, :6] == 0.0).all()
    # 2014 + 6 years at 1.2 years to half: rec 0.969 drawn; one more year: 0.984, gone
    late = [_slide(1, left, (2014, 1.2))]
    assert np.allclose(recovery_raster(late, 2020, grid)[:, :6], 1 - 2 ** (-6 / 1.2))
    assert np.isnan(recovery_raster(late, 2021, grid)).all()


def test_scar_raster_labels_the_scar_on_top() -> None:
    grid = PixelGrid("EPSG:32645", (10.0, 0.0, 0.0, 0.0, -10.0, 100.0), 10, 10)
    slides = [_slide(2, box(0, 0, 60, 100), (2014, 4.0)),
              _slide(1, box(40, 0, 100, 100), (2016, 1.0))]
    labels, states = scar_raster(slides, 2017, grid)
    assert labels.dtype == np.int32 and labels.shape == grid.shape
    assert [(ls.lid, d.year) for ls, d, _ in states] == [(2, 2014), (1, 2016)]
    assert (labels[:, :4] == 1).all() and (labels[:, 4:] == 2).all()
    rec = recovery_raster(slides, 2017, grid)
    assert np.allclose(rec, np.array([r for _, _, r in states])[labels - 1])
    labels, states = scar_raster(slides, 2013, grid)
    assert states == [] and not labels.any()


def test_recovery_rounds_down_to_float32() -> None:
    """A rec just below 0.5 in float64 stays below 0.5 in the float32 raster."""
    grid = PixelGrid("EPSG:32645", (10.0, 0.0, 0.0, 0.0, -10.0, 100.0), 10, 10)
    visible = 1.0 + 1e-9  # one year later: rec = 0.5 - 3.5e-10, which float32 rounds to 0.5
    slides = [_slide(1, box(0, 0, 100, 100), (2016, visible))]
    assert len(inventory_rows(slides, 2017)) == 1
    assert (recovery_raster(slides, 2017, grid) < 0.5).all()


# ------------------------------------------------------------- regenerated landslides
def test_world_landslides_are_the_generated_ones(slides: tuple[list[Landslide], PixelGrid],
                                                 world: tuple[Path, dict]) -> None:
    ls, grid = slides
    w, meta = world
    assert len(ls) == meta["landslides_total"]
    assert meta["landslides_fingerprint"] == landslides_fingerprint(ls)
    assert meta["numpy_kernels"] == numpy_kernels()
    assert list(grid.transform) == meta["transform"] and list(grid.shape) == meta["shape"]
    for year in meta["years"]:
        gpkg = gpd.read_file(w / f"inventory_{year}.gpkg").sort_values("id")
        rows = sorted(inventory_rows(ls, year), key=lambda r: r["id"])
        assert len(rows) == len(gpkg) > 0
        assert [r["id"] for r in rows] == gpkg["id"].tolist()
        assert [r["trigger_year"] for r in rows] == gpkg["trigger_year"].tolist()
        assert [r["status"] for r in rows] == gpkg["status"].tolist()
        assert np.allclose([r["area_m2"] for r in rows], gpkg["area_m2"], atol=0.01)
        # the GeoPackage holds multipolygons with reoriented rings: compare the vertices
        for r, g in zip(rows, gpkg.geometry):
            a = shapely.get_coordinates(shapely.normalize(r["geometry"]))
            b = shapely.get_coordinates(shapely.normalize(g))
            assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6), r["id"]


def test_world_landslides_refuses_another_world(world: tuple[Path, dict],
                                                tmp_path: Path) -> None:
    meta = dict(world[1])
    (tmp_path / "world.json").write_text(json.dumps({**meta, "generator_version": "0.9"}))
    with pytest.raises(InputError, match="version 0.9"):
        world_landslides(str(tmp_path))
    (tmp_path / "world.json").write_text(
        json.dumps({**meta, "landslides_total": meta["landslides_total"] + 1}))
    with pytest.raises(InputError, match="landslides"):
        world_landslides(str(tmp_path))
    # same count, other landslides (one outline moved by a bit): named, with the kernels
    ls, _ = world_landslides(str(world[0]))
    ls[-1].history[-1].geometry = shapely.affinity.translate(ls[-1].history[-1].geometry,
                                                             1e-9)
    other = {**meta, "landslides_fingerprint": landslides_fingerprint(ls),
             "numpy_kernels": {"exp": "X86_V3", "sin": "X86_V3"}}
    assert other["landslides_fingerprint"] != meta["landslides_fingerprint"]
    (tmp_path / "world.json").write_text(json.dumps(other))
    with pytest.raises(InputError,
                       match=r"do not regenerate.*with numpy kernels X86_V3, this machine"):
        world_landslides(str(tmp_path))


def test_a_world_generated_with_other_numpy_kernels_is_refused(world: tuple[Path, dict]
                                                              ) -> None:
    """numpy's AVX512 and AVX2 kernels of exp, sin, cos... differ in the last bit: the same
    seed then draws other landslides, which must not pass for the world's own."""
    exp = numpy_kernels()["exp"]
    if exp.startswith("baseline") or exp == "unknown":
        pytest.skip(f"numpy runs exp with its baseline kernel here ({exp}): nothing to switch")
    probe = ("import sys; from pipelines.synth import world_landslides; "
             "from pipelines.errors import InputError\n"
             "try:\n    world_landslides(sys.argv[1])\n"
             "except InputError as e:\n    print(e); sys.exit(3)")
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": exp}
    done = subprocess.run([sys.executable, "-c", probe, str(world[0])], env=env, cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "do not regenerate as generated" in done.stdout
    assert f"generated with numpy kernels {exp}" in done.stdout


# ---------------------------------------------------------- bench/quality.py's breakdown
def _quality():
    return load_script("bench/quality.py")


def test_recovery_breakdown_of_a_mask_equal_to_the_inventory(
        world: tuple[Path, dict], slides: tuple[list[Landslide], PixelGrid],
        tmp_path: Path) -> None:
    """A mask marking every inventoried pixel: inventoried stages all marked, dropped ones
    (almost) never, no scar never; unobserved and not held-out pixels (marked 1) ignored."""
    w = world[0]
    ls, wgrid = slides
    study = tmp_path / "study"
    (study / "areas").mkdir(parents=True)
    (study / "world").symlink_to(w)
    # the eval area: the world's eastern half
    left, bottom, right, top = wgrid.bounds
    held = box((left + right) / 2, bottom, right, top)
    frame = gpd.GeoDataFrame({"name": ["eval_area"]}, geometry=[held], crs=wgrid.crs)
    (study / "areas" / "eval_area.geojson").write_text(frame.to_crs("EPSG:4326").to_json())
    # the mosaic's grid: 16 pixels more on every side, nodata outside the world
    mgrid = wgrid.buffered(16)
    years = [2015, 2017]
    for year in years:
        inv = _burn([r["geometry"] for r in inventory_rows(ls, year)], mgrid)
        mask = np.where(inv, 1, 0).astype(np.uint8)
        mask[:16], mask[-16:], mask[:, :16], mask[:, -16:] = 255, 255, 255, 255
        mask[:, : mgrid.width // 2] = 1           # not held out
        mask[40:80] = 255                         # unobserved
        path = study / "sweeps" / str(year) / "mosaic" / "mask.tif"
        path.parent.mkdir(parents=True)
        with rasterio.open(path, "w", driver="GTiff", width=mgrid.width, height=mgrid.height,
                           count=1, dtype="uint8", crs=mgrid.crs, nodata=255,
                           transform=Affine(*mgrid.transform)) as dst:
            dst.write(mask, 1)

    out = _quality().recovery_breakdown(str(study))

    assert list(out) == [str(y) for y in years]
    c = np.arange(mgrid.width)
    cols = ((c + 0.5 >= 16 + wgrid.width / 2) & (c < mgrid.width - 16))[None, :]
    rows = (np.arange(mgrid.height) >= 16) & (np.arange(mgrid.height) < mgrid.height - 16)
    rows &= ~((np.arange(mgrid.height) >= 40) & (np.arange(mgrid.height) < 80))
    scored = int((cols & rows[:, None]).sum())
    for year in years:
        stages = out[str(year)]
        assert list(stages) == ["fresh", "young", "older", "just dropped", "dropped",
                                "no scar"]
        assert sum(s["pixels"] for s in stages.values()) == scored
        assert stages["fresh"]["pixels"] > 0 and stages["older"]["pixels"] > 0
        for name in ("fresh", "young", "older"):
            if stages[name]["pixels"]:
                assert stages[name]["fraction"] == 1.0
        assert stages["no scar"]["fraction"] == 0.0
        dropped = stages["just dropped"]["landslide"] + stages["dropped"]["landslide"]
        assert dropped <= 0.01 * stages["older"]["pixels"] + 10
        assert stages["dropped"]["pixels"] > 0
    assert out["2015"]["fresh"]["pixels"] > 500  # the event year


def _write_mask(path: Path, mask: np.ndarray, grid: PixelGrid) -> None:
    path.parent.mkdir(parents=True)
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height,
                       count=1, dtype="uint8", crs=grid.crs, nodata=255,
                       transform=Affine(*grid.transform)) as dst:
        dst.write(mask, 1)


def test_scar_decisions_list_the_scars_near_the_line_and_score_them_right(
        world: tuple[Path, dict], slides: tuple[list[Landslide], PixelGrid],
        tmp_path: Path) -> None:
    """A mask equal to the inventory but for one inventoried scar left unmarked and one
    just dropped scar marked, both within 0.05 of the line: both listed with their pixels
    and share marked, their pixels counted as the band's misses and false alarms, and the
    year's F1 with them decided right is 1."""
    ls, grid = slides
    study = tmp_path / "study"
    (study / "areas").mkdir(parents=True)
    (study / "world").symlink_to(world[0])
    frame = gpd.GeoDataFrame({"name": ["eval_area"]}, geometry=[box(*grid.bounds)],
                             crs=grid.crs)
    (study / "areas" / "eval_area.geojson").write_text(frame.to_crs("EPSG:4326").to_json())
    q = _quality()
    year, pick = None, {}
    for y in world[1]["years"]:
        labels, states = scar_raster(ls, y, grid)
        sizes = np.bincount(labels.ravel(), minlength=len(states) + 1)
        for want, lo, hi in (("in", 0.45, 0.5), ("out", 0.5, 0.55)):
            for i, (_, _, r) in enumerate(states, start=1):
                if lo <= r < hi and sizes[i] >= q.NEAR_LINE_MIN_PIXELS:
                    pick[want] = i
                    break
        if len(pick) == 2:
            year = y
            break
        pick = {}
    assert year is not None, "no year of this world has both kinds of scar near the line"
    rec = recovery_raster(ls, year, grid)
    truth = rec < 0.5
    marked = truth.copy()
    marked[labels == pick["in"]] = False
    marked[labels == pick["out"]] = True
    _write_mask(study / "sweeps" / str(year) / "mosaic" / "mask.tif",
                marked.astype(np.uint8), grid)
    tp, fp, fn = (int((marked & truth).sum()), int((marked & ~truth).sum()),
                  int((~marked & truth).sum()))
    (study / "report").mkdir()
    (study / "report" / "metrics.json").write_text(json.dumps(
        {"years": {str(year): {"pixel": {"tp_px": tp, "fp_px": fp, "fn_px": fn}}}}))

    out = q.scar_decisions(str(study))

    d = out[str(year)]
    n_in, n_out = int((labels == pick["in"]).sum()), int((labels == pick["out"]).sum())
    assert d["band_missed"] == n_in == fn and d["band_false_alarms"] == n_out == fp
    assert d["f1"] == round(2 * tp / (2 * tp + fp + fn), 4) < 1.0
    assert d["f1_band_right"] == 1.0
    listed_in = [c for c in d["scars"] if c["inventoried"] and c["marked"] == 0]
    listed_out = [c for c in d["scars"] if not c["inventoried"] and c["marked"] == c["pixels"]]
    assert [c["pixels"] for c in listed_in] == [n_in]
    assert [c["pixels"] for c in listed_out] == [n_out]
    _, states = scar_raster(ls, year, grid)
    for c, i in ((listed_in[0], pick["in"]), (listed_out[0], pick["out"])):
        s_ls, s_d, s_r = states[i - 1]
        assert (c["id"], c["failure_year"], c["recovery"]) == (s_ls.lid, s_d.year,
                                                               round(s_r, 3))
    # every other scar listed is near the line, large enough, and marked as inventoried
    for c in d["scars"]:
        assert 0.4 <= c["recovery"] < 0.6 and c["pixels"] >= q.NEAR_LINE_MIN_PIXELS
    assert [c["pixels"] for c in d["scars"]] == sorted((c["pixels"] for c in d["scars"]),
                                                       reverse=True)


def test_near_line_table_prints_each_years_scars(capsys: pytest.CaptureFixture[str]) -> None:
    q = _quality()
    scar = {"id": 3, "failure_year": 2015, "trigger_year": 2015, "recovery": 0.49,
            "inventoried": True, "pixels": 167, "marked": 0}
    q.print_near_line([{"seed": 123, "variant": "temporal", "near_line": {
        "2019": {"scars": [scar, {**scar, "recovery": 0.51, "inventoried": False,
                                  "pixels": 200, "marked": 84}],
                 "f1": 0.693, "f1_band_right": 0.904},
        "2018": {"scars": [], "f1": None, "f1_band_right": None}}},
        {"seed": 42, "variant": "single-date"}])
    text = capsys.readouterr().out
    assert "  123 temporal     2019  0.69  0.90  2015 0.49 in 167 0%; 2015 0.51 out 200 42%" \
        in text
    assert "  123 temporal     2018   n/a   n/a  -" in text and "single-date" not in text


def test_recovery_table_prints_the_stages(capsys: pytest.CaptureFixture[str]) -> None:
    q = _quality()
    cell = {"pixels": 10, "landslide": 5, "fraction": 0.5}
    empty = {"pixels": 0, "landslide": 0, "fraction": None}
    rec = {"2016": {name: cell for name in q.RECOVERY_NAMES}}
    rec["2016"]["young"] = empty
    q.print_recovery([{"seed": 42, "variant": "temporal", "recovery": rec},
                      {"seed": 42, "variant": "single-date"},
                      {"seed": 7, "variant": "temporal", "recovery": None,
                       "recovery_error": "world/: its landslides do not regenerate"}])
    text = capsys.readouterr().out
    assert "seed 7: no recovery table: world/: its landslides do not regenerate" in text
    assert "just dropped" in text and "2016" in text and "0.500 5/10" in text
    assert "n/a" in text and text.count("\n   42 ") == 1  # the temporal row only
    # misses: 5 of 5 + 5 on older scars; false alarms: 5 of 3 * 5 on just dropped ones
    assert "50% of 10" in text and "33% of 15" in text


def test_count_gaps_name_the_landslides_behind_a_count_off_by_more_than_30pc(
        tmp_path: Path) -> None:
    q = _quality()
    obj = {"n_reference": 24, "n_predicted": 15, "n_found": 17, "n_missed": 7,
           "n_false_alarms": 1, "n_fragmented": 2, "merges": 4, "n_reference_in_merges": 9,
           "precision": 0.93}
    close = {**obj, "n_predicted": 31}  # 29% more: within the tolerance
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps(
        {"years": {"2019": {"object": obj}, "2018": {"object": close}, "2017": {}}}))
    out = q.object_breakdown(str(tmp_path))
    assert list(out) == ["2017", "2018", "2019"] and out["2017"] == {}
    assert out["2019"] == {k: v for k, v in obj.items() if k != "precision"}
    lines = q.count_gaps([{"seed": 42, "variant": "temporal", "objects": out},
                          {"seed": 42, "variant": "single-date"},
                          {"seed": 42, "variant": "train1", "objects": {"2018": obj}}])
    assert lines == ["seed 42 temporal 2019: 15 predicted / 24 reference: 7 missed, 1 false "
                     "alarms, 4 predicted over 2+ landslides (9 landslides), 2 landslides in "
                     "2+ pieces",  # each line names its study: seed and variant
                     "seed 42 train1 2018: 15 predicted / 24 reference: 7 missed, 1 false "
                     "alarms, 4 predicted over 2+ landslides (9 landslides), 2 landslides in "
                     "2+ pieces"]

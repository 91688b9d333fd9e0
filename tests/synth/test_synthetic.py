"""The synthetic world: determinism, georeferencing, terrain, landslides, spectra, source."""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.windows
import shapely
from rasterio import features
from rio_cogeo.cogeo import cog_validate

from pipelines import cli
from pipelines.errors import ConfigError, DataNotFoundError, InputError
from pipelines.geo import terrain
from pipelines.geo.bands import SENTINEL2_BANDS, TERRAIN_BANDS
from pipelines.geo.grid import ChunkKey, GridSpec, PixelGrid
from pipelines.sources.synthetic import SyntheticSource
from pipelines.synth import (
    FIELDS,
    FOREST,
    GRAVEL,
    LANDCOVER,
    ROAD,
    ROCK,
    WorldConfig,
    generate_world,
    parse_years,
)

SMALL = {"size_km": 4.0, "seed": 42}
EVENT = 2015


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(str(out), WorldConfig(**SMALL))


@pytest.fixture(scope="module")
def clear_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clear")
    return out, generate_world(str(out), WorldConfig(**SMALL, clouds=False))


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _refl(w: Path, year: int) -> np.ndarray:
    return _read(w / f"s2_{year}.tif").astype(np.float64) * 1e-4


def _ndvi(refl: np.ndarray) -> np.ndarray:
    nir, red = refl[SENTINEL2_BANDS.index("B8")], refl[SENTINEL2_BANDS.index("B4")]
    return (nir - red) / np.maximum(nir + red, 1e-6)


def _inventory(w: Path, year: int) -> gpd.GeoDataFrame:
    return gpd.read_file(w / f"inventory_{year}.gpkg")


def _mask(geoms, like: Path) -> np.ndarray:
    with rasterio.open(like) as src:
        shape, transform = (src.height, src.width), src.transform
    geoms = list(geoms)
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return features.rasterize([(g, 1) for g in geoms], out_shape=shape,
                              transform=transform) > 0


def _slope(w: Path) -> np.ndarray:
    dem = _read(w / "dem.tif")[0].astype(np.float64)
    return terrain.slope(np.pad(dem, 1, mode="reflect", reflect_type="odd"), 10.0)[1:-1, 1:-1]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_world_other_seed_other_world(tmp_path: Path) -> None:
    cfg = {"size_km": 2.0, "years": (2014, 2015, 2016)}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    wa = generate_world(str(a), WorldConfig(seed=7, **cfg))
    wb = generate_world(str(b), WorldConfig(seed=7, **cfg))
    wc = generate_world(str(c), WorldConfig(seed=8, **cfg))
    assert wa == wb
    assert (a / "world.json").read_bytes() == (b / "world.json").read_bytes()
    names = ["dem.tif", "landcover.tif"] + [f"{p}_{y}.tif" for p in ("s2", "clouds")
                                            for y in cfg["years"]]
    for name in names:
        np.testing.assert_array_equal(_read(a / name), _read(b / name), err_msg=name)
    for y in cfg["years"]:
        ia, ib = _inventory(a, y), _inventory(b, y)
        assert list(ia["id"]) == list(ib["id"])
        assert all(shapely.equals_exact(ia.geometry.values, ib.geometry.values, 1e-9))
    assert not np.array_equal(_read(a / "dem.tif"), _read(c / "dem.tif"))
    assert not np.array_equal(_read(a / "s2_2015.tif"), _read(c / "s2_2015.tif"))
    assert wa["landslides"] != wc["landslides"]


# ----------------------------------------------------------------------------- rasters
def test_dem_range_and_relief(world: tuple[Path, dict]) -> None:
    w, meta = world
    with rasterio.open(w / "dem.tif") as src:
        assert src.dtypes[0] == "float32"
        dem = src.read(1)
    assert np.isfinite(dem).all()
    assert 1300.0 < dem.min() < 2000.0, dem.min()
    assert dem.max() < 5500.0
    assert dem.max() - dem.min() > 500.0  # a 4 km window of a Himalayan valley
    assert meta["dem_range_m"] == [round(float(dem.min()), 1), round(float(dem.max()), 1)]
    slope = _slope(w)
    assert np.percentile(slope, 90) > 35.0  # steep valley sides...
    assert np.percentile(slope, 10) < 15.0  # ...and gentle floors, shoulders, terraces


def test_files_are_valid_cogs(world: tuple[Path, dict]) -> None:
    w, meta = world
    tifs = ["dem.tif", "landcover.tif"] + [f"s2_{y}.tif" for y in meta["years"]] \
        + [f"clouds_{y}.tif" for y in meta["years"]]
    for name in tifs:
        ok, errors, _ = cog_validate(str(w / name))
        assert ok, (name, errors)


def test_georeferencing_matches_world_json(world: tuple[Path, dict]) -> None:
    w, meta = world
    assert meta["crs"] == "EPSG:32645"
    a, b, c, d, e, f = meta["transform"]
    assert (a, b, d, e) == (10.0, 0.0, 0.0, -10.0)
    assert c % 10 == 0 and f % 10 == 0  # corners on whole metres (10 m multiples)
    assert meta["shape"] == [400, 400]
    grid = PixelGrid("EPSG:32645", tuple(meta["transform"]), 400, 400)
    for name in ["dem.tif", "landcover.tif", "s2_2015.tif", "clouds_2015.tif"]:
        with rasterio.open(w / name) as src:
            assert src.crs.to_epsg() == 32645, name
            assert tuple(src.transform)[:6] == grid.transform, name
            assert (src.width, src.height) == (400, 400)
    with rasterio.open(w / "s2_2013.tif") as src:
        assert src.descriptions == SENTINEL2_BANDS
        assert src.dtypes == ("uint16",) * 12 and src.nodata == 0
    for y in meta["years"]:
        assert _inventory(w, y).crs.to_epsg() == 32645
    aoi = gpd.read_file(w / "aoi.geojson")
    train = gpd.read_file(w / "train_area.geojson")
    study = gpd.read_file(w / "study_area.geojson")
    for g in (aoi, train, study):
        assert g.crs.to_epsg() == 4326
    lon, lat = meta["config"]["center_lon"], meta["config"]["center_lat"]
    assert aoi.geometry[0].contains(shapely.Point(lon, lat))
    t, s = train.geometry[0], study.geometry[0]
    assert t.disjoint(s)
    assert t.bounds[2] < s.bounds[0]  # training in the west
    assert aoi.geometry[0].buffer(1e-9).contains(t) and aoi.geometry[0].buffer(1e-9).contains(s)
    assert 0.3 < t.area / aoi.geometry[0].area < 0.45


def test_landcover_has_its_classes(world: tuple[Path, dict]) -> None:
    w, meta = world
    lc = _read(w / "landcover.tif")[0]
    present = set(np.unique(lc).tolist())
    assert {FOREST, GRAVEL, ROAD, ROCK, FIELDS} <= present
    assert present <= set(LANDCOVER)
    assert meta["landcover_legend"] == {str(k): v for k, v in LANDCOVER.items()}
    assert sum(meta["landcover_fractions"].values()) == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------- landslides
def test_inventories_match_world_json(world: tuple[Path, dict]) -> None:
    w, meta = world
    for y in meta["years"]:
        inv = _inventory(w, y)
        assert list(inv.columns) == ["id", "trigger_year", "status", "area_m2", "geometry"]
        counts = meta["landslides"][str(y)]
        assert counts["visible"] == len(inv)
        for status in ("new", "active", "reactivated"):
            assert counts[status] == int((inv["status"] == status).sum())
        assert set(inv["status"]) <= {"new", "active", "reactivated"}
        assert (inv["trigger_year"] <= y).all()
        assert ((inv["status"] == "new") == (inv["trigger_year"] == y)).all()
        np.testing.assert_allclose(inv["area_m2"], inv.geometry.area, rtol=1e-6, atol=0.01)
        assert inv.geometry.is_valid.all() and inv["id"].is_unique


def test_landslides_sit_on_steep_slopes(world: tuple[Path, dict]) -> None:
    w, meta = world
    slope = _slope(w)
    geoms = [g for y in meta["years"] for g in _inventory(w, y).geometry]
    inside = _mask(geoms, w / "dem.tif")
    ls_med, world_med = float(np.median(slope[inside])), float(np.median(slope))
    assert ls_med > 25.0 and ls_med > 1.5 * world_med, (ls_med, world_med)


def test_landslides_are_elongated_downslope(world: tuple[Path, dict]) -> None:
    w, meta = world
    dem = _read(w / "dem.tif")[0].astype(np.float64)
    aspect = terrain.aspect(np.pad(dem, 1, mode="reflect", reflect_type="odd"), 10.0)[1:-1, 1:-1]
    inv = gpd.GeoDataFrame(pd.concat([_inventory(w, y) for y in meta["years"]]))
    inv = inv[inv["area_m2"] > 2000].drop_duplicates("id")
    assert len(inv) >= 20
    aligned, ratios = [], []
    for geom in inv.geometry:
        rect = np.asarray(geom.minimum_rotated_rectangle.exterior.coords)
        sides = np.diff(rect[:3], axis=0)
        lengths = np.hypot(sides[:, 0], sides[:, 1])
        ratios.append(lengths.max() / max(lengths.min(), 1e-6))
        long_side = sides[int(np.argmax(lengths))]
        axis = math.degrees(math.atan2(long_side[0], long_side[1])) % 180.0  # from north
        m = _mask([geom], w / "dem.tif")
        a = np.radians(aspect[m])
        down = math.degrees(math.atan2(np.sin(a).mean(), np.cos(a).mean())) % 180.0
        diff = abs(axis - down)
        aligned.append(min(diff, 180.0 - diff) < 35.0)
    assert np.median(ratios) > 1.5
    assert np.mean(aligned) > 0.6


def test_landslide_sizes_are_heavy_tailed(world: tuple[Path, dict]) -> None:
    w, meta = world
    areas = np.concatenate([_inventory(w, y)["area_m2"].to_numpy() for y in meta["years"]])
    assert areas.min() < 1000.0
    assert areas.max() > 20_000.0
    # A power-law tail: the largest landslides are far larger than the typical one.
    assert areas.max() > 10 * np.median(areas)


def test_event_year_has_many_new_landslides(world: tuple[Path, dict]) -> None:
    _, meta = world
    new = {int(y): c["new"] for y, c in meta["landslides"].items()}
    others = [n for y, n in new.items() if y != EVENT]
    assert new[EVENT] >= 3 * np.mean(others), new
    reactivated = {int(y): c["reactivated"] for y, c in meta["landslides"].items()}
    assert sum(reactivated.values()) > 0
    assert all(n == 0 for y, n in reactivated.items() if y <= EVENT)


def test_landslides_revegetate(clear_world: tuple[Path, dict]) -> None:
    w, _ = clear_world
    event = _inventory(w, EVENT)
    event = event[event["status"] == "new"]
    m = _mask(event.geometry, w / "dem.tif")
    ndvi = {y: float(np.mean(_ndvi(_refl(w, y))[m])) for y in (EVENT, EVENT + 1, EVENT + 3)}
    assert ndvi[EVENT] < ndvi[EVENT + 1] < ndvi[EVENT + 3], ndvi
    # ...and they drop out of later inventories once revegetated.
    still = [int((_inventory(w, y)["trigger_year"] == EVENT).sum()) for y in (2016, 2019)]
    assert still[1] < still[0] <= len(event)


def test_landslides_differ_from_forest_but_have_lookalikes(clear_world: tuple[Path, dict]
                                                          ) -> None:
    w, _ = clear_world
    refl = _refl(w, EVENT)
    ndvi = _ndvi(refl)
    lc = _read(w / "landcover.tif")[0]
    inv = _inventory(w, EVENT)
    fresh = _mask(inv[inv["status"] == "new"].geometry, w / "dem.tif")
    any_ls = _mask(inv.geometry, w / "dem.tif")
    lo, hi = np.percentile(ndvi[fresh], [10, 90])
    forest = ndvi[(lc == FOREST) & ~any_ls]
    assert np.median(ndvi[fresh]) < np.percentile(forest, 5)
    # NDVI alone cannot separate landslides from river beds, roads and bare ridges.
    for cls in (GRAVEL, ROAD, ROCK):
        px = ndvi[(lc == cls) & ~any_ls]
        like = (px >= lo) & (px <= hi)
        assert like.sum() >= 30 and like.mean() > 0.05, (LANDCOVER[cls], like.mean())


def test_clouds_only_when_asked(world: tuple[Path, dict], clear_world: tuple[Path, dict]) -> None:
    w, meta = world
    c, cmeta = clear_world
    b2, b11 = SENTINEL2_BANDS.index("B2"), SENTINEL2_BANDS.index("B11")
    for y in meta["years"]:
        mask = _read(w / f"clouds_{y}.tif")[0]
        cloudy = mask == 1
        assert cloudy.mean() > 0.01, y
        assert meta["images"][str(y)]["cloud_fraction"] == pytest.approx(cloudy.mean(), abs=1e-4)
        r, rc = _refl(w, y), _refl(c, y)
        # Bright in the visible and in the SWIR (unlike snow): a cloud, not the ground.
        assert np.median(r[b2][cloudy]) > 0.3 and np.median(r[b11][cloudy]) > 0.25
        assert np.median(rc[b2][cloudy]) < 0.15
        # Clouds and shadows are the only difference between the two worlds.
        clear = mask == 0
        np.testing.assert_array_equal(r[:, clear], rc[:, clear])
        assert not _read(c / f"clouds_{y}.tif").any()
        assert ((rc[b2] > 0.3) & (rc[b11] > 0.25)).mean() < 1e-3
        assert cmeta["images"][str(y)]["cloud_fraction"] == 0.0


# ----------------------------------------------------------------------------- source
def test_synthetic_source_reads_a_utm_chunk(world: tuple[Path, dict]) -> None:
    w, meta = world
    spec = GridSpec(32645, pixel_size=10.0, chunk_size=128, halo=8)
    left, top = meta["transform"][2], meta["transform"][5]
    key = ChunkKey(32645, int((10_000_000 - (top - 1500)) // spec.chunk_m),
                   int((left + 1500) // spec.chunk_m))
    grid = spec.chunk_grid(key, halo=True)
    src = SyntheticSource(str(w), 2016)
    assert src.bands == (*SENTINEL2_BANDS, *TERRAIN_BANDS)
    with src:
        r = src.read(grid, src.bands)
    assert r.data.shape == (17, 144, 144) and r.data.dtype == np.float32
    # cloudy pixels (classes 1-3 of clouds_2016.tif) are nodata, every other one is valid
    with rasterio.open(w / "clouds_2016.tif") as f:
        clouds = f.read(1, window=f.window(*grid.bounds))
    assert 0.0 < (clouds > 0).mean() < 0.9  # this chunk has clouds to mask
    np.testing.assert_array_equal(r.valid, clouds == 0)
    assert np.isnan(r.data[:, ~r.valid]).all()
    s2 = r.data[:12][:, r.valid]
    assert s2.min() >= 0.0 and s2.max() <= 1.5 and 0.01 < np.median(s2) < 0.5
    slope = r.band("slope")[r.valid]
    assert slope.min() >= 0.0 and slope.max() <= 90.0 and 5.0 < np.median(slope) < 60.0
    dem = r.band("DEM")[r.valid]
    assert meta["dem_range_m"][0] - 1 <= dem.min() and dem.max() <= meta["dem_range_m"][1] + 1
    # The same pixels as the file (the chunk grid is aligned with the world grid).
    with rasterio.open(w / "s2_2016.tif") as f:
        win = f.window(*grid.bounds)
        raw = f.read(SENTINEL2_BANDS.index("B4") + 1, window=win).astype(np.float64) * 1e-4
    np.testing.assert_allclose(r.band("B4")[r.valid], raw[r.valid], atol=1e-6)
    d = src.describe()
    assert d["kind"] == "synthetic" and d["world"] == str(w) and d["year"] == 2016
    assert d["mask_clouds"] is True
    with SyntheticSource(str(w), 2016, mask_clouds=False) as cloudy:  # clouds as imagery
        kept = cloudy.read(grid, ["B4"])
    assert kept.valid.mean() > 0.99
    np.testing.assert_allclose(kept.band("B4"), raw, atol=1e-6)
    again = pickle.loads(pickle.dumps(src))
    with again:
        np.testing.assert_array_equal(again.read(grid, ["B8", "slope"]).data,
                                      r.select(["B8", "slope"]).data)


def test_synthetic_source_rejects_missing_year_and_world(world: tuple[Path, dict],
                                                         tmp_path: Path) -> None:
    w, _ = world
    with pytest.raises(InputError, match=r"2012.*2013, 2014, 2015, 2016, 2017, 2018, 2019"):
        SyntheticSource(str(w), 2012)
    with pytest.raises(DataNotFoundError, match="landslides synth"):
        SyntheticSource(str(tmp_path), 2015)


def test_world_in_a_bucket(gcs_bucket: str, tmp_path: Path) -> None:
    from pipelines import fsio

    cfg = WorldConfig(seed=5, size_km=1.5, years=(2015, 2016))
    out = fsio.join(gcs_bucket, "worlds", "w1")
    meta = generate_world(out, cfg)
    assert meta == generate_world(str(tmp_path / "local"), cfg)
    names = sorted(p.rsplit("/", 1)[-1] for p in fsio.glob(fsio.join(out, "*")))
    assert names == sorted(p.name for p in (tmp_path / "local").iterdir())
    src = SyntheticSource(out, 2016)
    grid = PixelGrid("EPSG:32645", tuple(meta["transform"]), 150, 150).subgrid(
        rasterio.windows.Window(20, 30, 64, 64))
    with src:
        r = src.read(grid, ["B4", "B8", "DEM", "slope"])
    assert r.valid.any() and np.isfinite(r.data[:, r.valid]).all()
    assert np.isnan(r.data[:, ~r.valid]).all()  # under clouds, if any
    local = SyntheticSource(str(tmp_path / "local"), 2016)
    with local:
        np.testing.assert_array_equal(local.read(grid, ["B4", "B8", "DEM", "slope"]).data,
                                      r.data)


# ----------------------------------------------------------------------------- config, CLI
def test_config_and_years_validation() -> None:
    assert parse_years("2013-2015") == (2013, 2014, 2015)
    assert parse_years("2019, 2014-2015") == (2014, 2015, 2019)
    with pytest.raises(ConfigError, match="2013-2019"):
        parse_years("13-19")
    with pytest.raises(ConfigError, match="event_year 2021"):
        WorldConfig(event_year=2021)
    with pytest.raises(ConfigError, match="64 pixels"):
        WorldConfig(size_km=0.3)
    with pytest.raises(ConfigError, match="seed"):
        WorldConfig(seed=-1)
    with pytest.raises(ConfigError, match="pixel_size"):
        WorldConfig(pixel_size=0.5)


def test_cli_synth_writes_the_world(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert cli.main(["-q", "synth", "--out", str(out), "--size-km", "2", "--seed", "3"]) == 0
    import json

    meta = json.loads((out / "world.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["shape"] == [200, 200]
    assert meta["years"] == list(range(2013, 2020))
    for y in meta["years"]:
        assert (out / f"s2_{y}.tif").exists() and (out / f"inventory_{y}.gpkg").exists()
    for name in ("dem.tif", "landcover.tif", "aoi.geojson", "train_area.geojson",
                 "study_area.geojson"):
        assert (out / name).exists(), name
    assert cli.main(["-q", "synth", "--out", str(tmp_path / "bad"), "--event-year", "2030"]) == 2


@pytest.mark.slow
def test_default_world_under_a_minute(tmp_path: Path) -> None:
    t0 = time.monotonic()
    meta = generate_world(str(tmp_path / "default"))
    took = time.monotonic() - t0
    assert took < 60.0, f"default world took {took:.1f} s"
    assert meta["shape"] == [1200, 1200] and len(meta["years"]) == 7
    assert max(c["max_area_m2"] for c in meta["landslides"].values()) > 100_000
    new = {int(y): c["new"] for y, c in meta["landslides"].items()}
    assert new[EVENT] >= 3 * np.mean([n for y, n in new.items() if y != EVENT])


def test_keep_clouds_flag_reaches_the_source(world: tuple[Path, dict]) -> None:
    from pipelines import cli
    from pipelines.options.export import ExportOptions
    from pipelines.options.fields import from_namespace
    from pipelines.options.source import SourceOptions
    from pipelines.sources.factory import make_source

    w, _ = world
    assert SourceOptions(world=str(w)).to_spec() == {"kind": "synthetic", "world": str(w)}
    spec = SourceOptions(world=str(w), mask_clouds=False).to_spec()
    assert make_source(spec, "2016-01-01", "2016-12-31").describe()["mask_clouds"] is False
    assert make_source(dict(spec, mask_clouds=True), "2016-01-01",
                       "2016-12-31").describe()["mask_clouds"] is True
    args = cli.build_parser().parse_args(["export", "--out", "o", "--aoi", "a", "--world",
                                          str(w), "--keep-clouds"])
    assert args.mask_clouds is False
    assert from_namespace(ExportOptions, args).source == spec

"""Input stacks: reference dates and change bands, from the spec to shards, models and sweeps.

One tiny synthetic world (1.28 km, 2014-2016, clouds) serves every test that reads
imagery; GeoTIFF stacks use two 16 x 16 px UTM files. Exports, trainings and sweeps go
through the real CLI / entry points with the smallest settings that still cut patches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines import cli
from pipelines.errors import BandError, ConfigError, InputError
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import PixelGrid
from pipelines.geo.stack import (
    Reference,
    StackSpec,
    channel_band,
    compose,
    parse_references,
    shift_date,
)
from pipelines.sources.stacked import StackedSource, make_stacked_source
from pipelines.sources.synthetic import SyntheticSource
from tests.conftest import read_shards

YEARS = (2014, 2015, 2016)
T16 = ("2016-01-01", "2016-12-31")
BANDS3 = ("B4", "B8", "slope")
CHANNELS = ("B4", "B8", "slope", "B4@prev", "B8@prev", "dNDVI@prev", "dB4@prev")
TINY_TRAIN = ["--epochs", "1", "--base-filters", "4", "--depth", "3", "--batch-size", "8",
              "--lr", "0.01", "--patience", "0", "--no-saved-model"]


def ndvi(b8: np.ndarray, b4: np.ndarray) -> np.ndarray:
    """(B8 - B4) / (B8 + B4) in float64; NaN where either is NaN or both are 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b8.astype(np.float64) - b4) / (b8.astype(np.float64) + b4)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tiny_world) -> dict:
    return tiny_world


def _export_args(world: dict, out: Path, *extra: str) -> list[str]:
    d = world["dir"]
    return ["export", "--out", str(out), "--aoi", world["aoi"], "--source", "synthetic",
            "--world", str(d), "--keep-clouds", "--chunk-size", "64", "--patch-size", "32",
            "--negative-fraction", "1", "--split", "0.5,0.5,0", "--split-block", "1",
            "--seed", "1", *extra]


@pytest.fixture(scope="module")
def stacked(world, tmp_path_factory) -> dict:
    """A stacked export (2016 with prev=-1y, change NDVI,B4) and a 1-epoch model of it."""
    root = tmp_path_factory.mktemp("stacked")
    out = root / "shards"
    args = _export_args(world, out, "--inventory", str(world["dir"] / "inventory_2016.gpkg"),
                        "--start", T16[0], "--end", T16[1], "--bands", "b4,b8,slope",
                        "--reference", "prev=-1y", "--change", "ndvi,B4",
                        "--max-nodata", "0.5")
    assert cli.main(args) == 0
    model = root / "model"
    assert cli.main(["train", "--data", str(out), "--out", str(model), *TINY_TRAIN]) == 0
    return {"out": out, "model": model,
            "manifest": json.loads((out / "manifest.json").read_text()),
            "artifact": json.loads((model / "artifact.json").read_text())}


# ----------------------------------------------------------------------------- 1. the spec
def test_reference_parsing_and_errors():
    prev, pre = parse_references("prev=-1y, pre=2014-01-01/2014-12-31")
    assert prev == Reference("prev", offset="-1y")
    assert pre == Reference("pre", start="2014-01-01", end="2014-12-31")
    assert parse_references(["a=+06m", "b=-30d"]) == (Reference("a", offset="6m"),
                                                      Reference("b", offset="-30d"))
    assert parse_references("") == () and parse_references(None) == ()
    for bad in ("prev=-1w", "prev=0y", "prev=-1.5y", "prev=yesterday", "prev=", "prev",
                "1st=-1y", "pre=2014-12-31/2014-01-01", "pre=2014-13-01/2014-12-31"):
        with pytest.raises(ConfigError):
            parse_references(bad)
    with pytest.raises(ConfigError, match="not both"):
        Reference("both", offset="-1y", start="2014-01-01", end="2014-12-31")
    with pytest.raises(ConfigError, match="not neither"):
        Reference("none")
    with pytest.raises(ConfigError, match="both start and end"):
        Reference("half", start="2014-01-01")
    with pytest.raises(ConfigError, match="prev"):
        StackSpec(BANDS3, parse_references("prev=-1y,prev=-2y"))
    with pytest.raises(ConfigError, match="at least one reference"):
        StackSpec(BANDS3, change=("NDVI",))
    with pytest.raises(ConfigError, match="at least one reference"):
        StackSpec(BANDS3, reference_bands=("B4",))
    refs = parse_references("prev=-1y")
    for terrain in ("slope", "DEM"):
        with pytest.raises(ConfigError, match="not optical"):
            StackSpec(BANDS3, refs, change=(terrain,))
    with pytest.raises(ConfigError, match="not optical"):
        StackSpec(BANDS3, refs, reference_bands=("B4", "DEM"))
    with pytest.raises(BandError, match="NDXI"):
        StackSpec(BANDS3, refs, change=("NDXI",))
    with pytest.raises(ConfigError, match="without '@'"):
        StackSpec(("B4", "B4@prev"), refs)


def test_duplicate_change_bands_are_refused():
    refs = parse_references("prev=-1y")
    for change in (("NDVI", "ndvi"), ("B4", "red")):
        with pytest.raises(ConfigError, match="twice"):
            StackSpec(BANDS3, refs, change=change)


def test_windows_and_date_shifts():
    spec = StackSpec(BANDS3, parse_references("prev=-1y,pre=2014-03-01/2014-10-31,h=-6m,"
                                              "m=-30d"))
    def windows(start: str, end: str) -> dict:  # each one's arithmetic, overlap or not
        return {r.name: r.window(start, end) for r in spec.references}

    assert windows(*T16) == {"prev": ("2015-01-01", "2015-12-31"),
                             "pre": ("2014-03-01", "2014-10-31"),
                             # -6m of ..2016-12-31 (read through 12-30): through 06-30
                             "h": ("2015-07-01", "2016-07-01"),
                             "m": ("2015-12-02", "2016-12-01")}
    with pytest.raises(ConfigError, match="'h' .* overlaps"):  # h and m overlap the target
        spec.windows(*T16)
    leap = windows("2016-02-29", "2016-08-31")
    assert leap["prev"] == ("2015-02-28", "2015-08-31")
    assert leap["h"] == ("2015-08-29", "2016-03-01")  # read through 08-30 -> 02-29
    import datetime as dt

    assert shift_date(dt.date(2016, 2, 29), -1, "y") == dt.date(2015, 2, 28)
    assert shift_date(dt.date(2016, 2, 29), 4, "y") == dt.date(2020, 2, 29)
    assert shift_date(dt.date(2016, 3, 31), -1, "m") == dt.date(2016, 2, 29)
    assert shift_date(dt.date(2016, 1, 15), -1, "m") == dt.date(2015, 12, 15)
    assert shift_date(dt.date(2016, 3, 1), -1, "d") == dt.date(2016, 2, 29)
    with pytest.raises(ConfigError, match="--start and --end"):
        spec.windows(None, None)
    fixed = StackSpec(BANDS3, parse_references("pre=2014-03-01/2014-10-31"))
    assert fixed.windows(None, None) == {"pre": ("2014-03-01", "2014-10-31")}


def test_channel_order_and_needed_bands():
    spec = StackSpec(("b4", "B8", "slope"), parse_references("prev=-1y,pre=2014-01-01/2014-12-31"),
                     change=("ndvi", "B4"))
    assert spec.bands == BANDS3 and spec.change == ("NDVI", "B4")
    assert spec.channels == (*CHANNELS, "B4@pre", "B8@pre", "dNDVI@pre", "dB4@pre")
    assert spec.temporal and spec.ref_bands == ("B4", "B8")
    target, refs = spec.needed()
    assert target == ("B4", "B8", "slope") and refs == {"prev": ("B4", "B8"),
                                                        "pre": ("B4", "B8")}
    nbr = StackSpec(("B4", "B8", "DEM"), parse_references("prev=-1y"), reference_bands=("B8",),
                    change=("NBR",))
    assert nbr.channels == ("B4", "B8", "DEM", "B8@prev", "dNBR@prev")
    target, refs = nbr.needed()
    assert target == ("B4", "B8", "DEM", "B12") and refs == {"prev": ("B8", "B12")}
    single = StackSpec(("B2", "DEM"))
    assert single.channels == ("B2", "DEM") and not single.temporal
    assert single.needed() == (("B2", "DEM"), {}) and single.windows(None, None) == {}


def test_to_dict_round_trip_and_inconsistent_records():
    spec = StackSpec(BANDS3, parse_references("prev=-1y,pre=2014-01-01/2014-12-31"),
                     reference_bands=("B8", "B4"), change=("NDVI",))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["channels"] == list(spec.channels)
    assert d["references"] == [{"name": "prev", "offset": "-1y"},
                               {"name": "pre", "start": "2014-01-01", "end": "2014-12-31"}]
    assert StackSpec.from_dict(d) == spec
    assert StackSpec.of({"stack": d, "bands": ["ignored"]}) == spec
    assert StackSpec.of({"bands": ["B4", "B8"]}) == StackSpec(("B4", "B8"))
    assert StackSpec.of({"stack": None, "bands": ["B4"]}).channels == ("B4",)
    bad = dict(d, channels=list(reversed(d["channels"])))
    with pytest.raises(ConfigError, match="inconsistent"):
        StackSpec.from_dict(bad)
    with pytest.raises(ConfigError, match="inconsistent"):
        StackSpec.from_dict(dict(d, channels=d["channels"][:-1]))


def test_band_registry_knows_stack_channels():
    assert bandreg.canonical("b4@prev") == "B4@prev"
    assert bandreg.canonical("red@prev") == "B4@prev"
    assert bandreg.canonical("dndvi@prev") == "dNDVI@prev"
    assert bandreg.canonical("db4@prev") == "dB4@prev"
    assert bandreg.canonical("dem@pre") == "DEM@pre"
    assert bandreg.resolve(["b4", "b4@prev", "dNDVI@prev"]) == ("B4", "B4@prev", "dNDVI@prev")
    with pytest.raises(BandError, match="twice|more than once"):
        bandreg.resolve(["b4@prev", "B4@prev"])
    with pytest.raises(BandError, match="no reference"):
        bandreg.canonical("B4@")
    with pytest.raises(BandError, match="Unknown band"):
        bandreg.canonical("B99@prev")
    ref = bandreg.get("b4@prev")
    assert (ref.name, ref.kind, ref.unit, ref.scale) == ("B4@prev", "optical", "reflectance",
                                                         1e-4)
    d_ndvi = bandreg.get("dndvi@prev")
    assert d_ndvi.name == "dNDVI@prev" and d_ndvi.kind == "change"
    assert d_ndvi.valid_range == (-2.0, 2.0)
    d_b4 = bandreg.get("dB4@prev")
    assert d_b4.kind == "change" and d_b4.unit == "reflectance"
    lo, hi = d_b4.valid_range
    assert lo == -hi and hi > 1.0  # a difference of two reflectances in -0.2..2
    assert channel_band("dNDVI@prev") == ("NDVI", "prev", True)
    assert channel_band("dB4@pre") == ("B4", "pre", True)
    assert channel_band("B4@prev") == ("B4", "prev", False)
    assert channel_band("DEM") == ("DEM", None, False)


# ----------------------------------------------------------------------------- 2. pixels
def test_change_bands_match_numpy_and_propagate_nan(rng):
    spec = StackSpec(BANDS3, parse_references("prev=-1y"), change=("NDVI", "B4"))
    shape = (6, 7)
    t = {b: rng.uniform(0.02, 0.6, shape).astype(np.float32) for b in ("B4", "B8")}
    t["slope"] = rng.uniform(0, 60, shape).astype(np.float32)
    r = {b: rng.uniform(0.02, 0.6, shape).astype(np.float32) for b in ("B4", "B8")}
    t["B4"][0, 0] = np.nan   # target red missing
    r["B8"][1, 1] = np.nan   # reference NIR missing
    t["B4"][2, 2] = t["B8"][2, 2] = 0.0  # a zero division inside NDVI, not a NaN
    out = compose(spec, t, {"prev": r})
    assert out.shape == (len(CHANNELS), *shape) and out.dtype == np.float32
    ch = dict(zip(spec.channels, out))
    np.testing.assert_array_equal(ch["B4"], t["B4"])
    np.testing.assert_array_equal(ch["slope"], t["slope"])
    np.testing.assert_array_equal(ch["B8@prev"], r["B8"])
    expect_ndvi = np.nan_to_num(ndvi(t["B8"], t["B4"]), nan=0.0) - ndvi(r["B8"], r["B4"])
    expect_ndvi[0, 0] = np.nan
    expect_db4 = t["B4"].astype(np.float64) - r["B4"]
    np.testing.assert_allclose(ch["dNDVI@prev"], expect_ndvi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ch["dB4@prev"], expect_db4, rtol=1e-6, atol=1e-7)
    assert np.isnan(ch["dNDVI@prev"][0, 0]) and np.isnan(ch["dB4@prev"][0, 0])
    assert np.isnan(ch["dNDVI@prev"][1, 1]) and np.isfinite(ch["dB4@prev"][1, 1])
    assert ch["dNDVI@prev"][2, 2] == pytest.approx(-ndvi(r["B8"], r["B4"])[2, 2], rel=1e-5)
    assert np.isfinite(out).sum() == out.size - 5  # exactly the NaNs above


# ----------------------------------------------------------------------------- 3. synthetic
def test_stacked_source_equals_each_year_read_alone(world):
    grid = world["grid"]
    spec = StackSpec(BANDS3, parse_references("prev=-1y,pre=2014-02-01/2014-11-30"),
                     change=("NDVI", "B4"))
    src = make_stacked_source(world["spec"], spec, *T16)
    assert isinstance(src, StackedSource) and src.bands == spec.channels
    assert src.windows == {"prev": ("2015-01-01", "2015-12-31"),
                           "pre": ("2014-02-01", "2014-11-30")}
    with src:
        got = src.read(grid, spec.channels)
        subset = src.read(grid, ["dndvi@prev", "red@pre"])
    t = SyntheticSource(str(world["dir"]), 2016).read(grid, BANDS3)
    p = SyntheticSource(str(world["dir"]), 2015).read(grid, ("B4", "B8"))
    q = SyntheticSource(str(world["dir"]), 2014).read(grid, ("B4", "B8"))
    valid = t.valid & p.valid & q.valid
    np.testing.assert_array_equal(got.valid, valid)
    assert 0.1 < valid.mean() < t.valid.mean()  # clouds of other years cost pixels
    assert np.isnan(got.data[:, ~valid]).all()
    ch = dict(zip(got.bands, got.data))
    expect = {"B4": t.band("B4"), "B8": t.band("B8"), "slope": t.band("slope"),
              "B4@prev": p.band("B4"), "B8@prev": p.band("B8"),
              "dNDVI@prev": ndvi(t.band("B8"), t.band("B4")) - ndvi(p.band("B8"), p.band("B4")),
              "dB4@prev": t.band("B4").astype(np.float64) - p.band("B4"),
              "B4@pre": q.band("B4"), "B8@pre": q.band("B8"),
              "dNDVI@pre": ndvi(t.band("B8"), t.band("B4")) - ndvi(q.band("B8"), q.band("B4")),
              "dB4@pre": t.band("B4").astype(np.float64) - q.band("B4")}
    assert set(expect) == set(ch)
    for name, want in expect.items():
        np.testing.assert_allclose(ch[name][valid], want[valid], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert subset.bands == ("dNDVI@prev", "B4@pre")
    np.testing.assert_array_equal(subset.data, got.data[[5, 7]])
    # a pixel cloudy only in the reference year: clear in the target, invalid in the stack
    with rasterio.open(world["dir"] / "clouds_2015.tif") as a, \
            rasterio.open(world["dir"] / "clouds_2016.tif") as b:
        only_ref = (a.read(1) > 0) & (b.read(1) == 0) & t.valid
    assert only_ref.any()
    i, j = np.argwhere(only_ref)[0]
    assert t.valid[i, j] and np.isfinite(t.data[:, i, j]).all()
    assert not got.valid[i, j] and np.isnan(got.data[:, i, j]).all()
    assert not got.valid[only_ref].any()


def test_a_reference_before_the_world_fails_naming_it(world):
    spec = StackSpec(BANDS3, parse_references("prev=-1y"), change=("NDVI",))
    with pytest.raises(InputError, match=r"'prev'.*2013-01-01\.\.2013-12-31.*-1y") as info:
        make_stacked_source(world["spec"], spec, "2014-01-01", "2014-12-31")
    assert "2013" in str(info.value) and "available years" in str(info.value)
    fixed = StackSpec(BANDS3, parse_references("pre=2010-03-01/2010-10-31"))
    with pytest.raises(InputError, match=r"'pre'.*2010-03-01\.\.2010-10-31.*fixed window"):
        make_stacked_source(world["spec"], fixed, *T16)
    # the first year has no previous year, but a later target does
    assert make_stacked_source(world["spec"], spec, "2015-01-01", "2015-12-31").windows == {
        "prev": ("2014-01-01", "2014-12-31")}


def test_single_date_stack_is_the_plain_source(world):
    src = make_stacked_source(world["spec"], StackSpec(BANDS3), *T16)
    assert isinstance(src, SyntheticSource) and src.year == 2016


# ----------------------------------------------------------------------------- 4. GeoTIFF
GT_LEFT, GT_TOP, GT_N = 320000.0, 3120000.0, 16
GT_GRID = PixelGrid("EPSG:32645", (10.0, 0.0, GT_LEFT, 0.0, -10.0, GT_TOP), GT_N, GT_N)


def _write_s2(path: Path, b4: np.ndarray, b8: np.ndarray) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=GT_N, height=GT_N, count=2,
                       dtype="uint16", crs=GT_GRID.crs, transform=GT_GRID.affine,
                       nodata=0) as dst:
        dst.write(np.stack([b4, b8]).astype("uint16"))


@pytest.fixture(scope="module")
def tifs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("stack_tifs")
    yy, xx = np.mgrid[0:GT_N, 0:GT_N]
    dn = {2015: (1000 + 10 * xx, 3000 + 5 * yy), 2016: (2000 + 0 * xx, 2500 + 20 * yy),
          "pre": (500 + 0 * xx, 4000 + 0 * yy)}
    dn[2015][0][3, 4] = 0  # nodata in the reference year only
    dn[2015][1][3, 4] = 0
    _write_s2(d / "s2_2015.tif", *dn[2015])
    _write_s2(d / "s2_2016.tif", *dn[2016])
    _write_s2(d / "pre.tif", *dn["pre"])
    return {"dir": d, "dn": dn, "band_map": {"B4": 1, "B8": 2}}


def test_geotiff_stack_reads_the_year_of_each_date(tifs):
    d = tifs["dir"]
    spec = StackSpec(("B4", "B8"), parse_references("prev=-1y"), change=("NDVI", "B4"))
    source = {"kind": "geotiff", "images": [str(d / "s2_{year}.tif")],
              "band_map": tifs["band_map"]}
    src = make_stacked_source(source, spec, *T16)
    assert src.describe()["references"]["prev"]["window"] == ["2015-01-01", "2015-12-31"]
    with src:
        r = src.read(GT_GRID, spec.channels)
    (t4, t8), (p4, p8) = tifs["dn"][2016], tifs["dn"][2015]
    valid = np.ones((GT_N, GT_N), bool)
    valid[3, 4] = False
    np.testing.assert_array_equal(r.valid, valid)
    ch = dict(zip(r.bands, r.data))
    np.testing.assert_allclose(ch["B4"][valid], t4[valid] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(ch["B8@prev"][valid], p8[valid] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(ch["dB4@prev"][valid], (t4 - p4)[valid] * 1e-4, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(ch["dNDVI@prev"][valid], (ndvi(t8, t4) - ndvi(p8, p4))[valid],
                               rtol=1e-5, atol=1e-6)
    assert np.isnan(r.data[:, 3, 4]).all()
    # without {year} the reference would silently read the target's own image
    plain = dict(source, images=[str(d / "s2_2016.tif")])
    with pytest.raises(ConfigError, match=r"'prev'.*\{year\}"):
        make_stacked_source(plain, spec, *T16)
    # ... unless the reference's images are named
    named = dict(plain, reference_images={"prev": [str(d / "pre.tif")]})
    with make_stacked_source(named, spec, *T16) as src:
        r2 = src.read(GT_GRID, ["B4@prev", "dB4@prev", "B4"])
    assert r2.valid.all()
    np.testing.assert_allclose(r2.data[0], 0.05, rtol=1e-6)
    np.testing.assert_allclose(r2.data[1], 0.2 - 0.05, rtol=1e-5)
    np.testing.assert_allclose(r2.data[2], 0.2, rtol=1e-6)


def test_geotiff_stack_refuses_missing_dates_and_bands_up_front(tifs):
    d = tifs["dir"]
    spec = StackSpec(("B4", "B8"), parse_references("prev=-1y"), change=("NDVI",))
    source = {"kind": "geotiff", "images": [str(d / "s2_{year}.tif")],
              "band_map": tifs["band_map"]}
    # 2015's reference is 2014: no s2_2014.tif, refused before any chunk is read
    with pytest.raises(InputError, match=r"'prev'.*2014-01-01\.\.2014-12-31"):
        make_stacked_source(source, spec, "2015-01-01", "2015-12-31")
    # NDVI needs B8, which the band map does not give
    red_only = dict(source, band_map={"B4": 1})
    with pytest.raises(BandError, match="B8"):
        make_stacked_source(red_only, StackSpec(("B4",), parse_references("prev=-1y"),
                                                change=("NDVI",)), *T16)


# ----------------------------------------------------------------------------- 5. round trip
def test_stacked_manifest_shards_and_artifact(world, stacked):
    manifest, art = stacked["manifest"], stacked["artifact"]
    assert manifest["bands"] == list(CHANNELS)
    assert manifest["stack"] == {"bands": list(BANDS3), "change": ["NDVI", "B4"],
                                 "references": [{"name": "prev", "offset": "-1y"}],
                                 "channels": list(CHANNELS)}
    assert manifest["years"] == [] and manifest["date"] == "/".join(T16)
    assert set(manifest["stats"]) == set(CHANNELS)
    assert art["stack"] == manifest["stack"] and art["bands"] == list(CHANNELS)
    recs = read_shards(stacked["out"])
    patches = [p for ps in recs.values() for p in ps]
    assert len(patches) == sum(manifest["patches"].values()) > 4
    prev = SyntheticSource(str(world["dir"]), 2015, mask_clouds=False)
    for p in patches[:6]:
        assert p.bands == CHANNELS
        ok = p.mask != 255
        img = p.image.astype(np.float64)
        np.testing.assert_allclose(img[..., 6][ok], (img[..., 0] - img[..., 3])[ok], atol=1e-6)
        grid = PixelGrid(p.crs, p.transform, 32, 32)
        ref = prev.read(grid, ("B4", "B8"))
        np.testing.assert_allclose(p.image[..., 3][ok], ref.band("B4")[ok], rtol=1e-6)
        np.testing.assert_allclose(p.image[..., 4][ok], ref.band("B8")[ok], rtol=1e-6)


def test_predict_rebuilds_the_stack_and_refuses_a_missing_reference(world, stacked, tmp_path):
    from pipelines.predict import PredictConfig, run_predict

    def config(out, start, end):
        return PredictConfig(model=str(stacked["model"]), source=world["spec"], out=str(out),
                             aoi=world["aoi"], start=start, end=end, chunk_size=64)

    run = run_predict(config(tmp_path / "p2016", *T16))[0]
    assert run["status"] == "ok" and run["counts"]["chunks_failed"] == 0
    assert run["model"]["bands"] == list(CHANNELS)
    src = run["source"]
    assert src["stack"] == stacked["manifest"]["stack"] and src["year"] == 2016
    assert src["references"]["prev"]["window"] == ["2015-01-01", "2015-12-31"]
    assert src["references"]["prev"]["year"] == 2015
    assert list((tmp_path / "p2016" / "done").glob("*.json"))
    # 2014's reference (2013) is not in the world: refused before any chunk is read
    out = tmp_path / "p2014"
    with pytest.raises(InputError, match=r"'prev'.*2013-01-01\.\.2013-12-31"):
        run_predict(config(out, "2014-01-01", "2014-12-31"))
    assert not list(out.rglob("done/*"))
    assert not list(out.rglob("*.tif"))


def test_predict_feeds_the_model_the_stacked_channels(world, tmp_path):
    """A 1x1 model thresholding dB4@prev: its sweep mask is B4(2016) - B4(2015) > t."""
    import keras

    from model.artifact import save_artifact
    from pipelines.predict import PredictConfig, run_predict

    spec = StackSpec(("B8", "B4"), parse_references("prev=-1y"), change=("B4",))
    channels = list(spec.channels)  # B8 B4 B8@prev B4@prev dB4@prev
    grid = world["grid"]
    t = SyntheticSource(str(world["dir"]), 2016).read(grid, ("B4",))
    p = SyntheticSource(str(world["dir"]), 2015).read(grid, ("B4",))
    both = t.valid & p.valid
    thr = float(np.median((t.band("B4") - p.band("B4"))[both]))
    k = 400.0
    inp = keras.Input((None, None, len(channels)))
    m = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid", name="s")(inp))
    kernel = np.zeros((1, 1, len(channels), 1), np.float32)
    kernel[0, 0, channels.index("dB4@prev"), 0] = k
    m.get_layer("s").set_weights([kernel, np.array([-k * thr], np.float32)])
    save_artifact(m, str(tmp_path / "model"), channels, patch_size=32, size_multiple=1,
                  threshold=0.5, saved_model=False, extra={"stack": spec.to_dict()})
    run = run_predict(PredictConfig(model=str(tmp_path / "model"), source=world["spec"],
                                    out=str(tmp_path / "out"), aoi=world["aoi"], start=T16[0],
                                    end=T16[1], chunk_size=64))[0]
    assert run["status"] == "ok"
    with rasterio.open(tmp_path / "out" / "mosaic" / "mask.tif") as src:
        mask = src.read(1)
        mgrid = PixelGrid.from_affine(str(src.crs), src.transform, src.width, src.height)
    t = SyntheticSource(str(world["dir"]), 2016).read(mgrid, ("B4",))
    p = SyntheticSource(str(world["dir"]), 2015).read(mgrid, ("B4",))
    both = t.valid & p.valid
    d_b4 = t.band("B4").astype(np.float64) - p.band("B4")
    seen = mask != 255
    assert not (seen & ~both).any()  # never a prediction where either date is invalid
    assert seen.sum() >= 0.95 * both.sum()
    clear = seen & (np.abs(d_b4 - thr) > 1e-4)
    np.testing.assert_array_equal(mask[clear] == 1, d_b4[clear] > thr)
    assert 0.3 < (mask[seen] == 1).mean() < 0.7


# ----------------------------------------------------------------------------- 6. years
def test_multi_year_export_labels_each_year_with_its_own_inventory(world, tmp_path):
    import geopandas as gpd

    from pipelines.geo.inventory import rasterize

    out = tmp_path / "years"
    args = _export_args(world, out, "--inventory", str(world["dir"] / "inventory_{year}.gpkg"),
                        "--start", T16[0], "--end", T16[1], "--years", "2015,2016",
                        "--bands", "B4,B8", "--reference", "prev=-1y", "--max-nodata", "0.5")
    assert cli.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["years"] == [2015, 2016]
    assert manifest["date"] == "2015-01-01/2015-12-31,2016-01-01/2016-12-31"
    assert manifest["bands"] == ["B4", "B8", "B4@prev", "B8@prev"]
    recs = read_shards(out)
    keys = [p.key for ps in recs.values() for p in ps]
    assert len(keys) == len(set(keys)) == sum(manifest["patches"].values())
    by = {}
    split_of: dict[str, set[str]] = {}
    for split, ps in recs.items():
        for p in ps:
            year, _, key = p.key.partition("/")
            assert year in ("2015", "2016") and p.date == f"{year}-01-01/{year}-12-31"
            by[(int(year), key)] = p
            split_of.setdefault(key.split("/")[0], set()).add(split)
    assert all(len(s) == 1 for s in split_of.values()), split_of  # a place keeps its split
    assert len({next(iter(s)) for s in split_of.values()}) == 2
    common = sorted({k for y, k in by if y == 2015} & {k for y, k in by if y == 2016})
    assert len(common) >= 4
    inv = {y: gpd.read_file(world["dir"] / f"inventory_{y}.gpkg") for y in (2015, 2016)}
    differs = 0
    for (year, key), p in by.items():
        grid = PixelGrid(p.crs, p.transform, 32, 32)
        ok = p.mask != 255
        own = rasterize(inv[year], grid)
        np.testing.assert_array_equal(p.mask[ok], own[ok], err_msg=f"{year}/{key}")
        other = rasterize(inv[2015 if year == 2016 else 2016], grid)
        differs += int((other[ok] != own[ok]).any())
    assert differs >= 1  # the two inventories disagree somewhere: the check can fail
    assert sum(int((p.mask == 1).sum()) for p in by.values()) > 0
    # 2016's reference is 2015: its B4@prev is 2015's own B4 at the same place
    for key in common:
        a, b = by[(2015, key)], by[(2016, key)]
        ok = (a.mask != 255) & (b.mask != 255)
        np.testing.assert_array_equal(b.image[..., 2][ok], a.image[..., 0][ok])


def test_multi_year_config_errors(world, tmp_path):
    from pipelines.export import ExportConfig

    base = {"source": world["spec"], "aoi": world["aoi"], "out": str(tmp_path / "o")}
    inv = str(world["dir"] / "inventory_2016.gpkg")
    with pytest.raises(ConfigError, match=r"\{year\}"):
        ExportConfig(**base, inventory=inv, start=T16[0], end=T16[1], years=(2015, 2016))
    with pytest.raises(ConfigError, match="twice"):
        ExportConfig(**base, inventory=inv.replace("2016", "{year}"), start=T16[0],
                     end=T16[1], years=(2015, 2015))
    with pytest.raises(ConfigError, match="date window"):
        ExportConfig(**base, years=(2015, 2016))
    cfg = ExportConfig(**base, inventory=inv.replace("2016", "{year}"), start="2016-02-29",
                       end="2016-03-31", years=(2015, 2016))
    assert [(s, e, Path(i).name) for s, e, i in cfg.periods()] == [
        ("2015-02-28", "2015-03-31", "inventory_2015.gpkg"),
        ("2016-02-29", "2016-03-31", "inventory_2016.gpkg")]
    # the first year's reference (2013) is not in the world: refused before launch
    from pipelines.export import run_export

    early = ExportConfig(**base, inventory=inv.replace("2016", "{year}"), start=T16[0],
                         end=T16[1], years=(2014, 2015),
                         stack=StackSpec(("B4", "B8"), parse_references("prev=-1y")))
    with pytest.raises(InputError, match=r"'prev'.*2013-01-01\.\.2013-12-31"):
        run_export(early)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- 7. labels
def test_label_raster_export_ignores_unlabelled_pixels(world, tmp_path):
    import keras

    from model.artifact import save_artifact
    from model.train import evaluate
    from pipelines.geo.grid import load_region, plan_chunks

    chunks = plan_chunks(load_region(world["aoi"]), 10.0, 64, halo=0)
    left = min(c.grid.bounds[0] for c in chunks)
    top = max(c.grid.bounds[3] for c in chunks)
    size = round((max(c.grid.bounds[2] for c in chunks) - left) / 10)
    lgrid = PixelGrid(world["grid"].crs, (10.0, 0.0, left, 0.0, -10.0, top), size, size)
    wt = world["grid"].transform
    r0, c0 = round((top - wt[5]) / 10), round((wt[2] - left) / 10)  # the world in lgrid
    a, b = -(-r0 // 32), -(-c0 // 32)  # first patch row/col fully inside the world
    labels = np.ones((size, size), np.uint8)  # background
    labels[a * 32:(a + 2) * 32, b * 32:(b + 2) * 32 + 14] = 0  # unlabelled: 4 whole patches
    labels[(a + 2) * 32 + 5:(a + 2) * 32 + 15, b * 32 + 3:b * 32 + 20] = 2  # a landslide
    path = tmp_path / "labels.tif"
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint8", crs=lgrid.crs, transform=lgrid.affine) as dst:
        dst.write(labels[None])
    out = tmp_path / "shards"
    args = _export_args(world, out, "--labels", str(path), "--label-map",
                        "0=ignore,1=background,2=landslide", "--start", T16[0], "--end",
                        T16[1], "--bands", "B4,B8", "--max-nodata", "0.5")
    assert cli.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dropped"]["unlabelled"] == 4
    assert manifest["classes"] == {"background": 0, "landslide": 1}
    patches = [p for ps in read_shards(out).values() for p in ps]
    assert patches and all((p.mask != 255).any() for p in patches)
    partly = 0
    for p in patches:
        ro = round((top - p.transform[5]) / 10)
        co = round((p.transform[2] - left) / 10)
        raw = labels[ro:ro + 32, co:co + 32]
        assert (p.mask[raw == 0] == 255).all()
        ok = p.mask != 255
        np.testing.assert_array_equal(p.mask[ok], (raw[ok] == 2).astype(np.uint8))
        partly += int((raw == 0).any())
    assert partly == 2  # the two patches half in the unlabelled block are kept
    masks = np.stack([p.mask for p in patches])
    assert int((masks == 1).sum()) == int((labels == 2).sum()) == 170
    # a model that calls everything a landslide: ignored pixels are neither tp nor fp
    inp = keras.Input((None, None, 2))
    m = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid", name="s")(inp))
    m.get_layer("s").set_weights([np.zeros((1, 1, 2, 1), np.float32),
                                  np.array([10.0], np.float32)])
    save_artifact(m, str(tmp_path / "all"), ("B4", "B8"), patch_size=32, size_multiple=1,
                  saved_model=False)
    result = evaluate(str(tmp_path / "all"), str(out / "*" / "*.tfrecord.gz"),
                      out=str(tmp_path / "eval.json"))
    assert result["patches"] == len(patches)
    assert result["ignored_pixels"] == int((masks == 255).sum()) >= 2 * 32 * 14
    assert result["tp"] == 170 and result["fp"] == int((masks == 0).sum())
    assert result["fn"] == result["tn"] == 0
    assert result["pixels"] == int((masks != 255).sum())


# ----------------------------------------------------------------------------- 8. single date
def test_single_date_export_train_predict_without_stack_flags(world, tmp_path):
    from pipelines.predict import PredictConfig, run_predict

    out = tmp_path / "shards"
    args = _export_args(world, out, "--inventory", str(world["dir"] / "inventory_2016.gpkg"),
                        "--start", T16[0], "--end", T16[1], "--bands", "B4,B8,slope",
                        "--max-nodata", "0.5")
    assert cli.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bands"] == list(BANDS3)
    assert manifest["stack"] == {"bands": list(BANDS3), "references": [], "change": [],
                                 "channels": list(BANDS3)}
    assert "references" not in manifest["source"]
    model = tmp_path / "model"
    assert cli.main(["train", "--data", str(out), "--out", str(model), *TINY_TRAIN]) == 0
    art = json.loads((model / "artifact.json").read_text())
    assert art["bands"] == art["stack"]["channels"] == list(BANDS3)
    assert art["stack"]["references"] == []
    run = run_predict(PredictConfig(model=str(model), source=world["spec"],
                                    out=str(tmp_path / "pred"), aoi=world["aoi"],
                                    start=T16[0], end=T16[1], chunk_size=64))[0]
    assert run["status"] == "ok" and run["counts"]["chunks_failed"] == 0
    assert run["source"]["kind"] == "synthetic" and "references" not in run["source"]
    assert run["counts"]["valid_px"] > 0


def test_a_reference_window_overlapping_the_target_is_refused():
    """A reference that overlaps the target's window may read the target's own image (the
    synthetic and per-year GeoTIFF sources take the most recent year on top): every change
    band then came out 0 and nothing said so."""
    spec = StackSpec(("B4", "B8"), parse_references(("prev=-1m",)), None, ("NDVI",))
    with pytest.raises(ConfigError, match=r"'prev' .* 2020-05-01\.\.2020-08-01, which overlaps"):
        spec.windows("2020-06-01", "2020-09-01")
    assert spec.windows("2020-06-01", "2020-07-01") == {"prev": ("2020-05-01", "2020-06-01")}
    fixed = StackSpec(("B4",), parse_references(("pre=2019-01-01/2020-03-01",)), None, ())
    with pytest.raises(ConfigError, match="overlaps"):
        fixed.windows("2020-01-01", "2021-01-01")
    # ends are exclusive: a reference ending on the target's first day does not overlap
    assert fixed.windows("2020-03-01", "2021-01-01") == {"pre": ("2019-01-01", "2020-03-01")}


@pytest.mark.parametrize("offset, start, end, expected", [
    ("-1m", "2015-03-01", "2015-03-31", ("2015-02-01", "2015-03-01")),  # through 02-28
    ("-1m", "2016-03-30", "2016-03-31", ("2016-02-29", "2016-03-01")),  # was empty
    ("-1m", "2016-03-29", "2016-03-31", ("2016-02-29", "2016-03-01")),  # was empty
    ("-1m", "2015-02-28", "2015-03-31", ("2015-01-28", "2015-03-01")),
    ("-1m", "2020-06-01", "2020-07-01", ("2020-05-01", "2020-06-01")),  # an end on a 1st
    ("-2m", "2015-05-01", "2015-05-31", ("2015-03-01", "2015-03-31")),  # no clamp: same
])
def test_month_offsets_keep_the_last_day_read(offset, start, end, expected):
    """The end is exclusive: a month offset moves the last day read (end - 1), clamped to
    its month, so -1m of 03-01..03-31 (read through 03-30) reads through 02-28; clamping
    the end itself gave ..02-28 (read through 02-27) or an empty window."""
    assert Reference("prev", offset=offset).window(start, end) == expected


@pytest.mark.parametrize("offset, start, end, expected", [
    ("-1y", "2016-02-29", "2016-03-01", ("2015-02-28", "2015-03-01")),
    ("-1y", "2016-02-01", "2016-03-01", ("2015-02-01", "2015-03-01")),
    ("-1y", "2016-01-01", "2016-12-31", ("2015-01-01", "2015-12-31")),
    ("-1y", "2016-03-01", "2016-02-29", None),
    ("-4y..-1y", "2016-02-29", "2016-03-01", ("2012-02-29", "2015-03-01")),
    ("-4y..-1y", "2016-01-01", "2016-12-31", ("2012-01-01", "2015-12-31")),
    ("-1y", "2017-01-01", "2018-01-01", ("2016-01-01", "2017-01-01")),
    ("+1y", "2016-02-29", "2016-08-31", ("2017-02-28", "2017-08-31")),
    ("-12m", "2016-02-29", "2016-03-01", ("2015-02-28", "2015-03-01")),
])
def test_year_offset_windows_are_unchanged(offset, start, end, expected):
    """Year offsets shift both dates with shift_date's clamp (the demo's figures depend on
    these windows); only month offsets map the end through the last day read."""
    if expected is None:  # an empty target window stays refused as an empty reference
        with pytest.raises(ConfigError, match="empty window"):
            Reference("prev", offset=offset).window(start, end)
        return
    assert Reference("prev", offset=offset).window(start, end) == expected

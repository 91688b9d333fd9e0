"""Multi-year composites of the synthetic world and reference windows that ask for them.

One tiny synthetic world (1.28 km, 2014-2016, clouds; 128 x 128 px) is read on its own
grid. The expected composites are computed here, independently of the source's code: each
year is read by its own one-year source with clouds kept, and the cloud mask comes
straight from ``clouds_<year>.tif`` through rasterio.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from pipelines.errors import ConfigError, InputError
from pipelines.geo.bands import SENTINEL2_BANDS
from pipelines.geo.stack import Reference, StackSpec, parse_references
from pipelines.sources.factory import make_source
from pipelines.sources.stacked import StackedSource, _reference_spec, make_stacked_source
from pipelines.sources.synthetic import SyntheticSource
from pipelines.synth import clouds_name

YEARS = (2014, 2015, 2016)
OPTICAL = tuple(SENTINEL2_BANDS)
TERRAIN = ("DEM", "slope")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tiny_world) -> dict:
    assert tuple(tiny_world["meta"]["years"]) == YEARS
    return {**tiny_world, "dir": str(tiny_world["dir"])}


@pytest.fixture(scope="module")
def per_year(world) -> dict:
    """Each year's raw imagery (clouds kept), its cloud mask and its clear pixels."""
    out = {}
    for y in YEARS:
        raw = SyntheticSource(world["dir"], y, mask_clouds=False).read(world["grid"], OPTICAL)
        with rasterio.open(f"{world['dir']}/{clouds_name(y)}") as src:
            cloudy = src.read(1) > 0
        assert cloudy.shape == world["grid"].shape
        out[y] = {"data": raw.data, "valid": raw.valid, "cloudy": cloudy,
                  "clear": raw.valid & ~cloudy}
    return out


def ndvi64(data: np.ndarray) -> np.ndarray:
    """NDVI in float64 from ``(OPTICAL, h, w)`` data; NaN where undefined."""
    b4 = data[OPTICAL.index("B4")].astype(np.float64)
    b8 = data[OPTICAL.index("B8")].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b8 - b4) / (b8 + b4)


def expected_mosaic(per_year: dict, years) -> tuple[np.ndarray, np.ndarray]:
    """The most recent clear pixel of ``years``, computed year by year from the oldest."""
    shape = per_year[years[0]]["data"].shape
    data = np.full(shape, np.nan, np.float32)
    valid = np.zeros(shape[1:], bool)
    for y in sorted(years):  # later years overwrite earlier ones where clear
        c = per_year[y]["clear"]
        data[:, c] = per_year[y]["data"][:, c]
        valid |= c
    return data, valid


# ----------------------------------------------------------------------------- 1. synthetic
def test_world_has_clouds_worth_compositing(per_year):
    """The checks below are not vacuous: years differ in cloud cover and overlap."""
    cloudy = [per_year[y]["cloudy"] for y in YEARS]
    all_cloudy = np.logical_and.reduce(cloudy)
    assert 0 < all_cloudy.sum() < all_cloudy.size // 10
    # the newest year is cloudy where an older one is clear: a mosaic must fall back
    assert (per_year[2016]["cloudy"] & per_year[2015]["clear"]).sum() > 100
    assert (per_year[2016]["cloudy"] & per_year[2015]["cloudy"]
            & per_year[2014]["clear"]).sum() > 10


def test_one_year_source_is_unchanged(world, per_year):
    grid = world["grid"]
    one = SyntheticSource(world["dir"], 2015)
    r = one.read(grid, OPTICAL)
    exp = per_year[2015]
    np.testing.assert_array_equal(r.valid, exp["clear"])
    np.testing.assert_array_equal(r.data[:, exp["clear"]], exp["data"][:, exp["clear"]])
    assert np.isnan(r.data[:, ~exp["clear"]]).all()
    # a one-element list, any composite, is the same source
    for comp in ("mosaic", "greenest"):
        other = SyntheticSource(world["dir"], [2015], composite=comp).read(grid, OPTICAL)
        np.testing.assert_array_equal(other.valid, r.valid)
        np.testing.assert_array_equal(other.data, r.data)
    d = one.describe()
    assert d["year"] == 2015 and "years" not in d and "composite" not in d


def test_mosaic_is_the_most_recent_clear_pixel(world, per_year):
    grid = world["grid"]
    src = SyntheticSource(world["dir"], [2016, 2014, 2015], composite="mosaic")
    assert src.years == (2016, 2015, 2014) and src.year == 2016
    r = src.read(grid, OPTICAL)
    data, valid = expected_mosaic(per_year, YEARS)
    np.testing.assert_array_equal(r.valid, valid)
    np.testing.assert_array_equal(r.data[:, valid], data[:, valid])
    assert np.isnan(r.data[:, ~valid]).all()
    # valid == any year clear; a pixel cloudy every year is invalid
    any_clear = np.logical_or.reduce([per_year[y]["clear"] for y in YEARS])
    np.testing.assert_array_equal(r.valid, any_clear)
    all_cloudy = np.logical_and.reduce([per_year[y]["cloudy"] for y in YEARS])
    assert all_cloudy.any() and not r.valid[all_cloudy].any()
    # where 2016 is clear it wins; where only 2014 is clear, 2014 shows through
    c16 = per_year[2016]["clear"]
    np.testing.assert_array_equal(r.data[:, c16], per_year[2016]["data"][:, c16])
    only14 = per_year[2014]["clear"] & ~per_year[2015]["clear"] & ~c16
    assert only14.any()
    np.testing.assert_array_equal(r.data[:, only14], per_year[2014]["data"][:, only14])
    # more valid pixels than any single year
    assert r.valid.sum() > max(per_year[y]["clear"].sum() for y in YEARS)


def test_mosaic_of_two_years_and_subset_of_bands(world, per_year):
    grid = world["grid"]
    r = SyntheticSource(world["dir"], (2014, 2015)).read(grid, ("B8", "B2"))
    data, valid = expected_mosaic(per_year, (2014, 2015))
    np.testing.assert_array_equal(r.valid, valid)
    for k, b in enumerate(("B8", "B2")):
        np.testing.assert_array_equal(r.data[k][valid], data[OPTICAL.index(b)][valid])


@pytest.mark.parametrize(("composite", "sign"), [("greenest", 1.0), ("barest", -1.0)])
def test_greenest_and_barest_are_the_clear_pixel_with_the_highest_or_lowest_ndvi(
        world, per_year, composite, sign):
    grid = world["grid"]
    src = SyntheticSource(world["dir"], list(YEARS), composite=composite)
    r = src.read(grid, OPTICAL)
    clear = np.stack([per_year[y]["clear"] for y in YEARS])
    nd = np.stack([sign * ndvi64(per_year[y]["data"]) for y in YEARS])
    nd = np.where(clear & np.isfinite(nd), nd, -np.inf)
    any_clear = clear.any(axis=0)
    np.testing.assert_array_equal(r.valid, any_clear)
    assert not r.valid[np.logical_and.reduce([per_year[y]["cloudy"] for y in YEARS])].any()
    assert np.isnan(r.data[:, ~any_clear]).all()

    best = np.argmax(nd, axis=0)
    srt = np.sort(nd, axis=0)
    with np.errstate(invalid="ignore"):
        gap = srt[-1] - srt[-2]  # pixels with a near tie may go either way in float32
    decided = any_clear & (gap > 1e-5)
    assert decided.sum() > 0.9 * any_clear.sum()
    stacked = np.stack([per_year[y]["data"] for y in YEARS])  # (year, band, h, w)
    rows, cols = np.nonzero(decided)
    expect = stacked[best[rows, cols], :, rows, cols]  # (n, band)
    np.testing.assert_array_equal(r.data[:, rows, cols].T, expect)
    # the chosen pixel is, everywhere, as green (or as bare) as the best clear year
    got = sign * ndvi64(r.data)
    np.testing.assert_allclose(got[any_clear], srt[-1][any_clear], atol=1e-6)

    # it is not the mosaic: an older year shows through clear newer pixels
    mosaic = SyntheticSource(world["dir"], list(YEARS)).read(grid, OPTICAL)
    differs = any_clear & np.any(r.data != mosaic.data, axis=0)
    assert differs.sum() > 100
    older = decided & per_year[2016]["clear"] & (best != YEARS.index(2016))
    assert older.sum() > 100


def test_barest_is_never_greener_than_greenest(world):
    grid = world["grid"]
    green = SyntheticSource(world["dir"], list(YEARS), composite="greenest").read(grid, OPTICAL)
    bare = SyntheticSource(world["dir"], list(YEARS), composite="barest").read(grid, OPTICAL)
    np.testing.assert_array_equal(green.valid, bare.valid)
    v = green.valid
    g, b = ndvi64(green.data)[v], ndvi64(bare.data)[v]
    assert (b <= g + 1e-6).all()
    assert (b < g - 0.05).sum() > 100  # years differ: scars, fields, clouds' neighbours


def test_greenest_reads_b4_b8_even_when_not_asked(world, per_year):
    grid = world["grid"]
    full = SyntheticSource(world["dir"], list(YEARS), composite="greenest").read(grid, OPTICAL)
    part = SyntheticSource(world["dir"], list(YEARS), composite="greenest").read(grid, ("B2",))
    assert part.bands == ("B2",)
    np.testing.assert_array_equal(part.valid, full.valid)
    np.testing.assert_array_equal(part.data[0], full.data[OPTICAL.index("B2")])


def test_terrain_bands_come_once_from_the_dem(world, per_year):
    grid = world["grid"]
    one = SyntheticSource(world["dir"], 2016, mask_clouds=False).read(grid, TERRAIN)
    assert one.valid[1:-1, 1:-1].all()  # slope needs neighbours: the world's rim is nodata
    for comp in ("mosaic", "greenest"):
        r = SyntheticSource(world["dir"], list(YEARS), composite=comp).read(
            grid, ("B4", *TERRAIN))
        clear = np.logical_or.reduce([per_year[y]["clear"] for y in YEARS])
        np.testing.assert_array_equal(r.valid, clear & one.valid)
        np.testing.assert_array_equal(r.data[1:, r.valid], one.data[:, r.valid])
        terrain_only = SyntheticSource(world["dir"], list(YEARS), composite=comp).read(
            grid, TERRAIN)
        # no optical band asked: clouds do not matter
        np.testing.assert_array_equal(terrain_only.valid, one.valid)
        np.testing.assert_array_equal(terrain_only.data, one.data)


def test_describe_and_errors(world):
    src = SyntheticSource(world["dir"], [2015, 2014], composite="greenest")
    d = src.describe()
    assert d["years"] == [2014, 2015] and d["composite"] == "greenest" and d["year"] == 2015
    json.dumps(d)
    assert SyntheticSource(world["dir"], [2015, 2014]).describe()["composite"] == "mosaic"
    with pytest.raises(InputError, match="2012") as err:
        SyntheticSource(world["dir"], [2012, 2014])
    assert "2014" not in str(err.value).split("available")[0]
    with pytest.raises(InputError, match="composite"):
        SyntheticSource(world["dir"], [2014, 2015], composite="median")
    with pytest.raises(InputError, match="at least one year"):
        SyntheticSource(world["dir"], [])


# ----------------------------------------------------------------------------- factory
@pytest.mark.parametrize(("start", "end", "years"), [
    ("2014-01-01", "2016-12-31", (2016, 2015, 2014)),
    ("2014-01-01", "2016-01-01", (2015, 2014)),  # an end on Jan 1 does not count its year
    ("2015-03-01", "2015-09-01", (2015,)),
    ("2015-06-01", "2016-06-01", (2016, 2015)),
    ("2015-01-01", "2016-01-02", (2016, 2015)),
])
def test_factory_years_from_the_window(world, start, end, years):
    src = make_source({"kind": "synthetic", "world": world["dir"], "composite": "greenest"},
                      start, end)
    assert isinstance(src, SyntheticSource)
    assert src.years == years and src.composite == "greenest"
    assert make_source({"kind": "synthetic", "world": world["dir"]}, start,
                       end).composite == "mosaic"


def test_factory_names_a_missing_year(world):
    with pytest.raises(InputError, match="2013"):
        make_source({"kind": "synthetic", "world": world["dir"]}, "2013-01-01", "2014-12-31")
    with pytest.raises(InputError, match="2017"):
        make_source({"kind": "synthetic", "world": world["dir"]}, "2016-01-01", "2017-06-01")
    # a window ending on Jan 1 of a missing year is fine: that year is not in it
    assert make_source({"kind": "synthetic", "world": world["dir"]}, "2016-01-01",
                       "2017-01-01").years == (2016,)


# ----------------------------------------------------------------------------- 2. references
def test_reference_range_windows():
    r = Reference.parse("base=-3y..-1y")
    assert r.offset == "-3y..-1y" and r.composite is None
    assert r.window("2016-01-01", "2016-12-31") == ("2013-01-01", "2015-12-31")
    assert Reference("b", offset="-2y .. -1y").offset == "-2y..-1y"
    assert Reference("b", offset="-24m..+3d").window("2016-03-01", "2016-04-01") == (
        "2014-03-01", "2016-04-04")
    # a single offset still shifts both ends alike
    assert Reference.parse("prev=-1y").window("2016-02-29", "2016-12-31") == (
        "2015-02-28", "2015-12-31")
    # inverted or empty windows are refused when the window is known
    with pytest.raises(ConfigError, match="empty window"):
        Reference.parse("bad=-1y..-3y").window("2016-01-01", "2016-12-31")
    with pytest.raises(ConfigError, match="empty window"):
        Reference.parse("bad=-1y..-2y").window("2016-01-01", "2017-01-01")
    with pytest.raises(ConfigError, match="--start"):
        Reference.parse("base=-3y..-1y").window(None, None)
    for bad in ("x=-3y..", "x=..-1y", "x=-3y..-2y..-1y", "x=-3y..0y", "x=-3y...-1y",
                "x=-3w..-1y"):
        with pytest.raises(ConfigError):
            Reference.parse(bad)


def test_reference_composite_parsing_and_round_trip():
    base = Reference.parse("base=-3y..-1y:greenest")
    assert (base.name, base.offset, base.composite) == ("base", "-3y..-1y", "greenest")
    pre = Reference.parse("pre=2014-01-01/2014-12-31:greenest")
    assert (pre.start, pre.end, pre.composite) == ("2014-01-01", "2014-12-31", "greenest")
    assert pre.window("2016-01-01", "2016-12-31") == ("2014-01-01", "2014-12-31")
    assert Reference.parse("m=-1y: mosaic").composite == "mosaic"
    assert Reference.parse("p=-1y:").composite is None
    for bad in ("base=-3y..-1y:greenest2", "pre=2014-01-01/2014-12-31:max", "x=-1y:GREENEST"):
        with pytest.raises(ConfigError, match="composite"):
            Reference.parse(bad)
    with pytest.raises(ConfigError, match="composite"):
        Reference("x", offset="-1y", composite="brightest")
    # describe / to_dict / from_dict keep it
    assert base.describe() == "base=-3y..-1y:greenest"
    assert Reference.parse(base.describe()) == base
    assert base.to_dict() == {"name": "base", "offset": "-3y..-1y", "composite": "greenest"}
    assert Reference.parse("prev=-1y").to_dict() == {"name": "prev", "offset": "-1y"}
    spec = StackSpec(("B4", "B8"), parse_references(
        "base=-3y..-1y:greenest, pre=2014-01-01/2014-12-31:mosaic, prev=-1y"),
        change=("NDVI",))
    again = StackSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert [r.composite for r in again.references] == ["greenest", "mosaic", None]
    assert "base=-3y..-1y:greenest" in spec.describe()


def test_stacked_reference_reads_the_greenest_composite(world, per_year):
    grid = world["grid"]
    stack = StackSpec(("B4", "B8", "slope"), parse_references("base=-2y..-1y:greenest"),
                      change=("NDVI",))
    spec = {"kind": "synthetic", "world": world["dir"]}
    src = make_stacked_source(spec, stack, "2016-01-01", "2016-12-31")
    assert isinstance(src, StackedSource)
    assert src.windows == {"base": ("2014-01-01", "2015-12-31")}
    ref = src.references["base"]
    assert isinstance(ref, SyntheticSource)
    assert ref.years == (2015, 2014) and ref.composite == "greenest"
    assert src.target.years == (2016,)
    d = src.describe()
    assert d["references"]["base"]["composite"] == "greenest"
    assert d["references"]["base"]["years"] == [2014, 2015]
    assert d["stack"]["references"] == [{"name": "base", "offset": "-2y..-1y",
                                         "composite": "greenest"}]

    r = src.read(grid, stack.channels)
    direct = SyntheticSource(world["dir"], [2014, 2015], composite="greenest").read(
        grid, ("B4", "B8"))
    target = SyntheticSource(world["dir"], 2016).read(grid, ("B4", "B8", "slope"))
    np.testing.assert_array_equal(r.valid, direct.valid & target.valid)
    v = r.valid
    assert v.sum() > 0.5 * v.size
    for k, b in enumerate(("B4", "B8")):
        np.testing.assert_array_equal(r.data[stack.channels.index(f"{b}@base")][v],
                                      direct.data[k][v])
    # the greenest of 2014-2015 is not the mosaic of those years (the default)
    mosaic = SyntheticSource(world["dir"], [2014, 2015]).read(grid, ("B4", "B8"))
    both = v & mosaic.valid
    assert np.any(r.data[stack.channels.index("B8@base")][both] != mosaic.data[1][both])
    # no composite in the reference: the source's default (mosaic)
    plain = make_stacked_source(spec, StackSpec(("B4",), parse_references("base=-2y..-1y")),
                                "2016-01-01", "2016-12-31")
    assert plain.references["base"].composite == "mosaic"
    assert plain.references["base"].years == (2015, 2014)


def test_stacked_reference_outside_the_world_names_the_year(world):
    stack = StackSpec(("B4",), parse_references("base=-3y..-1y:greenest"))
    with pytest.raises(InputError, match="base") as err:
        make_stacked_source({"kind": "synthetic", "world": world["dir"]}, stack,
                            "2016-01-01", "2016-12-31")
    assert "2013" in str(err.value)
    # an Earth Engine-only composite is refused by the synthetic world, naming the reference
    stack = StackSpec(("B4",), parse_references("base=-2y..-1y:median"))
    with pytest.raises(InputError, match="base") as err:
        make_stacked_source({"kind": "synthetic", "world": world["dir"]}, stack,
                            "2016-01-01", "2016-12-31")
    assert "median" in str(err.value)


def test_geotiff_refuses_a_composite(world):
    # the world's own yearly images, read as plain GeoTIFFs
    spec = {"kind": "geotiff", "images": [world["dir"] + "/s2_{year}.tif"]}
    with pytest.raises(ConfigError, match="greenest"):
        _reference_spec(spec, "base", "greenest")
    stack = StackSpec(("B4",), parse_references("base=-2y..-1y:greenest"))
    with pytest.raises(ConfigError, match="base"):
        make_stacked_source(spec, stack, "2016-01-01", "2016-12-31")
    # the same stack without a composite is fine: the reference mosaics every year's files
    # of its window, the most recent first
    ok = make_stacked_source(spec, StackSpec(("B4",), parse_references("base=-2y..-1y")),
                             "2016-01-01", "2016-12-31")
    assert ok.references["base"].describe()["paths"] == [
        world["dir"] + "/s2_2015.tif", world["dir"] + "/s2_2014.tif"]
    # without a composite, the geotiff reference spec is unchanged
    assert "composite" not in _reference_spec(spec, "base", None)
    assert _reference_spec({"kind": "synthetic", "world": "w", "year": 2016}, "base",
                           "greenest") == {"kind": "synthetic", "world": "w",
                                           "composite": "greenest"}


# ----------------------------------------------------------------------------- earth engine
def test_earthengine_reference_gets_the_greenest_composite(monkeypatch):
    """Through the factory against the loopback endpoint (no network, no Google account)."""
    pytest.importorskip("ee")
    from pipelines.sources import earthengine as eem
    from tests.ee_server import EEServer

    assert "greenest" in eem.COMPOSITES
    monkeypatch.setenv("LM_TEST_EE_TOKEN", "test-token")
    with EEServer() as server:
        spec = {"kind": "earthengine", "endpoint": server.url, "project": "test-project",
                "token_env": "LM_TEST_EE_TOKEN"}
        stack = StackSpec(("B4", "B8"), parse_references("base=-3y..-1y:greenest"),
                          change=("NDVI",))
        src = make_stacked_source(spec, stack, "2016-01-01", "2016-12-31")
        ref = src.references["base"]
        assert isinstance(ref, eem.EarthEngineSource)
        assert ref.config.composite == "greenest"
        assert (ref.config.start, ref.config.end) == ("2013-01-01", "2015-12-31")
        assert src.target.config.composite == "median"
        text = ref.expression_json
        for needle in ("ImageCollection.qualityMosaic", "Image.normalizedDifference",
                       "greenness", "2013-01-01", "2015-12-31"):
            assert needle in text, needle
        assert "reduce.median" not in text
        assert "qualityMosaic" not in src.target.expression_json
        # the expression deserialises again, as workers do
        import ee

        ee.deserializer.fromJSON(text)
    with pytest.raises(ConfigError, match="composite"):
        eem.EEConfig("2016-01-01", "2016-12-31", composite="brightest")

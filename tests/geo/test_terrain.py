"""Terrain derivatives: analytic surfaces, NaN handling, GDAL's gdaldem, files and the CLI."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin
from rio_cogeo.cogeo import cog_validate
from scipy import ndimage

from pipelines.cli import main
from pipelines.errors import (
    ConfigError,
    CRSError,
    DataNotFoundError,
    InputError,
    NoDataError,
)
from pipelines.geo.terrain import (
    PRODUCTS,
    aspect,
    curvature,
    hillshade,
    slope,
    terrain_products,
    write_terrain,
)

UTM = "EPSG:32645"
ORIGIN = (330_000.0, 3_110_000.0)  # Rasuwa, Nepal, UTM 45N


# ----------------------------------------------------------------------------- helpers
def coords(shape: tuple[int, int], dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Easting and northing (metres) of pixel centres relative to the grid centre."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    x = (cols - (shape[1] - 1) / 2) * dx
    y = -(rows - (shape[0] - 1) / 2) * dy  # rows grow southwards
    return x, y


def smooth_surface(rng: np.random.Generator, shape=(48, 56)) -> np.ndarray:
    """A random smooth mountain surface (float32, metres), with steep and gentle parts."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4.0)
    x, y = coords(shape, 1.0, 1.0)
    z = 1500.0 + 4000.0 * noise / noise.std() * 0.1 + 3.0 * x - 1.5 * y
    return z.astype(np.float32)


def write_dem(path: Path, z: np.ndarray, res=(10.0, 10.0), crs: str | None = UTM,
              origin=ORIGIN, nodata=None) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=z.shape[1], height=z.shape[0],
                       count=1, dtype=z.dtype, crs=crs, nodata=nodata,
                       transform=from_origin(origin[0], origin[1], res[0], res[1])) as dst:
        dst.write(z, 1)
    return str(path)


def read(path: str | Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as src:
        return src.read(1), src.profile


def circular_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)) % 360.0
    return np.minimum(d, 360.0 - d)


def border(shape: tuple[int, int]) -> np.ndarray:
    m = np.ones(shape, bool)
    m[1:-1, 1:-1] = False
    return m


@pytest.fixture
def gdaldem() -> str:
    exe = shutil.which("gdaldem")
    if exe is None:
        pytest.skip("gdaldem not on PATH (apt-get install gdal-bin)")
    return exe


def run_gdaldem(exe: str, mode: str, src: str, dst: Path, *opts: str) -> np.ndarray:
    subprocess.run([exe, mode, src, str(dst), "-q", *opts], check=True, capture_output=True)
    data, profile = read(dst)
    out = data.astype(np.float64)
    out[data == profile["nodata"]] = np.nan
    return out


# ----------------------------------------------------------------------------- planes
PLANES = [(0.3, 0.0), (0.0, -0.7), (-0.4, 0.25), (1.2, 0.9), (-2.0, -0.1)]
RESOLUTIONS = [(10.0, 10.0), (10.0, 30.0), (30.0, 7.5)]


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize(("a", "b"), PLANES)
def test_plane_has_known_slope_aspect_curvature_and_hillshade(a, b, res):
    shape = (9, 12)
    x, y = coords(shape, *res)
    dem = 800.0 + a * x + b * y
    out = terrain_products(dem, res)
    assert set(out) == set(PRODUCTS)
    for name, arr in out.items():
        assert arr.dtype == np.float32 and arr.shape == shape, name
        assert np.isnan(arr[border(shape)]).all(), name
        assert np.isfinite(arr[1:-1, 1:-1]).all(), name

    s = math.degrees(math.atan(math.hypot(a, b)))
    np.testing.assert_allclose(out["slope"][1:-1, 1:-1], s, atol=1e-4)
    # The slope faces downhill: direction (-a, -b) as an azimuth from north.
    asp = math.degrees(math.atan2(-a, -b)) % 360.0
    assert circular_diff(out["aspect"][1:-1, 1:-1], np.float64(asp)).max() < 1e-4
    np.testing.assert_allclose(out["curvature"][1:-1, 1:-1], 0.0, atol=1e-6)
    # Textbook illumination: cos(zenith) cos(slope) + sin(zenith) sin(slope) cos(az - aspect).
    zen, az = math.radians(90 - 45), math.radians(315)
    sr, ar = math.radians(s), math.radians(asp)
    cos_i = math.cos(zen) * math.cos(sr) + math.sin(zen) * math.sin(sr) * math.cos(az - ar)
    np.testing.assert_allclose(out["hillshade"][1:-1, 1:-1], 1 + 254 * max(cos_i, 0.0),
                               atol=1e-3)


@pytest.mark.parametrize(("azimuth", "altitude"), [(315.0, 45.0), (90.0, 20.0), (200.0, 70.0)])
def test_hillshade_follows_the_sun(azimuth, altitude):
    a, b = 0.5, -0.2
    x, y = coords((6, 7), 20.0, 20.0)
    hs = hillshade(a * x + b * y, 20.0, azimuth=azimuth, altitude=altitude)
    # Normal of z = a x + b y, and the unit vector towards the sun (east, north, up).
    n = np.array([-a, -b, 1.0]) / math.sqrt(1 + a * a + b * b)
    az, alt = math.radians(azimuth), math.radians(altitude)
    sun = np.array([math.sin(az) * math.cos(alt), math.cos(az) * math.cos(alt), math.sin(alt)])
    np.testing.assert_allclose(hs[1:-1, 1:-1], 1 + 254 * max(float(n @ sun), 0.0), atol=1e-3)


def test_z_factor_scales_elevations():
    x, y = coords((7, 7), 10.0, 10.0)
    dem = 0.2 * x + 0.1 * y
    np.testing.assert_allclose(slope(dem, 10.0, z_factor=3.0)[1:-1, 1:-1],
                               math.degrees(math.atan(3 * math.hypot(0.2, 0.1))), atol=1e-4)
    np.testing.assert_array_equal(slope(dem, 10.0, z_factor=3.0), slope(3.0 * dem, 10.0))


def test_flat_cells_get_flat_value():
    dem = np.full((5, 6), 1234.0)
    np.testing.assert_array_equal(aspect(dem, 10.0)[1:-1, 1:-1], 0.0)
    np.testing.assert_array_equal(aspect(dem, 10.0, flat_value=-1.0)[1:-1, 1:-1], -1.0)
    np.testing.assert_array_equal(slope(dem, 10.0)[1:-1, 1:-1], 0.0)
    np.testing.assert_allclose(hillshade(dem, 10.0)[1:-1, 1:-1],
                               1 + 254 * math.sin(math.radians(45)), atol=1e-4)


# ----------------------------------------------------------------------------- paraboloids
@pytest.mark.parametrize("res", [(10.0, 10.0), (5.0, 12.0)])
@pytest.mark.parametrize("c", [0.002, -0.002, 0.0005])
def test_paraboloid_curvature_slope_and_sign(c, res):
    shape = (15, 17)
    x, y = coords(shape, *res)
    dem = 2000.0 + c * (x**2 + y**2)
    out = terrain_products(dem, res)
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(out["curvature"][inner], -4 * c * 100, rtol=1e-5)
    # bowl (c > 0) is concave -> negative; dome (c < 0) convex -> positive
    assert (np.sign(out["curvature"][inner]) == -np.sign(c)).all()
    # Horn's differences are exact on quadratics: |grad| = 2 |c| r
    np.testing.assert_allclose(out["slope"][inner],
                               np.degrees(np.arctan(2 * abs(c) * np.hypot(x, y)))[inner],
                               atol=1e-4)
    # A dome's slopes face away from its top, a bowl's towards its bottom.
    away = np.degrees(np.arctan2(x, y)) % 360
    expected = away if c < 0 else (away + 180) % 360
    off_axis = (np.hypot(x, y) > 0)[inner]
    assert circular_diff(out["aspect"][inner][off_axis], expected[inner][off_axis]).max() < 1e-3


# ----------------------------------------------------------------------------- NaN, inputs
def test_nan_holes_only_blank_their_3x3_neighbourhood(rng):
    dem = smooth_surface(rng).astype(np.float64)
    holes = np.zeros(dem.shape, bool)
    holes[10, 10] = holes[0, 5] = holes[30, 40] = True
    holes[20:22, 25:27] = True
    holed = dem.copy()
    holed[holes] = np.nan
    full = terrain_products(dem, (10.0, 12.0))
    out = terrain_products(holed, (10.0, 12.0))
    expected_nan = ndimage.binary_dilation(holes, structure=np.ones((3, 3), bool))
    expected_nan |= border(dem.shape)
    for name in PRODUCTS:
        np.testing.assert_array_equal(np.isnan(out[name]), expected_nan, err_msg=name)
        np.testing.assert_array_equal(out[name][~expected_nan], full[name][~expected_nan])


def test_tiny_and_all_nan_arrays_give_nan():
    assert np.isnan(slope(np.ones((2, 5)), 10.0)).all()
    assert np.isnan(curvature(np.full((4, 4), np.nan), 10.0)).all()


@pytest.mark.parametrize("res", [0.0, -10.0, float("nan"), (10.0,), (10.0, 0.0), "ten"])
def test_bad_resolution_is_an_input_error(res):
    with pytest.raises(InputError, match="res|[Pp]ixel size"):
        slope(np.ones((5, 5)), res)


def test_bad_arguments_are_named():
    with pytest.raises(InputError, match=r"\(5,\)"):
        slope(np.ones(5), 10.0)
    with pytest.raises(ConfigError, match="-2"):
        slope(np.ones((5, 5)), 10.0, z_factor=-2)
    with pytest.raises(ConfigError, match="95"):
        hillshade(np.ones((5, 5)), 10.0, altitude=95)
    with pytest.raises(ConfigError, match="'bogus'.*slope, aspect, curvature, hillshade"):
        terrain_products(np.ones((5, 5)), 10.0, products=("slope", "bogus"))
    assert list(terrain_products(np.ones((5, 5)), 10.0, products="hillshade,slope")) == [
        "hillshade", "slope"]


# ----------------------------------------------------------------------------- gdaldem
@pytest.mark.parametrize("res", [(10.0, 10.0), (10.0, 25.0)])
def test_matches_gdaldem_on_a_smooth_surface(gdaldem, rng, tmp_path, res):
    dem = smooth_surface(rng)
    src = write_dem(tmp_path / "dem.tif", dem, res=res)
    ours = terrain_products(dem, res)
    ref_slope = run_gdaldem(gdaldem, "slope", src, tmp_path / "s.tif")
    ref_hs = run_gdaldem(gdaldem, "hillshade", src, tmp_path / "h.tif")
    for ref, name in ((ref_slope, "slope"), (ref_hs, "hillshade")):
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(ref), err_msg=name)
    ok = ~np.isnan(ref_slope)
    assert ok.sum() == (dem.shape[0] - 2) * (dem.shape[1] - 2)
    assert np.abs(ours["slope"][ok] - ref_slope[ok]).max() < 1e-3
    # gdaldem writes hillshade as Byte: rounded to the nearest integer.
    assert np.abs(ours["hillshade"][ok] - ref_hs[ok]).max() <= 0.5 + 1e-3
    if res[0] == res[1]:  # gdaldem's aspect ignores the pixel size (square pixels only)
        ref_asp = run_gdaldem(gdaldem, "aspect", src, tmp_path / "a.tif", "-zero_for_flat")
        # with -zero_for_flat and no input nodata gdaldem fills its border with 0, not nodata
        np.testing.assert_array_equal(np.isnan(ours["aspect"]), ~ok)
        assert circular_diff(ours["aspect"][ok], ref_asp[ok]).max() < 1e-3


def test_matches_gdaldem_on_the_jiuzhaigou_dem(gdaldem, jiuzhaigou_dir, tmp_path):
    dem = str(jiuzhaigou_dir / "DEM_030.tif")
    # The DEM marks the outside of its area with 0 without declaring it nodata: declare it
    # for gdaldem in a VRT, and pass nodata=0 to ours.
    vrt = str(tmp_path / "dem.vrt")
    subprocess.run(["gdal_translate", "-q", "-of", "VRT", "-a_nodata", "0", dem, vrt],
                   check=True, capture_output=True)
    paths = write_terrain(dem, str(tmp_path / "ours"), ("slope", "aspect", "hillshade"),
                          nodata=0)
    refs = {
        "slope": run_gdaldem(gdaldem, "slope", vrt, tmp_path / "s.tif"),
        "aspect": run_gdaldem(gdaldem, "aspect", vrt, tmp_path / "a.tif", "-zero_for_flat"),
        "hillshade": run_gdaldem(gdaldem, "hillshade", vrt, tmp_path / "h.tif"),
    }
    with rasterio.open(dem) as src:
        z = src.read(1)
    # With -zero_for_flat gdaldem writes 0, not nodata, outside the valid area: use the
    # slope's nodata mask for all three.
    ok = ~np.isnan(refs["slope"])
    for name, ref in refs.items():
        data, profile = read(paths[name])
        assert profile["nodata"] == -9999.0
        ours = np.where(data == -9999.0, np.nan, data)
        np.testing.assert_array_equal(np.isnan(ours), ~ok, err_msg=name)
        assert ok.sum() > 0.5 * (z != 0).sum(), name  # most of the area of interest
        if name == "slope":
            assert np.abs(ours[ok] - ref[ok]).max() < 1e-3
            assert ours[ok].max() > 45  # real mountains
        elif name == "aspect":
            # The pixels are 29.997 x 30.002 m; gdaldem's aspect ignores that (as if square),
            # ours does not: the difference is bounded by (30.002 / 29.997 - 1) / 2 rad.
            assert circular_diff(ours[ok], ref[ok]).max() < 0.005
            square = aspect(np.where(z == 0, np.nan, z), 30.0)
            assert circular_diff(square[ok], ref[ok]).max() < 1e-3
        else:
            assert np.abs(ours[ok] - ref[ok]).max() <= 0.5 + 1e-3


# ----------------------------------------------------------------------------- files, CLI
def _decoded(path: str) -> np.ndarray:
    data, profile = read(path)
    return np.where(data == profile["nodata"], np.nan, data)


def test_cli_writes_valid_cogs_on_the_dem_grid(rng, tmp_path):
    dem = smooth_surface(rng, shape=(300, 280))
    dem[100:104, 50:60] = -32768  # a nodata patch
    src = write_dem(tmp_path / "dem.tif", dem, res=(10.0, 10.0), nodata=-32768)
    out = tmp_path / "terrain"
    assert main(["terrain", src, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p}.tif" for p in PRODUCTS)
    expected = terrain_products(np.where(dem == -32768, np.nan, dem), 10.0)
    with rasterio.open(src) as ref:
        for name in PRODUCTS:
            path = out / f"{name}.tif"
            valid, errors, _ = cog_validate(str(path))
            assert valid, (name, errors)
            with rasterio.open(path) as cog:
                assert cog.crs == ref.crs and cog.transform == ref.transform
                assert (cog.width, cog.height) == (ref.width, ref.height)
                assert cog.dtypes == ("float32",) and cog.nodata == -9999.0
                assert cog.descriptions == (name,)
                assert cog.tags()["product"] == name
            np.testing.assert_array_equal(_decoded(str(path)), expected[name], err_msg=name)
    assert np.isnan(_decoded(str(out / "slope.tif"))[99:105, 49:61]).all()


def test_cli_products_z_factor_and_nodata_override(rng, tmp_path):
    dem = smooth_surface(rng)
    dem[5, 5] = 0.0
    src = write_dem(tmp_path / "dem.tif", dem, res=(10.0, 20.0))  # no nodata in the file
    out = tmp_path / "t"
    assert main(["terrain", src, "--out", str(out), "--products", "slope, hillshade",
                 "--z-factor", "2", "--nodata", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["hillshade.tif", "slope.tif"]
    masked = np.where(dem == 0, np.nan, dem)
    np.testing.assert_array_equal(_decoded(str(out / "slope.tif")),
                                  slope(masked, (10.0, 20.0), z_factor=2))
    assert np.isnan(_decoded(str(out / "hillshade.tif"))[4:7, 4:7]).all()


def test_block_processing_equals_whole(rng, tmp_path):
    dem = smooth_surface(rng, shape=(61, 40))
    dem[30, 12] = np.nan
    src = write_dem(tmp_path / "dem.tif", dem, res=(10.0, 15.0), nodata=np.nan)
    whole = write_terrain(src, str(tmp_path / "whole"))
    blocks = write_terrain(src, str(tmp_path / "blocks"), max_pixels=7 * 40)  # 7-row blocks
    for name in PRODUCTS:
        np.testing.assert_array_equal(read(blocks[name])[0], read(whole[name])[0], err_msg=name)
    assert np.isnan(_decoded(whole["curvature"])[29:32, 11:14]).all()


def test_geographic_dem_converts_degrees_to_metres(tmp_path):
    a, b = 0.35, -0.2  # plane in metres east / north
    shape, deg = (40, 50), 1e-4
    lon0, lat0 = 103.8, 33.2
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    lat = lat0 - (rows + 0.5) * deg
    # x along parallels scaled at the mid latitude: a plane up to ~1e-4 relative error
    east = cols * deg * 111_320.0 * np.cos(np.radians(lat.mean()))
    north = (lat - lat0) * 110_574.0
    dem = (3000.0 + a * east + b * north).astype(np.float64)
    src = write_dem(tmp_path / "geo.tif", dem, res=(deg, deg), crs="EPSG:4326",
                    origin=(lon0, lat0))
    paths = write_terrain(src, str(tmp_path / "out"), ("slope", "aspect"))
    s = _decoded(paths["slope"])[1:-1, 1:-1]
    np.testing.assert_allclose(s, math.degrees(math.atan(math.hypot(a, b))), atol=1e-3)
    asp = _decoded(paths["aspect"])[1:-1, 1:-1]
    assert circular_diff(asp, np.float64(math.degrees(math.atan2(-a, -b)) % 360)).max() < 1e-3
    with rasterio.open(paths["slope"]) as cog, rasterio.open(src) as ref:
        assert cog.crs == ref.crs and cog.transform == ref.transform
    blocks = write_terrain(src, str(tmp_path / "blocks"), ("slope",), max_pixels=5 * 50)
    np.testing.assert_array_equal(read(blocks["slope"])[0], read(paths["slope"])[0])


def test_file_errors_name_the_value(rng, tmp_path, capsys):
    missing = str(tmp_path / "nope.tif")
    with pytest.raises(DataNotFoundError, match="nope.tif"):
        write_terrain(missing, str(tmp_path / "o"))
    assert main(["terrain", missing, "--out", str(tmp_path / "o")]) == 2
    assert "nope.tif" in capsys.readouterr().err

    dem = smooth_surface(rng, shape=(8, 8))
    no_crs = write_dem(tmp_path / "nocrs.tif", dem, crs=None)
    with pytest.raises(CRSError, match="nocrs.tif.*no CRS"):
        write_terrain(no_crs, str(tmp_path / "o"))

    empty = write_dem(tmp_path / "empty.tif", np.zeros((8, 8), np.int16), nodata=0)
    with pytest.raises(NoDataError, match=r"empty.tif.*nodata = 0\.0"):
        write_terrain(empty, str(tmp_path / "o"))
    full = write_dem(tmp_path / "full.tif", np.full((8, 8), 7.0, np.float32))
    with pytest.raises(NoDataError, match=r"nodata = 7\.0"):
        write_terrain(full, str(tmp_path / "o"), nodata=7.0)

    ok = write_dem(tmp_path / "ok.tif", dem)
    with pytest.raises(ConfigError, match="'roughness'.*slope, aspect, curvature, hillshade"):
        write_terrain(ok, str(tmp_path / "o"), ("slope", "roughness"))
    assert main(["terrain", ok, "--out", str(tmp_path / "o"), "--products", "roughness"]) == 2
    assert "roughness" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())



def test_aspect_overviews_stay_near_north_on_a_north_facing_slope(tmp_path):
    """Aspect is an angle: averaged overviews made 359 and 1 degrees 180 (south)."""
    n = 1024
    y, x = np.mgrid[0:n, 0:n].astype("float64")
    dem = y + np.where(x % 2 == 0, 0.02, -0.02) * x  # rises to the south, a slight wobble
    path = tmp_path / "dem.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1,
                       dtype="float32", crs="EPSG:32645",
                       transform=Affine(10, 0, 330000, 0, -10, 3110000)) as dst:
        dst.write(dem.astype("float32"), 1)
    out = write_terrain(str(path), str(tmp_path / "t"), products="aspect")
    with rasterio.open(out["aspect"]) as src:
        assert src.overviews(1)
        full = src.read(1)[100:900, 100:900]
        overview = src.read(1, out_shape=(n // 4, n // 4))[25:225, 25:225]
    north = lambda a: np.mean((a > 350) | (a < 10))  # noqa: E731
    assert north(full) > 0.99 and north(overview) > 0.99

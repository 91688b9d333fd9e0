"""GeoTIFF/COG, terrain and stacked sources: small seeded UTM rasters plus the real datasets."""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

from pipelines.errors import (
    BandError,
    ConfigError,
    CRSError,
    DataNotFoundError,
    RegionError,
    SourceError,
)
from pipelines.geo import terrain
from pipelines.geo.grid import PixelGrid, Region
from pipelines.sources.geotiff import (
    GeoTIFFSource,
    StackSource,
    TerrainSource,
    parse_band_map,
)
from tests.conftest import free_port, wait_for_port

UTM45 = "EPSG:32645"
UTM46 = "EPSG:32646"
X0, Y0 = 330_000.0, 3_110_000.0  # Rasuwa, Nepal, UTM 45N
S2 = ("B4", "B3", "B2", "B8")


# ----------------------------------------------------------------------------- helpers
def write_tif(path: Path, data: np.ndarray, transform, crs: str | None = UTM45,
              nodata: float | None = None, descriptions=None) -> str:
    data = data[np.newaxis] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return str(path)


def s2_dn(rng: np.random.Generator, h: int = 40, w: int = 50) -> np.ndarray:
    return rng.integers(100, 5000, size=(4, h, w)).astype(np.uint16)


def grid_of(path: str) -> PixelGrid:
    with rasterio.open(path) as src:
        return PixelGrid.from_affine(str(src.crs), src.transform, src.width, src.height)


@pytest.fixture
def s2_file(tmp_path, rng) -> tuple[str, np.ndarray]:
    dn = s2_dn(rng)
    path = write_tif(tmp_path / "s2.tif", dn, from_origin(X0, Y0, 10, 10), descriptions=S2)
    return path, dn


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_same_grid_read_returns_the_file_values(s2_file, resampling):
    path, dn = s2_file
    src = GeoTIFFSource(path, resampling=resampling)
    assert src.bands == S2
    r = src.read(grid_of(path), ["B8", "B4"])
    assert r.bands == ("B8", "B4") and r.data.dtype == np.float32
    expected = dn[[3, 0]].astype(np.float32) * np.float32(1e-4)  # uint16: registry scale
    np.testing.assert_allclose(r.data, expected, rtol=1e-6)
    assert r.valid.all()


def test_shifted_and_cropped_grids_return_the_matching_sub_array(s2_file):
    path, dn = s2_file
    src = GeoTIFFSource(path, resampling="nearest", scale=1.0)
    full = grid_of(path)
    r = src.read(full.subgrid(Window(7, 3, 20, 15)), ["B2"])
    np.testing.assert_array_equal(r.data[0], dn[2, 3:18, 7:27].astype(np.float32))
    # A grid hanging over the top-left corner: the outside pixels are invalid NaN.
    r = src.read(full.subgrid(Window(-4, -2, 10, 10)), ["B2"])
    assert not r.valid[:2].any() and not r.valid[:, :4].any()
    assert np.isnan(r.data[0, :2]).all() and np.isnan(r.data[0, :, :4]).all()
    np.testing.assert_array_equal(r.data[0, 2:, 4:], dn[2, :8, :6].astype(np.float32))
    assert r.valid[2:, 4:].all()


def test_reprojection_to_another_utm_zone_puts_a_feature_in_place(tmp_path):
    # Near the zone 45/46 boundary (90 E): the two grids are rotated by ~1 degree.
    x0, y0 = 880_000.0, 3_110_000.0
    dem = np.full((60, 60), 100.0, dtype=np.float32)
    dem[30:33, 20:23] = 5000.0  # a 3 x 3 peak centred on pixel (31, 21)
    path = write_tif(tmp_path / "peak.tif", dem, from_origin(x0, y0, 10, 10),
                     descriptions=["DEM"])
    px, py = x0 + 21.5 * 10, y0 - 31.5 * 10
    tr = Transformer.from_crs(UTM45, UTM46, always_xy=True)
    qx, qy = tr.transform(px, py)
    grid = PixelGrid(UTM46, (10.0, 0.0, math.floor(qx / 10) * 10 - 200.0, 0.0, -10.0,
                             math.ceil(qy / 10) * 10 + 150.0), 40, 30)
    r = GeoTIFFSource(path).read(grid, ["DEM"])
    z = r.data[0]
    hot = np.argwhere(z > 2500.0)
    assert len(hot) >= 4  # the feature survived resampling
    row, col = hot.mean(axis=0)
    exp_col = (qx - grid.transform[2]) / 10 - 0.5
    exp_row = (grid.transform[5] - qy) / 10 - 0.5
    assert abs(row - exp_row) < 1.0 and abs(col - exp_col) < 1.0
    assert r.valid.all()
    np.testing.assert_allclose(z[0], 100.0, atol=1e-3)  # background far from the peak


# ----------------------------------------------------------------------------- mosaics
@pytest.fixture
def two_tiles(tmp_path, rng):
    """Tiles A (cols 0-29) and B (cols 20-49) of one grid, overlapping by 10 columns."""
    full = rng.integers(1, 1000, size=(1, 20, 50)).astype(np.int16)
    a, b = full[:, :, :30].copy(), full[:, :, 20:] + 1000  # B differs in the overlap
    pa = write_tif(tmp_path / "a.tif", a, from_origin(X0, Y0, 10, 10), descriptions=["DEM"])
    pb = write_tif(tmp_path / "b.tif", b, from_origin(X0 + 200, Y0, 10, 10),
                   descriptions=["DEM"])
    grid = PixelGrid(UTM45, (10.0, 0.0, X0, 0.0, -10.0, Y0), 50, 20)
    return pa, pb, full[0].astype(np.float32), grid


def test_mosaic_of_overlapping_tiles_first_file_given_wins(two_tiles, tmp_path):
    pa, pb, full, grid = two_tiles
    # the order given is the priority; a glob's matches are sorted where the glob stands
    for paths, order in (([pa, pb], (pa, pb)), (str(tmp_path / "*.tif"), (pa, pb)),
                         ([pb, pa], (pb, pa)), ([pb, str(tmp_path / "*.tif")], (pb, pa))):
        src = GeoTIFFSource(paths, resampling="nearest")
        assert src.files == order
        r = src.read(grid, ["DEM"])
        assert r.valid.all()
        np.testing.assert_array_equal(r.data[0, :, :20], full[:, :20])  # only A
        np.testing.assert_array_equal(r.data[0, :, 30:], full[:, 30:] + 1000)  # only B
        overlap = full[:, 20:30] + (1000 if order[0] == pb else 0)
        np.testing.assert_array_equal(r.data[0, :, 20:30], overlap)


def test_mosaic_falls_through_to_the_next_file_where_the_first_has_nodata(tmp_path, rng):
    a = rng.integers(1, 1000, size=(20, 30)).astype(np.int16)
    b = rng.integers(1, 1000, size=(20, 30)).astype(np.int16)
    a[5:10, 5:10] = -1
    pa = write_tif(tmp_path / "a.tif", a, from_origin(X0, Y0, 10, 10), nodata=-1,
                   descriptions=["DEM"])
    pb = write_tif(tmp_path / "b.tif", b, from_origin(X0, Y0, 10, 10), descriptions=["DEM"])
    r = GeoTIFFSource([pa, pb], resampling="nearest").read(grid_of(pa), ["DEM"])
    expected = np.where(a == -1, b, a).astype(np.float32)
    np.testing.assert_array_equal(r.data[0], expected)
    assert r.valid.all()
    # Alone, A's nodata block is invalid and NaN.
    r = GeoTIFFSource(pa, resampling="nearest").read(grid_of(pa), ["DEM"])
    assert (~r.valid).sum() == 25 and not r.valid[5:10, 5:10].any()
    assert np.isnan(r.data[0, 5:10, 5:10]).all()


def test_nodata_per_band_override_and_nan(tmp_path, rng):
    dn = s2_dn(rng, 10, 10)
    dn[1, 2, 3] = 0          # nodata in one band only: the whole pixel is invalid
    dn[:, 4, 4] = 77         # 77 in every band
    path = write_tif(tmp_path / "n.tif", dn, from_origin(X0, Y0, 10, 10), nodata=0,
                     descriptions=S2)
    g = grid_of(path)
    r = GeoTIFFSource(path, resampling="nearest").read(g, S2)
    assert not r.valid[2, 3] and np.isnan(r.data[:, 2, 3]).all()
    assert r.valid.sum() == 99
    # Overriding the file's nodata: 0 becomes a value, 77 is missing.
    r = GeoTIFFSource(path, nodata=77, resampling="nearest").read(g, S2)
    assert r.valid[2, 3] and r.data[1, 2, 3] == 0.0
    assert not r.valid[4, 4] and r.valid.sum() == 99
    # NaN in a float file is always invalid, even without a nodata flag.
    f = dn.astype(np.float32)
    f[0, 6, 6] = np.nan
    fpath = write_tif(tmp_path / "f.tif", f, from_origin(X0, Y0, 10, 10), descriptions=S2)
    r = GeoTIFFSource(fpath, resampling="nearest", scale=1e-4).read(g, ["B4", "B8"])
    assert not r.valid[6, 6] and r.valid.sum() == 99
    np.testing.assert_allclose(r.data[1, 0, 0], dn[3, 0, 0] * 1e-4, rtol=1e-6)


def test_mask_zero_pixels_masks_only_all_zero_pixels(tmp_path, rng):
    dn = s2_dn(rng, 12, 12).astype(np.float64)  # like the chittagong tiles: float64 DNs
    dn[:, :4, :4] = 0.0   # an all-zero block: no data
    dn[2, 8, 8] = 0.0     # one band 0: a real value
    path = write_tif(tmp_path / "z.tif", dn, from_origin(X0, Y0, 10, 10))
    bm = "B4=1,B3=2,B2=3,B8=4"
    g = grid_of(path)
    r = GeoTIFFSource(path, band_map=bm, scale=1e-4, mask_zero_pixels=True).read(g, S2)
    assert not r.valid[:4, :4].any() and r.valid.sum() == 144 - 16
    assert r.valid[8, 8] and r.data[2, 8, 8] == 0.0
    # Bilinear excludes the empty block from the kernel: edge pixels keep exact values.
    np.testing.assert_allclose(r.data[:, 4, 4], dn[:, 4, 4] * 1e-4, rtol=1e-5)
    r = GeoTIFFSource(path, band_map=bm, scale=1e-4).read(g, S2)
    assert r.valid.all()


def test_scale_auto_uses_the_registry_for_integers_and_1_for_floats(tmp_path, rng, caplog):
    dn = s2_dn(rng, 8, 8)
    ipath = write_tif(tmp_path / "i.tif", dn, from_origin(X0, Y0, 10, 10), descriptions=S2)
    fpath = write_tif(tmp_path / "f.tif", dn.astype(np.float32), from_origin(X0, Y0, 10, 10),
                      descriptions=S2)
    g = grid_of(ipath)
    ri = GeoTIFFSource(ipath).read(g, ["B4"])
    with caplog.at_level(logging.WARNING, logger="pipelines.sources.geotiff"):
        rf = GeoTIFFSource(fpath).read(g, ["B4"])
    np.testing.assert_allclose(ri.data, dn[:1] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(rf.data, dn[:1], rtol=1e-6)
    assert "scale=1e-4" in caplog.text
    rs = GeoTIFFSource(fpath, scale=1e-4).read(g, ["B4"])
    np.testing.assert_allclose(rs.data, ri.data, rtol=1e-6)


# ----------------------------------------------------------------------------- bands
def test_band_mapping_by_description_aliases_and_band_map(tmp_path, rng):
    dn = s2_dn(rng, 6, 6)
    path = write_tif(tmp_path / "d.tif", dn, from_origin(X0, Y0, 10, 10),
                     descriptions=["red", "Green", "BLUE", "nir"])
    g = grid_of(path)
    src = GeoTIFFSource(path, resampling="nearest")
    assert src.bands == S2
    np.testing.assert_allclose(src.read(g, ["nir"]).data[0], dn[3] * 1e-4, rtol=1e-6)
    # band_map by index and by description; only the mapped bands are offered.
    src = GeoTIFFSource(path, band_map={"B8": 1, "red": "nir"}, resampling="nearest")
    assert src.bands == ("B8", "B4")
    r = src.read(g, ["B4", "B8"])
    np.testing.assert_allclose(r.data, dn[[3, 0]] * 1e-4, rtol=1e-6)


def test_band_errors_name_the_band_and_the_fix(tmp_path, rng):
    plain = write_tif(tmp_path / "plain.tif", s2_dn(rng, 6, 6), from_origin(X0, Y0, 10, 10))
    with pytest.raises(BandError, match=r"plain\.tif.*without descriptions.*B4=1,B3=2,B2=3,B8=4"):
        _ = GeoTIFFSource(plain).bands
    src = GeoTIFFSource(plain, band_map="B4=1,B3=2,B2=3,B8=4")
    with pytest.raises(BandError, match=r"lacks band\(s\) B11"):
        src.read(grid_of(plain), ["B4", "B11"])
    with pytest.raises(BandError, match="Unknown band 'B44'"):
        src.read(grid_of(plain), ["B44"])
    with pytest.raises(BandError, match="has only 4 band"):
        _ = GeoTIFFSource(plain, band_map={"B4": 5}).bands
    with pytest.raises(BandError, match="description 'swir'"):
        _ = GeoTIFFSource(plain, band_map={"B11": "swir"}).bands
    described = write_tif(tmp_path / "three.tif", s2_dn(rng, 6, 6)[:3],
                          from_origin(X0, Y0, 10, 10), descriptions=S2[:3])
    full = write_tif(tmp_path / "four.tif", s2_dn(rng, 6, 6), from_origin(X0, Y0, 10, 10),
                     descriptions=S2)
    with pytest.raises(BandError, match="disagree"):
        _ = GeoTIFFSource([described, full]).bands


def test_parse_band_map():
    assert parse_band_map("B4=1, nir=NIR band") == {"B4": 1, "B8": "NIR band"}
    assert parse_band_map("b04=1,B3=2,B2=3,B8=4") == {"B4": 1, "B3": 2, "B2": 3, "B8": 4}
    for bad, msg in [("B4", "NAME=INDEX"), ("B4=0", "start at 1"), ("B4=1,red=2", "twice"),
                     ("", "Empty"), ("Q7=1", "Unknown band")]:
        with pytest.raises(BandError, match=msg):
            parse_band_map(bad)


def test_bad_configuration_is_rejected_early(s2_file):
    path, _ = s2_file
    with pytest.raises(ConfigError, match="resampling 'cubicle'"):
        GeoTIFFSource(path, resampling="cubicle")
    with pytest.raises(ConfigError, match="scale"):
        GeoTIFFSource(path, scale=-1)
    with pytest.raises(ConfigError, match="at least one path"):
        GeoTIFFSource([])


# ----------------------------------------------------------------------------- bad files
def test_unreadable_missing_and_unreferenced_files(tmp_path, rng):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not a tiff" * 50)
    with pytest.raises(SourceError, match="garbage.tif"):
        _ = GeoTIFFSource(str(garbage)).bands
    with pytest.raises(DataNotFoundError, match="missing.tif"):
        _ = GeoTIFFSource(str(tmp_path / "missing.tif")).bands
    with pytest.raises(DataNotFoundError, match=r"nothing-\*\.tif"):
        _ = GeoTIFFSource(str(tmp_path / "nothing-*.tif")).bands
    nocrs = write_tif(tmp_path / "nocrs.tif", s2_dn(rng, 6, 6), from_origin(0, 0, 1, 1),
                      crs=None, descriptions=S2)
    with pytest.raises(CRSError, match="nocrs.tif"):
        _ = GeoTIFFSource(nocrs).bands


def test_truncated_file_fails_on_read_with_the_file_named(tmp_path, rng):
    data = rng.integers(0, 10000, size=(2, 256, 256)).astype(np.uint16)
    good = tmp_path / "good.tif"
    with rasterio.open(good, "w", driver="COG", width=256, height=256, count=2,  # header first
                       dtype="uint16", crs=UTM45, transform=from_origin(X0, Y0, 10, 10),
                       blocksize=64, compress="deflate", overviews="NONE") as dst:
        dst.write(data)
        dst.set_band_description(1, "B4")
        dst.set_band_description(2, "B8")
    raw = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    src = GeoTIFFSource(str(cut), band_map="B4=1,B8=2")
    assert src.bands == ("B4", "B8")  # the header is intact
    with pytest.raises(SourceError, match="cut.tif"):
        src.read(grid_of(str(good)), ["B4", "B8"])


# ----------------------------------------------------------------------------- lifecycle
def test_pickling_after_open_still_reads(two_tiles):
    pa, pb, _, grid = two_tiles
    src = GeoTIFFSource([pa, pb], resampling="nearest")
    src.open()
    src.open()  # idempotent
    first = src.read(grid, ["DEM"])
    clone = pickle.loads(pickle.dumps(src))
    assert clone._handles == {}  # no dataset travelled
    again = clone.read(grid, ["DEM"])
    np.testing.assert_array_equal(again.data, first.data)
    src.close()
    src.close()  # idempotent
    np.testing.assert_array_equal(src.read(grid, ["DEM"]).data, first.data)  # lazily reopens
    clone.close()
    src.close()


def test_footprint_covers_and_check_covers(two_tiles):
    pa, pb, _, grid = two_tiles
    src = GeoTIFFSource([pa, pb])
    crs, bounds = src.footprint()
    assert crs == UTM45
    np.testing.assert_allclose(bounds, (X0, Y0 - 200, X0 + 500, Y0))
    assert src.covers(grid) and src.coverage(grid) == pytest.approx(1.0)
    far = PixelGrid(UTM45, (10.0, 0.0, X0 + 10_000, 0.0, -10.0, Y0), 20, 20)
    assert not src.covers(far) and src.coverage(far) == 0.0
    half = PixelGrid(UTM45, (10.0, 0.0, X0 + 250, 0.0, -10.0, Y0), 50, 20)
    assert src.coverage(half) == pytest.approx(0.5)
    tr = Transformer.from_crs(UTM45, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(X0 + 250, Y0 - 100)
    src.check_covers(Region.from_geometry("inside", box(lon - 1e-3, lat - 1e-3,
                                                        lon + 1e-3, lat + 1e-3)))
    with pytest.raises(RegionError, match=r"'elsewhere' \(lon/lat bounds \(10, 10, 11, 11\)\)"):
        src.check_covers(Region.from_geometry("elsewhere", box(10, 10, 11, 11)))
    desc = src.describe()
    json.dumps(desc)
    assert desc["files"] == [pa, pb] and desc["bands"] == ["DEM"] and desc["scale"] == "auto"


def test_http_urls_are_read_through_vsicurl(two_tiles, tmp_path):
    import subprocess
    import sys

    pa, _, full, _ = two_tiles
    port = free_port()
    # A separate process: GDAL holds the GIL while it fetches, so no in-process server.
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server, "the HTTP file server")
        url = f"http://127.0.0.1:{port}/{Path(pa).name}"
        src = GeoTIFFSource(url, resampling="nearest")
        r = src.read(grid_of(pa), ["DEM"])
        np.testing.assert_array_equal(r.data[0], full[:, :30])
        with pytest.raises(DataNotFoundError, match="missing.tif"):
            _ = GeoTIFFSource(f"http://127.0.0.1:{port}/missing.tif").bands
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_open_datasets_are_bounded_and_scans_keep_none(tmp_path, rng, monkeypatch):
    import pipelines.sources.geotiff.source as geotiff

    paths = [write_tif(tmp_path / f"t{i}.tif", rng.integers(1, 99, (1, 10, 10)).astype(np.int16),
                       from_origin(X0 + 100 * i, Y0, 10, 10), descriptions=["DEM"])
             for i in range(4)]
    src = GeoTIFFSource(str(tmp_path / "t*.tif"), resampling="nearest")
    assert src.bands == ("DEM",) and len(src._handles) == 0  # launcher-side scan
    monkeypatch.setattr(geotiff, "MAX_OPEN_FILES", 2)
    grid = PixelGrid(UTM45, (10.0, 0.0, X0, 0.0, -10.0, Y0), 40, 10)
    with src:
        r = src.read(grid, ["DEM"])
        assert len(src._handles) == 2
    for i, p in enumerate(paths):
        with rasterio.open(p) as ds:
            np.testing.assert_array_equal(r.data[0, :, 10 * i:10 * i + 10], ds.read(1))


# ----------------------------------------------------------------------------- terrain
def plane_dem(tmp_path, gx=0.3, gy=-0.1, res=30.0, shape=(40, 40)) -> tuple[str, Callable]:
    """A tilted plane z = 1000 + gx * dx + gy * dy (metres east/north of the origin)."""
    def z(x, y):
        return 1000.0 + gx * (x - X0) + gy * (y - Y0)

    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    xs, ys = X0 + (cols + 0.5) * res, Y0 - (rows + 0.5) * res
    path = write_tif(tmp_path / "dem.tif", z(xs, ys).astype(np.float32),
                     from_origin(X0, Y0, res, res))
    return path, z


def test_terrain_on_a_plane_is_exact_up_to_the_grid_edge(tmp_path):
    path, z = plane_dem(tmp_path)
    src = TerrainSource(path)
    assert src.bands == ("DEM", "slope", "aspect", "curvature", "hillshade")
    grid = PixelGrid(UTM45, (10.0, 0.0, X0 + 300, 0.0, -10.0, Y0 - 300), 32, 24)  # inside
    r = src.read(grid, ["slope", "DEM", "aspect", "curvature"])
    assert r.valid.all()  # edge pixels too: the 1-pixel halo was read
    rows, cols = np.mgrid[0:24, 0:32]
    xs, ys = X0 + 300 + (cols + 0.5) * 10, Y0 - 300 - (rows + 0.5) * 10
    np.testing.assert_allclose(r.band("DEM"), z(xs, ys), atol=2e-3)
    np.testing.assert_allclose(r.band("slope"), math.degrees(math.atan(math.hypot(0.3, 0.1))),
                               atol=1e-3)
    exp_aspect = math.degrees(math.atan2(-0.3, 0.1)) % 360  # faces down-slope: west-north-west
    np.testing.assert_allclose(r.band("aspect"), exp_aspect, atol=1e-2)
    np.testing.assert_allclose(r.band("curvature"), 0.0, atol=1e-2)
    # A grid hanging over the DEM's edge: pixels without a full neighbourhood are invalid.
    over = PixelGrid(UTM45, (30.0, 0.0, X0 - 90, 0.0, -30.0, Y0), 10, 10)
    r = src.read(over, ["slope"])
    assert not r.valid[:, :4].any() and r.valid[1:, 4:].all() and not r.valid[0].any()
    assert np.isnan(r.data[0, :, :3]).all()
    json.dumps(src.describe())


def test_terrain_on_the_real_jiuzhaigou_dem(jiuzhaigou_dir):
    path = str(jiuzhaigou_dir / "DEM_030.tif")
    src = TerrainSource(path, nodata=0)
    native = grid_of(path)
    with rasterio.open(path) as ds:
        raw = ds.read(1).astype(np.float64)
    raw[raw == 0] = np.nan
    r = src.read(native, ["DEM", "slope", "hillshade"])
    inside = np.isfinite(raw)
    # Pixels are valid where every requested band is: here the slope's 3 x 3 window.
    np.testing.assert_allclose(r.band("DEM")[r.valid], raw[r.valid], atol=1e-2)
    assert np.isnan(r.data[:, ~r.valid]).all()
    res = (native.transform[0], -native.transform[4])  # 29.997 x 30.002 m
    ref = {"slope": terrain.slope(raw, res), "hillshade": terrain.hillshade(raw, res)}
    interior = (slice(1, -1), slice(1, -1))
    for name in ("slope", "hillshade"):
        got, exp = r.band(name)[interior], ref[name][interior]
        assert np.array_equal(np.isfinite(got), np.isfinite(exp))
        ok = np.isfinite(exp)
        assert ok.mean() > 0.5  # the AOI fills most of the file
        np.testing.assert_allclose(got[ok], exp[ok], atol=0.01)
    # Outside-AOI pixels are invalid; a valid pixel has a fully valid 3 x 3 neighbourhood.
    assert not r.valid[~inside].any()
    assert r.valid.mean() == pytest.approx(np.isfinite(ref["slope"]).mean(), abs=0.01)

    # 10 m and 30 m grids deep inside the AOI: every pixel, edges included, is valid, and
    # the values equal those of a larger read (the halo gives edge pixels real neighbours).
    rows, cols = np.nonzero(np.isfinite(ref["slope"]))
    cr, cc = int(np.median(rows)), int(np.median(cols))
    cx, cy = native.affine @ (cc, cr)
    for res in (10.0, 30.0):
        n = 48 if res == 10.0 else 20
        left, top = math.floor(cx / res) * res, math.floor(cy / res) * res
        small = PixelGrid(native.crs, (res, 0.0, left, 0.0, -res, top), n, n)
        big = small.buffered(5)
        a = src.read(small, ["slope", "aspect", "curvature", "hillshade", "DEM"])
        b = src.read(big, ["slope", "aspect", "curvature", "hillshade", "DEM"])
        assert a.valid.all()
        np.testing.assert_allclose(a.data, b.data[:, 5:-5, 5:-5], atol=1e-3)


def test_stack_of_geotiff_and_terrain(tmp_path, rng):
    dem_path, _ = plane_dem(tmp_path)
    dn = s2_dn(rng, 60, 60)
    dn[:, 0, 0] = 0  # nodata in the imagery only
    s2_path = write_tif(tmp_path / "s2.tif", dn, from_origin(X0 + 300, Y0 - 300, 10, 10),
                        nodata=0, descriptions=S2)
    also_b4 = write_tif(tmp_path / "other.tif", dn[:1] + 1, from_origin(X0, Y0, 10, 10),
                        descriptions=["B4"])
    imagery = GeoTIFFSource(s2_path, resampling="nearest")
    stack = StackSource([imagery, TerrainSource(dem_path),
                         GeoTIFFSource(also_b4, resampling="nearest")])
    assert stack.bands == (*S2, "DEM", "slope", "aspect", "curvature", "hillshade")
    grid = grid_of(s2_path).subgrid(Window(0, 0, 30, 20))
    r = stack.read(grid, ["slope", "B4", "DEM"])
    assert r.bands == ("slope", "B4", "DEM")
    np.testing.assert_allclose(r.band("B4")[r.valid], (dn[0, :20, :30] * 1e-4)[r.valid],
                               rtol=1e-6)  # B4 from the first source that has it
    assert not r.valid[0, 0] and np.isnan(r.data[:, 0, 0]).all() and r.valid.sum() == 599
    np.testing.assert_allclose(r.band("slope")[r.valid],
                               math.degrees(math.atan(math.hypot(0.3, 0.1))), atol=1e-3)
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone.read(grid, ["slope", "B4", "DEM"]).data, r.data)
    desc = stack.describe()
    json.dumps(desc)
    assert [d["kind"] for d in desc["sources"]] == ["geotiff", "dem", "geotiff"]
    with pytest.raises(BandError, match="B11"):
        stack.read(grid, ["B11"])


# ----------------------------------------------------------------------------- real data
def test_chittagong_tiles_on_a_utm_grid_match_direct_samples(chittagong_dir):
    tiles = sorted(str(p) for p in (chittagong_dir / "images").glob("*.tif"))
    src = GeoTIFFSource(str(chittagong_dir / "images" / "*"), band_map="B4=1,B3=2,B2=3,B8=4",
                        scale=1e-4, mask_zero_pixels=True, resampling="nearest")
    assert src.files == tuple(tiles)  # the .tfw sidecars the glob matched were skipped
    # A 10 m UTM 46N grid over the two neighbouring tiles 0 and 1 (which overlap by half).
    with rasterio.open(tiles[0]) as t0, rasterio.open(tiles[1]) as t1:
        lon0, lat0 = t0.bounds.left, t0.bounds.bottom
        lon1, lat1 = t1.bounds.right, t1.bounds.top
    to_utm = Transformer.from_crs("EPSG:4326", UTM46, always_xy=True)
    (x0, x1), (y0, y1) = to_utm.transform([lon0, lon1], [lat0, lat1])
    left, top = math.ceil(x0 / 10) * 10 + 20, math.floor(y1 / 10) * 10 - 20
    grid = PixelGrid(UTM46, (10.0, 0.0, left, 0.0, -10.0, top),
                     int((x1 - left) // 10) - 2, int((top - y0) // 10) - 2)
    r = src.read(grid, ["B4", "B3", "B2", "B8"])
    assert 0.4 < r.valid_fraction < 0.95

    rs = np.random.default_rng(7)
    rows, cols = rs.integers(0, grid.height, 400), rs.integers(0, grid.width, 400)
    xs, ys = grid.affine @ (cols + 0.5, rows + 0.5)
    lons, lats = Transformer.from_crs(UTM46, "EPSG:4326", always_xy=True).transform(xs, ys)
    datasets = [rasterio.open(t) for t in tiles]
    checked_valid = checked_empty = 0
    try:
        for row, col, lon, lat in zip(rows, cols, lons, lats):
            expected, ambiguous = None, False
            for ds in datasets:  # first (sorted) tile with a non-zero pixel there wins
                if not (ds.bounds.left < lon < ds.bounds.right
                        and ds.bounds.bottom < lat < ds.bounds.top):
                    continue
                fc, fr = ~ds.transform @ (lon, lat)
                if not (0.25 < fc % 1 < 0.75 and 0.25 < fr % 1 < 0.75):
                    ambiguous = True  # too close to a source pixel edge to call nearest
                    break
                value = next(ds.sample([(lon, lat)]))
                if np.any(value != 0):
                    expected = value
                    break
            if ambiguous:
                continue
            if expected is None:
                assert not r.valid[row, col]
                assert np.isnan(r.data[:, row, col]).all()
                checked_empty += 1
            else:
                assert r.valid[row, col]
                np.testing.assert_allclose(r.data[:, row, col],
                                           np.float32(expected) * np.float32(1e-4), rtol=1e-6)
                checked_valid += 1
    finally:
        for ds in datasets:
            ds.close()
    assert checked_valid > 50 and checked_empty > 10


def test_a_pixel_value_does_not_depend_on_the_window_it_is_read_in(tmp_path, rng):
    # Chunks are read with halos that overlap their neighbours: the shared pixels must agree,
    # also when downsampling (10 m -> 25 m) into another UTM zone.
    from scipy import ndimage

    z = ndimage.gaussian_filter(rng.normal(size=(300, 300)), 3).astype(np.float32) * 1000
    path = write_tif(tmp_path / "smooth.tif", z, from_origin(880_000, Y0, 10, 10),
                     descriptions=["DEM"])
    tr = Transformer.from_crs(UTM45, UTM46, always_xy=True)
    cx, cy = tr.transform(880_000 + 1500, Y0 - 1500)
    big = PixelGrid(UTM46, (25.0, 0.0, math.floor(cx / 25) * 25 - 1000, 0.0, -25.0,
                            math.floor(cy / 25) * 25 + 1000), 80, 80)
    src = GeoTIFFSource(path)
    whole = src.read(big, ["DEM"])
    for win in (Window(0, 0, 30, 30), Window(17, 23, 41, 29), Window(50, 50, 30, 30)):
        part = src.read(big.subgrid(win), ["DEM"])
        np.testing.assert_allclose(part.data, whole.data[:, win.toslices()[0],
                                                         win.toslices()[1]],
                                   atol=1e-4 * float(np.ptp(z)), equal_nan=True)
        assert part.valid.any()


@pytest.mark.parametrize("mask_zero", [False, True])
def test_aligned_fast_path_equals_the_warper(tmp_path, monkeypatch, mask_zero):
    """Files already on the target lattice skip the warper; the pixels must not change."""
    import rasterio as rio

    from pipelines.sources.geotiff import source as gt
    from pipelines.sources.geotiff.warp import aligned_offset

    rng = np.random.default_rng(11)
    data = rng.integers(1, 5000, (3, 60, 70)).astype("uint16")
    data[:, 5:9, 5:9] = 0  # all-zero pixels
    data[1, 20:25, 30:35] = 0  # one band's nodata only
    path = tmp_path / "aligned.tif"
    tr = (10.0, 0.0, 500000.0, 0.0, -10.0, 3100000.0)
    with rio.open(path, "w", driver="GTiff", width=70, height=60, count=3, dtype="uint16",
                  crs="EPSG:32645", transform=rio.Affine(*tr),
                  nodata=None if mask_zero else 0) as dst:
        dst.write(data)
        for i, b in enumerate(("B2", "B3", "B4"), 1):
            dst.set_band_description(i, b)
    # a grid shifted by whole pixels and hanging over two edges of the file
    grid = PixelGrid("EPSG:32645", (10.0, 0.0, 500000.0 - 30, 0.0, -10.0, 3100000.0 - 200), 50, 80)
    src = gt.GeoTIFFSource([str(path)], mask_zero_pixels=mask_zero)
    src.open()
    assert aligned_offset(src._dataset(str(path)), grid) == (20, -3)
    fast = src.read(grid, ["B2", "B3", "B4"])
    monkeypatch.setattr(gt, "aligned_offset", lambda ds, g: None)
    slow = gt.GeoTIFFSource([str(path)], mask_zero_pixels=mask_zero).read(grid, ["B2", "B3", "B4"])
    np.testing.assert_array_equal(fast.valid, slow.valid)
    np.testing.assert_array_equal(np.isnan(fast.data), np.isnan(slow.data))
    np.testing.assert_allclose(fast.data[:, fast.valid], slow.data[:, slow.valid], rtol=1e-7)
    assert fast.valid.any() and not fast.valid.all()

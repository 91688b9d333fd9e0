"""GeoTIFF reads: mosaic priority, declared scale/offset, file masks and all-zero pixels.

Validity and scaling checks read each file on its own grid (the aligned fast path, a
window read as is) and on the same pixels shifted by 1 mm (GDAL's warper): both must give
the file's pixels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipelines.geo.grid import PixelGrid
from pipelines.sources.factory import make_source
from pipelines.sources.geotiff import GeoTIFFSource, TerrainSource
from pipelines.sources.geotiff.warp import aligned_offset
from tests.sources.test_source_geotiff import (
    S2,
    UTM45,
    X0,
    Y0,
    grid_of,
    plane_dem,
    s2_dn,
    write_tif,
)

PATHS = ("aligned", "warped")


def grid_by_path(path: str, which: str) -> PixelGrid:
    """``path``'s own grid (``aligned``), or the same pixels 1 mm east (``warped``)."""
    g = grid_of(path)
    a, b, c, d, e, f = g.transform
    shifted = PixelGrid(g.crs, (a, b, c + 0.001, d, e, f), g.width, g.height)
    with rasterio.open(path) as ds:  # the two grids really take the two paths
        assert aligned_offset(ds, g) == (0, 0) and aligned_offset(ds, shifted) is None
    return g if which == "aligned" else shifted


def declare_scaling(path: str, scales: list[float], offsets: list[float]) -> None:
    """Set GDAL's band scale/offset of ``path`` in place (as ``gdal_edit.py -scale``)."""
    with rasterio.open(path, "r+") as ds:
        ds.scales, ds.offsets = scales, offsets


# ----------------------------------------------------------------------------- priority
def test_a_window_over_several_years_keeps_the_most_recent_years_pixel(tmp_path):
    for year, value in ((2019, 500), (2020, 1000), (2021, 2000)):
        dn = np.full((4, 8, 8), value, np.uint16)
        if year == 2021:
            dn[:, 2:5, 2:5] = 0  # no data in 2021: 2020 shows through
        write_tif(tmp_path / f"s2_{year}.tif", dn, from_origin(X0, Y0, 10, 10), nodata=0,
                  descriptions=S2)
    spec = {"kind": "geotiff", "images": [str(tmp_path / "s2_{year}.tif")]}
    src = make_source(spec, "2019-06-01", "2021-06-01")
    assert [Path(p).name for p in src.files] == ["s2_2021.tif", "s2_2020.tif", "s2_2019.tif"]
    r = src.read(grid_of(str(tmp_path / "s2_2021.tif")), ["B4"])
    expected = np.full((8, 8), 0.2, np.float32)
    expected[2:5, 2:5] = 0.1
    assert r.valid.all()
    np.testing.assert_allclose(r.data[0], expected, rtol=1e-6)
    # the description (a run's signature) follows the priority and is reproducible
    desc = src.describe()
    assert [Path(p).name for p in desc["files"]] == ["s2_2021.tif", "s2_2020.tif",
                                                    "s2_2019.tif"]
    assert desc == make_source(spec, "2019-06-01", "2021-06-01").describe()


# ----------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("which", PATHS)
def test_scale_and_offset_declared_by_the_file_are_applied(tmp_path, rng, which, caplog):
    # Sentinel-2 L2A of processing baseline 04.00: reflectance = DN * 1e-4 - 0.1
    dn = s2_dn(rng, 8, 8)
    l2a = write_tif(tmp_path / "l2a.tif", dn, from_origin(X0, Y0, 10, 10), descriptions=S2)
    declare_scaling(l2a, [1e-4] * 4, [-0.1] * 4)
    grid = grid_by_path(l2a, which)
    r = GeoTIFFSource(l2a, resampling="nearest").read(grid, S2)
    np.testing.assert_allclose(r.data, dn * 1e-4 - 0.1, atol=1e-6)
    # an explicit scale is what the caller says, whatever the file declares
    r = GeoTIFFSource(l2a, resampling="nearest", scale=1e-4).read(grid, ["B8"])
    np.testing.assert_allclose(r.data[0], dn[3] * 1e-4, rtol=1e-6)
    # a DEM stored as decimetres
    dm = rng.integers(10_000, 40_000, (8, 8)).astype(np.uint16)
    dem = write_tif(tmp_path / "dem.tif", dm, from_origin(X0, Y0, 10, 10),
                    descriptions=["DEM"])
    declare_scaling(dem, [0.1], [0.0])
    r = GeoTIFFSource(dem, resampling="nearest").read(grid, ["DEM"])
    np.testing.assert_allclose(r.data[0], dm * 0.1, rtol=1e-6)
    # float digital numbers that declare their scale are scaled, without a warning
    fdn = write_tif(tmp_path / "fdn.tif", dn.astype(np.float32), from_origin(X0, Y0, 10, 10),
                    descriptions=S2)
    declare_scaling(fdn, [1e-4] * 4, [0.0] * 4)
    with caplog.at_level(logging.WARNING, logger="pipelines.sources.geotiff"):
        r = GeoTIFFSource(fdn, resampling="nearest").read(grid, ["B4"])
    np.testing.assert_allclose(r.data[0], dn[0] * 1e-4, rtol=1e-6)
    assert "scale=1e-4" not in caplog.text


def test_declared_scaling_is_in_the_description_and_rereads_see_it(tmp_path, rng):
    dn = s2_dn(rng, 8, 8)
    path = write_tif(tmp_path / "s2.tif", dn, from_origin(X0, Y0, 10, 10), descriptions=S2)
    grid = grid_of(path)
    with GeoTIFFSource(path) as before:
        np.testing.assert_allclose(before.read(grid, ["B4"]).data[0], dn[0] * 1e-4, rtol=1e-6)
        assert "declared_scaling" not in before.describe()  # files declaring none: as before
        declare_scaling(path, [1e-4] * 4, [-0.1] * 4)  # the same file, tags rewritten
        with GeoTIFFSource(path) as after:  # the read cache must not answer the old values
            np.testing.assert_allclose(after.read(grid, ["B4"]).data[0], dn[0] * 1e-4 - 0.1,
                                       atol=1e-6)
            desc = after.describe()
    json.dumps(desc)
    assert desc["declared_scaling"] == {path: [[pytest.approx(1e-4), pytest.approx(-0.1)]] * 4}


def test_terrain_from_a_dem_in_decimetres_equals_terrain_from_metres(tmp_path):
    metres, _ = plane_dem(tmp_path)  # z at the 30 m pixel centres: whole half metres
    with rasterio.open(metres) as src:
        z = src.read(1)
    assert np.array_equal(z * 10, np.round(z * 10))
    dm = write_tif(tmp_path / "dem_dm.tif", np.round(z * 10).astype(np.uint16),
                   from_origin(X0, Y0, 30, 30))
    declare_scaling(dm, [0.1], [0.0])
    grid = PixelGrid(UTM45, (10.0, 0.0, X0 + 300, 0.0, -10.0, Y0 - 300), 32, 24)
    bands = ["DEM", "slope", "aspect"]
    a = TerrainSource(metres).read(grid, bands)
    b = TerrainSource(dm).read(grid, bands)
    assert a.valid.all() and b.valid.all()
    np.testing.assert_allclose(b.data, a.data, atol=1e-2)
    assert "declared_scaling" not in TerrainSource(metres).describe()
    assert TerrainSource(dm).describe()["declared_scaling"] == {dm: [[pytest.approx(0.1), 0.0]]}


# ----------------------------------------------------------------------------- masks
def write_masked(tmp_path: Path, kind: str) -> tuple[str, np.ndarray, str | None]:
    """An 8 x 8 file whose left half is masked (garbage under the mask), its mask and the
    band map it needs (an alpha band has no band name)."""
    valid = np.ones((8, 8), bool)
    valid[:, :4] = False
    dn = np.full((4, 8, 8), 1500, np.uint16)
    dn[:, :, :4] = 7
    dn[:, 6, 6] = 0  # an all-zero pixel where the mask says valid
    path = str(tmp_path / f"{kind}.tif")
    profile = dict(driver="GTiff", width=8, height=8, dtype="uint16", crs=UTM45,
                   transform=from_origin(X0, Y0, 10, 10))
    if kind == "alpha":
        with rasterio.open(path, "w", count=4, photometric="RGB", alpha="YES",
                           **profile) as dst:
            dst.write(dn[:3], [1, 2, 3])
            dst.write(np.where(valid, 65535, 0).astype(np.uint16), 4)
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=kind == "internal"), \
                rasterio.open(path, "w", count=4, **profile) as dst:
            dst.write(dn)
            dst.descriptions = S2
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    assert Path(path + ".msk").exists() == (kind == "sidecar")
    with rasterio.open(path) as ds:
        assert ds.nodata is None and "per_dataset" in {f.name for f in ds.mask_flag_enums[0]}
    return path, valid, "B4=1,B3=2,B2=3" if kind == "alpha" else None


@pytest.mark.parametrize("kind", ["internal", "sidecar", "alpha"])
@pytest.mark.parametrize("which", PATHS)
def test_pixels_the_files_mask_masks_are_invalid(tmp_path, kind, which):
    path, valid, band_map = write_masked(tmp_path, kind)
    grid = grid_by_path(path, which)
    for resampling in ("nearest", "bilinear"):
        r = GeoTIFFSource(path, band_map, resampling=resampling).read(grid, ["B4", "B2"])
        np.testing.assert_array_equal(r.valid, valid)
        assert np.isnan(r.data[:, ~valid]).all()
        np.testing.assert_allclose(r.data[:, 6, 6], 0.0, atol=1e-4)  # 1 mm: a 1e-4 blend
        r.data[:, 6, 6] = 0.15
        np.testing.assert_allclose(r.data[:, valid], 0.15, rtol=1e-3)
    # a nodata override adds missing pixels to the mask's, it does not replace them
    r = GeoTIFFSource(path, band_map, nodata=1500, resampling="nearest").read(grid, ["B4", "B2"])
    only = np.zeros((8, 8), bool)
    only[6, 6] = True  # 0: a value; 1500: missing; the left half: masked
    np.testing.assert_array_equal(r.valid, only)
    # all-zero pixels and the mask together (an alpha band is no band of the image)
    r = GeoTIFFSource(path, band_map, mask_zero_pixels=True,
                      resampling="nearest").read(grid, ["B3"])
    np.testing.assert_array_equal(r.valid, valid & ~only)


# ----------------------------------------------------------------------------- zeros
@pytest.mark.parametrize("nodata", [None, 9])
@pytest.mark.parametrize("which", PATHS)
def test_mask_zero_pixels_looks_at_every_band_of_the_file(tmp_path, rng, nodata, which):
    dn = s2_dn(rng, 8, 8)
    dn[0, :, :4] = 0  # B4 is 0 on the left half, the other bands are not: a real value
    dn[:, 0, :] = 0   # every band 0 on the top row: no data
    path = write_tif(tmp_path / "z.tif", dn, from_origin(X0, Y0, 10, 10), nodata=nodata,
                     descriptions=S2)
    grid = grid_by_path(path, which)
    expected = np.ones((8, 8), bool)
    expected[0] = False
    for bands in (["B4"], ["B4", "B8"], ["B8", "B2"], list(S2)):
        r = GeoTIFFSource(path, mask_zero_pixels=True, resampling="nearest").read(grid, bands)
        np.testing.assert_array_equal(r.valid, expected, err_msg=str(bands))
        want = dn[[S2.index(b) for b in bands]] * np.float32(1e-4)
        np.testing.assert_allclose(r.data[:, expected], want[:, expected], rtol=1e-6)
        assert np.isnan(r.data[:, 0]).all()

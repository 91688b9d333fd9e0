"""The one COG writer (pipelines.geo.cog): band scale/offset of quantised values."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import rasterio

from pipelines.errors import InputError
from pipelines.geo.cog import CATEGORICAL, CogProfile, band_scaling, write_cog
from pipelines.geo.grid import PixelGrid
from pipelines.geo.mosaic import merge_to_cog

GRID = PixelGrid("EPSG:32645", (10.0, 0.0, 300000.0, 0.0, -10.0, 3050000.0), 40, 30)
SCALE = 1.0 / 250.0


def _probabilities(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and their uint8 encoding (p * 250 rounded, 255 nodata)."""
    p = rng.random(GRID.shape)
    q = np.rint(p * 250).astype(np.uint8)
    q[:3, :5] = 255
    return p, q


def test_quantised_values_carry_gdal_band_scale_and_offset(tmp_path, rng):
    p, q = _probabilities(rng)
    path = write_cog(str(tmp_path / "prob.tif"), q, GRID, nodata=255, scales=[SCALE],
                     offsets=[0.0], profile=CogProfile(predictor=2), overviews=False)
    with rasterio.open(path) as src:
        assert src.scales == (pytest.approx(SCALE),) and src.offsets == (0.0,)
        assert "scale" not in src.tags()  # the scale is the band's, not a tag
        raw = src.read(1, masked=True)
        unscaled = raw.astype(np.float64) * src.scales[0] + src.offsets[0]
        assert band_scaling(src) == (pytest.approx(SCALE), 0.0)
    ok = ~raw.mask
    assert ok.sum() == q.size - 15
    # GDAL's unscaled value is the probability, within half a quantisation step
    assert np.abs(unscaled[ok] - p[ok]).max() <= 0.5 * SCALE + 1e-12


def test_band_scaling_reads_the_legacy_tag_and_defaults_to_identity(tmp_path, rng):
    _, q = _probabilities(rng)
    old = write_cog(str(tmp_path / "old.tif"), q, GRID, nodata=255, overviews=False,
                    tags={"scale": repr(SCALE), "units": "probability"})
    plain = write_cog(str(tmp_path / "plain.tif"), q, GRID, nodata=255, overviews=False)
    with rasterio.open(old) as a, rasterio.open(plain) as b:
        assert a.scales == (1.0,)  # written before the band scale: only the tag
        assert band_scaling(a) == (pytest.approx(SCALE), 0.0)
        assert band_scaling(b) == (1.0, 0.0)
    with pytest.raises(InputError, match="2 band scales for 1 bands"):
        write_cog(str(tmp_path / "bad.tif"), q, GRID, scales=[1.0, 2.0])


def test_merged_cogs_keep_the_scale_of_continuous_bands_only(tmp_path, rng):
    _, q = _probabilities(rng)
    left = PixelGrid(GRID.crs, GRID.transform, 20, 30)
    right = PixelGrid(GRID.crs, (10.0, 0.0, 300200.0, 0.0, -10.0, 3050000.0), 20, 30)
    files = [write_cog(str(tmp_path / f"{n}.tif"), q[:, s], g, nodata=255, overviews=False,
                       scales=[SCALE], offsets=[0.0])
             for n, s, g in (("l", np.s_[:20], left), ("r", np.s_[20:], right))]
    prob = merge_to_cog(str(tmp_path / "prob.tif"), files, 255.0)
    mask = merge_to_cog(str(tmp_path / "mask.tif"), files, 255.0, categorical=True)
    with rasterio.open(prob) as a, rasterio.open(mask) as b:
        np.testing.assert_array_equal(a.read(1), q)
        assert a.scales == (pytest.approx(SCALE),) and a.offsets == (0.0,)
        assert b.scales == (1.0,)  # classes are not scaled


@pytest.mark.skipif(shutil.which("gdal_translate") is None,
                    reason="Debian's gdal-bin is not installed")
def test_gdal_itself_unscales_to_probabilities(tmp_path, rng):
    """An independent GDAL (gdal-bin) turns the stored bytes into probabilities."""
    p, q = _probabilities(rng)
    path = write_cog(str(tmp_path / "prob.tif"), q, GRID, nodata=255, scales=[SCALE],
                     offsets=[0.0], profile=CATEGORICAL, overviews=False)
    out = tmp_path / "unscaled.tif"
    subprocess.run(["gdal_translate", "-q", "-unscale", "-ot", "Float32", path, str(out)],
                   check=True)
    with rasterio.open(out) as src:
        got = src.read(1)
    ok = q != 255
    assert got[ok].min() >= 0.0 and got[ok].max() <= 1.0
    assert np.abs(got[ok] - p[ok]).max() <= 0.5 * SCALE + 1e-6

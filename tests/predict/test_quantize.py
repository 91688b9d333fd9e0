"""The ``uint8`` probability COG agrees with the mask COG at the published threshold.

The mask is thresholded on the float probability; the COG stores codes that a reader
turns into probabilities with the band scale (0.004). Read that way and thresholded at
the model's threshold, the COG must give the mask, pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from pipelines.predict import PredictConfig, run_predict
from pipelines.predict.chunk import quantize_prob, threshold_codes
from pipelines.predict.config import NODATA_U8, PROB_SCALE
from tests.predict.conftest import TINY_N, write_tiny_image

THRESHOLDS = (0.5, 0.6, 0.3, 0.7, 0.123, 0.35, 0.999, 0.001, 0.5021)


def _read_as_gdal(codes: np.ndarray, scale: float = 1.0 / PROB_SCALE) -> np.ndarray:
    """Codes as a GDAL reader turns them into probabilities (float64)."""
    return codes.astype(np.float64) * scale


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_threshold_codes_are_the_codes_either_side_of_the_threshold(threshold):
    below, above = threshold_codes(threshold)
    assert above == below + 1
    assert _read_as_gdal(np.array([below]))[0] < threshold <= _read_as_gdal(np.array([above]))[0]


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_codes_read_with_the_scale_and_thresholded_give_the_mask(threshold):
    rng = np.random.default_rng(5)
    near = threshold + rng.uniform(-3, 3, 4000) / PROB_SCALE  # many around the threshold
    prob = np.clip(np.concatenate([near, rng.uniform(0, 1, 4000)]), 0, 1).astype(
        np.float32).reshape(80, 100)
    valid = rng.uniform(size=prob.shape) > 0.1
    prob[~valid] = np.nan
    mask = valid & (prob >= threshold)  # as blend_chunk makes it
    codes = quantize_prob(prob, valid, mask, threshold)
    assert codes.dtype == np.uint8
    assert (codes[~valid] == NODATA_U8).all() and (codes[valid] <= PROB_SCALE).all()
    np.testing.assert_array_equal(_read_as_gdal(codes[valid]) >= threshold, mask[valid])
    rounded = np.rint(prob[valid].astype(np.float64) * PROB_SCALE)
    assert np.abs(codes[valid] - rounded).max() <= 1  # at most one code moved


def test_the_probability_cog_read_with_its_scale_gives_the_mask_cog(tiny_scene, tmp_path):
    """A gradient of B8 around the model's p = 0.5 point: rounded, a pixel just below the
    threshold (p = 0.499) was stored as 125, which reads 0.5, in the mask."""
    rng = np.random.default_rng(3)
    b4 = 900 + rng.integers(0, 300, (TINY_N, TINY_N))
    b8 = np.full((TINY_N, TINY_N), 1500)
    b8[8:56, 8:56] = (2995 + np.arange(48) % 8)[None, :]  # DN 3000: p = 0.5
    tif = write_tiny_image(tmp_path / "s2.tif", b4, b8)
    out = tmp_path / "out"
    run = run_predict(PredictConfig(
        model=tiny_scene["thr"], out=str(out), aoi=tiny_scene["aoi"],
        source={"kind": "geotiff", "images": [str(tif)]}, start="2020-06-01",
        end="2020-09-30", chunk_size=32, retries=0))[0]
    threshold = run["model"]["threshold"]
    pairs = [(out / "mosaic" / "prob.tif", out / "mosaic" / "mask.tif")] + [
        (out / "prob" / f"{k}.tif", out / "mask" / f"{k}.tif")
        for k in ("32645_r21500_c1000", "32645_r21501_c1001")]
    for prob_path, mask_path in pairs:
        with rasterio.open(prob_path) as src:
            codes, scale, offset = src.read(1), src.scales[0], src.offsets[0]
            assert float(src.tags()["threshold"]) == threshold
        with rasterio.open(mask_path) as src:
            mask = src.read(1)
        ok = codes != NODATA_U8
        np.testing.assert_array_equal(ok, mask != NODATA_U8)
        user_mask = (codes * scale + offset >= threshold) & ok
        np.testing.assert_array_equal(user_mask, mask == 1)
    # the mask is the float probability's, as before: above DN 3000 in the gradient (at
    # DN 3000, p = 0.5 up to float32 rounding), not where rounding would put it (2999)
    with rasterio.open(out / "mosaic" / "mask.tif") as src:
        mosaic_mask = src.read(1) == 1
    assert not (mosaic_mask & (b8 < 3000)).any() and mosaic_mask[b8 > 3000].all()
    assert run["counts"]["landslide_px"] == int(mosaic_mask.sum()) > 0

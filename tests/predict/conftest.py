"""A tiny predict scene for the plan and finalize tests: 2 x 2 chunks, two models."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from pipelines.geo.grid import PixelGrid

TINY_LEFT, TINY_TOP, TINY_N = 320000.0, 3120000.0, 64  # UTM 45N, 2 x 2 chunks of 32 px
TINY_GRID = PixelGrid("EPSG:32645", (10.0, 0.0, TINY_LEFT, 0.0, -10.0, TINY_TOP),
                      TINY_N, TINY_N)
TINY_BANDS = ("B4", "B8")


def write_tiny_image(path, b4: np.ndarray, b8: np.ndarray) -> str:
    """Write B4/B8 digital numbers on :data:`TINY_GRID` as a 2-band uint16 GeoTIFF."""
    with rasterio.open(path, "w", driver="GTiff", width=TINY_N, height=TINY_N, count=2,
                       dtype="uint16", crs=TINY_GRID.crs, transform=TINY_GRID.affine,
                       nodata=0) as dst:
        dst.write(np.stack([b4, b8]).astype("uint16"))
        dst.descriptions = TINY_BANDS
    return str(path)


def _model(path: str, inner: bool) -> str:
    """``p = sigmoid(40 * (B8 - 0.3))`` per pixel; with ``inner``, through an identity
    layer that Grad-CAM can weigh (a different model id)."""
    import keras

    from model.artifact import save_artifact

    inp = keras.Input((None, None, len(TINY_BANDS)))
    x = keras.layers.Conv2D(2, 1, use_bias=False, name="enc0_relu2")(inp) if inner else inp
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid", name="score")(x))
    if inner:
        model.get_layer("enc0_relu2").set_weights([np.eye(2, dtype=np.float32)[None, None]])
    kernel = np.zeros((1, 1, 2, 1), np.float32)
    kernel[0, 0, 1, 0] = 40.0
    model.get_layer("score").set_weights([kernel, np.array([-40.0 * 0.3], np.float32)])
    save_artifact(model, path, TINY_BANDS, patch_size=32, size_multiple=1, threshold=0.5,
                  saved_model=False, training={"handcrafted": f"sigmoid, inner={inner}"})
    return path


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> dict:
    """B4/B8 DNs with one bright-B8 landslide across a chunk edge, its AOI, two models."""
    d = tmp_path_factory.mktemp("tiny_predict")
    rng = np.random.default_rng(17)
    b4 = 900 + rng.integers(0, 300, (TINY_N, TINY_N))
    b8 = 1500 + rng.integers(0, 900, (TINY_N, TINY_N))
    b8[20:30, 26:40] = 5000
    write_tiny_image(d / "s2.tif", b4, b8)
    side = TINY_N * 10.0
    gpd.GeoDataFrame(geometry=[box(TINY_LEFT + 1, TINY_TOP - side + 1, TINY_LEFT + side - 1,
                                   TINY_TOP - 1)], crs=TINY_GRID.crs).to_crs(4326).to_file(
        d / "aoi.geojson")
    return {"dir": d, "tif": str(d / "s2.tif"), "aoi": str(d / "aoi.geojson"),
            "thr": _model(str(d / "thr"), inner=False),
            "explainable": _model(str(d / "explainable"), inner=True)}

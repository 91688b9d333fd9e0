"""The U-Net: shapes, activations, normalisation, learning a toy task, safe-mode reload."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model import unet
from model.errors import ConfigError
from model.losses import get_loss
from model.metrics import landslide_metrics

BANDS = ("B4", "B8", "slope")
SMALL = {"base_filters": 4, "depth": 3}


def _toy_squares(rng: np.random.Generator, n: int = 16, size: int = 32):
    """Noise with one bright square per patch; the square is the landslide."""
    x = rng.normal(0.0, 1.0, size=(n, size, size, len(BANDS))).astype(np.float32)
    y = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        r, c = rng.integers(2, size - 10, 2)
        x[i, r:r + 8, c:c + 8, :2] += 3.0
        y[i, r:r + 8, c:c + 8] = 1
    return x * 0.1 + 0.2, y  # reflectance-like values; normalisation undoes the scaling


def test_binary_and_multiclass_outputs(rng):
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    binary = unet.build_unet(BANDS, **SMALL)
    prob = binary.predict(x, verbose=0)
    assert prob.shape == (2, 32, 32, 1)
    assert ((prob > 0) & (prob < 1)).all()
    assert binary.get_layer("probability").get_config()["activation"] == "sigmoid"
    three = unet.build_unet(BANDS, n_classes=3, **SMALL)
    probs = three.predict(x, verbose=0)
    assert probs.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert three.get_layer("probability").get_config()["activation"] == "softmax"


def test_fully_convolutional_on_multiples_of_the_pooling(rng):
    model = unet.build_unet(BANDS, **SMALL)
    assert model.input_shape == (None, None, None, 3)
    assert unet.size_multiple(3) == 4
    out = model.predict(rng.random((1, 44, 24, 3), dtype=np.float32), verbose=0)
    assert out.shape == (1, 44, 24, 1)


def test_architecture_depth_and_width():
    default = unet.build_unet(BANDS)
    convs = [layer for layer in default.layers if isinstance(layer, keras.layers.Conv2D)
             and not isinstance(layer, keras.layers.Conv2DTranspose)]
    encoder = [c for c in convs if c.name.startswith("enc")]
    assert len(encoder) == 10  # 5 blocks x 2 convolutions
    assert [c.filters for c in encoder[::2]] == [16, 32, 64, 128, 256]
    assert sum(isinstance(layer, keras.layers.Conv2DTranspose) for layer in default.layers) == 4
    counts = [unet.build_unet(BANDS, base_filters=f, depth=3).count_params() for f in (4, 8, 16)]
    assert counts[0] < counts[1] < counts[2]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in default.layers)


def test_stem_mixes_each_pixel_on_its_own_before_the_first_block(rng):
    plain = unet.build_unet(BANDS, **SMALL)
    model = unet.build_unet(BANDS, stem=(6, 5), **SMALL)
    first, second = model.get_layer("enc_stem0_conv"), model.get_layer("enc_stem1_conv")
    assert first.kernel_size == second.kernel_size == (1, 1)
    assert (first.filters, second.filters) == (6, 5)
    assert model.get_layer("enc0_conv1").kernel.shape == (3, 3, 5, 4)  # reads the stem
    # weights added: two 1x1 convolutions and their batch norms; enc0_conv1 reads 5
    # channels instead of the 3 bands
    stem = 3 * 6 + 4 * 6 + 6 * 5 + 4 * 5
    assert model.count_params() == plain.count_params() + stem + 3 * 3 * (5 - 3) * 4
    assert {"enc_stem0_conv", "enc_stem1_bn"} <= {
        layer.name for layer in unet.encoder_layers(model)}  # frozen with the encoder
    # per pixel: changing one input pixel changes the stem's output at that pixel only
    out = keras.Model(model.input, model.get_layer("enc_stem1_relu").output)
    x = rng.random((1, 8, 8, 3), dtype=np.float32)
    y = x.copy()
    y[0, 3, 4] += 5.0
    diff = np.abs(out.predict(y, verbose=0) - out.predict(x, verbose=0)).sum(-1)[0]
    assert diff[3, 4] > 0
    diff[3, 4] = 0
    assert not diff.any()


def test_normalisation_inside_the_model(rng):
    mean, std = [0.1, 0.3, 20.0], [0.05, 0.1, 8.0]
    model = unet.build_unet(BANDS, mean=mean, std=std, **SMALL)
    norm = model.get_layer(unet.NORMALIZATION_LAYER)
    np.testing.assert_allclose(np.ravel(norm.mean), mean, rtol=1e-6)
    np.testing.assert_allclose(np.ravel(norm.variance), np.square(std), rtol=1e-6)
    assert norm.compute_dtype == "float32"  # also under mixed precision
    x = rng.random((1, 8, 8, 3), dtype=np.float32) * 30
    normalised = keras.Model(model.input, norm.output).predict(x, verbose=0)
    np.testing.assert_allclose(normalised, (x - mean) / std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 30}, "multiple of 4"),
        ({"mean": [0, 0, 0]}, "both mean and std"),
        ({"mean": [0, 0], "std": [1, 1]}, "2 values for 3 bands"),
        ({"mean": [0, 0, 0], "std": [1, 0, 1]}, "positive"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_classes": 0}, "n_classes"),
        ({"stem": (8, 0)}, "stem"),
        ({"stem": (8.5,)}, "stem"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        unet.build_unet(BANDS, **{**SMALL, **kwargs})


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_trains_on_a_toy_task_and_reloads_in_safe_mode(rng, tmp_path):
    keras.utils.set_random_seed(7)
    x, y = _toy_squares(rng)
    stats_mean = x.reshape(-1, 3).mean(0)
    stats_std = x.reshape(-1, 3).std(0)
    model = unet.build_unet(BANDS, base_filters=8, depth=3, mean=stats_mean, std=stats_std,
                            patch_size=32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=get_loss("bce_dice"),
                  metrics=landslide_metrics())
    # Training-mode loss and F1: 12 steps are too few for batch-norm moving statistics.
    history = model.fit(x, y, epochs=6, batch_size=8, verbose=0).history
    assert history["loss"][-1] < 0.75 * history["loss"][0]
    assert history["f1"][-1] > 0.6 > history["f1"][0]

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert type(loaded.loss).__name__ == "BceDiceLoss"
    after = model.evaluate(x, y, verbose=0, return_dict=True)
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(after)

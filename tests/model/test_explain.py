"""Grad-CAM (issue 19) where the answer is known, on every backbone, and through the CLI.

The known answers come from models whose weights are set by hand: two input channels,
each with a bright square in its own quadrant, and a score that reads only the first
channel. Grad-CAM must light the first channel's square and leave the other one dark,
although both are equally bright in the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import rasterio
import tensorflow as tf
from rasterio.transform import from_origin

from model.artifact import save_artifact
from model.classify.backbones import build_classifier
from model.errors import ConfigError
from model.explain import explain, explain_classifier, explain_segmentation, find_layer
from model.unet import build_unet
from pipelines.cli import main

SIZE = 32
HALF = SIZE // 2
TRANSFORM = from_origin(300000.0, 3100000.0, 10.0, 10.0)


def two_squares(n: int = 1) -> np.ndarray:
    """Channel 0: a square in the top-left quadrant; channel 1: one in the bottom-right."""
    x = np.zeros((n, SIZE, SIZE, 2), np.float32)
    x[:, 4:12, 3:11, 0] = 1.0
    x[:, 20:28, 21:29, 1] = 1.0
    return x


def hand_classifier() -> keras.Model:
    """Identity feature maps; the logit reads the mean of channel 0 only."""
    inp = keras.Input((SIZE, SIZE, 2), name="image")
    feat = keras.layers.Conv2D(2, 1, use_bias=False, name="features")(inp)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(feat)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    prob = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(inp, prob)
    model.get_layer("features").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    model.get_layer("logit").set_weights([np.array([[40.0], [0.0]], np.float32),
                                          np.array([-1.0], np.float32)])
    return model


def hand_segmenter() -> keras.Model:
    """Identity feature maps named as a U-Net encoder; P(landslide) reads channel 0 only."""
    inp = keras.Input((None, None, 2), name="image")
    feat = keras.layers.Conv2D(2, 1, use_bias=False, name="enc0_relu2")(inp)
    logit = keras.layers.Conv2D(1, 1, name="head")(feat)
    prob = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(inp, prob)
    model.get_layer("enc0_relu2").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    model.get_layer("head").set_weights([np.array([10.0, 0.0], np.float32).reshape(1, 1, 2, 1),
                                         np.array([-5.0], np.float32)])
    return model


def quadrant_mass(cam: np.ndarray) -> dict[str, float]:
    total = float(cam.sum()) or 1.0
    return {"top_left": float(cam[:HALF, :HALF].sum()) / total,
            "bottom_right": float(cam[HALF:, HALF:].sum()) / total}


# ----------------------------------------------------------------------------- known answers
def test_classifier_gradcam_lights_the_square_that_drives_the_score_and_not_the_other():
    model = hand_classifier()
    exp = explain_classifier(model, two_squares(2))
    assert exp.layer == "features"  # found: the last feature map before the pooling
    cam = exp.cams[0]
    mass = quadrant_mass(cam)
    assert mass["top_left"] > 0.99 and mass["bottom_right"] == 0.0
    assert cam[4:12, 3:11].mean() > 20 * cam[HALF:, HALF:].mean() + 1e-9
    assert cam[4:12, 3:11].min() > 0  # the whole square, not a corner of it
    expected_p = 1.0 / (1.0 + np.exp(-(40.0 * 64 / SIZE ** 2 - 1.0)))
    assert exp.probability[0] == pytest.approx(expected_p, rel=1e-5)
    np.testing.assert_allclose(exp.normalized.max(axis=(1, 2)), 1.0)
    # explaining the other class: nothing speaks for "not a landslide" here
    other = explain_classifier(model, two_squares(), target="non_landslide")
    assert other.cams.max() == 0.0 and other.scores[0] == pytest.approx(-(40 * 64 / 1024 - 1))


def test_segmentation_gradcam_lights_the_square_that_drives_the_prediction():
    model = hand_segmenter()
    exp = explain(model, two_squares(), threshold=0.5)
    assert exp.layer == "enc0_relu2"
    assert exp.probability.shape == (1, SIZE, SIZE)
    predicted = exp.probability[0] >= 0.5
    assert predicted[4:12, 3:11].all() and predicted.sum() == 64
    mass = quadrant_mass(exp.cams[0])
    assert mass["top_left"] > 0.99 and mass["bottom_right"] == 0.0
    # a region holding the square gives the same map; the score is the region's summed P
    box = np.zeros((SIZE, SIZE), bool)
    box[:HALF, :HALF] = True
    region = explain(model, two_squares(), region=box)
    assert quadrant_mass(region.cams[0])["top_left"] > 0.99
    assert region.scores[0] == pytest.approx(float(exp.probability[0][box].sum()), rel=1e-4)


def test_a_region_or_layer_that_does_not_fit_is_refused():
    model = hand_segmenter()
    with pytest.raises(ConfigError, match="region of shape"):
        explain_segmentation(model, two_squares(), region=np.ones((8, 8), bool))
    with pytest.raises(ConfigError, match=r"no layer 'nope'.*enc0_relu2"):
        find_layer(model, "nope")
    with pytest.raises(ConfigError, match="takes 2 band"):
        explain(model, np.zeros((1, SIZE, SIZE, 3), np.float32))


# ----------------------------------------------------------------------------- every model
@pytest.mark.parametrize("name, layer", [
    ("baseline", "block3_relu2"), ("MobileNetV2", "out_relu"),
    ("EfficientNetB3", "top_activation"), ("ResNet50", "conv5_block3_out"),
    ("DenseNet121", "relu"),
    pytest.param("NASNetLarge", None, marks=pytest.mark.slow),
])
def test_gradcam_works_for_every_backbone(name, layer):
    keras.utils.set_random_seed(0)
    model = build_classifier(name, ["red", "green", "blue", "B8"], SIZE, [0.0] * 4, [1.0] * 4,
                             baseline_filters=8)
    assert find_layer(model) == (layer or find_layer(model))
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 4)).astype(np.float32)
    exp = explain(model, x)
    assert exp.cams.shape == (2, SIZE, SIZE) and np.isfinite(exp.cams).all()
    assert (exp.cams >= 0).all() and exp.probability.shape == (2,)
    np.testing.assert_allclose(exp.probability, model.predict(x, verbose=0)[:, 0], rtol=1e-4,
                               atol=1e-5)


def test_gradcam_of_the_unet_pads_to_its_size_multiple_and_crops_back():
    keras.utils.set_random_seed(0)
    model = build_unet(["B4", "B8"], base_filters=4, depth=3, mean=[0.0, 0.0], std=[1.0, 1.0])
    assert find_layer(model) == "enc2_relu2"  # the bottleneck
    x = np.random.default_rng(1).normal(size=(1, 30, 26, 2)).astype(np.float32)
    exp = explain(model, x, threshold=0.0, size_multiple=4)  # every pixel "predicted"
    assert exp.cams.shape == exp.probability.shape == (1, 30, 26)
    assert np.isfinite(exp.cams).all() and exp.cams.max() > 0
    padded = np.pad(x, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="reflect")
    np.testing.assert_allclose(exp.probability[0],
                               model.predict(padded, verbose=0)[0, :30, :26, 0], atol=1e-5)


def test_unet_gradcam_without_a_region_leaves_the_padding_out_of_the_score():
    """Padded to its size multiple, the image's predicted pixels are explained, not the
    mirrored rows and columns: the default is the region of the whole image."""
    keras.utils.set_random_seed(0)
    model = build_unet(["B4", "B8"], base_filters=4, depth=3, mean=[0.0, 0.0], std=[1.0, 1.0])
    x = np.random.default_rng(1).normal(size=(2, 30, 26, 2)).astype(np.float32)
    auto = explain(model, x, threshold=0.0, size_multiple=4)  # every pixel "predicted"
    whole = explain(model, x, region=np.ones((30, 26), bool), size_multiple=4)
    np.testing.assert_allclose(auto.scores, auto.probability.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(auto.scores, whole.scores, rtol=1e-5)
    np.testing.assert_allclose(auto.cams, whole.cams, rtol=1e-4, atol=1e-7)
    # with a threshold, only the image's own pixels above it count
    thr = float(np.median(auto.probability))
    some = explain(model, x, threshold=thr, size_multiple=4)
    expected = np.where(some.probability >= thr, some.probability, 0.0).sum(axis=(1, 2))
    np.testing.assert_allclose(some.scores, expected, rtol=1e-5)
    # explain_segmentation's valid mask applies to a region as well
    padded = np.pad(x, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="reflect")
    valid = np.zeros((32, 28), bool)
    valid[:30, :26] = True
    boxed = explain_segmentation(model, padded, region=np.ones((32, 28), bool), valid=valid)
    np.testing.assert_allclose(boxed.scores, whole.scores, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"valid mask of shape \(30, 26\)"):
        explain_segmentation(model, padded, valid=np.ones((30, 26), bool))


# ----------------------------------------------------------------------------- CLI
def _geotiff(path: Path, pixels: np.ndarray, names: tuple[str, ...]) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[1],
                       height=pixels.shape[0], count=pixels.shape[2], dtype="float32",
                       crs="EPSG:32645", transform=TRANSFORM) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
        dst.descriptions = names
    return path


def test_explain_cli_writes_an_overlay_and_a_georeferenced_cog(tmp_path, capsys):
    art = tmp_path / "classifier"
    save_artifact(hand_classifier(), str(art), ("a", "b"), SIZE, mean=[0.0, 0.0],
                  std=[1.0, 1.0], classes={"non_landslide": 0, "landslide": 1},
                  saved_model=False, extra={"task": "classification", "backbone": "hand"})
    image = _geotiff(tmp_path / "scene.tif", two_squares()[0], ("a", "b"))
    out = tmp_path / "explained"
    assert main(["explain", "--model", str(art), "--input", str(image), "--out",
                 str(out)]) == 0
    index = json.loads((out / "explanations.json").read_text())
    entry = index["items"][0]
    assert index["task"] == "classification" and index["layer"] == "features"
    assert entry["predicted"] == "landslide" and entry["probability"] > 0.5
    assert (out / "scene.png").stat().st_size > 1000
    with rasterio.open(out / "scene.tif") as src:
        assert src.crs.to_string() == "EPSG:32645" and src.transform == TRANSFORM
        assert src.tags()["layer"] == "features" and src.descriptions == ("gradcam",)
        heat = src.read(1)
    assert heat.max() == pytest.approx(1.0)
    assert quadrant_mass(heat)["top_left"] > 0.99 and heat[HALF:, HALF:].max() == 0.0
    assert "P(landslide)" in capsys.readouterr().out


def test_explain_cli_for_the_unet_with_a_region_and_refusals(tmp_path, capsys):
    art = tmp_path / "unet"
    save_artifact(hand_segmenter(), str(art), ("a", "b"), SIZE, mean=[0.0, 0.0],
                  std=[1.0, 1.0], size_multiple=1, saved_model=False)
    # a 3-band image whose bands are named: the model's two are picked by name
    three = np.concatenate([two_squares()[0][..., ::-1], np.ones((SIZE, SIZE, 1))], axis=-1)
    image = _geotiff(tmp_path / "scene.tif", three.astype(np.float32), ("b", "a", "c"))
    out = tmp_path / "explained"
    assert main(["explain", "--model", str(art), "--input", str(image), "--out", str(out),
                 "--region", f"0,0,{HALF},{HALF}"]) == 0
    entry = json.loads((out / "explanations.json").read_text())["items"][0]
    assert entry["predicted_px"] == 64 and entry["region"] == [0, 0, HALF, HALF]
    with rasterio.open(out / "scene.tif") as src:
        assert quadrant_mass(src.read(1))["top_left"] > 0.99
    capsys.readouterr()
    bad = _geotiff(tmp_path / "other.tif", np.zeros((SIZE, SIZE, 2), np.float32), ("x", "y"))
    assert main(["explain", "--model", str(art), "--input", str(bad), "--out",
                 str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "['x', 'y']" in err and "['a', 'b']" in err
    assert main(["explain", "--model", str(art), "--input", str(image), "--out",
                 str(tmp_path / "o3"), "--region", "0,0,99,99"]) == 2
    assert "outside the 32 x 32 px image" in capsys.readouterr().err


def test_explain_cli_on_the_patches_of_an_export(tmp_path, capsys):
    """An export as --input: up to --limit patches, landslide-richest first, each with a
    COG on the patch's own grid."""
    from model.schema import decode_patch
    from tests.model.test_data import BANDS, TRANSFORM, write_shards

    written = write_shards(tmp_path / "shards", {"test": 6})
    keras.utils.set_random_seed(0)
    art = tmp_path / "unet"
    save_artifact(build_unet(list(BANDS), 4, 3, mean=[0.2, 0.2, 25.0], std=[0.1, 0.1, 8.0]),
                  str(art), BANDS, SIZE, mean=[0.2, 0.2, 25.0], std=[0.1, 0.1, 8.0],
                  size_multiple=4, saved_model=False)
    out = tmp_path / "explained"
    assert main(["explain", "--model", str(art), "--input", str(tmp_path / "shards"),
                 "--limit", "3", "--threshold", "0.01", "--out", str(out)]) == 0
    items = json.loads((out / "explanations.json").read_text())["items"]
    assert len(items) == 3 and index_layer(out) == "enc2_relu2"
    shares = sorted((((m > 0) & (m != 255)).sum() / (m != 255).sum() for _, m in
                     written["test"]), reverse=True)
    keys = {}
    for f in sorted((tmp_path / "shards" / "test").glob("*.gz")):
        for rec in tf.data.TFRecordDataset(str(f), compression_type="GZIP"):
            p = decode_patch(rec.numpy())
            keys[p.key.replace("/", "_")] = ((p.mask > 0) & (p.mask != 255)).sum() / (
                p.mask != 255).sum()
    assert [keys[e["name"]] for e in items] == pytest.approx(shares[:3])
    for e in items:
        with rasterio.open(e["cog"]) as src:
            assert tuple(src.transform)[:6] == TRANSFORM and src.shape == (SIZE, SIZE)


def index_layer(out: Path) -> str:
    return json.loads((out / "explanations.json").read_text())["layer"]

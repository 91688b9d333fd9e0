"""Image classifiers (issue 19): backbones, pretrained weights, data, schedule, scores, CLI.

Tiny real data: 32 x 32 images whose landslides are a bright square, written as png and
GeoTIFF with rasterio; real keras.applications backbones built at 32 px; the CLI run as a
user runs it. Pretrained weights are files written here (the internet is not reachable):
a 3-band backbone built with ``weights=None``, its weights saved.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from model.artifact import load_artifact, save_artifact
from model.classify.backbones import (
    _fold_rescaling,
    backbone_layers,
    build_classifier,
    input_range,
    normalization_layer,
    resolve_backbone,
    rgb_bands,
)
from model.classify.config import ClassifyConfig
from model.classify.data import load_data, read_image
from model.classify.evaluation import classification_scores, roc_auc
from model.errors import ConfigError
from pipelines.cli import main
from tests.model.test_data import BANDS, write_shards

SIZE = 32
TRANSFORM = from_origin(300000.0, 3100000.0, 10.0, 10.0)


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def write_image(path: Path, pixels: np.ndarray, names: tuple[str, ...] | None = None) -> None:
    """``(bands, h, w)`` uint8 pixels as png, or as a georeferenced GeoTIFF (.tif)."""
    tif = path.suffix == ".tif"
    profile = {"driver": "GTiff" if tif else "PNG", "width": pixels.shape[2],
               "height": pixels.shape[1], "count": pixels.shape[0], "dtype": pixels.dtype}
    if tif:
        profile.update(crs="EPSG:32645", transform=TRANSFORM)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
        if names:
            dst.descriptions = names


def square_image(rng: np.random.Generator, landslide: bool, bands: int = 3) -> np.ndarray:
    """Noise; a landslide image has a bright 8 x 8 square somewhere."""
    img = rng.normal(90, 12, (bands, SIZE, SIZE))
    if landslide:
        r, c = rng.integers(0, SIZE - 8, 2)
        img[:, r:r + 8, c:c + 8] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root: Path, n: int = 16, seed: int = 0, split: str | None = None) -> Path:
    """``root/[split/]{landslide,non_landslide}/`` with png and GeoTIFF images."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for cls in ("landslide", "non_landslide"):
        (base / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext = ".tif" if i % 2 else ".png"
            write_image(base / cls / f"{i:03d}{ext}", square_image(rng, cls == "landslide"),
                        ("red", "green", "blue") if ext == ".tif" else None)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_folder(root, 16, seed=0, split="train")
    write_folder(root, 6, seed=1, split="val")
    write_folder(root, 8, seed=2, split="test")
    return root


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory) -> Path:
    """Two backbones trained by one command (the baseline learns the squares)."""
    out = tmp_path_factory.mktemp("classifiers")
    assert main(["classify-train", "--data", str(images), "--out", str(out), "--backbone",
                 "baseline", "--backbone", "mobilenetv2", "--weights", "none", "--epochs", "6",
                 "--batch-size", "8", "--baseline-filters", "8", "--no-saved-model",
                 "--patience", "0"]) == 0
    return out


# ----------------------------------------------------------------------------- backbones
def test_backbones_are_any_keras_application_by_name():
    assert resolve_backbone("efficientnetb3") == "EfficientNetB3"
    assert resolve_backbone("NASNetLarge") == "NASNetLarge"
    assert resolve_backbone("ConvNeXtTiny") == "ConvNeXtTiny"  # not among the study's six
    assert resolve_backbone("Baseline") == "baseline"
    with pytest.raises(ConfigError, match=r"'ResNet51'.*did you mean ResNet50"):
        resolve_backbone("ResNet51")


@pytest.mark.parametrize("name, position, scale, offset", [
    ("ResNet50", (2, 1, 0), (1.0, 1.0, 1.0), (-123.68, -116.779, -103.939)),  # caffe: BGR
    ("MobileNetV2", (0, 1, 2), (1 / 127.5,) * 3, (-1.0,) * 3),  # tf: [-1, 1]
    ("EfficientNetB3", (0, 1, 2), (1.0,) * 3, (0.0,) * 3),  # preprocessing inside the model
])
def test_input_range_is_read_off_preprocess_input(name, position, scale, offset):
    pos, s, o = input_range(name)
    assert pos == position
    np.testing.assert_allclose(s, scale, rtol=1e-6)
    np.testing.assert_allclose(o, offset, rtol=1e-4, atol=1e-6)


def test_normalization_gives_the_backbone_imagenet_like_pixels():
    """Data at mean + k std reach ResNet50 as preprocess_input(ImageNet mean + k std)."""
    bands = ["B2", "B3", "B4", "B8"]
    mean, std = [0.05, 0.07, 0.09, 0.3], [0.01, 0.02, 0.03, 0.1]
    layer = normalization_layer("ResNet50", mean, std, rgb_bands(bands))
    k = np.array([-1.5, 0.0, 2.0])
    x = np.array(mean)[None, :] + k[:, None] * np.array(std)[None, :]
    out = np.asarray(layer(x[:, None, None, :].astype("float32")))[:, 0, 0, :]
    rgb_pixels = np.array([123.675, 116.28, 103.53]) + k[:, None] * np.array([58.395, 57.12,
                                                                            57.375])
    expected = keras.applications.resnet50.preprocess_input(
        rgb_pixels[:, None, None, :].copy())[:, 0, 0, :]  # BGR order, mean-subtracted
    np.testing.assert_allclose(out[:, 2], expected[:, 2], rtol=1e-4, atol=1e-3)  # B4: red
    np.testing.assert_allclose(out[:, 0], expected[:, 0], rtol=1e-4, atol=1e-3)  # B2: blue
    # the extra band is mapped like the mean of the three colours
    gain = np.mean([58.395, 57.12, 57.375])
    shift = np.mean(np.array([123.675, 116.28, 103.53]) - np.array([123.68, 116.779, 103.939]))
    np.testing.assert_allclose(out[:, 3], k * gain + shift, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name, stem", [("MobileNetV2", "Conv1"), ("ResNet50", "conv1_conv"),
                                        ("EfficientNetB0", "stem_conv")])
def test_multispectral_input_takes_the_rgb_filters_and_their_mean(name, stem, tmp_path):
    ref = getattr(keras.applications, name)(include_top=False, weights=None,
                                            input_shape=(SIZE, SIZE, 3))
    path = str(tmp_path / f"{name}.weights.h5")
    ref.save_weights(path)
    bands = ["B2", "B3", "B4", "B8", "B11"]
    model = build_classifier(name, bands, SIZE, [0.1] * 5, [0.05] * 5, weights=path)
    kernel = model.get_layer(stem).get_weights()[0]
    theirs = ref.get_layer(stem).get_weights()[0]
    red, green, blue = input_range(name)[0]  # where each colour sits in the backbone's input
    np.testing.assert_array_equal(kernel[:, :, 2], theirs[:, :, red])  # B4
    np.testing.assert_array_equal(kernel[:, :, 1], theirs[:, :, green])  # B3
    np.testing.assert_array_equal(kernel[:, :, 0], theirs[:, :, blue])  # B2
    for extra in (3, 4):  # B8, B11: the mean of the pretrained RGB filters
        np.testing.assert_allclose(kernel[:, :, extra], theirs.mean(axis=2), rtol=1e-6)
    # every later layer holds the file's weights unchanged
    ours = {layer.name: layer for layer in backbone_layers(model)}
    deep = [lyr for lyr in ref.layers if lyr.weights][-3:]
    for layer in deep:
        for a, b in zip(layer.get_weights(), ours[layer.name].get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_per_channel_rescaling_folds_into_the_normalization():
    """What EfficientNet's ImageNet-only Rescaling becomes in a multispectral model."""
    norm = keras.layers.Normalization(axis=-1)
    norm.build((None, 2, 2, 4))
    norm.set_weights([np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 1.0, 9.0, 16.0]),
                      np.array(0)])
    norm.finalize_state()
    rescale = keras.layers.Rescaling([0.5, 2.0, 3.0], offset=[0.1, 0.2, 0.3])
    channel_map = [2, 0, 1, -1]
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 4)).astype("float32")
    scale = np.array([3.0, 0.5, 2.0, np.mean([0.5, 2.0, 3.0])])
    offset = np.array([0.3, 0.1, 0.2, 0.2])
    expected = np.asarray(norm(x)) * scale + offset
    _fold_rescaling(rescale, norm, channel_map)
    np.testing.assert_allclose(np.asarray(norm(x)), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_weights_that_cannot_be_downloaded_name_the_file_and_the_ways_out(
        monkeypatch):
    from model.classify.backbones import keras_home

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a refused connection, always
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    if os.path.exists(os.path.join(keras_home(), "models", name)):
        pytest.skip("the ImageNet file is already in Keras' cache: nothing is downloaded")
    with pytest.raises(ConfigError) as exc:
        build_classifier("MobileNetV2", ["red", "green", "blue"], 96, [0.0] * 3, [1.0] * 3,
                         weights="imagenet")
    text = str(exc.value)
    assert os.path.join(keras_home(), "models", name) in text
    assert "--weights PATH" in text and "--weights none" in text


def test_pretrained_weights_need_rgb_bands(tmp_path):
    with pytest.raises(ConfigError, match=r"--rgb"):
        build_classifier("MobileNetV2", ["VV", "VH", "DEM"], SIZE, [0.0] * 3, [1.0] * 3,
                         weights=str(tmp_path / "w.weights.h5"))
    with pytest.raises(ConfigError, match=r"rgb names band\(s\) \['B9'\]"):
        rgb_bands(["B2", "B3", "B4"], ["B4", "B3", "B9"])
    with pytest.raises(ConfigError, match="does not exist"):
        build_classifier("MobileNetV2", ["red", "green", "blue"], SIZE, [0.0] * 3,
                         [1.0] * 3, weights=str(tmp_path / "missing.weights.h5"))


# ----------------------------------------------------------------------------- scores
def test_roc_auc_is_the_share_of_correctly_ordered_pairs(rng):
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # ties count one half
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairs)
    assert np.isnan(roc_auc(np.ones(4), np.arange(4)))


def test_classification_scores_count_the_confusion():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5, 0.8])
    s = classification_scores(labels, probs, 0.55)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (3, 1, 1, 3)
    assert s["accuracy"] == 0.75 and s["precision"] == 0.75 and s["recall"] == 0.75
    assert s["specificity"] == 0.75 and s["f1"] == 0.75
    assert s["confusion_matrix"]["matrix"] == [[3, 1], [1, 3]]
    assert s["roc_auc"] == pytest.approx(12 / 16)  # 12 of 16 pairs ordered right


# ----------------------------------------------------------------------------- data
def test_image_folders_read_png_and_geotiff_and_split_per_class(tmp_path):
    root = write_folder(tmp_path / "flat", n=10)
    data = load_data(str(root), val_fraction=0.2, seed=3)
    assert data.kind == "images" and data.bands == ("red", "green", "blue")
    train, val = data.split("train"), data.split("val")
    assert (train.count, train.positives, val.count, val.positives) == (16, 8, 4, 2)
    assert not set(train.ids) & set(val.ids)
    img = read_image(str(root / "landslide" / "001.tif"))
    assert img.crs == "EPSG:32645" and img.transform == tuple(TRANSFORM)[:6]
    assert read_image(str(root / "landslide" / "000.png")).crs == ""
    x, _ = next(iter(train.dataset(32, False, 0)))
    assert x.shape == (16, SIZE, SIZE, 3)
    np.testing.assert_allclose(np.mean(x, axis=(0, 1, 2)), data.mean, rtol=1e-3)
    # Keras drops the iterator every epoch: no autotuning thread to join (model.data)
    assert train.dataset(4, True, 0).options().autotune.enabled is False


def test_bad_image_folders_say_what_is_wrong_and_what_to_do(tmp_path):
    root = write_folder(tmp_path / "one", n=4)
    for f in (root / "non_landslide").iterdir():
        f.unlink()
    (root / "non_landslide").rmdir()
    with pytest.raises(ConfigError, match=r"lacks the class folder\(s\) \['non_landslide'\]"):
        load_data(str(root))
    mixed = write_folder(tmp_path / "mixed", n=4)
    odd = mixed / "landslide" / "odd.tif"
    write_image(odd, np.zeros((5, SIZE, SIZE), np.uint8))
    with pytest.raises(ConfigError) as exc:
        load_data(str(mixed))
    assert str(odd) in str(exc.value) and "5 band(s)" in str(exc.value)
    assert "same bands" in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither an image folder"):
        load_data(str(tmp_path / "empty"))


def constant_image(values: tuple[float, ...], side: int = 8) -> np.ndarray:
    """``(bands, side, side)`` float32, band ``i`` holding ``values[i]`` everywhere."""
    return np.stack([np.full((side, side), v, np.float32) for v in values])


def test_geotiff_bands_are_picked_by_name_in_the_order_asked_for(tmp_path):
    """A GeoTIFF storing B2, B3, B4 scored by a model of B4, B3, B2 gives B4 first; one
    without B4 is refused by name; an undescribed one is taken by its band count."""
    root = tmp_path / "scoring"
    for cls in ("landslide", "non_landslide"):
        (root / cls).mkdir(parents=True)
        write_image(root / cls / "a.tif", constant_image((2.0, 3.0, 4.0)), ("B2", "B3", "B4"))
    write_image(root / "landslide" / "b.tif", constant_image((4.5, 3.5, 2.5)))  # unnamed
    data = load_data(str(root), image_size=8, bands=("B4", "B3", "B2"), augment=False,
                     scoring=True)
    x, _ = next(iter(data.split("all").dataset(8, False, 0)))
    assert data.bands == ("B4", "B3", "B2")
    assert sorted(np.asarray(x)[:, 0, 0].tolist()) == [[4.0, 3.0, 2.0], [4.0, 3.0, 2.0],
                                                       [4.5, 3.5, 2.5]]
    odd = root / "non_landslide" / "odd.tif"
    write_image(odd, constant_image((2.0, 3.0, 8.0)), ("B2", "B3", "B8"))
    with pytest.raises(ConfigError) as exc:
        load_data(str(root), image_size=8, bands=("B4", "B3", "B2"), scoring=True)
    message = str(exc.value)
    assert str(odd) in message and "['B2', 'B3', 'B8']" in message
    assert "without ['B4']" in message and "['B4', 'B3', 'B2']" in message


def test_a_training_folder_of_png_and_geotiff_in_other_band_orders_is_aligned(tmp_path):
    """png (red, green, blue) and GeoTIFFs described blue, green, red train on the same
    channels, wherever an unnamed image sorts; an image naming other bands is refused."""
    root = tmp_path / "mixed"
    rgb = (10.0, 20.0, 30.0)
    for split in ("train", "val"):
        for cls in ("landslide", "non_landslide"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            write_image(folder / "1.png", constant_image(rgb).astype(np.uint8))
            write_image(folder / "2.tif", constant_image(rgb[::-1]), ("blue", "green", "red"))
    write_image(root / "train" / "landslide" / "0.tif", constant_image(rgb))  # unnamed
    data = load_data(str(root), image_size=8, augment=False)
    assert data.bands == ("red", "green", "blue")
    pixels = [np.asarray(x)[:, 0, 0] for split in ("train", "val")
              for x, _ in data.split(split).dataset(16, False, 0)]
    np.testing.assert_array_equal(np.concatenate(pixels), np.tile(rgb, (9, 1)))
    assert data.mean == pytest.approx(list(rgb))
    odd = root / "val" / "non_landslide" / "4.tif"
    write_image(odd, constant_image((1.0, 2.0, 3.0)), ("B2", "B3", "B4"))
    with pytest.raises(ConfigError) as exc:
        load_data(str(root), image_size=8)
    message = str(exc.value)
    assert str(odd) in message and "['B2', 'B3', 'B4']" in message
    assert "['red', 'green', 'blue']" in message and "same bands" in message


def test_classify_eval_feeds_a_model_its_bands_by_name(tmp_path):
    """A model of B4, B3, B2 that reads B4 minus B2 scores GeoTIFFs stored B2, B3, B4:
    every image right (fed in the stored order, every image would be wrong)."""
    from model.classify.evaluation import evaluate_classifiers

    inp = keras.Input((8, 8, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(inp)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    model = keras.Model(inp, keras.layers.Activation("sigmoid", name="probability")(logit))
    model.get_layer("logit").set_weights([np.array([[1.0], [0.0], [-1.0]], np.float32),
                                          np.zeros(1, np.float32)])
    art = tmp_path / "classifier"
    save_artifact(model, str(art), ("B4", "B3", "B2"), 8, mean=[0.0] * 3, std=[1.0] * 3,
                  classes={"non_landslide": 0, "landslide": 1}, saved_model=False,
                  extra={"task": "classification", "backbone": "hand"})
    root = tmp_path / "scenes"
    for cls, (b2, b4) in {"landslide": (1.0, 9.0), "non_landslide": (9.0, 1.0)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(2):
            write_image(root / cls / f"{i}.tif", constant_image((b2, 5.0, b4)),
                        ("B2", "B3", "B4"))
    [result] = evaluate_classifiers(str(art), str(root), out=str(tmp_path / "eval"))
    assert result["examples"] == 4 and result["accuracy"] == 1.0
    assert result["roc_auc"] == 1.0


def test_shard_patches_are_labelled_by_their_landslide_share(tmp_path):
    written = write_shards(tmp_path / "shards", {"train": 12, "val": 6})
    share = 0.25
    data = load_data(str(tmp_path / "shards"), min_share=share)
    assert data.kind == "shards" and data.bands == BANDS
    for split in ("train", "val"):
        shares = [((m > 0) & (m != 255)).sum() / max((m != 255).sum(), 1)
                  for _, m in written[split] if (m != 255).any()]
        assert data.split(split).count == len(shares)
        assert data.split(split).positives == sum(s >= share for s in shares)
    _, labels = next(iter(data.split("val").dataset(64, False, 0)))
    expected = [float(((m > 0) & (m != 255)).sum() / (m != 255).sum() >= share)
                for _, m in written["val"]]
    assert sorted(np.asarray(labels).tolist()) == sorted(expected)


# ----------------------------------------------------------------------------- CLI
def test_classify_train_writes_one_artifact_per_backbone_and_a_table(trained, capsys):
    rows = read_csv(trained / "comparison.csv")
    assert {r["backbone"] for r in rows} == {"baseline", "MobileNetV2"}
    assert float(rows[0]["f1"]) >= float(rows[1]["f1"])  # best first
    art = load_artifact(str(trained / "baseline"))
    meta = art.meta
    assert meta["task"] == "classification" and meta["backbone"] == "baseline"
    assert art.bands == ("red", "green", "blue") and art.patch_size == SIZE
    assert meta["training"]["schedule"][0]["phase"] == "scratch"
    assert meta["metrics"]["val"]["f1"] >= 0.9  # the squares are easy
    assert (trained / "baseline" / "history.csv").is_file()
    assert load_artifact(str(trained / "MobileNetV2")).meta["params"] > 2e6


def test_classify_eval_scores_every_backbone_on_the_same_images(trained, images, capsys):
    capsys.readouterr()
    assert main(["classify-eval", "--model", str(trained), "--data", str(images)]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(trained / "comparison.csv")
    assert rows[0]["backbone"] in printed
    result = json.loads((trained / "baseline" / "classification_eval.json").read_text())
    assert result["split"] == "test" and result["examples"] == 16
    # the numbers are those of the artifact's own predictions
    art = load_artifact(str(trained / "baseline"))
    files = sorted((images / "test").rglob("*.*"))
    x = np.stack([read_image(str(f)).pixels for f in files])
    y = np.array([f.parent.name == "landslide" for f in files])
    probs = art.model.predict(x, verbose=0)[:, 0]
    expected = classification_scores(y, probs, art.threshold)
    for key in ("tp", "fp", "fn", "tn", "accuracy", "specificity", "f1"):
        assert result[key] == pytest.approx(expected[key])
    assert result["roc_auc"] == pytest.approx(roc_auc(y, probs))
    assert result["f1"] >= 0.85
    for word in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc"):
        assert word in printed


def test_pretrained_schedule_freezes_then_unfreezes_the_top_layers(images, tmp_path):
    """The head phase trains only the head: the backbone (batch-norm statistics included)
    keeps the file's weights; fine-tuning makes exactly the top N weighted layers
    trainable, batch norms excepted, at the lower learning rate."""
    from model.classify.fit import _set_trainable

    ref = keras.applications.MobileNetV2(include_top=False, weights=None,
                                         input_shape=(SIZE, SIZE, 3))
    weights = str(tmp_path / "mobilenet.weights.h5")
    ref.save_weights(weights)
    out = tmp_path / "head"
    assert main(["classify-train", "--data", str(images), "--out", str(out), "--backbone",
                 "MobileNetV2", "--weights", weights, "--epochs", "1", "--unfreeze", "0",
                 "--batch-size", "8", "--no-saved-model"]) == 0
    art = load_artifact(str(out))
    assert [p["phase"] for p in art.meta["training"]["schedule"]] == ["head"]
    ours = {layer.name: layer for layer in backbone_layers(art.model)}
    for layer in ref.layers[1:]:  # after its input layer
        for a, b in zip(layer.get_weights(), ours[layer.name].get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)
    fresh = build_classifier("MobileNetV2", art.bands, SIZE, [0.0] * 3, [1.0] * 3,
                             weights=weights)
    assert not np.array_equal(art.model.get_layer("logit").get_weights()[0],
                              fresh.get_layer("logit").get_weights()[0])  # the head learnt

    model = art.model
    assert _set_trainable(model, "head", 2) == 0
    assert not any(layer.trainable for layer in backbone_layers(model))
    assert _set_trainable(model, "fine-tune", 2) == 2
    weighted = [lyr for lyr in backbone_layers(model) if lyr.weights
                and not isinstance(lyr, keras.layers.BatchNormalization)]
    assert [lyr.name for lyr in weighted if lyr.trainable] == ["block_16_project", "Conv_1"]
    assert not any(lyr.trainable for lyr in backbone_layers(model)
                   if isinstance(lyr, keras.layers.BatchNormalization))
    assert model.get_layer("logit").trainable

    tuned = tmp_path / "tuned"
    assert main(["classify-train", "--data", str(images), "--out", str(tuned), "--backbone",
                 "MobileNetV2", "--weights", weights, "--epochs", "1", "--fine-tune-epochs",
                 "1", "--unfreeze", "2", "--lr", "0.002", "--batch-size", "8",
                 "--no-saved-model"]) == 0
    schedule = load_artifact(str(tuned)).meta["training"]["schedule"]
    assert [(p["phase"], p["lr"], p["trainable_backbone_layers"]) for p in schedule] == [
        ("head", 0.002, 0), ("fine-tune", pytest.approx(2e-4), 2)]
    assert len(read_csv(tuned / "history.csv")) == 2


def test_classifier_and_unet_artifacts_are_refused_where_they_do_not_fit(trained, images,
                                                                         tmp_path, capsys):
    from model.unet import build_unet

    unet = tmp_path / "unet"
    save_artifact(build_unet(list(BANDS), 4, 2, mean=[0.0] * 3, std=[1.0] * 3), str(unet),
                  BANDS, SIZE, mean=[0.0] * 3, std=[1.0] * 3, saved_model=False)
    capsys.readouterr()
    assert main(["classify-eval", "--model", str(unet), "--data", str(images)]) == 2
    assert "not an image classifier" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(trained / "baseline"), "--data",
                 str(images)]) == 2
    assert "image classifier" in capsys.readouterr().err
    assert main(["predict", "--model", str(trained / "baseline"), "--source", "synthetic",
                 "--world", str(tmp_path), "--aoi", "85.3,28.1,85.31,28.11", "--start",
                 "2016-01-01", "--end", "2016-12-31", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "image classifier" in err and "landslides train" in err
    shards = tmp_path / "shards"
    write_shards(shards, {"test": 4})
    assert main(["classify-eval", "--model", str(trained / "baseline"), "--data",
                 str(shards)]) == 2
    err = capsys.readouterr().err
    assert "['red', 'green', 'blue']" in err and str(shards) in err


def test_bad_settings_are_refused_before_anything_is_read(tmp_path, capsys):
    assert main(["classify-train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--backbone", "ResNet51"]) == 2
    assert "did you mean ResNet50" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="rgb names three bands"):
        ClassifyConfig(rgb=("B4", "B3"))
    with pytest.raises(ConfigError, match="min_landslide_share"):
        ClassifyConfig(min_landslide_share=0.0)

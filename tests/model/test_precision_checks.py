"""validate-precision: which held-out and calibration shards it scores, and when it refuses.

Held-out and calibration shards are checked as ``landslides evaluate`` checks them; held-out
data without landslides that fp32 finds is refused (every F1 would be 0, and any precision
would pass); a precision that decides many pixels otherwise than fp32 is refused though its
F1 matches; the fallback held-out files are those training validated on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import model.train.precision as train_precision
from model import data as data_mod
from model.artifact import read_meta, save_artifact
from model.errors import ArtifactError, ConfigError
from model.precision import DEFAULT_MAX_CHANGED, check_precision
from model.schema import encode_patch
from model.train import validate_precisions
from model.train.inputs import run_files
from model.train.precision import held_out
from tests.model.test_data import BANDS, TRANSFORM, write_shards

STACK_BANDS = ("B4", "B4@prev")


def _band0_model(n_bands: int, scale: float = 100.0, cut: float = 0.35) -> keras.Model:
    """A 1x1 convolution: landslide where band 0 is above ``cut`` (the bright discs of
    :func:`~tests.model.test_data.make_patch`), decisively (no pixel near 0.5)."""
    inp = keras.Input((None, None, n_bands))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid", name="probability")
    net = keras.Model(inp, conv(inp))
    kernel = np.zeros((1, 1, n_bands, 1), np.float32)
    kernel[0, 0, 0, 0] = scale
    conv.set_weights([kernel, np.array([-cut * scale], np.float32)])
    return net


def _artifact(path: Path, net: keras.Model, bands=BANDS, data: Path | None = None,
              **more) -> str:
    save_artifact(net, str(path), bands, patch_size=32, size_multiple=more.pop("multiple", 1),
                  threshold=0.5, saved_model=False,
                  training={"data": str(data)} if data else None, **more)
    return str(path)


def _edit_manifest(root: Path, **changes) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------ inputs made otherwise (r1)
def _stack(offset: str) -> dict:
    return {"bands": ["B4"], "references": [{"name": "prev", "offset": offset}],
            "change": [], "channels": list(STACK_BANDS)}


def _stack_case(tmp_path: Path, offset: str = "-1y", pixel_size: float = 10.0,
                unit: str = "reflectance", name: str = "shards") -> tuple[str, Path]:
    """An artifact taking B4 and B4@prev (-1y, 10 m, reflectance) and shards made as asked."""
    root = tmp_path / name
    write_shards(root, {"train": 4, "test": 4}, bands=STACK_BANDS)
    _edit_manifest(root, stack=_stack(offset), pixel_size=pixel_size,
                   band_units=dict.fromkeys(STACK_BANDS, unit))
    art = tmp_path / "art"
    if not art.exists():
        _artifact(art, _band0_model(2), STACK_BANDS, pixel_size=10.0,
                  manifest={"band_units": dict.fromkeys(STACK_BANDS, "reflectance")},
                  extra={"stack": _stack("-1y")})
    return str(art), root


@pytest.mark.parametrize(("made", "needle"), [
    ({"offset": "-30d"}, r"takes the reference .*'-1y'.* hold .*'-30d'.* to validate it"),
    ({"pixel_size": 30.0}, r"trained on 10.0 m pixels, the shards .* hold 30.0 m"),
    ({"unit": "l4s-normalised"}, r"in 'reflectance', the shards .* in 'l4s-normalised'.* "
                                 r"to validate it"),
])
def test_held_out_shards_made_otherwise_are_refused_as_evaluate_refuses_them(
        tmp_path, made, needle):
    """Channel names say neither how the reference was made, the pixel size nor the units:
    evaluate refused such shards, validate-precision scored them and recorded ok."""
    art, shards = _stack_case(tmp_path, **made)
    with pytest.raises(ConfigError, match=needle):
        validate_precisions(art, ["bf16"], data=str(shards), split="test")
    assert "precisions" not in read_meta(art)  # nothing recorded
    # shards made as the model's inputs are scored
    _, same = _stack_case(tmp_path, name="same")
    record = validate_precisions(art, ["bf16"], data=str(same), split="test")
    assert record["held_out"]["patches"] == 4 and record["validated"]["bf16"]["ok"]


def test_calibration_shards_made_otherwise_are_refused(tmp_path):
    art, held = _stack_case(tmp_path)
    _, other = _stack_case(tmp_path, offset="-30d", name="other")
    with pytest.raises(ConfigError, match=r"hold .*'-30d'.* to calibrate int8 on it"):
        validate_precisions(art, ["int8"], data=str(held), split="test",
                            calibration_data=str(other))
    assert "precisions" not in read_meta(art)


def test_incomplete_exports_and_patches_that_do_not_fit_are_refused(tmp_path):
    complete, partial = tmp_path / "complete", tmp_path / "partial"
    write_shards(complete, {"train": 4, "test": 4})
    write_shards(partial, {"train": 4, "test": 4})
    _edit_manifest(partial, chunks=4, chunks_failed=1)
    art = _artifact(tmp_path / "art", _band0_model(3))
    with pytest.raises(ConfigError, match=r"incomplete: 1 of 4 chunk.*--allow-partial to "
                                          r"validate on it"):
        validate_precisions(art, ["bf16"], data=str(partial))
    with pytest.raises(ConfigError, match=r"incomplete: 1 of 4 chunk.*--allow-partial to "
                                          r"calibrate int8 on it"):
        validate_precisions(art, ["int8"], data=str(complete), calibration_data=str(partial))
    assert "precisions" not in read_meta(art)
    record = validate_precisions(art, ["bf16"], data=str(partial), allow_partial=True)
    assert record["validated"]["bf16"]["ok"]
    # the training data of a model trained on it with allow_partial is taken as it was
    trained = tmp_path / "trained"
    save_artifact(_band0_model(3), str(trained), BANDS, patch_size=32, size_multiple=1,
                  threshold=0.5, saved_model=False,
                  training={"data": str(partial), "allow_partial": True})
    assert validate_precisions(str(trained), ["bf16"])["validated"]["bf16"]["ok"]
    # 36 px patches for a model whose sides must be multiples of 8
    odd = tmp_path / "odd"
    write_shards(odd, {"train": 4, "test": 4}, size=36)
    eights = _artifact(tmp_path / "eights", _band0_model(3), multiple=8)
    with pytest.raises(ConfigError, match=r"patches of 36 px do not fit the model \(sides "
                                          r"must be multiples of 8\)"):
        validate_precisions(eights, ["bf16"], data=str(odd))
    with pytest.raises(ConfigError, match=r"patches of 36 px do not fit"):
        validate_precisions(eights, ["int8"], data=str(complete), calibration_data=str(odd))


# ------------------------------------------------------------ nothing to lose (r7)
def _write_test_split(root: Path, masks: list[np.ndarray], images: list[np.ndarray]) -> None:
    """Replace the test split of ``root`` with these patches (same file names)."""
    for path in sorted((root / "test").glob("*.tfrecord.gz")):
        path.unlink()
    half = -(-len(masks) // 2)
    for s in range(2):
        path = root / "test" / f"test-{s:05d}-of-00002.tfrecord.gz"
        with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
            for i in range(s * half, min(len(masks), (s + 1) * half)):
                w.write(encode_patch(images[i], masks[i], BANDS, f"k/{i}", "EPSG:32645",
                                     TRANSFORM, "2020"))


@pytest.fixture
def background_only(tmp_path) -> Path:
    root = tmp_path / "shards"
    write_shards(root, {"train": 4, "val": 2, "test": 2})
    rng = np.random.default_rng(0)
    images = [rng.normal(0.2, 0.05, (32, 32, 3)).astype(np.float32) for _ in range(4)]
    masks = [np.zeros((32, 32), np.uint8) for _ in range(4)]
    for m in masks:
        m[:2] = 255
    _write_test_split(root, masks, images)
    return root


def _marks_everything(_model):
    inp = keras.Input((None, None, 3))
    return keras.Model(inp, keras.layers.Lambda(lambda t: tf.ones_like(t[..., :1]))(inp))


def test_held_out_data_without_landslides_is_refused(background_only, tmp_path, monkeypatch):
    """Every F1 is 0 there: a precision marking every pixel a landslide got drift 0, ok."""
    art = _artifact(tmp_path / "art", _band0_model(3), data=background_only)
    monkeypatch.setattr(train_precision, "bf16_model", _marks_everything)
    with pytest.raises(ConfigError) as refused:
        validate_precisions(art, ["bf16"])
    message = str(refused.value)
    assert f"{background_only} (test)" in message and "no labelled landslide pixel" in message
    assert "held-out shards with landslides" in message and "--data" in message
    assert "precisions" not in read_meta(art)


def test_held_out_data_where_fp32_finds_no_landslide_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "shards"
    write_shards(root, {"train": 4, "test": 4})
    blind = _band0_model(3, scale=1.0, cut=30.0)  # probability ~0 everywhere
    art = _artifact(tmp_path / "art", blind, data=root)
    monkeypatch.setattr(train_precision, "bf16_model", _marks_everything)
    with pytest.raises(ConfigError, match=r"at fp32 the model finds none of the \d+ labelled "
                                          r"landslide pixels of the held-out data .*\(test\)"
                                          r".*held-out shards with landslides"):
        validate_precisions(art, ["bf16"])
    assert "precisions" not in read_meta(art)


@pytest.fixture
def halves(tmp_path) -> str:
    """Landslides in the left half of every patch; a model marking the top half.

    fp32's F1 is 0.5; a precision marking the bottom half instead has the same F1 (no
    drift) and decides every pixel otherwise.
    """
    root = tmp_path / "shards"
    write_shards(root, {"train": 4, "test": 4})
    rng = np.random.default_rng(1)
    images, masks = [], []
    for _ in range(4):
        image = rng.normal(0.2, 0.01, (32, 32, 3)).astype(np.float32)
        image[:16, :, 0] = 0.5  # band 0 bright in the top half
        mask = np.zeros((32, 32), np.uint8)
        mask[:, :16] = 1
        images.append(image)
        masks.append(mask)
    _write_test_split(root, masks, images)
    return _artifact(tmp_path / "art", _band0_model(3), data=root)


def _inverted(model):
    inp = keras.Input((None, None, 3))
    return keras.Model(inp, keras.layers.Lambda(lambda t: 1.0 - t)(model(inp)))


def test_a_precision_deciding_many_pixels_otherwise_is_refused_though_its_f1_matches(
        halves, monkeypatch):
    art = halves
    # the real bf16 model changes no decision of this decisive model
    faithful = validate_precisions(art, ["bf16"])["validated"]["bf16"]
    assert faithful["changed"] == 0 and faithful["ok"]
    assert check_precision(read_meta(art), "bf16")
    monkeypatch.setattr(train_precision, "bf16_model", _inverted)
    record = validate_precisions(art, ["bf16"])
    v = record["validated"]
    assert v["fp32"]["f1"] == pytest.approx(0.5) and v["bf16"]["f1"] == pytest.approx(0.5)
    assert v["bf16"]["drift"] == 0.0  # the F1 alone would pass it
    pixels = 4 * 32 * 32
    assert v["bf16"]["changed"] == pixels and v["bf16"]["changed_share"] == 1.0
    assert record["max_changed"] == DEFAULT_MAX_CHANGED
    assert v["bf16"]["ok"] is False
    with pytest.raises(ArtifactError, match=r"'bf16' decided 100.00% of the labelled "
                                            r"held-out pixels otherwise than fp32.*2.00%"):
        check_precision(read_meta(art), "bf16", art)
    # a precision that marks every pixel a landslide fails however loose the F1 bound
    monkeypatch.setattr(train_precision, "bf16_model", _marks_everything)
    record = validate_precisions(art, ["bf16"], max_drift=0.5)
    assert record["validated"]["bf16"]["drift"] < 0.5
    assert record["validated"]["bf16"]["changed_share"] == 0.5
    assert record["validated"]["bf16"]["ok"] is False


# ------------------------------------------------------------ the fallback held-out files (r6)
def test_the_fallback_held_out_files_are_those_training_validated_on(tmp_path):
    """held_out() took every split of --val-data (its train and test splits too)."""
    write_shards(tmp_path / "train_export", {"train": 4, "val": 2})  # no test split
    write_shards(tmp_path / "other_region", {"train": 8, "val": 2, "test": 2})
    meta = {"model_id": "x", "training": {"data": str(tmp_path / "train_export"),
                                          "val_data": str(tmp_path / "other_region")}}
    shards, files, described = held_out(meta)
    _, val_files = run_files(data_mod.find_shards(str(tmp_path / "train_export")),
                             data_mod.find_shards(str(tmp_path / "other_region")), True)
    assert files == val_files and len(files) == 2
    assert all("/val/" in f for f in files)
    assert described == f"{tmp_path / 'other_region'} (val)"
    assert shards.source == str(tmp_path / "other_region")
    # a glob of files outside split folders as --val-data: training read all of them
    (tmp_path / "loose").mkdir()
    for i, f in enumerate(sorted((tmp_path / "other_region" / "test").iterdir())):
        shutil.copy(f, tmp_path / "loose" / f"part-{i}.tfrecord.gz")  # no split in the name
    glob = str(tmp_path / "loose" / "*.tfrecord.gz")
    meta["training"]["val_data"] = glob
    _, files, described = held_out(meta)
    assert files == run_files(data_mod.find_shards(str(tmp_path / "train_export")),
                              data_mod.find_shards(glob), True)[1]
    assert len(files) == 2 and described == f"{glob} (split-less files)"
    # no --val-data: the val split of the training data, as before
    del meta["training"]["val_data"]
    _, files, described = held_out(meta)
    assert described == f"{tmp_path / 'train_export'} (val)"
    assert all("/train_export/val/" in f for f in files)

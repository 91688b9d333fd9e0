"""Precisions below fp32: the bf16 rebuild, int8 quantization, validation and its checks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from model import artifact as artifact_mod
from model.artifact import check_files, load_artifact, save_artifact
from model.errors import ArtifactError
from model.precision import (
    INT8_FILE,
    Int8Artifact,
    bf16_model,
    check_precision,
    load_for_inference,
    warn_if_bf16_emulated,
)
from model.train import evaluate, validate_precisions
from model.unet import build_unet
from tests.model.test_data import BANDS, write_shards


def fit_tiny_unet(patches: list[tuple[np.ndarray, np.ndarray]], bands=BANDS, epochs: int = 20,
                  seed: int = 1) -> keras.Model:
    """A 3-level, 4-filter U-Net fitted for seconds: decisive outputs, as trained models give.

    An untrained net puts most pixels near 0.5, where any rounding flips them; scoring
    precisions on it would measure noise.
    """
    keras.utils.set_random_seed(seed)
    x = np.stack([im for im, _ in patches]).astype(np.float32)
    m = np.stack([mk for _, mk in patches])
    y = (m == 1).astype(np.float32)[..., None]
    w = np.where(m == 255, 0.0, np.where(m == 1, 4.0, 1.0)).astype(np.float32)  # rare class
    flat = x.reshape(-1, x.shape[-1])
    net = build_unet(bands, base_filters=4, depth=3, dropout=0.0,
                     mean=flat.mean(0).tolist(), std=flat.std(0).tolist())
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy",
                steps_per_execution=8)
    net.fit(x, y, sample_weight=w, batch_size=8, epochs=epochs, verbose=0, shuffle=False)
    return net


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("precision_shards")
    return root, write_shards(root)


@pytest.fixture(scope="module")
def fitted(shards, tmp_path_factory) -> Path:
    """A tiny trained artifact that records its training data (not yet validated)."""
    root, patches = shards
    net = fit_tiny_unet(patches["train"])
    out = tmp_path_factory.mktemp("precision_model") / "artifact"
    save_artifact(net, str(out), BANDS, patch_size=32, size_multiple=4, threshold=0.5,
                  saved_model=False, training={"data": str(root)})
    return out


@pytest.fixture(scope="module")
def validated(fitted, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("precision_validated") / "artifact"
    shutil.copytree(fitted, out)
    record = validate_precisions(str(out), calibration_patches=32)
    return out, record


def test_bf16_model_computes_in_bfloat16_and_keeps_its_ends_in_float32(fitted):
    art = load_artifact(str(fitted))
    half = bf16_model(art.model)
    policies = {la.name: la.dtype_policy.name for la in half.layers}
    assert policies["normalization"] == policies["probability"] == "float32"
    assert policies["enc0_conv1"] == policies["dec0_conv2"] == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in half.weights)  # variables stay float32
    x = np.random.default_rng(0).normal(0.2, 0.05, (3, 32, 32, 3)).astype(np.float32)
    x[..., -1] = 25.0
    ref = art.model(x, training=False).numpy()
    got = half(x, training=False).numpy()
    assert got.dtype == np.float32
    diff = np.abs(got - ref)
    assert 0 < diff.max() < 0.05  # rounded, as bfloat16 is, and still the same model


def test_validation_records_held_out_f1_per_precision(validated, shards, fitted):
    out, record = validated
    root, _ = shards
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["precisions"] == record
    assert record["held_out"] == {"data": f"{root} (test)", "files": 2, "patches": 16}
    assert record["max_drift"] == 0.01 and record["threshold"] == 0.5
    done = record["validated"]
    assert set(done) == {"fp32", "bf16", "int8"}
    # fp32 is scored as `landslides evaluate` scores it, on the same patches
    ev = evaluate(str(out), str(root), split="test", out=str(out / "eval.json"))
    assert done["fp32"]["f1"] == pytest.approx(ev["f1"]) and ev["f1"] > 0.6
    for name in ("bf16", "int8"):
        assert done[name]["drift"] == pytest.approx(abs(done[name]["f1"] - ev["f1"]), abs=1e-6)
        assert done[name]["ok"] == (done[name]["drift"] <= 0.01)
        assert done[name]["drift"] < 0.05
    int8 = done["int8"]
    blob = (out / INT8_FILE).read_bytes()
    assert int8["sha256"] == hashlib.sha256(blob).hexdigest() and INT8_FILE in meta["files"]
    assert int8["calibration"] == {"data": str(root), "split": "train", "patches": 32}
    # the normalisation runs in float32 before the quantized graph, as the model's own
    norm = load_artifact(str(out)).model.get_layer("normalization")
    np.testing.assert_allclose(int8["input_normalization"]["mean"],
                               np.asarray(norm.mean).reshape(-1), rtol=1e-6)
    assert meta["model_id"] == json.loads((fitted / "artifact.json").read_text())["model_id"]


def test_int8_runs_any_batch_and_window_close_to_fp32(validated):
    out, _ = validated
    fp32 = load_for_inference(str(out), "fp32")
    int8 = load_for_inference(str(out), "int8")
    assert isinstance(int8, Int8Artifact) and int8.model is None  # no Keras load
    rng = np.random.default_rng(3)
    for shape in ((5, 32, 32, 3), (2, 64, 64, 3), (1, 32, 32, 3), (5, 32, 32, 3)):
        x = rng.normal(0.2, 0.05, shape).astype(np.float32)
        x[..., -1] = rng.normal(25.0, 8.0, shape[:3])
        x[:, 8:16, 8:16, 0] += 0.3  # a landslide-like patch
        ref, got = fp32.predict(x, batch_size=2), int8.predict(x, batch_size=2)
        assert got.shape == ref.shape == shape[:3] and got.dtype == np.float32
        assert np.abs(got - ref).max() < 0.15 and np.abs(got - ref).mean() < 0.02
        assert ((got >= 0.5) == (ref >= 0.5)).mean() > 0.98


def test_precisions_that_were_not_validated_or_drifted_are_refused(fitted, validated):
    plain = json.loads((fitted / "artifact.json").read_text())
    assert check_precision(plain, "fp32") == {}  # the reference needs no validation
    with pytest.raises(ArtifactError, match=r"never validated at precision 'int8' "
                       r"\(validated: fp32\).*validate-precision --model m"):
        check_precision(plain, "int8", "m")
    with pytest.raises(ArtifactError, match="precision must be one of fp32, bf16, int8"):
        check_precision(plain, "fp16")
    out, record = validated
    meta = json.loads((out / "artifact.json").read_text())
    assert check_precision(meta, "bf16")["f1"] == record["validated"]["bf16"]["f1"]
    meta["precisions"]["validated"]["int8"]["drift"] = 0.034
    with pytest.raises(ArtifactError, match=r"'int8' has held-out F1 .* a drift of 0.0340, "
                       r"more than the 0.0100 the artifact allows.*--max-drift 0.035"):
        check_precision(meta, "int8", str(out))


def test_bf16_warns_where_the_machine_emulates_it(validated, monkeypatch, caplog):
    import tensorflow as tf

    from model import cpu

    out, _ = validated
    gpu = bool(tf.config.list_physical_devices("GPU"))
    for native in (False, True):
        monkeypatch.setattr(cpu, "cpu_has_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="model.precision"):
            art = load_for_inference(str(out), "bf16")
        assert art.model is not None
        warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
        assert bool(warned) == (not gpu and not native), warned
        if warned:
            assert "AVX512_BF16" in warned[0].upper() and "--precision int8" in warned[0]
    # a GPU computes in bfloat16 whatever the CPU has
    assert not warn_if_bf16_emulated(cpu_bf16=False, gpu=True)
    assert warn_if_bf16_emulated(cpu_bf16=False, gpu=False)


def test_a_replaced_int8_file_is_refused(validated, tmp_path):
    out, _ = validated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / INT8_FILE).write_bytes((copy / INT8_FILE).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="not the int8 model that was validated"):
        load_for_inference(str(copy), "int8")
    (copy / INT8_FILE).unlink()
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_for_inference(str(copy), "int8")


def test_check_files_reads_the_metadata_without_loading_the_model(fitted, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fitted, copy)
    before = dict(artifact_mod._LOADED)
    meta = check_files(str(copy))
    assert meta["bands"] == list(BANDS) and before == artifact_mod._LOADED
    keras_file = copy / "model.keras"
    good = keras_file.read_bytes()
    keras_file.write_bytes(good[:len(good) // 2])  # truncated
    with pytest.raises(ArtifactError, match="Cannot load the Keras model"):
        check_files(str(copy))
    keras_file.write_bytes(good)
    (copy / "artifact.json").write_text(json.dumps(dict(meta, bands=["B4"])))
    with pytest.raises(ArtifactError, match="takes 3 bands"):
        check_files(str(copy))


def test_int8_graph_has_no_shape_dependent_ops(fitted):
    """Transposed convolutions become depth-to-space: the same outputs, and a TFLite graph
    that XNNPACK runs whole at any batch and window size (no SHAPE or TRANSPOSE_CONV)."""
    import contextlib
    import io

    import tensorflow as tf

    from model.train.precision import quantize_int8, without_transposed_convolutions

    art = load_artifact(str(fitted))
    rewritten = without_transposed_convolutions(art.model)
    assert [la.name for la in rewritten.layers] == [la.name for la in art.model.layers]
    x = np.random.default_rng(5).normal(0.2, 0.05, (2, 48, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(rewritten(x, training=False).numpy(),
                               art.model(x, training=False).numpy(), atol=1e-5)
    blob, norm = quantize_int8(art, [x])
    assert norm is not None
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=blob)
    ops = set(re.findall(r"Op#\d+ (\w+)", text.getvalue()))
    assert {"CONV_2D", "DEPTH_TO_SPACE", "QUANTIZE", "DEQUANTIZE"} <= ops
    assert not ops & {"TRANSPOSE_CONV", "SHAPE", "STRIDED_SLICE", "PACK"}

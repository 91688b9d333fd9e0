"""``landslides validate-precision``: held-out F1 of an artifact per precision, recorded in it.

For each precision asked (see :mod:`model.precision`), the artifact predicts the same
held-out patches as at fp32; the F1 at the artifact's decision threshold, and its drift
from fp32's, go into ``artifact.json`` (:data:`model.precision.RECORD`) with the drift the
artifact allows. ``landslides predict --precision`` then refuses a precision that was never
validated or that drifted more. int8 is first made here: full-integer post-training
quantization with TFLite, calibrated on patches of the training data the artifact records
(its ``training.data``), written into the artifact as :data:`model.precision.INT8_FILE`.

Held-out patches, unless ``data`` names others: the test split of the training data, else
the files the training validated on (the val split of its ``--val-data`` with their
split-less files, or of its training data). They, and the calibration shards, must be made
as the model's inputs (as ``landslides evaluate`` checks), and must hold labelled landslide
pixels that fp32 finds: a held-out F1 of 0 at fp32 would let any precision pass.

A precision passes when its held-out F1 moves at most ``max_drift`` from fp32's and at most
``max_changed`` of the labelled held-out pixels get another decision than at fp32 (one that
marks every pixel a landslide changes nearly all background pixels, whatever its F1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from model import data as data_mod
from model.artifact import Artifact, load_artifact, update_artifact
from model.errors import ConfigError
from model.metrics import confusion_counts, scores
from model.precision import (
    DEFAULT_MAX_CHANGED,
    DEFAULT_MAX_DRIFT,
    INT8_FILE,
    PRECISIONS,
    RECORD,
    REFERENCE,
    Int8Artifact,
    bf16_model,
    input_normalization,
    precision_record,
    without_normalization,
)
from model.schema import IGNORE_VALUE
from model.train.evaluation import check_scoring_data
from model.train.inputs import validation_files

logger = logging.getLogger(__name__)


def _shards(data: str, what: str, label: str | None = None) -> data_mod.ShardSet:
    try:
        return data_mod.find_shards(data, label=label)
    except ConfigError as exc:
        raise ConfigError(f"the {what} {data!r} cannot be read ({exc}); name other shards "
                          f"(--data for held-out patches, --calibration-data for training "
                          f"patches)") from exc


def held_out(meta: dict, data: str | None = None, split: str | None = None
             ) -> tuple[data_mod.ShardSet, tuple[str, ...], str]:
    """The held-out shards to score: ``(shards, files, description)``.

    Args:
        meta: The artifact's ``artifact.json``.
        data: An export folder or glob (default: from the artifact's training record: the
            test split of its training data, else the files it validated on, as
            :func:`~model.train.inputs.run_files` chose them).
        split: The split of ``data`` (default: test if it has one, else val).

    Raises:
        ConfigError: nothing held out can be found, or the named data has no such split.
    """
    training = meta.get("training") or {}
    if data:
        shards = _shards(data, "held-out data")
        if data_mod._is_glob(data):
            return shards, shards.all_files(), f"{data}"
        for name in ([split] if split else ["test", "val"]):
            if name and shards.files.get(name):
                return shards, shards.split_files(name), f"{data} ({name})"
        return shards, shards.split_files(split or "test"), data  # raises, naming the splits
    source, val_source = training.get("data"), training.get("val_data")
    label = training.get("label")
    trained_on: data_mod.ShardSet | None = None
    if source:
        trained_on = _shards(source, "training record's data", label)
        if trained_on.files.get("test"):
            return trained_on, tuple(trained_on.files["test"]), f"{source} (test)"
    validated_on = val_source or source
    if validated_on:
        # the files the training validated on, as it chose them (run_files)
        val_shards = (_shards(val_source, "training record's data", label) if val_source
                      else trained_on)
        assert val_shards is not None
        try:
            files = validation_files(val_shards, separate_val=bool(val_source))
        except ConfigError:
            files = ()
        if files:
            parts = [name for name, part in (("val", "val"), ("split-less files", "other"))
                     if set(val_shards.files.get(part, ())) & set(files)]
            return val_shards, files, f"{validated_on} ({' and '.join(parts)})"
    raise ConfigError(f"model {meta.get('model_id')} records no held-out patches (no test or "
                      f"val split in its training data {training.get('data')!r}): name some "
                      f"with --data")


def _batches(shards: data_mod.ShardSet, files: Sequence[str], bands: Sequence[str],
             batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, Any]]:
    """``(image, label)`` batches in file order (files interleaved), at most ``limit`` patches."""
    ds = data_mod.shard_dataset(shards, files, bands, batch_size)
    seen = 0
    with data_mod.named_data_errors(files, shards.compression):
        for image, mask in ds.as_numpy_iterator():
            if limit is not None:
                image, mask = image[:limit - seen], mask[:limit - seen]
            seen += len(image)
            yield image, mask[..., 0]
            if limit is not None and seen >= limit:
                return


def _space_upsample_layer() -> type:
    """A Keras layer: a 1x1 convolution to ``k * k * filters`` channels, then depth-to-space.

    Built on first use (Keras is imported lazily). It computes exactly what a
    ``Conv2DTranspose`` with ``kernel_size == strides == k`` and ``valid`` padding does
    (the kernel's k x k taps do not overlap), with no op that depends on the input's
    shape: TFLite then keeps the whole graph in XNNPACK for inputs of any size, where a
    transposed convolution's output shape, computed from the dynamic input shape, leaves
    it (and the ops around it) to slower kernels (about 4x the CPU time here).
    """
    import keras
    import tensorflow as tf

    class SpaceUpsample(keras.layers.Layer):
        def __init__(self, filters: int, block: int, activation: Any, use_bias: bool,
                     name: str) -> None:
            super().__init__(name=name)
            self.block = block
            self.conv = keras.layers.Conv2D(filters * block * block, 1, use_bias=use_bias,
                                            name=f"{name}_1x1")
            self.act = keras.activations.get(activation)

        def call(self, x: Any) -> Any:
            return self.act(tf.nn.depth_to_space(self.conv(x), self.block))

    return SpaceUpsample


def without_transposed_convolutions(model: Any) -> Any:
    """A copy of ``model`` whose non-overlapping transposed convolutions are depth-to-space.

    Only for conversion (the copy is never saved): outputs are equal to the model's (see
    :func:`_space_upsample_layer`); other transposed convolutions are kept.
    """
    import keras

    layer_cls = _space_upsample_layer()
    swapped: set[str] = set()

    def clone(layer: Any) -> Any:
        c = layer.get_config()
        k = tuple(c.get("kernel_size", ()))
        if (isinstance(layer, keras.layers.Conv2DTranspose) and len(set(k)) == 1
                and k == tuple(c["strides"]) and c["padding"] == "valid"
                and tuple(c["dilation_rate"]) == (1, 1)):
            swapped.add(layer.name)
            return layer_cls(c["filters"], k[0], c["activation"], c["use_bias"], layer.name)
        return layer.__class__.from_config(c)

    copy = keras.models.clone_model(model, clone_function=clone)
    for old in model.layers:
        weights = old.get_weights()
        new = copy.get_layer(old.name)
        if old.name in swapped:  # (k, k, F, C) taps -> one (1, 1, C, k*k*F) kernel
            k, _, f, c = weights[0].shape
            kernel = weights[0].transpose(3, 0, 1, 2).reshape(c, k * k * f)[None, None]
            new.conv.set_weights([kernel, *[np.tile(b, k * k) for b in weights[1:]]])
        elif weights:
            new.set_weights(weights)
    return copy


def quantize_int8(art: Artifact, calibration: Sequence[np.ndarray]
                  ) -> tuple[bytes, dict | None]:
    """The artifact's model as a TFLite full-integer model, calibrated on ``calibration``.

    Weights are int8 per output channel, activations int8 per tensor, with float32 input
    and output (quantized inside the model). A leading normalisation layer is taken out of
    the quantized graph (see :mod:`model.precision`), and transposed convolutions become
    depth-to-space (:func:`without_transposed_convolutions`), so that XNNPACK runs the
    whole graph whatever the batch and window size.

    Args:
        art: The fp32 artifact.
        calibration: Batches of physical-unit patches ``(n, h, w, c)``.

    Returns:
        ``(tflite bytes, {"mean", "std"} of the normalisation applied before it, or None)``.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    norm = input_normalization(art.model)
    net = art.model if norm is None else without_normalization(art.model)
    net = without_transposed_convolutions(net)
    fn = tf.function(lambda t: net(t, training=False))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(
        tf.TensorSpec([None, None, None, len(art.bands)], tf.float32)))

    def representative() -> Iterator[list[np.ndarray]]:
        for batch in calibration:
            x = np.asarray(batch, np.float32)
            if norm is not None:
                x = (x - norm[0]) / norm[1]
            yield [x.astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():  # "statistics for quantized inputs": the input is float
        warnings.simplefilter("ignore")
        blob = converter.convert()
    record = None if norm is None else {"mean": norm[0].tolist(), "std": norm[1].tolist()}
    return blob, record


def validate_precisions(
    model: str,
    precisions: Sequence[str] = ("bf16", "int8"),
    data: str | None = None,
    split: str | None = None,
    max_drift: float = DEFAULT_MAX_DRIFT,
    calibration_data: str | None = None,
    calibration_patches: int = 256,
    batch_size: int = 16,
    max_changed: float = DEFAULT_MAX_CHANGED,
    allow_partial: bool = False,
) -> dict:
    """Score the artifact at fp32 and each of ``precisions``; record it in the artifact.

    Args:
        model: The artifact folder (local or ``gs://``); it is updated in place.
        precisions: Precisions to validate besides fp32.
        data: Held-out shards (see :func:`held_out`).
        split: Their split.
        max_drift: Held-out F1 a precision may lose against fp32 and still be used.
        calibration_data: Shards whose training patches calibrate int8 (default: the
            artifact's training data).
        calibration_patches: Patches that calibrate int8.
        batch_size: Patches per prediction batch.
        max_changed: Share of the labelled held-out pixels whose decision (landslide or
            not, at the artifact's threshold) a precision may change against fp32 and
            still be used (:data:`~model.precision.DEFAULT_MAX_CHANGED`).
        allow_partial: Use held-out or calibration exports some of whose chunks failed
            (the training data, taken from the artifact's record, is used as the training
            took it: incomplete when it recorded ``allow_partial``).

    Returns:
        The record written (``artifact.json``'s :data:`~model.precision.RECORD`): per
        precision its scores and counts, ``drift`` (from fp32's F1), ``changed`` (labelled
        pixels decided otherwise than at fp32), ``changed_share`` (of the labelled pixels)
        and ``ok``.

    Raises:
        ConfigError: a bad argument; no held-out or calibration patches; held-out or
            calibration shards made otherwise than the model's inputs (as
            :func:`~model.train.evaluation.evaluate` refuses them), incomplete, or with
            patches that do not fit the model; or held-out patches without a labelled
            landslide pixel, or none that fp32 finds (every F1 would be 0, and any
            precision would pass).
        ArtifactError: the artifact cannot be loaded.
    """
    asked = [p for p in dict.fromkeys(precisions) if p != REFERENCE]
    unknown = [p for p in asked if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"unknown precision(s) {unknown}: choose from {', '.join(PRECISIONS)}")
    if not 0.0 <= max_drift < 1.0:
        raise ConfigError(f"max_drift must be in [0, 1), got {max_drift}")
    if not 0.0 <= max_changed < 1.0:
        raise ConfigError(f"max_changed must be in [0, 1), got {max_changed}")
    if calibration_patches < 1 or batch_size < 1:
        raise ConfigError("calibration_patches and batch_size must be >= 1")
    art = load_artifact(model)
    # the training data as the training took it: an incomplete export it was allowed
    trained_partial = bool((art.meta.get("training") or {}).get("allow_partial"))
    shards, files, described = held_out(art.meta, data, split)
    check_scoring_data(art, shards, model, described,
                       allow_partial or (data is None and trained_partial),
                       use="validate it", partial_use="validate on")
    runners: dict[str, Artifact] = {REFERENCE: art}
    extra: dict[str, dict] = {p: {} for p in asked}
    files_out: dict[str, bytes] = {}
    if "bf16" in asked:
        runners["bf16"] = Artifact(path=model, model=bf16_model(art.model), meta=art.meta)
    if "int8" in asked:
        t0 = time.perf_counter()
        cal_source = calibration_data or (art.meta.get("training") or {}).get("data")
        if not cal_source:
            raise ConfigError(f"model {art.model_id} records no training data to calibrate "
                              f"int8 on: name shards with --calibration-data")
        cal = _shards(cal_source, "calibration data")
        check_scoring_data(art, cal, model, cal_source,
                           allow_partial or (calibration_data is None and trained_partial),
                           use="calibrate int8 on it", partial_use="calibrate int8 on")
        cal_files = cal.split_files("train", include_other=True)
        batches = [x for x, _ in _batches(cal, cal_files, art.bands, batch_size,
                                          calibration_patches)]
        blob, norm = quantize_int8(art, batches)
        files_out[INT8_FILE] = blob
        extra["int8"] = {"file": INT8_FILE, "sha256": hashlib.sha256(blob).hexdigest(),
                         "bytes": len(blob), "input_normalization": norm,
                         "calibration": {"data": cal_source, "split": "train",
                                         "patches": int(sum(len(b) for b in batches))}}
        meta = dict(art.meta)
        meta[RECORD] = {"validated": {"int8": extra["int8"]}}
        runners["int8"] = Int8Artifact(path=model, model=None, meta=meta, tflite=blob)
        logger.info("quantized %s to int8 on %d training patches in %.1f s (%d KiB)",
                    art.model_id, extra["int8"]["calibration"]["patches"],
                    time.perf_counter() - t0, len(blob) // 1024)
    counts = {p: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for p in runners}
    changed = dict.fromkeys(asked, 0)  # labelled pixels decided otherwise than at fp32
    n_patches = 0
    for image, labels in _batches(shards, files, art.bands, batch_size):
        labelled = labels != IGNORE_VALUE
        decided: np.ndarray | None = None
        for name, runner in runners.items():  # fp32 first
            prob = runner.predict(image, batch_size=batch_size)
            for key, value in confusion_counts(labels, prob, art.threshold).items():
                counts[name][key] += value
            decision = np.asarray(prob) >= art.threshold
            if decided is None:
                decided = decision
            else:
                changed[name] += int(np.count_nonzero((decision != decided) & labelled))
        n_patches += len(image)
    if n_patches == 0:
        raise ConfigError(f"no patch in the held-out data {described}: nothing to score")
    _check_scorable(counts[REFERENCE], described, n_patches, art.threshold)
    pixels = sum(counts[REFERENCE].values())
    ref = scores(counts[REFERENCE])
    before = precision_record(art.meta)
    same_data = (before.get("held_out") or {}).get("data") == described
    # precisions not validated this time keep their entries if scored on the same patches
    validated: dict[str, dict] = dict(before.get("validated") or {}) if same_data else {}
    validated[REFERENCE] = {**ref, **counts[REFERENCE]}
    for name in asked:
        s = scores(counts[name])
        drift = abs(s["f1"] - ref["f1"])
        share = changed[name] / pixels
        validated[name] = {**s, **counts[name], "drift": round(drift, 6),
                           "changed": changed[name], "changed_share": round(share, 6),
                           "ok": bool(drift <= max_drift and share <= max_changed),
                           **extra[name]}
    record = {"reference": REFERENCE, "max_drift": float(max_drift),
              "max_changed": float(max_changed),
              "threshold": art.threshold, "held_out": {"data": described,
                                                       "files": len(files),
                                                       "patches": n_patches},
              "validated": validated,
              "validated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    update_artifact(model, {RECORD: record}, files_out)
    for name in (REFERENCE, *asked):
        v = validated[name]
        logger.info("%s at %s: held-out F1 %.4f%s", art.model_id, name, v["f1"],
                    "" if name == REFERENCE else f" (drift {v['drift']:.4f}, allowed "
                    f"{max_drift}; decisions changed on {v['changed_share']:.2%} of the "
                    f"labelled pixels, allowed {max_changed:.2%}: "
                    f"{'passed' if v['ok'] else 'refused'})")
    return record


def _check_scorable(reference: dict[str, int], described: str, n_patches: int,
                    threshold: float) -> None:
    """Refuse held-out data on which fp32's F1 is 0: no drift could show there.

    Args:
        reference: fp32's confusion counts on the held-out pixels.
        described: How messages name the held-out data.
        n_patches: Its patches.
        threshold: The artifact's decision threshold.

    Raises:
        ConfigError: no labelled landslide pixel, or none that fp32 finds; names the data
            and the fix.
    """
    landslides = reference["tp"] + reference["fn"]
    fix = ("name held-out shards with landslides that the model finds (--data; e.g. the "
           "test split of an export of an area with mapped landslides)")
    if landslides == 0:
        raise ConfigError(
            f"the held-out data {described} ({n_patches} patches) holds no labelled landslide "
            f"pixel: every precision's F1 is 0 there, so the drift from fp32 is 0 however "
            f"wrong a precision is, and validating on it would pass any. Validation refused: "
            f"{fix}")
    if reference["tp"] == 0:
        raise ConfigError(
            f"at fp32 the model finds none of the {landslides} labelled landslide pixels of "
            f"the held-out data {described} ({n_patches} patches) at its threshold "
            f"{threshold:.3f}: its F1 there is 0, so a precision could lose nothing against "
            f"it, and validating on it would pass any. Validation refused: {fix}, or "
            f"validate a model that finds them")


__all__ = ["held_out", "quantize_int8", "validate_precisions", "without_transposed_convolutions"]

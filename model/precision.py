"""Inference below float32: a bfloat16-compute model and an int8 (TFLite) forward pass.

Three precisions of one artifact, all taking float32 physical-unit windows and returning
the same probabilities within their rounding:

``fp32``
    The artifact's Keras model as saved (the reference).
``bf16``
    The same model rebuilt from its config under Keras' ``mixed_bfloat16`` policy (bfloat16
    matmuls and convolutions, float32 variables) with the float32 weights copied in; the
    input normalisation and the output activation stay float32. Nothing is stored.
``int8``
    A TFLite full-integer model (int8 weights per channel, int8 activations calibrated on
    training patches), stored beside the Keras model as :data:`INT8_FILE` and run by
    ``tf.lite.Interpreter`` with its XNNPACK delegate. The in-model normalisation is taken
    out of the quantized graph and applied in float32 first (one scale per tensor could
    not hold elevations in metres and reflectances together); its mean and std are
    recorded in ``artifact.json``.

A precision other than fp32 is only used after :mod:`model.train.precision` validated it:
``artifact.json``'s :data:`RECORD` holds the held-out F1 of each precision and the drift
from fp32 that the artifact allows (:func:`check_precision` refuses the rest).
Importing this module loads neither TensorFlow nor Keras.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.artifact import Artifact, load_artifact, read_meta
from model.errors import ArtifactError

log = logging.getLogger(__name__)

#: The precisions a model runs at; the first is the reference the others are checked against.
PRECISIONS = ("fp32", "bf16", "int8")
REFERENCE = "fp32"
#: The int8 TFLite model, in the artifact folder.
INT8_FILE = "model.int8.tflite"
#: ``artifact.json`` key of the validation record.
RECORD = "precisions"
#: Held-out F1 an artifact may lose at a lower precision unless validated otherwise.
DEFAULT_MAX_DRIFT = 0.01
#: Share of the labelled held-out pixels whose decision (landslide or not, at the
#: artifact's threshold) a lower precision may change against fp32 unless validated
#: otherwise. Rounding flips only pixels near the threshold (a trained model's int8 and
#: bf16 change well under 1%); a precision that marks every pixel a landslide changes
#: every background pixel, most of a held-out set, whatever its F1.
DEFAULT_MAX_CHANGED = 0.02


def precision_record(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The artifact's validation record (``{}`` when it was never validated)."""
    return dict(meta.get(RECORD) or {})


def check_precision(meta: Mapping[str, Any], precision: str, path: str = "") -> dict:
    """Refuse a precision the artifact was not validated for, or whose F1 drifted too far.

    Args:
        meta: The artifact's ``artifact.json``.
        precision: One of :data:`PRECISIONS`.
        path: The artifact's folder, for the messages.

    Returns:
        The precision's entry of the record (``{}`` for fp32, which needs none).

    Raises:
        ArtifactError: an unknown precision, one never validated on this artifact, one
            whose held-out F1 moved more than the artifact allows, or one that decided more
            of the held-out pixels otherwise than fp32 than the record allows (records
            written before that share was recorded are checked on the F1 only); the
            message names the value and the fix.
    """
    where = f"Model artifact {path!r}" if path else f"Model {meta.get('model_id')}"
    if precision not in PRECISIONS:
        raise ArtifactError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{precision!r}.")
    if precision == REFERENCE:
        return {}
    record = precision_record(meta)
    validated = dict(record.get("validated") or {})
    fix = (f"run `landslides validate-precision --model {path or '<artifact>'} "
           f"--precisions {precision}` first, or predict with --precision {REFERENCE}")
    entry = validated.get(precision)
    if not entry:
        done = ", ".join([REFERENCE, *[p for p in validated if p != REFERENCE]])
        raise ArtifactError(f"{where} was never validated at precision {precision!r} "
                            f"(validated: {done}): {fix}.")
    allowed = float(record.get("max_drift", DEFAULT_MAX_DRIFT))
    drift = float(entry["drift"])
    if drift > allowed + 1e-12:
        ref = validated.get(REFERENCE, {}).get("f1")
        raise ArtifactError(
            f"{where} at precision {precision!r} has held-out F1 {float(entry['f1']):.4f} "
            f"against {float(ref or 0.0):.4f} at {REFERENCE}: a drift of {drift:.4f}, more "
            f"than the {allowed:.4f} the artifact allows. Predict with --precision "
            f"{REFERENCE} (or another validated precision), or accept the loss by running "
            f"`landslides validate-precision --model {path or '<artifact>'} --max-drift "
            f"{drift + 0.0005:.3f}`.")
    share, most = entry.get("changed_share"), record.get("max_changed")
    if share is not None and most is not None and float(share) > float(most) + 1e-12:
        raise ArtifactError(
            f"{where} at precision {precision!r} decided {float(share):.2%} of the labelled "
            f"held-out pixels otherwise than {REFERENCE} at its threshold, more than the "
            f"{float(most):.2%} the artifact allows: it is not the same model. Predict with "
            f"--precision {REFERENCE} (or another validated precision).")
    return dict(entry)


# ----------------------------------------------------------------------------- bf16
def bf16_model(model: Any) -> Any:
    """``model`` rebuilt under the ``mixed_bfloat16`` policy, with its weights.

    Every layer computes in bfloat16 except the input layer, normalisation layers and the
    output layers (so inputs in physical units are normalised in float32, and
    probabilities come out in float32); the variables stay float32.
    """
    import keras

    cfg = model.get_config()
    keep = _output_layers(cfg)
    policy = keras.dtype_policies.serialize(keras.DTypePolicy("mixed_bfloat16"))
    for layer in cfg["layers"]:
        name = layer["config"].get("name", layer.get("name"))
        if layer["class_name"] in ("InputLayer", "Normalization") or name in keep:
            continue
        layer["config"]["dtype"] = policy
    rebuilt = type(model).from_config(cfg)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def warn_if_bf16_emulated(cpu_bf16: bool | None = None, gpu: bool | None = None) -> bool:
    """Warn (and return True) where bf16 inference would be slower than fp32.

    Without a GPU and without a CPU flag for native bfloat16 arithmetic
    (:data:`model.cpu.BF16_CPU_FLAGS`), TensorFlow emulates bfloat16 and a bf16
    sweep runs slower than fp32; int8 is then the fast precision.

    Args:
        cpu_bf16: Whether the CPU has native bfloat16 (default: read its flags).
        gpu: Whether a GPU is visible (default: ask TensorFlow).
    """
    from model.cpu import BF16_CPU_FLAGS, cpu_has_bf16

    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    native = cpu_has_bf16() if cpu_bf16 is None else cpu_bf16
    if gpu or native:
        return False
    log.warning("bf16 inference on this machine is emulated (no GPU, and the CPU has none of "
                "the flags %s): it is slower than fp32 here; use --precision int8 for speed, "
                "or fp32", ", ".join(BF16_CPU_FLAGS))
    return True


def _output_layers(cfg: Mapping[str, Any]) -> set[str]:
    """Names of the layers a functional (or sequential) model config outputs from."""
    outs = cfg.get("output_layers")
    if outs is None:  # Sequential: the last layer
        return {cfg["layers"][-1]["config"]["name"]} if cfg.get("layers") else set()
    if outs and isinstance(outs[0], str):  # one output: [name, node, index]
        outs = [outs]
    return {str(o[0]) for o in outs}


# ----------------------------------------------------------------------------- int8
def input_normalization(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mean, std)`` of a model's leading ``Normalization`` layer, or None.

    Only a normalisation built from a given mean and variance (as :func:`model.unet
    .build_unet` makes) is taken out of the quantized graph: it is then the only
    consumer of the input and holds no weights.
    """
    import keras

    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    if not layers or not isinstance(layers[0], keras.layers.Normalization):
        return None
    norm = layers[0]
    if norm.get_weights() or norm.invert or norm.get_config().get("mean") is None:
        return None
    mean = np.asarray(norm.mean, np.float32).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(norm.variance, np.float32).reshape(-1)),
                     np.float32(keras.config.epsilon()))
    return mean, std


def without_normalization(model: Any) -> Any:
    """A copy of ``model`` whose leading normalisation is the identity (mean 0, var 1)."""
    cfg = model.get_config()
    for layer in cfg["layers"]:
        if layer["class_name"] == "Normalization":
            n = len(layer["config"]["mean"])
            layer["config"].update(mean=[0.0] * n, variance=[1.0] * n)
            break
    copy = type(model).from_config(cfg)
    copy.set_weights(model.get_weights())
    return copy


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Int8Forward:
    """The int8 model's forward pass: float32 windows in, float32 model outputs out.

    Normalises in float32 (when the record says so), then runs one
    ``tf.lite.Interpreter`` (XNNPACK, ``num_threads``), resized to each new input shape
    (cheap: the delegate keeps its packed weights). One call at a time: calls from
    several threads queue on a lock.

    Args:
        tflite: The TFLite model's bytes.
        mean: Per-band mean subtracted first, or None.
        std: Per-band standard deviation divided by next, or None.
        num_threads: Interpreter threads (default: every CPU of this process).
    """

    def __init__(self, tflite: bytes, mean: Any = None, std: Any = None,
                 num_threads: int | None = None) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter warns of its LiteRT successor
            warnings.simplefilter("ignore")
            self._interp = tf.lite.Interpreter(model_content=tflite,
                                               num_threads=num_threads or default_threads())
        self._in = self._interp.get_input_details()[0]["index"]
        self._out = self._interp.get_output_details()[0]["index"]
        self._mean = None if mean is None else np.asarray(mean, np.float32)
        self._scale = None if std is None else (1.0 / np.asarray(std, np.float32))
        self._shape: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def __call__(self, x: Any) -> np.ndarray:
        if self._mean is not None and self._scale is not None:
            z = np.subtract(x, self._mean, dtype=np.float32)  # one new array, scaled in place
            np.multiply(z, self._scale, out=z)
        else:
            z = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            if z.shape != self._shape:
                self._interp.resize_tensor_input(self._in, list(z.shape), strict=False)
                self._interp.allocate_tensors()
                self._shape = z.shape
            self._interp.set_tensor(self._in, z)
            self._interp.invoke()
            return self._interp.get_tensor(self._out)


@dataclass
class Int8Artifact(Artifact):
    """An artifact run through its int8 TFLite model (``model`` is None: no Keras load).

    Attributes:
        tflite: The TFLite model's bytes.
        num_threads: Interpreter threads (None: every CPU of this process).
    """

    tflite: bytes = b""
    num_threads: int | None = None

    def _inference_fn(self) -> Any:
        if self._fn is None:
            entry = precision_record(self.meta)["validated"]["int8"]
            norm = entry.get("input_normalization") or {}
            fn = Int8Forward(self.tflite, norm.get("mean"), norm.get("std"), self.num_threads)
            with self._lock:
                if self._fn is None:
                    self._fn = fn
        return self._fn


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def load_for_inference(path: str, precision: str = REFERENCE,
                       num_threads: int | None = None) -> Artifact:
    """Load an artifact to predict at ``precision`` (see the module docstring).

    fp32 is :func:`model.artifact.load_artifact` itself (cached per process); bf16 rebuilds
    that model; int8 reads only ``artifact.json`` and the TFLite file.

    Raises:
        ArtifactError: a missing or inconsistent artifact, a precision it was not validated
            for (see :func:`check_precision`), or an int8 file that is not the validated one.
    """
    if precision == REFERENCE:
        return load_artifact(path)
    if precision == "bf16":
        base = load_artifact(path)
        check_precision(base.meta, precision, path)
        warn_if_bf16_emulated()
        return Artifact(path=path, model=bf16_model(base.model), meta=base.meta)
    meta = read_meta(path)
    entry = check_precision(meta, precision, path)
    file = f"{path.rstrip('/')}/{entry.get('file', INT8_FILE)}"
    try:
        blob = _read_bytes(file)
    except Exception as exc:  # OSError, or TensorFlow's NotFoundError for gs://
        raise ArtifactError(f"{file!r} cannot be read ({type(exc).__name__}: {exc}): run "
                            f"`landslides validate-precision --model {path}` again.") from exc
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise ArtifactError(f"{file!r} is not the int8 model that was validated (its SHA-256 "
                            f"differs from artifact.json's): run `landslides "
                            f"validate-precision --model {path}` again.")
    return Int8Artifact(path=path, model=None, meta=meta, tflite=blob,
                        num_threads=num_threads)


__all__ = [
    "DEFAULT_MAX_CHANGED",
    "DEFAULT_MAX_DRIFT",
    "INT8_FILE",
    "PRECISIONS",
    "RECORD",
    "REFERENCE",
    "Int8Artifact",
    "Int8Forward",
    "bf16_model",
    "check_precision",
    "default_threads",
    "input_normalization",
    "load_for_inference",
    "precision_record",
    "warn_if_bf16_emulated",
    "without_normalization",
]

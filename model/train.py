"""Training, evaluation, grid search and transfer learning of the landslide U-Net.

``landslides train --data SHARDS --out MODEL_DIR [--config train.yaml]``::

    MODEL_DIR/
      artifact.json  model.keras  saved_model/   the artifact (see model.artifact)
      history.csv                                 one row per epoch (Keras CSVLogger)
      logs/                                       TensorBoard logs
      _backup/                                    last/best checkpoint + state while running

* Hyper-parameters are one frozen :class:`TrainConfig`, loadable from YAML; CLI flags
  override the YAML; validated before anything is read. The resolved config is saved in the
  artifact's ``training``.
* Adam, the configured loss, landslide precision/recall/F1/IoU (at 0.5) and ``f1_best``,
  the F1 at the best decision threshold (:class:`BestThresholdF1`). Early stopping,
  reduce-on-plateau and the best checkpoint follow ``val_f1_best`` (:data:`MONITOR`): the
  threshold is calibrated after training anyway, and F1 at a fixed 0.5 rewards the early
  "everything is a landslide" epochs while the outputs' calibration still drifts.
* Resume: every epoch end writes the last weights (with the optimizer state), the best
  weights and the callbacks' state (best F1, patience counters, learning rate) to
  ``_backup/``. A run started again on the same ``--out`` with the same configuration
  continues from the epoch after the last one saved (``epochs`` may be raised to train
  longer). The backup is deleted once the artifact is written.
* The decision threshold is calibrated on the whole validation split (best F1) and the
  validation metrics at that threshold are stored in the artifact's ``metrics``.
* Transfer learning: ``init_from`` starts from an artifact: same bands by name (else an
  error naming the difference), its architecture and normalisation, its weights;
  ``freeze_encoder`` keeps the encoder fixed; the default learning rate drops to 1e-4.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model import data as data_mod
from model.artifact import Artifact, json_default, load_artifact, read_meta, save_artifact
from model.augment import AugmentConfig
from model.distribute import (
    PRECISIONS,
    STRATEGIES,
    choose_strategy,
    dtype_policy,
    is_chief,
    precision_policy,
)
from model.errors import ArtifactError, ConfigError
from model.losses import LOSSES, get_loss
from model.metrics import best_threshold, confusion_counts, landslide_metrics, scores
from model.schema import IGNORE_VALUE
from model.unet import build_unet, encoder_layers, size_multiple

logger = logging.getLogger(__name__)

BACKUP = "_backup"
HISTORY = "history.csv"
LOGS = "logs"
EVALUATION = "evaluation.json"
TUNING = "tuning.csv"
#: What early stopping, reduce-on-plateau and the best checkpoint follow.
MONITOR = "val_f1_best"
DEFAULT_LR = 1e-3
FINE_TUNE_LR = 1e-4
#: Parsed training data up to this size is cached in memory with ``cache: auto``.
CACHE_LIMIT_BYTES = 1 << 30
CACHE_MODES = ("auto", "memory", "none")

_INT_FIELDS = ("base_filters", "depth", "batch_size", "epochs", "steps_per_epoch",
               "validation_steps", "patience", "reduce_lr_patience", "seed", "shuffle_buffer",
               "stats_patches", "n_classes")
_FLOAT_FIELDS = ("dropout", "bn_momentum", "alpha", "beta", "gamma", "lr", "reduce_lr_factor",
                 "min_lr")
_BOOL_FIELDS = ("batch_norm", "reduce_lr", "freeze_encoder", "saved_model", "allow_partial")
_STR_FIELDS = ("loss", "mixed_precision", "strategy", "tpu", "cache", "label", "init_from")
_OPTIONAL = ("bands", "steps_per_epoch", "validation_steps", "n_classes", "lr", "tpu", "label",
             "init_from")
#: Fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("epochs",)


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run.

    Attributes:
        bands: Input bands by name, in model order (default: the manifest's bands).
        base_filters: Filters of the first U-Net block (8/16/32...).
        depth: Encoder blocks (5: 10 encoder conv layers).
        dropout: Dropout rate inside every block.
        batch_norm: Batch normalisation after every convolution.
        bn_momentum: Momentum of the batch-norm moving statistics.
        n_classes: 1 (sigmoid landslide probability) or the number of softmax classes
            (background + e.g. scarp, deposit); default: from the manifest's classes.
        loss: One of ``tversky``, ``focal_tversky``, ``dice``, ``bce``, ``bce_dice``.
        alpha: Tversky weight of false positives.
        beta: Tversky weight of false negatives.
        gamma: Focal Tversky exponent.
        lr: Adam learning rate (default 1e-3; 1e-4 with ``init_from``).
        batch_size: Global batch size (split across replicas).
        epochs: Maximum epochs.
        steps_per_epoch: Batches per epoch (default: one pass over the training shards).
        validation_steps: Validation batches per epoch (default: the whole split).
        patience: Epochs without a better ``val_f1_best`` before stopping (0: never).
        reduce_lr: Reduce the learning rate when ``val_f1_best`` stalls.
        reduce_lr_patience: Epochs without improvement before reducing.
        reduce_lr_factor: Factor applied to the learning rate.
        min_lr: Lower bound of the learning rate.
        augment: Augmentations of training patches.
        seed: Seed of weights, shuffling and augmentation.
        init_from: Artifact to start from (transfer learning / fine-tuning).
        freeze_encoder: Keep the encoder's weights fixed (with ``init_from``).
        mixed_precision: ``auto`` (GPU/TPU only), ``off`` or a Keras policy name.
        strategy: ``auto``, ``default``, ``mirrored``, ``tpu`` or ``multiworker``.
        tpu: TPU name or address for the ``tpu`` strategy.
        cache: ``auto`` (in memory when the parsed data fit in 1 GiB), ``memory`` or ``none``.
        shuffle_buffer: Records in the shuffle buffer.
        label: Label feature of Earth Engine records (default: found by name).
        stats_patches: Patches read to compute the normalisation without a manifest.
        saved_model: Also export a SavedModel for serving into the artifact.
        allow_partial: Train on an export some of whose chunks failed (refused by default:
            the model would learn from part of the area without a word).
    """

    bands: tuple[str, ...] | None = None
    base_filters: int = 16
    depth: int = 5
    dropout: float = 0.1
    batch_norm: bool = True
    bn_momentum: float = 0.9
    n_classes: int | None = None
    loss: str = "tversky"
    alpha: float = 0.3
    beta: float = 0.7
    gamma: float = 0.75
    lr: float | None = None
    batch_size: int = 32
    epochs: int = 50
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    patience: int = 10
    reduce_lr: bool = True
    reduce_lr_patience: int = 4
    reduce_lr_factor: float = 0.5
    min_lr: float = 1e-6
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    init_from: str | None = None
    freeze_encoder: bool = False
    mixed_precision: str = "auto"
    strategy: str = "auto"
    tpu: str | None = None
    cache: str = "auto"
    shuffle_buffer: int = 512
    label: str | None = None
    stats_patches: int = 256
    saved_model: bool = True
    allow_partial: bool = False

    def __post_init__(self) -> None:
        for name in (*_INT_FIELDS, *_FLOAT_FIELDS, *_BOOL_FIELDS, *_STR_FIELDS):
            object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        object.__setattr__(self, "bands", _coerce_bands(self.bands))
        object.__setattr__(self, "augment", _coerce_augment(self.augment))
        self._validate()

    def _validate(self) -> None:
        positive = ("base_filters", "depth", "batch_size", "epochs", "steps_per_epoch",
                    "validation_steps", "n_classes", "reduce_lr_patience", "stats_patches")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        for name in ("patience", "shuffle_buffer", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ConfigError(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if self.lr is not None and not 0.0 < self.lr < 1.0:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if not 0.0 < self.reduce_lr_factor < 1.0:
            raise ConfigError(f"reduce_lr_factor must be in (0, 1), got {self.reduce_lr_factor}")
        if not 0.0 <= self.min_lr < 1.0:
            raise ConfigError(f"min_lr must be in [0, 1), got {self.min_lr}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ConfigError(f"alpha and beta must be >= 0 and not both 0, got "
                              f"{self.alpha}, {self.beta}")
        if self.gamma <= 0:
            raise ConfigError(f"gamma must be positive, got {self.gamma}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {PRECISIONS}, got "
                              f"{self.mixed_precision!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.freeze_encoder and not self.init_from:
            raise ConfigError("freeze_encoder needs init_from: an encoder is only worth "
                              "freezing when it comes from a trained artifact")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (YAML); unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bands"] = list(self.bands) if self.bands is not None else None
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def loss_params(self) -> dict[str, float]:
        """The parameters of :attr:`loss` for :func:`model.losses.get_loss`."""
        return {
            "tversky": {"alpha": self.alpha, "beta": self.beta},
            "focal_tversky": {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma},
        }.get(self.loss, {})


def _coerce(name: str, value: Any) -> Any:
    """Check one scalar setting's type (numbers may come as YAML strings, e.g. ``1e-3``)."""
    if value is None:
        if name in _OPTIONAL:
            return None
        raise ConfigError(f"{name} must be set (got null)")
    try:
        if name in _BOOL_FIELDS:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError("not a boolean")
        if name in _INT_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("not an integer")
            return int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError("not a number")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("not finite")
            return number
        if not isinstance(value, str) or not value:
            raise ValueError("not a non-empty string")
        return value
    except (TypeError, ValueError) as exc:
        kind = ("true/false" if name in _BOOL_FIELDS else "an integer" if name in _INT_FIELDS
                else "a number" if name in _FLOAT_FIELDS else "a string")
        raise ConfigError(f"{name} must be {kind}, got {value!r} ({exc})") from None


def _coerce_bands(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [b.strip() for b in value.split(",") if b.strip()]
    if not isinstance(value, list | tuple) or not value or not all(
            isinstance(b, str) and b for b in value):
        raise ConfigError(f"bands must be a list of band names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"bands repeat a name: {list(value)}")
    return tuple(value)


def _coerce_augment(value: Any) -> AugmentConfig:
    if isinstance(value, AugmentConfig):
        return value
    if value is None or value is False:
        return AugmentConfig(enabled=False)
    if isinstance(value, str):
        return parse_augment(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"augment must be a mapping of augmentation settings, got {value!r}")
    known = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown augment setting(s) {unknown}; known: {sorted(known)}")
    try:
        return AugmentConfig(**dict(value))
    except TypeError as exc:
        raise ConfigError(f"bad augment settings {dict(value)}: {exc}") from exc


def parse_augment(text: str) -> AugmentConfig:
    """Parse ``--augment``: ``none``, or the augmentations to switch on.

    E.g. ``flip_h,flip_v,rot90,rot45,shear=0.2,blur=0.3,sharpen=0.3``: the named flags are
    on, every other one off; ``shear``, ``blur`` and ``sharpen`` take a value (blur and
    sharpen default to probability 0.5, shear to 0.2).
    """
    text = text.strip()
    if text.lower() in ("none", "off", "no", ""):
        return AugmentConfig(enabled=False)
    settings: dict[str, Any] = {"flip_h": False, "flip_v": False, "rot90": False}
    defaults = {"shear": 0.2, "blur": 0.5, "sharpen": 0.5}
    for item in text.split(","):
        name, _, raw = item.strip().partition("=")
        if name in ("flip_h", "flip_v", "rot90", "rot45"):
            if raw:
                raise ConfigError(f"--augment {name} takes no value, got {item!r}")
            settings[name] = True
        elif name in defaults:
            try:
                settings[name] = float(raw) if raw else defaults[name]
            except ValueError:
                raise ConfigError(f"--augment {name} needs a number, got {raw!r}") from None
        else:
            raise ConfigError(
                f"unknown augmentation {name!r} in --augment {text!r}; use none or a list of "
                "flip_h, flip_v, rot90, rot45, shear[=F], blur[=P], sharpen[=P]"
            )
    return AugmentConfig(**settings)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None
                ) -> tuple[TrainConfig, dict[str, list]]:
    """Read a YAML config and apply ``overrides`` (CLI flags; ``None`` values are skipped).

    The YAML holds :class:`TrainConfig` fields, and optionally a ``tune`` mapping of field
    name -> list of values for :func:`tune`.

    Returns:
        ``(config, tune_grid)``.
    """
    values: dict[str, Any] = {}
    grid: dict[str, list] = {}
    if path:
        import yaml

        if not tf.io.gfile.exists(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with tf.io.gfile.GFile(path, "r") as f:
            try:
                loaded = yaml.safe_load(f.read())
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of settings")
        values = dict(loaded)
        raw_grid = values.pop("tune", None) or {}
        if not isinstance(raw_grid, dict):
            raise ConfigError(f"'tune' in {path!r} must map settings to lists of values")
        grid = {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in raw_grid.items()}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "augment" and isinstance(values.get("augment"), dict) and isinstance(value, dict):
            value = {**values["augment"], **value}
        values[key] = value
    return TrainConfig.from_dict(values), grid


# ---------------------------------------------------------------------------------------
# file helpers (local or gs://, through tf.io.gfile)
# ---------------------------------------------------------------------------------------


def _join(*parts: str) -> str:
    return data_mod._join(*parts)


def _write_text(path: str, text: str) -> None:
    """Write a small text file atomically (temp + rename; one object on GCS)."""
    tmp = f"{path}.partial"
    parent = os.path.dirname(path)
    if parent and not tf.io.gfile.exists(parent):
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_json(path: str, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def _save_weights(model: keras.Model, path: str) -> None:
    tmp = path.replace(".weights.h5", ".partial.weights.h5")
    model.save_weights(tmp, overwrite=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _remove_tree(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def _copy_tree(src: str, dst: str) -> None:
    _remove_tree(dst)
    for folder, _, files in tf.io.gfile.walk(src):
        rel = folder[len(src.rstrip("/")):].strip("/")
        target = _join(dst, rel) if rel else dst
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(_join(folder, name), _join(target, name), overwrite=True)


# ---------------------------------------------------------------------------------------
# model construction, transfer learning
# ---------------------------------------------------------------------------------------


def architecture_of(model: keras.Model) -> dict[str, Any]:
    """The :func:`model.unet.build_unet` settings of a built U-Net, read from its layers.

    Raises:
        ArtifactError: when the model is not a U-Net built by :mod:`model.unet`.
    """
    names = {layer.name for layer in model.layers}
    try:
        depth = 0
        while f"enc{depth}_conv1" in names:
            depth += 1
        first = model.get_layer("enc0_conv1")
        batch_norm = "enc0_bn1" in names
        return {
            "base_filters": int(first.filters),
            "depth": depth,
            "batch_norm": batch_norm,
            "bn_momentum": float(model.get_layer("enc0_bn1").momentum) if batch_norm else 0.9,
            "dropout": float(model.get_layer("enc0_dropout").rate)
            if "enc0_dropout" in names else 0.0,
            "n_classes": int(model.outputs[0].shape[-1]),
        }
    except (ValueError, AttributeError) as exc:
        raise ArtifactError(
            f"the model {model.name!r} is not a U-Net built by model.unet ({exc}); "
            "--init-from needs an artifact written by `landslides train`"
        ) from exc


def _copy_weights(src: keras.Model, dst: keras.Model, what: str) -> None:
    """Copy weights layer by layer (by name), with a clear error on any mismatch."""
    for layer in src.layers:
        if not layer.weights:
            continue
        try:
            dst.get_layer(layer.name).set_weights(layer.get_weights())
        except ValueError as exc:
            raise ArtifactError(f"cannot copy the weights of layer {layer.name!r} from "
                                f"{what}: {exc}") from exc


def _load_init(path: str) -> Artifact:
    try:
        return load_artifact(path)
    except ArtifactError as exc:
        raise ArtifactError(f"--init-from {path!r}: {exc}") from exc


def _init_bands(init: Artifact, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    if requested is None or tuple(requested) == init.bands:
        return init.bands
    missing = sorted(set(init.bands) - set(requested))
    extra = sorted(set(requested) - set(init.bands))
    if missing or extra:
        raise ConfigError(
            f"--init-from {init.path!r} was trained on bands {list(init.bands)}; the requested "
            f"bands {list(requested)} lack {missing} and add {extra}: fine-tune on the same "
            "bands (by name), or train from scratch"
        )
    logger.info("bands reordered to the artifact's order %s", list(init.bands))
    return init.bands


def _set_frozen(model: keras.Model) -> int:
    layers = encoder_layers(model)
    for layer in layers:
        layer.trainable = False
    return len(layers)


# ---------------------------------------------------------------------------------------
# metric, callbacks
# ---------------------------------------------------------------------------------------


class BestThresholdF1(keras.metrics.Metric):
    """Landslide F1 at the best of ``bins + 1`` decision thresholds ``i / bins``.

    Keeps two histograms of the landslide probability (labelled landslide and background
    pixels; 255 ignored), so the confusion counts at every threshold are cumulative sums:
    the same counts as :func:`model.metrics.best_threshold` at that resolution. Used for
    model selection: independent of where the outputs' calibration currently puts 0.5.
    """

    def __init__(self, bins: int = 200, name: str = "f1_best", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.bins = int(bins)
        self.pos = self.add_variable(shape=(self.bins + 1,), initializer="zeros", name="pos")
        self.neg = self.add_variable(shape=(self.bins + 1,), initializer="zeros", name="neg")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_pred = tf.cast(y_pred, tf.float32)
        prob = y_pred[..., 0] if y_pred.shape[-1] == 1 else 1.0 - y_pred[..., 0]
        truth = tf.cast(y_true, tf.float32)
        if truth.shape.rank == y_pred.shape.rank:
            truth = truth[..., 0]
        valid = tf.not_equal(truth, float(IGNORE_VALUE))
        index = tf.clip_by_value(tf.cast(tf.floor(prob * self.bins), tf.int32), 0, self.bins)
        landslide = tf.logical_and(valid, truth > 0)
        background = tf.logical_and(valid, tf.equal(truth, 0.0))
        flat = tf.reshape(index, [-1])
        for var, which in ((self.pos, landslide), (self.neg, background)):
            counts = tf.math.unsorted_segment_sum(  # runs under XLA/TPU, unlike bincount
                tf.reshape(tf.cast(which, tf.float32), [-1]), flat, self.bins + 1)
            var.assign_add(tf.cast(counts, var.dtype))

    def result(self) -> Any:
        tp = tf.cumsum(self.pos, reverse=True)
        fp = tf.cumsum(self.neg, reverse=True)
        fn = tf.reduce_sum(self.pos) - tp
        return tf.reduce_max(tf.math.divide_no_nan(2.0 * tp, 2.0 * tp + fp + fn))

    def reset_state(self) -> None:
        for var in (self.pos, self.neg):
            var.assign(tf.zeros_like(var))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins}


class _Checkpointer(keras.callbacks.Callback):
    """Saves last/best weights and the callbacks' state at every epoch end; restores it."""

    def __init__(self, backup: str, config: dict, early: keras.callbacks.EarlyStopping | None,
                 plateau: keras.callbacks.ReduceLROnPlateau | None, state: dict | None,
                 started: float, write: bool = True) -> None:
        super().__init__()
        self.backup = backup
        self.write = write  # only the chief worker writes
        self.config = config
        self.early = early
        self.plateau = plateau
        self.state = state or {}
        self.best = float(self.state.get("best", -math.inf))
        self.best_epoch = int(self.state.get("best_epoch", -1))
        self.seconds = float(self.state.get("seconds", 0.0))
        self.started = started

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Runs after EarlyStopping/ReduceLROnPlateau reset themselves in theirs.
        for name, cb in (("early", self.early), ("plateau", self.plateau)):
            for attr, value in self.state.get(name, {}).items():
                if cb is not None:
                    setattr(cb, attr, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        f1 = logs.get(MONITOR)
        improved = f1 is not None and float(f1) > self.best
        if f1 is not None and improved:
            self.best, self.best_epoch = float(f1), epoch
        if not self.write:
            return
        tf.io.gfile.makedirs(self.backup)
        if improved:
            _save_weights(self.model, _join(self.backup, "best.weights.h5"))
        _save_weights(self.model, _join(self.backup, "last.weights.h5"))
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state = {
            "epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch, "lr": lr,
            "seconds": self.seconds + time.perf_counter() - self.started,
            "config": self.config,
            "early": _callback_state(self.early, ("wait", "best", "best_epoch")),
            "plateau": _callback_state(self.plateau, ("wait", "best", "cooldown_counter")),
        }
        _write_json(_join(self.backup, "state.json"), state)


def _callback_state(cb: keras.callbacks.Callback | None, attrs: Sequence[str]) -> dict:
    if cb is None:
        return {}
    out = {}
    for attr in attrs:
        value = getattr(cb, attr, None)
        if isinstance(value, int | float | np.generic) and math.isfinite(float(value)):
            out[attr] = value.item() if isinstance(value, np.generic) else value
    return out


class _ProgressLog(keras.callbacks.Callback):
    """One log line per epoch with the metrics, patches/s and the ETA."""

    def __init__(self, epochs: int, batch_size: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.batch_size = batch_size
        self.times: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        took = time.perf_counter() - self.start
        self.times.append(took)
        eta = (self.epochs - epoch - 1) * float(np.median(self.times))
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                         if k in ("loss", "f1", "val_loss", "val_precision", "val_recall",
                                  "val_f1", "val_f1_best", "learning_rate"))
        logger.info("epoch %d/%d: %s (%.1f s, %.1f patches/s, ETA %.0f s)", epoch + 1,
                    self.epochs, shown, took, self.steps * self.batch_size / max(took, 1e-9),
                    eta)


class _EpochSummaries(keras.callbacks.Callback):
    """TensorBoard scalars per epoch (``logs/train``, ``logs/validation``).

    Written as plain ``simple_value`` summaries with TensorFlow's own event writer, which
    TensorBoard reads, so training does not need the ``tensorboard`` package installed
    (Keras' ``TensorBoard`` callback does).
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        if name not in self.writers:
            self.writers[name] = tf.summary.create_file_writer(_join(self.log_dir, name))
        return self.writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from tensorflow.core.framework import summary_pb2

        groups: dict[str, list] = {"train": [], "validation": []}
        for key, value in (logs or {}).items():
            group, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            groups[group].append(summary_pb2.Summary.Value(tag=f"epoch_{tag}",
                                                           simple_value=float(value)))
        for group, values in groups.items():
            if values:
                with self._writer(group).as_default():
                    tf.summary.experimental.write_raw_pb(
                        summary_pb2.Summary(value=values).SerializeToString(), step=epoch)
                self._writer(group).flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self.writers.values():
            writer.close()


def _trim_history(path: str, next_epoch: int) -> None:
    """Drop rows of epochs that will be run again (written after the last checkpoint)."""
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path, "r") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and int(r[0]) < next_epoch]
    if len(kept) != len(body):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *kept])
        _write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------
# prediction over a dataset
# ---------------------------------------------------------------------------------------


def _landslide_probability(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    return y[..., 0] if y.shape[-1] == 1 else 1.0 - y[..., 0]


def _validation_pixels(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Landslide truth and probability of every labelled validation pixel."""
    truths, probs = [], []
    for image, mask in ds:
        prob = _landslide_probability(model.predict_on_batch(image))
        labels = mask.numpy()[..., 0]
        keep = labels != IGNORE_VALUE
        truths.append(labels[keep] > 0)
        probs.append(prob[keep])
    if not truths:
        raise ConfigError("the validation split yielded no patch: check the val shards")
    return np.concatenate(truths), np.concatenate(probs)


def calibrate(model: keras.Model, ds: tf.data.Dataset) -> dict[str, Any]:
    """The decision threshold with the best validation F1, and the metrics there and at 0.5."""
    truth, prob = _validation_pixels(model, ds)
    threshold, _ = best_threshold(truth.astype(np.uint8), prob)
    at_best = confusion_counts(truth.astype(np.uint8), prob, threshold)
    at_half = confusion_counts(truth.astype(np.uint8), prob, 0.5)
    return {
        "threshold": threshold,
        "val": {**scores(at_best), **at_best, "threshold": threshold},
        "val_at_0.5": {**scores(at_half), **at_half, "threshold": 0.5},
        "val_pixels": int(truth.size),
        "val_positive_pixels": int(np.count_nonzero(truth)),
    }


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------


def _resolve_classes(shards: data_mod.ShardSet, n_classes: int | None
                     ) -> tuple[int, dict[str, int]]:
    manifest_classes = dict((shards.manifest or {}).get("classes")
                            or {"background": 0, "landslide": 1})
    if n_classes is None:
        n_classes = 1 if len(manifest_classes) <= 2 else len(manifest_classes)
    if n_classes == 1:
        return 1, {"background": 0, "landslide": 1}
    if n_classes == 2:
        raise ConfigError("n_classes 2 is a binary task: use n_classes 1 (sigmoid)")
    if len(manifest_classes) > n_classes:
        raise ConfigError(f"the shards have classes {manifest_classes}, more than n_classes "
                          f"{n_classes}")
    classes = manifest_classes if len(manifest_classes) == n_classes else {
        "background": 0, **{f"class_{i}": i for i in range(1, n_classes)}}
    return n_classes, classes


def _cache_for(config: TrainConfig, shards: data_mod.ShardSet, split: str, n_bands: int) -> bool:
    if config.cache != "auto":
        return config.cache == "memory"
    size = data_mod.estimated_bytes(shards, split, n_bands)
    return size is not None and size <= CACHE_LIMIT_BYTES


def train(
    data: str,
    out: str,
    config: TrainConfig | None = None,
    val_data: str | None = None,
    callbacks: Iterable[keras.callbacks.Callback] = (),
) -> dict:
    """Train the U-Net on export shards and write the model artifact to ``out``.

    Args:
        data: Export folder (``manifest.json`` + split folders) or glob of shards.
        out: Artifact folder, local or ``gs://``; also holds ``history.csv``, ``logs/`` and,
            while running, ``_backup/`` (from which an interrupted run resumes).
        config: Hyper-parameters (default :class:`TrainConfig`).
        val_data: Validation shards (folder or glob); default: the ``val`` split of ``data``.
        callbacks: Extra Keras callbacks, run after the built-in ones.

    Returns:
        The ``artifact.json`` content (``{}`` on the non-chief workers of a multi-worker
        run: only the chief writes the backup, the history, the logs and the artifact).

    Raises:
        ConfigError: bad settings, bands the shards lack, missing splits.
        ArtifactError: a corrupt or incompatible ``init_from`` artifact.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    shards = data_mod.find_shards(data, label=config.label)
    val_shards = data_mod.find_shards(val_data, label=config.label) if val_data else shards
    for s in {id(shards): shards, id(val_shards): val_shards}.values():
        check_complete(s, config.allow_partial, "train on")
    if shards.patches("train") == 0:
        raise ConfigError(f"the manifest of {shards.source!r} counts 0 training patches: "
                          f"export with a train fraction (and check its dropped counts)")
    init = _load_init(config.init_from) if config.init_from else None
    if init is not None:
        bands = _init_bands(init, config.bands)
        shards.resolve_bands(bands)  # the shards must hold the artifact's bands
    else:
        bands = shards.resolve_bands(config.bands)
    val_shards.resolve_bands(bands)
    # the input stack the artifact will record; a selection of bands that is not a stack
    # fails here, before any epoch runs or any file is written
    stack = _stack_of(shards.manifest or {}, bands)
    train_files = shards.split_files("train", include_other=True)
    val_files = val_shards.split_files("val", include_other=val_data is not None)
    if val_shards.patches("val") == 0:
        raise ConfigError(f"the manifest of {val_shards.source!r} counts 0 validation patches: "
                          "export with a val fraction, or pass --val-data")

    if init is not None:
        arch = architecture_of(init.model)
        norm = init.meta.get("normalization") or {}
        mean, std, norm_origin = norm.get("mean"), norm.get("std"), f"artifact {init.path}"
        if mean is None or std is None:
            raise ArtifactError(f"--init-from {init.path!r}: artifact.json has no normalization")
        n_classes, classes = arch["n_classes"], init.classes
        if n_classes == 1:
            classes = {"background": 0, "landslide": 1}
        changed = {k: (getattr(config, k), v) for k, v in arch.items()
                   if getattr(config, k) != v and k != "n_classes"}
        if changed:
            logger.info("architecture from %s: %s (config values replaced)", init.path,
                        {k: v for k, (_, v) in changed.items()})
        resolved = config.replace(bands=bands, lr=config.lr or FINE_TUNE_LR,
                                  n_classes=n_classes, **{k: v for k, v in arch.items()
                                                          if k != "n_classes"})
    else:
        n_classes, classes = _resolve_classes(shards, config.n_classes)
        mean, std, norm_origin = data_mod.normalisation_stats(shards, bands,
                                                              config.stats_patches)
        resolved = config.replace(bands=bands, lr=config.lr or DEFAULT_LR, n_classes=n_classes)
    patch_size = shards.patch_size
    multiple = size_multiple(resolved.depth)
    if patch_size % multiple:
        raise ConfigError(f"patches of {patch_size} px do not fit a U-Net of depth "
                          f"{resolved.depth} (sides must be multiples of {multiple}): "
                          "lower depth or re-export with another patch size")
    assert resolved.lr is not None

    strategy = choose_strategy(resolved.strategy, resolved.tpu)
    policy = precision_policy(resolved.mixed_precision, strategy)
    replicas = strategy.num_replicas_in_sync
    if resolved.batch_size % replicas:
        raise ConfigError(f"batch_size {resolved.batch_size} must be a multiple of the "
                          f"{replicas} replicas")
    static = isinstance(strategy, tf.distribute.TPUStrategy)
    keras.utils.set_random_seed(resolved.seed)
    train_ds = data_mod.shard_dataset(
        shards, train_files, bands, resolved.batch_size, training=True,
        augment_config=resolved.augment, seed=resolved.seed,
        shuffle_buffer=resolved.shuffle_buffer,
        cache=_cache_for(resolved, shards, "train", len(bands)),
        repeat=resolved.steps_per_epoch is not None, drop_remainder=static,
    )
    val_ds = data_mod.shard_dataset(
        val_shards, val_files, bands, resolved.batch_size, training=False,
        cache=_cache_for(resolved, val_shards, "val", len(bands)), drop_remainder=static,
    )

    chief = is_chief(strategy)
    if chief:
        tf.io.gfile.makedirs(out)
    backup = _join(out, BACKUP)
    history_path = _join(out, HISTORY)
    config_dict = resolved.to_dict()
    state = _read_state(backup, config_dict)  # every worker resumes from the chief's backup

    with dtype_policy(policy), strategy.scope():
        model = build_unet(bands, resolved.base_filters, resolved.depth, resolved.dropout,
                           resolved.batch_norm, n_classes, mean, std, patch_size,
                           bn_momentum=resolved.bn_momentum)
        if init is not None:
            _copy_weights(init.model, model, f"--init-from {init.path!r}")
        if resolved.freeze_encoder:
            logger.info("froze %d encoder layers", _set_frozen(model))
        model.compile(
            optimizer=keras.optimizers.Adam(resolved.lr),
            loss=get_loss(resolved.loss, **resolved.loss_params),
            metrics=[*landslide_metrics(0.5), BestThresholdF1()],
        )
        initial_epoch = 0
        if state is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(_join(backup, "last.weights.h5"))
            model.optimizer.learning_rate.assign(state["lr"])
            initial_epoch = int(state["epoch"])
            logger.info("resuming %s from epoch %d (best %s %.4f at epoch %d)", out,
                        initial_epoch + 1, MONITOR, state["best"], state["best_epoch"] + 1)
            if chief:
                _trim_history(history_path, initial_epoch)
        elif chief and tf.io.gfile.exists(history_path):
            tf.io.gfile.remove(history_path)

        early = (keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max",
                                               patience=resolved.patience)
                 if resolved.patience > 0 else None)
        plateau = (keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR, mode="max", factor=resolved.reduce_lr_factor,
            patience=resolved.reduce_lr_patience, min_lr=resolved.min_lr)
            if resolved.reduce_lr else None)
        checkpointer = _Checkpointer(backup, config_dict, early, plateau, state, started,
                                     write=chief)
        cbs: list[keras.callbacks.Callback] = [cb for cb in (early, plateau) if cb is not None]
        cbs.append(checkpointer)
        if chief:
            cbs += [keras.callbacks.CSVLogger(history_path, append=True),
                    _EpochSummaries(_join(out, LOGS))]
        cbs += [_ProgressLog(resolved.epochs, resolved.batch_size), *callbacks]
        if initial_epoch < resolved.epochs:
            with warnings.catch_warnings():
                # Keras warns when a finite dataset of unknown length ends an epoch: expected.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                with data_mod.named_data_errors([*train_files, *val_files],
                                                shards.compression):
                    model.fit(train_ds, validation_data=val_ds, epochs=resolved.epochs,
                              shuffle=False, initial_epoch=initial_epoch,
                              steps_per_epoch=resolved.steps_per_epoch,
                              validation_steps=resolved.validation_steps, callbacks=cbs,
                              verbose=0)
        if not chief:
            logger.info("worker done; the chief writes the artifact to %s", out)
            return {}
        best_path = _join(backup, "best.weights.h5")
        if tf.io.gfile.exists(best_path):
            model.load_weights(best_path)

    # The artifact is a plain float32 single-device model, whatever trained it.
    final = build_unet(bands, resolved.base_filters, resolved.depth, resolved.dropout,
                       resolved.batch_norm, n_classes, mean, std, patch_size,
                       bn_momentum=resolved.bn_momentum)
    _copy_weights(model, final, "the trained model")
    calibrated = calibrate(final, val_ds)
    epochs_run = _epochs_in_history(history_path)
    metrics = {
        **calibrated,
        "best_epoch": checkpointer.best_epoch + 1,
        "best_epoch_val_f1_best": checkpointer.best,
        "epochs_run": epochs_run,
        "train_seconds": round(checkpointer.seconds + time.perf_counter() - started, 1),
    }
    manifest = shards.manifest or {"bands": list(shards.available),
                                   "patch_size": patch_size, "source": shards.source}
    training = {**config_dict, "data": data, "val_data": val_data,
                "normalization_from": norm_origin, "strategy_used": type(strategy).__name__,
                "replicas": replicas, "precision_policy": policy}
    meta = save_artifact(
        final, out, bands, patch_size, mean=mean, std=std, classes=classes,
        threshold=calibrated["threshold"], training=training, metrics=metrics,
        manifest=manifest, pixel_size=(shards.manifest or {}).get("pixel_size"),
        size_multiple=multiple, saved_model=resolved.saved_model,
        extra={"stack": stack},
    )
    _remove_tree(backup)
    val = calibrated["val"]
    logger.info("trained %s: val F1 %.3f (precision %.3f, recall %.3f, IoU %.3f) at threshold "
                "%.3f; artifact %s", meta["model_id"], val["f1"], val["precision"],
                val["recall"], val["iou"], calibrated["threshold"], out)
    return meta


def check_complete(shards: data_mod.ShardSet, allow_partial: bool, what: str) -> None:
    """Refuse an export whose manifest records failed chunks, unless told otherwise.

    Raises:
        ConfigError: ``chunks_failed`` > 0 and not ``allow_partial``; names the count, the
            list of failures and the two ways out.
    """
    manifest = shards.manifest or {}
    failed = int(manifest.get("chunks_failed") or 0)
    if not failed:
        return
    total = manifest.get("chunks")
    where = _join(shards.root, "failed_chunks.jsonl")
    if not allow_partial:
        raise ConfigError(
            f"the export {shards.source!r} is incomplete: {failed} of {total} chunk(s) "
            f"failed (listed in {where}). Rerun the export to redo them, or pass "
            f"--allow-partial to {what} it anyway")
    logger.warning("%s: %d of %s chunk(s) of the export failed (%s); going on as asked "
                   "(--allow-partial)", shards.source, failed, total, where)


def _stack_of(manifest: Mapping[str, Any], bands: Sequence[str]) -> dict[str, Any]:
    """The input stack the model takes: the manifest's, cut to the bands trained on.

    The stack is a plain record here (model/ does not import pipelines/): its ``channels``
    are the bands in order; predict rebuilds it with ``pipelines.geo.stack``.
    """
    stack = manifest.get("stack")
    if not stack or list(stack.get("channels", ())) == list(bands):
        return dict(stack) if stack else {"bands": list(bands), "references": [],
                                          "change": [], "channels": list(bands)}
    if any("@" in b for b in bands):
        raise ConfigError(
            f"Training on channels {list(bands)} of the stack {stack.get('channels')}: a "
            f"model that takes reference channels must take the manifest's whole stack "
            f"(drop --bands), or only target bands (no '@').")
    return {"bands": list(bands), "references": [], "change": [], "channels": list(bands)}


def _read_state(backup: str, config: dict) -> dict | None:
    path = _join(backup, "state.json")
    if not (tf.io.gfile.exists(path) and tf.io.gfile.exists(_join(backup, "last.weights.h5"))):
        return None
    state = data_mod.read_json(path)
    saved = state.get("config", {})
    differ = sorted(k for k in set(saved) | set(config)
                    if k not in _RESUMABLE_CHANGES and saved.get(k) != config.get(k))
    if differ:
        raise ConfigError(
            f"{backup!r} holds an interrupted run with other settings ({differ}: "
            f"{[saved.get(k) for k in differ]} then, {[config.get(k) for k in differ]} now): "
            "resume it with the same settings, use another --out, or delete that folder"
        )
    return state


def _epochs_in_history(path: str) -> int:
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path, "r") as f:
        return max(0, sum(1 for row in csv.reader(f) if row) - 1)


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------


def evaluate(
    model: str,
    data: str,
    split: str = "test",
    out: str | None = None,
    threshold: float | None = None,
    batch_size: int = 16,
    label: str | None = None,
    allow_partial: bool = False,
) -> dict:
    """Score an artifact on shards: precision, recall, F1, IoU and the confusion matrix.

    Args:
        model: Artifact folder.
        data: Export folder (its ``split`` is scored) or glob of shards (all are scored).
        split: Split of an export folder.
        out: Where to write ``evaluation.json``: a ``.json`` path or a folder (default: the
            artifact folder).
        threshold: Decision threshold (default: the artifact's calibrated one).
        batch_size: Patches per prediction batch.
        label: Label feature of Earth Engine records.
        allow_partial: Score an export some of whose chunks failed.

    Returns:
        The evaluation: counts in pixels (ignored pixels excluded), scores, the
        confusion matrix ``[[tn, fp], [fn, tp]]`` (rows: truth background/landslide), the
        threshold, the number of patches; for a multi-class model also the class
        confusion matrix of the arg-max class.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    art = load_artifact(model)
    threshold = art.threshold if threshold is None else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
    shards = data_mod.find_shards(data, label=label)
    check_complete(shards, allow_partial, "evaluate on")
    try:
        shards.resolve_bands(art.bands)
    except ConfigError as exc:
        raise ConfigError(f"the model {model!r} needs bands {list(art.bands)}: {exc}") from exc
    if shards.patch_size % art.size_multiple:
        raise ConfigError(f"patches of {shards.patch_size} px do not fit the model (sides must "
                          f"be multiples of {art.size_multiple})")
    files = shards.all_files() if data_mod._is_glob(data) else shards.split_files(split)
    ds = data_mod.shard_dataset(shards, files, art.bands, batch_size)
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    k = art.n_classes
    class_matrix = np.zeros((k, k), np.int64) if k > 1 else None
    n_patches = ignored = 0
    with data_mod.named_data_errors(files, shards.compression):
        for image, mask in ds.as_numpy_iterator():
            prob = art.predict(image, batch_size=len(image))
            labels = mask[..., 0]
            for key, value in confusion_counts(labels, prob, threshold).items():
                counts[key] += value
            ignored += int(np.count_nonzero(labels == IGNORE_VALUE))
            n_patches += len(image)
            if class_matrix is not None:
                pred = np.argmax(art.model.predict_on_batch(image), axis=-1)
                keep = (labels != IGNORE_VALUE) & (labels < k)
                np.add.at(class_matrix, (labels[keep].astype(int), pred[keep]), 1)
    if n_patches == 0:
        raise ConfigError(f"no patch in {files[:3]}...: nothing to evaluate")
    result: dict[str, Any] = {
        "model": model, "model_id": art.model_id, "data": data,
        "split": None if data_mod._is_glob(data) else split, "files": len(files),
        "patches": n_patches, "threshold": threshold, **scores(counts), **counts,
        "pixels": sum(counts.values()), "ignored_pixels": ignored,
        "confusion_matrix": {"labels": ["background", "landslide"],
                             "rows": "truth", "columns": "prediction",
                             "matrix": [[counts["tn"], counts["fp"]],
                                        [counts["fn"], counts["tp"]]]},
    }
    if class_matrix is not None:
        names = sorted(art.classes, key=lambda n: art.classes[n])
        result["class_confusion_matrix"] = {"labels": names, "rows": "truth",
                                            "columns": "prediction",
                                            "matrix": class_matrix.tolist()}
    target = out or model
    path = target if target.endswith(".json") else _join(target, EVALUATION)
    if not target.endswith(".json"):
        tf.io.gfile.makedirs(target)
    _write_json(path, result)
    result["path"] = path
    logger.info("evaluated %s on %d patches of %s: precision %.3f recall %.3f F1 %.3f IoU %.3f",
                art.model_id, n_patches, data, result["precision"], result["recall"],
                result["f1"], result["iou"])
    return result


# ---------------------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------------------

_SHORT = {"lr": "lr", "base_filters": "f", "batch_size": "b"}


def _trial_id(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{_SHORT.get(key, key)}{text}")
    return "-".join(parts).replace("/", "_")


def tune(
    data: str,
    out: str,
    config: TrainConfig | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    val_data: str | None = None,
) -> list[dict]:
    """Grid search: train one artifact per combination and rank them by validation F1.

    Args:
        data: Shards (see :func:`train`).
        out: Output folder: ``trials/<id>/`` per trial, ``tuning.csv`` (best first) and
            ``best/`` (a copy of the best trial's artifact).
        config: Settings shared by all trials (keep ``epochs`` small).
        grid: Setting name -> values (default: lr 1e-3, 1e-4 x base_filters 8, 16 x
            batch_size 16, 32, as in the multi-temporal U-Net study).
        val_data: Validation shards.

    Returns:
        The table rows, best first. Trials whose artifact exists already (same settings)
        are not trained again, so an interrupted search resumes.
    """
    config = config or TrainConfig()
    grid = dict(grid or {"lr": [1e-3, 1e-4], "base_filters": [8, 16], "batch_size": [16, 32]})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, values in grid.items():
        if key not in known:
            raise ConfigError(f"cannot tune {key!r}: not a training setting ({sorted(known)})")
        if not values:
            raise ConfigError(f"the grid of {key!r} is empty")
    combos = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    trials = [(combo, config.replace(**combo)) for combo in combos]  # validates them all
    logger.info("grid search of %d trials over %s", len(trials), grid)
    rows = []
    for i, (setting, trial_config) in enumerate(trials, 1):
        tid = _trial_id(setting)
        trial_out = _join(out, "trials", tid)
        meta = _finished_trial(trial_out, trial_config)
        if meta is None:
            logger.info("trial %d/%d %s", i, len(trials), tid)
            meta = train(data, trial_out, trial_config, val_data=val_data)
        else:
            logger.info("trial %d/%d %s: done before, kept", i, len(trials), tid)
        val = meta["metrics"]["val"]
        rows.append({
            "trial": tid, **setting,
            "val_f1": round(val["f1"], 6), "val_precision": round(val["precision"], 6),
            "val_recall": round(val["recall"], 6), "val_iou": round(val["iou"], 6),
            "threshold": meta["threshold"], "best_epoch": meta["metrics"]["best_epoch"],
            "epochs_run": meta["metrics"]["epochs_run"],
            "seconds": meta["metrics"]["train_seconds"], "model_id": meta["model_id"],
            "path": trial_out,
        })
    rows.sort(key=lambda r: -r["val_f1"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    columns = ["rank", "trial", *grid, "val_f1", "val_precision", "val_recall", "val_iou",
               "threshold", "best_epoch", "epochs_run", "seconds", "model_id", "path"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tf.io.gfile.makedirs(out)
    _write_text(_join(out, TUNING), buf.getvalue())
    _copy_tree(rows[0]["path"], _join(out, "best"))
    logger.info("best trial %s: val F1 %.4f; table %s", rows[0]["trial"], rows[0]["val_f1"],
                _join(out, TUNING))
    return rows


def _finished_trial(path: str, config: TrainConfig) -> dict | None:
    try:
        meta = read_meta(path)
    except ArtifactError:
        return None
    saved = {k: v for k, v in meta.get("training", {}).items() if k in config.to_dict()}
    wanted = config.to_dict()
    same = all(saved.get(k) == v for k, v in wanted.items() if v is not None)
    return meta if same and "val" in meta.get("metrics", {}) else None

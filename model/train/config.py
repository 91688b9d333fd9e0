"""The hyper-parameters of a training run: :class:`TrainConfig`, read from YAML and flags.

Every field is coerced (numbers may come as YAML strings) and validated when the config is
built, before anything is read; unknown keys are refused. ``--augment`` has its own short
syntax (:func:`parse_augment`). The defaults that depend on the data or on ``init_from``
(bands, classes, learning rate, architecture) are filled in by :func:`model.train.fit.train`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from model.augment import AugmentConfig
from model.distribute import PRECISIONS, STRATEGIES
from model.errors import ConfigError
from model.losses import LOSSES
from model.train.selection import MONITOR, MONITORS

CACHE_MODES = ("auto", "memory", "none")
#: How the learning rate moves: ``plateau`` halves it when the monitor stalls; ``cosine``
#: decays it from ``lr`` to ``min_lr`` over ``epochs`` along a half cosine (one value per
#: epoch), for a fixed budget of epochs.
LR_SCHEDULES = ("plateau", "cosine")

_INT_FIELDS = ("base_filters", "depth", "batch_size", "epochs", "steps_per_epoch",
               "validation_steps", "patience", "reduce_lr_patience", "seed", "shuffle_buffer",
               "stats_patches", "n_classes")
_FLOAT_FIELDS = ("dropout", "bn_momentum", "alpha", "beta", "gamma", "lr", "reduce_lr_factor",
                 "min_lr", "ema")
_BOOL_FIELDS = ("batch_norm", "reduce_lr", "freeze_encoder", "saved_model", "allow_partial",
                "deterministic")
_STR_FIELDS = ("loss", "mixed_precision", "strategy", "tpu", "cache", "label", "init_from",
               "lr_schedule")
_OPTIONAL = ("bands", "steps_per_epoch", "validation_steps", "n_classes", "lr", "tpu", "label",
             "init_from")


def _opt(default: Any, help: str, *, factory: bool = False, **more: Any) -> Any:
    """A setting that is also a ``landslides train|tune`` flag.

    The metadata (``help``, with ``%(default)s`` for the default, and ``choices``) is what
    ``pipelines/options/train.py`` builds the flags from; settings without it are YAML-only.
    """
    meta = {"help": help, **more}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run.

    Attributes:
        bands: Input bands by name, in model order (default: the manifest's bands).
        base_filters: Filters of the first U-Net block (8/16/32...).
        depth: Encoder blocks (5: 10 encoder conv layers).
        stem: Widths of 1x1 convolution units before the first block (a per-pixel network
            over the input channels, see :func:`model.unet.build_unet`); empty: none.
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
        lr_schedule: ``plateau`` (``reduce_lr`` below) or ``cosine`` (from ``lr`` down to
            ``min_lr`` over ``epochs``; ``reduce_lr`` is then not used), see
            :data:`LR_SCHEDULES`.
        reduce_lr: Reduce the learning rate when the monitor stalls (``plateau``).
        reduce_lr_patience: Epochs without improvement before reducing.
        reduce_lr_factor: Factor applied to the learning rate.
        min_lr: Lower bound of the learning rate (the end of ``cosine``).
        ema: Momentum (per step) of an exponential moving average of the weights, e.g.
            0.99; validation, the best checkpoint and the artifact then use the averaged
            weights, which vary less from one training run to the next than the weights
            of any one step. 0: off.
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
        deterministic: The same shards, config and seed give the same weights: records
            are read, shuffled and augmented in a fixed order, and on GPUs and TPUs
            TensorFlow's op determinism is switched on. ``False`` lets tf.data reorder
            for speed.
    """

    bands: tuple[str, ...] | None = _opt(None, "Comma-separated input bands (default: the "
                                         "manifest's).")
    base_filters: int = _opt(16, "Filters of the first block (%(default)s).")
    depth: int = _opt(5, "U-Net encoder blocks (default %(default)s).")
    stem: tuple[int, ...] = _opt((), "Comma-separated widths of 1x1 convolutions before the "
                                 "first block, mixing each pixel's bands (e.g. 64,32; "
                                 "default none).")
    dropout: float = _opt(0.1, "Dropout rate (default %(default)s).")
    batch_norm: bool = _opt(True, "Batch normalisation (default %(default)s).")
    bn_momentum: float = _opt(0.9, "Batch-norm momentum (default %(default)s).")
    n_classes: int | None = _opt(None, "1: binary sigmoid; K: softmax classes (default: from "
                                 "the manifest).")
    loss: str = _opt("tversky", "Loss (default %(default)s).", choices=tuple(LOSSES))
    alpha: float = _opt(0.3, "Tversky false-positive weight (%(default)s).")
    beta: float = _opt(0.7, "Tversky false-negative weight (%(default)s).")
    gamma: float = _opt(0.75, "Focal Tversky exponent (%(default)s).")
    lr: float | None = _opt(None, "Adam learning rate (1e-3; 1e-4 with --init-from).")
    batch_size: int = _opt(32, "Global batch size (default %(default)s).")
    epochs: int = _opt(50, "Maximum epochs (default %(default)s).")
    steps_per_epoch: int | None = _opt(None, "Batches per epoch (default: all).")
    validation_steps: int | None = None
    patience: int = _opt(10, "Early-stopping patience (%(default)s; 0: off).")
    monitor: str = _opt(MONITOR, "What early stopping, reduce-on-plateau and the best "
                        "checkpoint follow: val_f1_best (F1 at the best threshold) or "
                        "val_loss (smoother on a small validation split; default "
                        "%(default)s).", choices=tuple(MONITORS))
    lr_schedule: str = _opt("plateau", "plateau: halve the learning rate when the monitor "
                            "stalls (default); cosine: decay it from --lr to min_lr over "
                            "--epochs, for a fixed budget of epochs.", choices=LR_SCHEDULES)
    reduce_lr: bool = True
    reduce_lr_patience: int = 4
    reduce_lr_factor: float = 0.5
    min_lr: float = 1e-6
    ema: float = _opt(0.0, "Momentum per step of a moving average of the weights that "
                      "validation, checkpoints and the artifact use (e.g. 0.99; default "
                      "%(default)s: off).")
    augment: AugmentConfig = _opt(AugmentConfig, "none, or e.g. flip_h,flip_v,rot90,rot45,"
                                  "shear=0.2,blur=0.3,sharpen=0.3.", factory=True)
    seed: int = _opt(0, "Seed (default %(default)s).")
    init_from: str | None = _opt(None, "Start from this model artifact (fine-tuning).")
    freeze_encoder: bool = _opt(False, "Keep the encoder of --init-from fixed.")
    mixed_precision: str = _opt("auto", "auto: mixed precision on GPU/TPU only (default).",
                                choices=PRECISIONS)
    strategy: str = _opt("auto", "tf.distribute strategy (auto: from the devices and "
                         "TF_CONFIG).", choices=STRATEGIES)
    tpu: str | None = _opt(None, "TPU name or address (implies --strategy tpu).")
    cache: str = _opt("auto", "Cache parsed patches in memory (auto: when under 1 GiB).",
                      choices=CACHE_MODES)
    shuffle_buffer: int = 512
    label: str | None = _opt(None, "Label band of Earth Engine TFRecord exports.")
    stats_patches: int = 256
    saved_model: bool = _opt(True, "Also export a SavedModel into the artifact (default "
                             "%(default)s).")
    allow_partial: bool = _opt(False, "Train on an export some of whose chunks failed "
                               "(refused by default).")
    deterministic: bool = _opt(True, "Same shards, config and seed give the same model "
                               "(default %(default)s; --no-deterministic lets tf.data "
                               "reorder for speed).")

    def __post_init__(self) -> None:
        for name in (*_INT_FIELDS, *_FLOAT_FIELDS, *_BOOL_FIELDS, *_STR_FIELDS):
            object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        object.__setattr__(self, "bands", _coerce_bands(self.bands))
        object.__setattr__(self, "stem", _coerce_widths("stem", self.stem))
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
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if not 0.0 <= self.min_lr < 1.0:
            raise ConfigError(f"min_lr must be in [0, 1), got {self.min_lr}")
        if self.lr is not None and self.min_lr >= self.lr:
            raise ConfigError(f"min_lr {self.min_lr:g} is not below lr {self.lr:g}: the "
                              "learning-rate schedules would raise the rate instead of "
                              "lowering it; lower min_lr or raise lr")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(MONITORS)}, got "
                              f"{self.monitor!r}")
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got "
                              f"{self.lr_schedule!r}")
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
        """Plain values (bands as a list), as saved in the artifact and the backup state."""
        out = dataclasses.asdict(self)
        out["bands"] = list(self.bands) if self.bands is not None else None
        out["stem"] = list(self.stem)  # as JSON reads it back (a resumed run compares them)
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``, validated again."""
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


def _coerce_widths(name: str, value: Any) -> tuple[int, ...]:
    """Layer widths from a list (YAML), a tuple or ``"64,32"`` (a flag); empty: none."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{name} must be a list of layer widths, got {value!r}")
    widths = []
    for v in value:
        try:
            w = int(v) if not isinstance(v, bool | float) else None
        except ValueError:
            w = None
        if w is None or w < 1:
            raise ConfigError(f"{name} must be positive integer widths (e.g. 64,32), got "
                              f"{list(value)!r}")
        widths.append(w)
    return tuple(widths)


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

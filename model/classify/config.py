"""The settings of one classifier training run: :class:`ClassifyConfig`.

Every field that carries a ``help`` is also a ``landslides classify-train`` flag (see
``pipelines/options/classify.py``, which builds the flags from this metadata; ``model/``
never imports ``pipelines/``). Values are checked when the config is built, before any
image is read. Light: importing this module loads neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model.errors import ConfigError

#: ``weights`` values that are not a file path.
WEIGHTS_KEYWORDS = ("imagenet", "none")
#: Default landslide share of a positive shard patch: at 64-px patches of 10 m, 20 pixels
#: (2000 m2), about the median landslide of the synthetic world.
MIN_SHARE = 0.005


def _opt(default: Any, help: str, **more: Any) -> Any:
    """A setting that is also a ``landslides classify-train`` flag."""
    return field(default=default, metadata={"help": help, **more})


def _names(value: Any, what: str) -> tuple[str, ...] | None:
    """``"a,b"`` or a list -> a tuple of non-empty, distinct names (``None`` stays)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value or not all(
            isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} must be a list of band names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{what} repeat a name: {list(value)}")
    return tuple(value)


@dataclass(frozen=True)
class ClassifyConfig:
    """Every setting of one classifier training run.

    Attributes:
        backbone: The ``keras.applications`` model (any name, e.g. ``EfficientNetB3``,
            case-insensitive) or ``baseline`` (a small CNN). Set per run by
            ``classify-train --backbone``.
        weights: ``imagenet`` (Keras downloads the file once into ``~/.keras/models/``),
            the path of a weights file of the 3-band backbone, or ``none`` (from scratch).
        image_size: Side of the square model input; images are resized to it (default:
            the first training image's height, or the patch size of export shards).
        bands: Bands to use from export shards, in order (default: all of the manifest);
            for image folders, the bands to use, in order: picked by name from images
            that name theirs (red, green, blue for jpg/png, a GeoTIFF's band
            descriptions), the names of unnamed bands otherwise (default: the bands of
            the first image that names them, see :mod:`model.classify.data`).
        rgb: The three bands, in red, green, blue order, that take the pretrained RGB
            filters (default: found by name: ``red``/``B4``, ``green``/``B3``,
            ``blue``/``B2``); every other band starts from their mean.
        min_landslide_share: A shard patch is ``landslide`` when at least this share of its
            labelled pixels is landslide.
        val_fraction: Share of each class held out for validation when an image folder has
            no ``val/`` folder.
        batch_size: Images per batch.
        epochs: Epochs with the backbone frozen (pretrained) or of the whole model (from
            scratch).
        fine_tune_epochs: Epochs with the top ``unfreeze`` layers unfrozen (pretrained only).
        unfreeze: Weighted layers of the backbone, counted from the top, unfrozen for
            fine-tuning (batch norms stay frozen); 0 skips fine-tuning.
        lr: Adam learning rate of the first phase.
        fine_tune_lr: Learning rate of fine-tuning (default: ``lr / 10``).
        dropout: Dropout before the classification layer.
        class_balance: Weight each class by the inverse of its frequency.
        augment: Random flips and 90-degree rotations of training images.
        patience: Epochs without a better validation ROC-AUC before stopping (0: never).
        reduce_lr_patience: Epochs without improvement before the learning rate is halved.
        min_lr: Lowest learning rate of reduce-on-plateau.
        bn_momentum: Momentum of the moving statistics of every batch norm that trains
            (Keras' applications use 0.99-0.999, made for long runs; in a run of a few
            epochs the inference statistics would lag far behind the weights).
        baseline_filters: Filters of the first block of the ``baseline`` CNN.
        seed: Seed of the split, the weights, shuffling and augmentation.
        saved_model: Also export a SavedModel into the artifact.
        allow_partial: Train on an export some of whose chunks failed.
    """

    backbone: str = "baseline"
    weights: str = _opt("imagenet", "imagenet (Keras' cache, downloaded once), a weights "
                        "file of the 3-band backbone, or none (default %(default)s).")
    image_size: int | None = _opt(None, "Model input side; images are resized (default: the "
                                  "data's).")
    bands: tuple[str, ...] | None = _opt(None, "Bands of export shards to use (default: all); "
                                         "for images, picked by name (names of unnamed bands).")
    rgb: tuple[str, ...] | None = _opt(None, "The bands taking the pretrained red, green, "
                                       "blue filters, e.g. B4,B3,B2 (default: by name).")
    min_landslide_share: float = _opt(MIN_SHARE, "Shard patches: landslide when at least this "
                                      "share of labelled pixels is (default %(default)s).")
    val_fraction: float = _opt(0.2, "Image folders without val/: share held out per class "
                               "(default %(default)s).")
    batch_size: int = _opt(32, "Batch size (default %(default)s).")
    epochs: int = _opt(10, "Epochs with a frozen pretrained backbone, or from scratch "
                       "(default %(default)s).")
    fine_tune_epochs: int = _opt(10, "Epochs with the top --unfreeze layers trainable "
                                 "(default %(default)s).")
    unfreeze: int = _opt(20, "Top weighted backbone layers unfrozen for fine-tuning (default "
                         "%(default)s; 0: no fine-tuning).")
    lr: float = _opt(1e-3, "Learning rate (default %(default)s).")
    fine_tune_lr: float | None = _opt(None, "Fine-tuning learning rate (default: --lr / 10).")
    dropout: float = _opt(0.2, "Dropout before the output layer (default %(default)s).")
    class_balance: bool = _opt(True, "Weight classes by inverse frequency (default "
                               "%(default)s).")
    augment: bool = _opt(True, "Random flips and 90-degree rotations (default %(default)s).")
    patience: int = _opt(5, "Early-stopping patience on validation ROC-AUC (default "
                         "%(default)s; 0: off).")
    reduce_lr_patience: int = 3
    min_lr: float = 1e-6
    bn_momentum: float = _opt(0.9, "Momentum of every batch norm's moving statistics "
                              "(default %(default)s).")
    baseline_filters: int = _opt(32, "Filters of the baseline CNN's first block (default "
                                 "%(default)s).")
    seed: int = _opt(0, "Seed (default %(default)s).")
    saved_model: bool = _opt(True, "Also export a SavedModel into the artifact (default "
                             "%(default)s).")
    allow_partial: bool = _opt(False, "Train on an export some of whose chunks failed.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", _names(self.bands, "bands"))
        object.__setattr__(self, "rgb", _names(self.rgb, "rgb"))
        if self.rgb is not None and len(self.rgb) != 3:
            raise ConfigError(f"rgb names three bands (red, green, blue), got {list(self.rgb)}")
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ConfigError(f"backbone must be a name, got {self.backbone!r}")
        if not isinstance(self.weights, str) or not self.weights.strip():
            raise ConfigError(f"weights must be imagenet, none or a file path, got "
                              f"{self.weights!r}")
        if self.weights.lower() in WEIGHTS_KEYWORDS:
            object.__setattr__(self, "weights", self.weights.lower())
        for name in ("batch_size", "baseline_filters", "reduce_lr_patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got "
                                  f"{getattr(self, name)}")
        for name in ("epochs", "fine_tune_epochs", "unfreeze", "patience", "seed"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.epochs + self.fine_tune_epochs < 1:
            raise ConfigError("epochs and fine_tune_epochs are both 0: nothing would train")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8 pixels, got {self.image_size}")
        for name, low, high in (("min_landslide_share", 0.0, 1.0), ("val_fraction", 0.0, 1.0),
                                ("dropout", 0.0, 1.0), ("bn_momentum", 0.0, 1.0)):
            value = float(getattr(self, name))
            if not (low <= value < high) or math.isnan(value):
                raise ConfigError(f"{name} must be in [{low}, {high}), got {value}")
        if float(self.min_landslide_share) <= 0.0:
            raise ConfigError("min_landslide_share must be above 0: a patch without "
                              "landslide pixels is never a landslide")
        for name in ("lr", "fine_tune_lr", "min_lr"):
            value = getattr(self, name)
            if value is not None and not 0.0 < float(value) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights."""
        return self.weights != "none" and self.backbone.lower() != "baseline"

    @property
    def fine_tune_rate(self) -> float:
        """The learning rate of fine-tuning."""
        return float(self.fine_tune_lr if self.fine_tune_lr is not None else self.lr / 10.0)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ClassifyConfig:
        """Build from a mapping (flags, YAML); unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown classifier setting(s) {unknown}; known: "
                              f"{sorted(known)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> ClassifyConfig:
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as saved in the artifact."""
        out = dataclasses.asdict(self)
        for name in ("bands", "rgb"):
            out[name] = list(out[name]) if out[name] is not None else None
        return out


__all__ = ["MIN_SHARE", "WEIGHTS_KEYWORDS", "ClassifyConfig"]

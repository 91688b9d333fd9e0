"""The options of ``landslides train|tune|evaluate|validate-precision``.

The training settings are the fields of :class:`model.train.config.TrainConfig` that carry
a ``help`` (``model/`` defines them and never imports ``pipelines/``); as flags they
override the ``--config`` YAML, so every one defaults to "unset". Importing this module
loads TensorFlow: the CLI imports it only for these commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.precision import DEFAULT_MAX_CHANGED, DEFAULT_MAX_DRIFT, PRECISIONS, REFERENCE
from model.train.config import TrainConfig
from pipelines.errors import ConfigError
from pipelines.options.fields import nested, option

SETTINGS = "training settings (override --config)"
DATA = "Export folder (manifest.json + train/val/) or glob of TFRecord shards."
VAL_DATA = "Validation shards (default: the val split of --data)."


def _grid(kind: type, flag: str) -> Callable[[str], tuple]:
    """A parser of one comma-separated grid axis of ``landslides tune``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in str(text).split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--{flag} needs comma-separated {kind.__name__}s, got "
                              f"{text!r}") from None
        if not values:
            raise ConfigError(f"--{flag} is empty")
        return values

    return parse


@dataclass(frozen=True)
class TrainOptions:
    """What ``landslides train`` is told."""

    data: str = option(help=DATA)
    out: str = option(help="Model artifact folder (local or gs://).")
    config: str | None = option(None, "YAML file of training settings (flags override it).")
    val_data: str | None = option(None, VAL_DATA)
    settings: dict[str, Any] = nested(TrainConfig, overrides=True, group=SETTINGS)


@dataclass(frozen=True)
class TuneOptions:
    """What ``landslides tune`` is told: a grid, and the settings every trial shares."""

    data: str = option(help=DATA)
    out: str = option(help="Folder for trials/, tuning.csv (sorted by val F1) and best/.")
    config: str | None = option(None, "YAML settings; its `tune:` mapping may hold the grid.")
    val_data: str | None = option(None, VAL_DATA)
    lr: tuple[float, ...] | None = option(None, "Learning rates, e.g. 1e-3,1e-4.",
                                          parse=_grid(float, "lr"))
    filters: tuple[int, ...] | None = option(None, "Base filters, e.g. 8,16,32.",
                                             parse=_grid(int, "filters"))
    batch_size: tuple[int, ...] | None = option(None, "Batch sizes, e.g. 16,32.",
                                                parse=_grid(int, "batch-size"))
    settings: dict[str, Any] = nested(TrainConfig, overrides=True, group=SETTINGS,
                                      exclude=("base_filters", "lr", "batch_size"))

    def grid(self) -> dict[str, list]:
        """The grid axes given as flags, by TrainConfig field."""
        axes = {"lr": self.lr, "base_filters": self.filters, "batch_size": self.batch_size}
        return {k: list(v) for k, v in axes.items() if v is not None}


@dataclass(frozen=True)
class EvaluateOptions:
    """The parameters of :func:`model.train.evaluate`."""

    model: str = option(help="Model artifact folder.")
    data: str = option(help="Export folder (scored: --split) or glob of shards (all scored).")
    split: str = option("test", "Split of an export folder (%(default)s).")
    out: str | None = option(None, "evaluation.json path or folder (default: the artifact).")
    threshold: float | None = option(None, "Decision threshold (default: the artifact's "
                                     "calibrated one).")
    batch_size: int = option(16, "Patches per batch (%(default)s).")
    label: str | None = option(None, "Label band of Earth Engine TFRecord exports.")
    allow_partial: bool = option(False, "Score an export some of whose chunks failed "
                                 "(refused by default).")


def _precisions(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in str(text).split(",") if v.strip())
    bad = [v for v in values if v not in PRECISIONS or v == REFERENCE]
    if not values or bad:
        raise ConfigError(f"--precisions takes a comma-separated list of "
                          f"{', '.join(p for p in PRECISIONS if p != REFERENCE)}, got {text!r}")
    return values


@dataclass(frozen=True)
class ValidatePrecisionOptions:
    """The parameters of :func:`model.train.validate_precisions`."""

    model: str = option(help="Model artifact folder (updated: its artifact.json records the "
                        "held-out F1 per precision, int8 adds model.int8.tflite).")
    precisions: tuple[str, ...] = option(
        ("bf16", "int8"), "Precisions to validate against fp32, comma-separated "
        "(%(default)s).", parse=_precisions)
    data: str | None = option(None, "Held-out shards: export folder or glob (default: the "
                              "test split of the artifact's training data, else its "
                              "validation data).")
    split: str | None = option(None, "Split of --data (default: test, else val).")
    max_drift: float = option(DEFAULT_MAX_DRIFT, "Held-out F1 a precision may lose against "
                              "fp32 and still be used by predict (%(default)s).")
    max_changed: float = option(DEFAULT_MAX_CHANGED, "Share of the held-out labelled pixels "
                                "a precision may decide otherwise than fp32 and still be "
                                "used by predict (%(default)s).")
    calibration_data: str | None = option(None, "Shards whose train split calibrates int8 "
                                          "(default: the artifact's training data).")
    calibration_patches: int = option(256, "Training patches that calibrate int8 "
                                      "(%(default)s).")
    batch_size: int = option(16, "Patches per batch (%(default)s).")
    allow_partial: bool = option(False, "Score held-out or calibration exports some of whose "
                                 "chunks failed (refused by default).")


__all__ = ["EvaluateOptions", "TrainOptions", "TuneOptions", "ValidatePrecisionOptions"]

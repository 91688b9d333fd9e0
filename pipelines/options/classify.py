"""The options of ``landslides classify-train``, ``classify-eval`` and ``explain``.

The training settings are the fields of :class:`model.classify.config.ClassifyConfig`
that carry a ``help`` (``model/`` defines them and never imports ``pipelines/``); as flags
they are "unset" unless given, so the dataclass's defaults stay in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.classify.config import ClassifyConfig
from pipelines.errors import ConfigError
from pipelines.options.fields import nested, option

SETTINGS = "training settings"
#: The backbones of the study the classifier reproduces (any keras.applications name works).
STUDY_BACKBONES = ("baseline", "EfficientNetB3", "ResNet50", "MobileNetV2", "DenseNet121",
                   "NASNetLarge")


def parse_names(texts: Any) -> tuple[str, ...]:
    """``--backbone A,B --backbone C`` (or one string) -> ``("A", "B", "C")``."""
    items = [texts] if isinstance(texts, str) else list(texts or ())
    names = tuple(n.strip() for text in items for n in str(text).split(",") if n.strip())
    if not names:
        raise ConfigError("--backbone is empty: name at least one backbone")
    return names


def parse_inputs(texts: Any) -> tuple[str, ...]:
    """``--input`` given once or more -> the paths, in order."""
    items = [texts] if isinstance(texts, str) else list(texts or ())
    paths = tuple(str(t).strip() for t in items if str(t).strip())
    if not paths:
        raise ConfigError("--input is empty: give image files, folders, globs or an export")
    return paths


def parse_region(text: Any) -> tuple[int, int, int, int]:
    """``col0,row0,col1,row1`` -> four integers."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--region needs four integers col0,row0,col1,row1 (a pixel box, "
                          f"end exclusive), got {text!r}")
    return values[0], values[1], values[2], values[3]


@dataclass(frozen=True)
class ClassifyTrainOptions:
    """What ``landslides classify-train`` is told."""

    data: str = option(help="Image folder (landslide/ and non_landslide/, or train/ val/ "
                       "test/ holding them) or export folder (manifest.json + shards).")
    out: str = option(help="Model artifact folder; with several backbones, one artifact per "
                      "backbone inside it and comparison.csv.")
    backbone: tuple[str, ...] = option(
        ("EfficientNetB3",), "Backbone(s): baseline (a small CNN) or any keras.applications "
        "model, e.g. " + ", ".join(STUDY_BACKBONES[1:]) + "; comma-separated or repeated "
        "(default %(default)s).", parse=parse_names, action="append")
    settings: dict[str, Any] = nested(ClassifyConfig, overrides=True, group=SETTINGS)

    def config(self) -> ClassifyConfig:
        """The run's settings: the dataclass defaults with the flags given."""
        return ClassifyConfig.from_dict(self.settings)


@dataclass(frozen=True)
class ClassifyEvalOptions:
    """What ``landslides classify-eval`` is told."""

    model: str = option(help="Classifier artifact, or the folder classify-train wrote for "
                        "several backbones (all are scored).")
    data: str = option(help="Image folder or export folder scored.")
    split: str | None = option(None, "Split scored (default: test; every image of a folder "
                               "holding the class folders directly).")
    out: str | None = option(None, "Folder for the evaluation (default: beside the model).")
    threshold: float | None = option(None, "Decision threshold (default: each model's "
                                     "calibrated one).")
    batch_size: int = option(32, "Images per batch (%(default)s).")
    allow_partial: bool = option(False, "Score an export some of whose chunks failed.")


@dataclass(frozen=True)
class ExplainOptions:
    """What ``landslides explain`` is told."""

    model: str = option(help="Model artifact: an image classifier or a U-Net.")
    input: tuple[str, ...] = option(help="Image file (jpg, png, GeoTIFF), folder or glob of "
                                    "them, or an export folder (its patches); repeatable.",
                                    parse=parse_inputs, action="append")
    out: str = option(help="Folder for the overlays (PNG), heat maps (COG, when "
                      "georeferenced) and explanations.json.")
    layer: str | None = option(None, "Layer whose feature maps are weighed (default: the "
                               "classifier's last feature map, the U-Net's bottleneck).")
    target: str = option("landslide", "Classifier: the class explained (%(default)s).",
                         choices=("landslide", "non_landslide"))
    region: tuple[int, int, int, int] | None = option(
        None, "U-Net: explain the probability summed over this pixel box col0,row0,col1,row1 "
        "(default: over the predicted landslide pixels).", parse=parse_region)
    threshold: float | None = option(None, "U-Net: threshold of the predicted mask (default: "
                                     "the model's).")
    split: str = option("test", "Split of an export folder given as --input (%(default)s).")
    limit: int = option(16, "Patches taken from an export folder (%(default)s).")
    opacity: float = option(0.5, "Opacity of the heat map over the image (%(default)s).")
    cog: bool = option(True, "Write georeferenced heat-map COGs (default on).")

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if not 0.0 <= self.opacity <= 1.0:
            raise ConfigError(f"opacity must be in [0, 1], got {self.opacity}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")


__all__ = ["STUDY_BACKBONES", "ClassifyEvalOptions", "ClassifyTrainOptions", "ExplainOptions",
           "parse_inputs", "parse_names", "parse_region"]

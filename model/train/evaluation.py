"""``landslides evaluate``: score an artifact on shards and write ``evaluation.json``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from model import data as data_mod
from model.artifact import Artifact, load_artifact, require_segmentation
from model.errors import ConfigError
from model.metrics import confusion_counts, scores
from model.schema import IGNORE_VALUE
from model.train.files import join, write_json
from model.train.inputs import check_complete, check_inputs_match

logger = logging.getLogger(__name__)

#: The file :func:`evaluate` writes into a folder given as ``out``.
EVALUATION = "evaluation.json"


def check_scoring_data(art: Artifact, shards: data_mod.ShardSet, model: str, data: str,
                       allow_partial: bool = False, use: str = "evaluate it",
                       partial_use: str = "evaluate on") -> None:
    """Refuse shards a model cannot be scored (or calibrated) on, before any is read.

    The export must be complete (:func:`~model.train.inputs.check_complete`), hold the
    model's bands, be made as the model's inputs (references, band units, pixel size:
    :func:`~model.train.inputs.check_inputs_match`), and its patch sides must be multiples
    of the model's size multiple.

    Args:
        art: The artifact.
        shards: The shards.
        model: How messages name the artifact.
        data: How messages name the shards.
        allow_partial: Accept an export some of whose chunks failed.
        use: What the shards are for, as the fix of other inputs ends (``"evaluate it"``).
        partial_use: What an incomplete export would be used for (``"evaluate on"``).

    Raises:
        ConfigError: naming what is wrong and the fix.
    """
    check_complete(shards, allow_partial, partial_use)
    try:
        shards.resolve_bands(art.bands)
    except ConfigError as exc:
        raise ConfigError(f"the model {model!r} needs bands {list(art.bands)}: {exc}") from exc
    check_inputs_match(art.meta, shards.manifest, model, data, use=use)
    if shards.patch_size % art.size_multiple:
        raise ConfigError(f"patches of {shards.patch_size} px do not fit the model (sides must "
                          f"be multiples of {art.size_multiple})")


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
    require_segmentation(art.meta, model, "`landslides evaluate`")
    threshold = art.threshold if threshold is None else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
    shards = data_mod.find_shards(data, label=label)
    check_scoring_data(art, shards, model, data, allow_partial)
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
    path = target if target.endswith(".json") else join(target, EVALUATION)
    if not target.endswith(".json"):
        tf.io.gfile.makedirs(target)
    write_json(path, result)
    result["path"] = path
    logger.info("evaluated %s on %d patches of %s: precision %.3f recall %.3f F1 %.3f IoU %.3f",
                art.model_id, n_patches, data, result["precision"], result["recall"],
                result["f1"], result["iou"])
    return result

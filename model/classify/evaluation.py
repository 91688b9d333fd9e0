"""Scores of an image classifier: counts, ratios, ROC-AUC, and the backbone comparison.

``landslides classify-eval --model ARTIFACT_OR_FOLDER --data DIR`` scores one artifact,
or every artifact of a folder written by ``classify-train`` with several backbones, on
the same examples and prints one table. Ratios that divide by zero are ``0.0``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from model.artifact import META, Artifact, load_artifact
from model.classify.config import MIN_SHARE
from model.classify.data import ClassifyData, arrays, load_data
from model.errors import ArtifactError, ConfigError
from model.train.files import join, write_json, write_text
from model.train.inputs import check_inputs_match

logger = logging.getLogger(__name__)

#: What :func:`evaluate_classifiers` writes into an artifact (one model) or the folder.
EVALUATION = "classification_eval.json"
COMPARISON = "comparison.csv"
#: The columns of the comparison tables (``classify-train`` and ``classify-eval``).
TABLE = ("backbone", "weights", "params", "accuracy", "precision", "recall", "specificity",
         "f1", "roc_auc", "tp", "fp", "fn", "tn", "threshold", "seconds", "model_id")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a landslide outscores a non-landslide.

    Mann-Whitney U with average ranks for ties; ``nan`` when one class is absent.
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.asarray(scores, np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_scores(labels: np.ndarray, probs: np.ndarray, threshold: float
                          ) -> dict[str, Any]:
    """Accuracy, precision, recall, specificity, F1, ROC-AUC and the confusion counts.

    Args:
        labels: 1 landslide, 0 not.
        probs: Landslide probabilities.
        threshold: An image is predicted landslide when its probability is ``>=`` this.
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    p = np.asarray(probs, np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ConfigError(f"{p.size} probabilities for {y.size} labels")
    pred = p >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(y.size) - tp - fp - fn
    return {
        "examples": int(y.size), "landslides": int(y.sum()), "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, y.size), "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn), "roc_auc": roc_auc(y, p),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "confusion_matrix": {"labels": ["non_landslide", "landslide"], "rows": "truth",
                             "columns": "prediction", "matrix": [[tn, fp], [fn, tp]]},
    }


def predict_split(model: Any, data: ClassifyData, split: str, batch_size: int = 32
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` of every example of a split."""
    x, y = arrays(data.split(split).dataset(batch_size, False, 0))
    if len(x) == 0:
        raise ConfigError(f"the {split!r} split of {data.source!r} holds no example")
    probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)
    return y, probs.reshape(-1)


def is_classifier(meta: dict) -> bool:
    """Whether an artifact's metadata describe an image classifier."""
    return meta.get("task") == "classification"


def artifacts_in(path: str) -> list[str]:
    """The classifier artifacts ``path`` names: itself, or the artifacts in its folders.

    Raises:
        ArtifactError: none found, or an artifact that is not a classifier.
    """
    from model.artifact import read_meta

    root = path.rstrip("/")
    if tf.io.gfile.exists(join(root, META)):
        found = [root]
    else:
        if not tf.io.gfile.isdir(root):
            raise ArtifactError(f"{path!r} does not exist: give a classifier artifact or the "
                                "folder classify-train wrote for several backbones")
        found = sorted(join(root, d.rstrip("/")) for d in tf.io.gfile.listdir(root)
                       if tf.io.gfile.exists(join(root, d.rstrip("/"), META)))
        if not found:
            raise ArtifactError(f"{path!r} holds no model artifact ({META}): train one with "
                                "`landslides classify-train`")
    for folder in found:
        meta = read_meta(folder)
        if not is_classifier(meta):
            raise ArtifactError(
                f"{folder!r} is a {meta.get('task', 'segmentation')} model, not an image "
                f"classifier: score it with `landslides evaluate`, or give an artifact of "
                f"`landslides classify-train`")
    return found


def check_bands(art: Artifact, data: ClassifyData) -> None:
    """Refuse data whose bands are not the model's.

    Raises:
        ConfigError: naming both band lists and what to do.
    """
    if tuple(data.bands) != tuple(art.bands):
        raise ConfigError(
            f"model {art.path!r} takes bands {list(art.bands)}, the data {data.source!r} "
            f"hold {list(data.bands)}: score it on data with those bands, in that order")


def inputs_record(art: Artifact) -> dict[str, Any]:
    """What a classifier took as inputs, as :func:`check_inputs_match` compares them.

    Its bands, pixel size and the manifest it was trained on (band units); the references
    are those of the recorded stack (the artifact's, else its manifest's) that its bands
    take (``B4@prev`` takes ``prev``).
    """
    meta = art.meta
    manifest = meta.get("manifest") or {}
    stack = meta.get("stack") or manifest.get("stack") or {}
    used = {band.partition("@")[2] for band in art.bands if "@" in band}
    references = [r for r in stack.get("references") or () if r.get("name") in used]
    return {"bands": list(art.bands), "pixel_size": meta.get("pixel_size"),
            "manifest": manifest, "stack": {"references": references}}


def check_inputs(art: Artifact, data: ClassifyData) -> None:
    """Refuse data whose bands are not the model's, or export shards made otherwise.

    Band names are compared for any data (:func:`check_bands`); export shards are also
    compared with the export the model was trained on (references under the same channel
    names, band units, pixel size: :func:`~model.train.inputs.check_inputs_match`), as
    ``landslides evaluate`` compares them for a U-Net.

    Raises:
        ConfigError: naming what differs and the fix.
    """
    check_bands(art, data)
    if data.kind == "shards":
        check_inputs_match(inputs_record(art), data.manifest, art.path, data.source)


def evaluate_classifiers(model: str, data: str, split: str | None = None,
                         out: str | None = None, threshold: float | None = None,
                         batch_size: int = 32, allow_partial: bool = False) -> list[dict]:
    """Score one classifier artifact, or each artifact of a folder, on the same examples.

    Args:
        model: An artifact, or a folder of artifacts (``classify-train`` with several
            backbones).
        data: Image folders or export shards.
        split: The split to score (default: ``test``, or every image of a folder holding
            the class folders directly).
        out: Folder for the evaluation (default: the artifact, or the folder of artifacts,
            which also gets ``comparison.csv``).
        threshold: Decision threshold (default: each artifact's calibrated one).
        batch_size: Images per prediction batch.
        allow_partial: Score an export some of whose chunks failed.

    Returns:
        One evaluation per artifact, in table order (best F1 first).

    Raises:
        ConfigError: a bad argument, or data an artifact cannot be scored on (other bands;
            export shards made otherwise than its training shards: see
            :func:`check_inputs`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
    paths = artifacts_in(model)
    results = []
    cache: dict[tuple, ClassifyData] = {}
    for path in paths:
        art = load_artifact(path)
        share = float((art.meta.get("input") or {}).get("min_landslide_share") or MIN_SHARE)
        key = (tuple(art.bands), art.patch_size, share)
        if key not in cache:
            cache[key] = load_data(data, min_share=share, image_size=art.patch_size,
                                   bands=art.bands, augment=False,
                                   allow_partial=allow_partial, scoring=True)
        examples = cache[key]
        check_inputs(art, examples)
        name = split or ("all" if "all" in examples.splits else "test")
        t0 = time.perf_counter()
        labels, probs = predict_split(art.model, examples, name, batch_size)
        thr = art.threshold if threshold is None else float(threshold)
        result = {"model": path, "model_id": art.model_id,
                  "backbone": art.meta.get("backbone"),
                  "weights": (art.meta.get("training") or {}).get("weights"),
                  "params": int(art.model.count_params()), "data": data, "split": name,
                  **classification_scores(labels, probs, thr),
                  "seconds": round(time.perf_counter() - t0, 2)}
        target = out if out and len(paths) == 1 else (join(out, _leaf(path)) if out else path)
        tf.io.gfile.makedirs(target)
        write_json(join(target, EVALUATION), result)
        result["path"] = join(target, EVALUATION)
        results.append(result)
        logger.info("%s on %d examples of %s: F1 %.3f, ROC-AUC %.3f", result["backbone"],
                    result["examples"], name, result["f1"], result["roc_auc"])
    results.sort(key=lambda r: -r["f1"])
    if len(paths) > 1:
        folder = out or model
        write_text(join(folder, COMPARISON), table_csv(results))
    return results


def _leaf(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def table_csv(rows: Sequence[dict]) -> str:
    """The comparison rows as CSV text (columns :data:`TABLE`)."""
    lines = [",".join(TABLE)]
    for row in rows:
        lines.append(",".join("" if row.get(k) is None else
                              f"{row[k]:.4f}" if isinstance(row.get(k), float) and k not in
                              ("seconds",) else str(row[k]) for k in TABLE))
    return "\n".join(lines) + "\n"


def table_text(rows: Sequence[dict], title: str = "") -> str:
    """The comparison rows as an aligned text table, best F1 first."""
    cols = ("backbone", "weights", "params", "accuracy", "precision", "recall", "specificity",
            "f1", "roc_auc", "tp", "fp", "fn", "tn", "seconds")
    cells = [[_cell(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(cols, widths))))
    for row in cells:
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column == "params":
        return f"{int(value) / 1e6:.2f}M"
    if column == "seconds":
        return f"{float(value):.0f}"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return str(value)


__all__ = [
    "COMPARISON",
    "EVALUATION",
    "TABLE",
    "artifacts_in",
    "check_bands",
    "check_inputs",
    "classification_scores",
    "evaluate_classifiers",
    "inputs_record",
    "is_classifier",
    "predict_split",
    "roc_auc",
    "table_csv",
    "table_text",
]

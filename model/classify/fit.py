"""Training image classifiers: the fine-tuning schedule, one backbone or several.

A run (:func:`train_classifier`):

* pretrained weights: the backbone is frozen and the new head trains for ``epochs`` at
  ``lr``; then the top ``unfreeze`` weighted layers of the backbone (batch norms stay
  frozen, in inference mode) train with the head for ``fine_tune_epochs`` at
  ``fine_tune_lr``;
* from scratch (``weights: none``, and the baseline CNN): the whole model trains for
  ``epochs`` at ``lr``;
* every phase: Adam, binary cross-entropy weighted by class (``class_balance``),
  reduce-on-plateau and early stopping on the validation ROC-AUC; the best epoch's
  weights over all phases are kept;
* the decision threshold is calibrated on validation (best F1); the artifact
  (:mod:`model.artifact`, the U-Net's format: ``task: classification``) records the
  backbone, the bands, the normalisation, the schedule and the validation scores, beside
  ``history.csv``.

:func:`train_classifiers` trains several backbones on the same data into
``OUT/<backbone>/`` and writes ``OUT/comparison.csv`` (validation scores, best first).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.artifact import save_artifact
from model.classify.backbones import (
    BASELINE,
    backbone_layers,
    build_classifier,
    resolve_backbone,
)
from model.classify.config import WEIGHTS_KEYWORDS, ClassifyConfig
from model.classify.data import ClassifyData, class_weights, load_data
from model.classify.evaluation import (
    COMPARISON,
    classification_scores,
    predict_split,
    table_csv,
)
from model.errors import ConfigError
from model.metrics import best_threshold
from model.train.files import join, write_text

logger = logging.getLogger(__name__)

HISTORY = "history.csv"
#: The metric early stopping, reduce-on-plateau and the best epoch follow.
MONITOR = "val_auc"


class KeepBest(keras.callbacks.Callback):
    """Remember the weights of the best epoch across phases.

    The best has the highest :data:`MONITOR` and, of those, the lowest validation loss
    (ROC-AUC saturates at 1 on separable data, where the first such epoch is seldom the
    best calibrated).
    """

    def __init__(self) -> None:
        super().__init__()
        self.best = -np.inf
        self.best_loss = np.inf
        self.best_epoch = -1
        self.weights: list | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float((logs or {}).get(MONITOR, np.nan))
        loss = float((logs or {}).get("val_loss", np.inf))
        if not np.isfinite(value):
            return
        if value > self.best or (value == self.best and loss < self.best_loss):
            self.best, self.best_loss, self.best_epoch = value, loss, epoch
            self.weights = self.model.get_weights()


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch: phase, loss, validation ROC-AUC and accuracy, seconds."""

    def __init__(self, name: str, phase: str, last: int) -> None:
        super().__init__()
        self.name, self.phase, self.last = name, phase, last
        self.t0 = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        logger.info("%s %s epoch %d/%d: loss %.4f, val loss %.4f, val ROC-AUC %.4f, val "
                    "accuracy %.4f, lr %.2g (%.1f s)", self.name, self.phase, epoch + 1,
                    self.last, logs.get("loss", np.nan), logs.get("val_loss", np.nan),
                    logs.get(MONITOR, np.nan), logs.get("val_accuracy", np.nan),
                    float(logs.get("learning_rate", np.nan)), time.perf_counter() - self.t0)


def _set_trainable(model: keras.Model, phase: str, unfreeze: int) -> int:
    """Freeze or unfreeze the backbone for a phase; returns its trainable weighted layers."""
    layers = backbone_layers(model)
    weighted = [lyr for lyr in layers if lyr.weights
                and not isinstance(lyr, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.trainable = phase == "scratch"
    if phase == "fine-tune":
        for layer in weighted[max(len(weighted) - unfreeze, 0):]:
            layer.trainable = True
    return sum(1 for lyr in weighted if lyr.trainable)


def _phases(config: ClassifyConfig) -> list[tuple[str, int, float]]:
    """``(phase, epochs, learning rate)`` of the schedule."""
    if not config.pretrained:
        if not config.epochs:
            raise ConfigError("epochs is 0: a model trained from scratch (weights none, or "
                              "the baseline) trains only in its first phase")
        return [("scratch", config.epochs, config.lr)]
    phases = []
    if config.epochs:
        phases.append(("head", config.epochs, config.lr))
    if config.unfreeze and config.fine_tune_epochs:
        phases.append(("fine-tune", config.fine_tune_epochs, config.fine_tune_rate))
    if not phases:
        raise ConfigError("with pretrained weights, epochs 0 and no fine-tuning (unfreeze or "
                          "fine_tune_epochs 0) leave nothing to train")
    return phases


def train_classifier(data: ClassifyData, out: str, config: ClassifyConfig) -> dict:
    """Train one classifier on ``data`` and write its artifact to ``out``.

    Returns:
        The ``artifact.json`` content.

    Raises:
        ConfigError: a split or class missing, an unusable backbone or weights.
    """
    started = time.perf_counter()
    name = resolve_backbone(config.backbone)
    config = config.replace(backbone=name)
    train, val = data.split("train"), data.split("val")
    balance = class_weights(train)  # also: refuses a split without one of the classes
    class_weights(val)
    weights = balance if config.class_balance else None
    if data.mean is None or data.std is None:
        raise ConfigError(f"no training statistics for {data.source!r}")
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(name, data.bands, data.image_size, data.mean, data.std,
                             config.weights, config.rgb, config.dropout,
                             config.baseline_filters)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    tf.io.gfile.makedirs(out)
    history_path = join(out, HISTORY)
    if tf.io.gfile.exists(history_path):
        tf.io.gfile.remove(history_path)
    train_ds = train.dataset(config.batch_size, True, config.seed)
    val_ds = val.dataset(config.batch_size, False, 0)
    keep = KeepBest()
    epoch = 0
    schedule = []
    for phase, epochs, lr in _phases(config):
        trainable = _set_trainable(model, phase, config.unfreeze)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc"),
                               keras.metrics.BinaryAccuracy(name="accuracy")])
        if keep.weights is not None:
            model.set_weights(keep.weights)  # fine-tuning starts from the best head
        logger.info("%s: %s phase, %d epochs at lr %.2g, %d trainable backbone layers, "
                    "%d trainable weights", name, phase, epochs, lr, trainable,
                    sum(int(np.prod(w.shape)) for w in model.trainable_weights))
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="max", factor=0.5,
                                              patience=config.reduce_lr_patience,
                                              min_lr=config.min_lr),
            keep, keras.callbacks.CSVLogger(history_path, append=True),
            EpochLog(name, phase, epoch + epochs)]
        if config.patience:
            callbacks.insert(0, keras.callbacks.EarlyStopping(
                monitor=MONITOR, mode="max", patience=config.patience))
        with warnings.catch_warnings():
            # Keras warns when a finite dataset of unknown length ends an epoch: expected.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            hist = model.fit(train_ds, validation_data=val_ds, initial_epoch=epoch,
                             epochs=epoch + epochs, class_weight=weights,
                             callbacks=callbacks, shuffle=False, verbose=0)
        ran = len(hist.epoch)
        schedule.append({"phase": phase, "epochs": epochs, "epochs_run": ran, "lr": lr,
                         "trainable_backbone_layers": trainable})
        epoch += ran
    if keep.weights is not None:
        model.set_weights(keep.weights)
    for layer in model.layers:  # the artifact's model is plain: everything trainable
        layer.trainable = True
    labels, probs = predict_split(model, data, "val", config.batch_size)
    threshold, _ = best_threshold(labels, probs)
    val_scores = classification_scores(labels, probs, threshold)
    seconds = round(time.perf_counter() - started, 1)
    metrics = {"val": val_scores, "best_epoch": keep.best_epoch + 1,
               "best_val_auc": keep.best, "epochs_run": epoch, "train_seconds": seconds}
    manifest = data.manifest or {"kind": data.kind, "source": data.source,
                                 "bands": list(data.bands)}
    meta = save_artifact(
        model, out, data.bands, data.image_size, mean=data.mean, std=data.std,
        classes={"non_landslide": 0, "landslide": 1}, threshold=threshold,
        training={**config.to_dict(), "data": data.source, "schedule": schedule},
        metrics=metrics, manifest=manifest, pixel_size=data.pixel_size, size_multiple=1,
        saved_model=config.saved_model,
        extra={"task": "classification", "backbone": name,
               "params": int(model.count_params()),
               "input": {"kind": data.kind, "image_size": data.image_size,
                         "min_landslide_share": config.min_landslide_share
                         if data.kind == "shards" else None,
                         "counts": {k: {"examples": s.count, "landslides": s.positives}
                                    for k, s in data.splits.items()}}})
    logger.info("trained %s (%s): val F1 %.3f, ROC-AUC %.3f at threshold %.3f in %.0f s; "
                "artifact %s", name, meta["model_id"], val_scores["f1"], val_scores["roc_auc"],
                threshold, seconds, out)
    return meta


def train_classifiers(data: str, out: str, backbones: Sequence[str],
                      config: ClassifyConfig | None = None) -> list[dict]:
    """Train one classifier per backbone on the same data.

    One backbone: its artifact is ``out``. Several: ``out/<backbone>/`` each, and
    ``out/comparison.csv`` ranks them by validation F1.

    Returns:
        One row per backbone (the columns of the comparison table, plus ``path``), best
        validation F1 first.
    """
    config = config or ClassifyConfig()
    names = [resolve_backbone(b) for b in backbones] or [resolve_backbone(config.backbone)]
    if len(set(names)) != len(names):
        raise ConfigError(f"a backbone is named twice in {list(backbones)}")
    examples = load_data(data, min_share=config.min_landslide_share,
                         image_size=config.image_size, bands=config.bands,
                         val_fraction=config.val_fraction, seed=config.seed,
                         augment=config.augment, allow_partial=config.allow_partial)
    rows = []
    for name in names:
        target = out if len(names) == 1 else join(out, name)
        meta = train_classifier(examples, target, config.replace(backbone=name))
        rows.append(comparison_row(meta, target))
    rows.sort(key=lambda r: -r["f1"])
    if len(names) > 1:
        write_text(join(out, COMPARISON), table_csv(rows))
    return rows


def comparison_row(meta: dict, path: str) -> dict[str, Any]:
    """A row of the comparison table from an artifact's metadata (validation scores)."""
    val = meta["metrics"]["val"]
    weights = meta["training"]["weights"] if meta["backbone"] != BASELINE else "none"
    if weights not in WEIGHTS_KEYWORDS:
        weights = os.path.basename(str(weights))  # a file: its name
    return {"backbone": meta["backbone"], "weights": weights, "params": meta.get("params"),
            **{k: val[k] for k in ("accuracy", "precision", "recall", "specificity", "f1",
                                   "roc_auc", "tp", "fp", "fn", "tn", "threshold")},
            "seconds": meta["metrics"]["train_seconds"], "model_id": meta["model_id"],
            "path": path}


__all__ = ["HISTORY", "MONITOR", "KeepBest", "comparison_row", "train_classifier",
           "train_classifiers"]

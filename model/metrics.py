"""Landslide-class metrics at a decision threshold: Keras metrics and numpy helpers.

The landslide probability of a pixel is the sigmoid output (binary model) or one minus
the background probability (softmax model: all classes but 0 are landslide). A pixel is
predicted landslide when that probability is ``>= threshold``; it is truly landslide when
its class id is non-zero. Pixels labelled :data:`~model.schema.IGNORE_VALUE` (255) are
never counted.

Undefined ratios (``0 / 0``, e.g. precision when nothing is predicted) are reported as
``0.0``, in the Keras metrics and in :func:`scores` alike.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from model.errors import ConfigError
from model.schema import IGNORE_VALUE

_PACKAGE = "landslides"


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


class _ConfusionMetric(keras.metrics.Metric):
    """Stateful landslide TP/FP/FN counts over pixels; subclasses say what to report."""

    def __init__(self, threshold: float = 0.5, name: str | None = None, dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = _check_threshold(threshold)
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        y_true = ops.cast(ops.convert_to_tensor(y_true), self.dtype)
        if len(y_true.shape) == len(y_pred.shape):
            y_true = y_true[..., 0]
        if y_pred.shape[-1] == 1:
            prob = y_pred[..., 0]
        else:
            prob = 1.0 - y_pred[..., 0]
        valid = ops.not_equal(y_true, IGNORE_VALUE)
        weight = ops.cast(valid, self.dtype)
        if sample_weight is not None:
            sw = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            while len(sw.shape) < len(weight.shape):
                sw = ops.expand_dims(sw, -1)
            weight = weight * sw
        truth = ops.cast(ops.greater(y_true, 0), self.dtype)
        pred = ops.cast(ops.greater_equal(prob, self.threshold), self.dtype)
        self.tp.assign_add(ops.sum(weight * pred * truth))
        self.fp.assign_add(ops.sum(weight * pred * (1.0 - truth)))
        self.fn.assign_add(ops.sum(weight * (1.0 - pred) * truth))

    def reset_state(self) -> None:
        for var in (self.tp, self.fp, self.fn):
            var.assign(ops.zeros_like(var))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Precision(_ConfusionMetric):
    """Landslide precision ``TP / (TP + FP)``."""

    def __init__(self, threshold: float = 0.5, name: str = "precision", dtype: Any = None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def result(self) -> Any:
        return ops.divide_no_nan(self.tp, self.tp + self.fp)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Recall(_ConfusionMetric):
    """Landslide recall ``TP / (TP + FN)``."""

    def __init__(self, threshold: float = 0.5, name: str = "recall", dtype: Any = None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def result(self) -> Any:
        return ops.divide_no_nan(self.tp, self.tp + self.fn)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class F1(_ConfusionMetric):
    """Landslide F1 ``2 TP / (2 TP + FP + FN)``."""

    def __init__(self, threshold: float = 0.5, name: str = "f1", dtype: Any = None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def result(self) -> Any:
        return ops.divide_no_nan(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class IoU(_ConfusionMetric):
    """Landslide intersection over union ``TP / (TP + FP + FN)``."""

    def __init__(self, threshold: float = 0.5, name: str = "iou", dtype: Any = None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def result(self) -> Any:
        return ops.divide_no_nan(self.tp, self.tp + self.fp + self.fn)


def landslide_metrics(threshold: float = 0.5) -> list[keras.metrics.Metric]:
    """The four landslide metrics at ``threshold``, for ``model.compile(metrics=...)``."""
    return [Precision(threshold), Recall(threshold), F1(threshold), IoU(threshold)]


# ---------------------------------------------------------------------------------------
# numpy helpers
# ---------------------------------------------------------------------------------------


def _flatten(
    y_true: Any, y_prob: Any, valid: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Landslide truth and probability of the labelled pixels, flattened."""
    truth = np.asarray(y_true)
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.shape != truth.shape:
        if truth.ndim and truth.shape[-1] == 1 and prob.shape[:-1] == truth.shape[:-1]:
            truth = truth[..., 0]
        if prob.shape[:-1] != truth.shape or prob.ndim == 0:
            raise ConfigError(
                f"y_prob of shape {prob.shape} does not fit y_true of shape "
                f"{np.shape(y_true)}: pass per-pixel probabilities of the same shape, or "
                "model outputs with one trailing channel axis"
            )
        prob = prob[..., 0] if prob.shape[-1] == 1 else 1.0 - prob[..., 0]
    keep = truth != IGNORE_VALUE
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.size != truth.size:
            raise ConfigError(
                f"valid mask of shape {valid.shape} does not fit y_true of shape {truth.shape}"
            )
        keep &= valid.reshape(truth.shape)
    return truth[keep] > 0, prob[keep]


def confusion_counts(
    y_true: Any, y_prob: Any, threshold: float = 0.5, valid: Any = None
) -> dict[str, int]:
    """Landslide confusion counts over pixels.

    Args:
        y_true: Class ids (non-zero = landslide, 255 = ignored).
        y_prob: Landslide probability of the same shape, or model output with a trailing
            channel axis (sigmoid ``1`` or softmax ``K``).
        threshold: A pixel is predicted landslide when its probability is ``>= threshold``.
        valid: Optional boolean mask of pixels to count (255 labels are always excluded).

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` as ints.
    """
    threshold = _check_threshold(threshold)
    truth, prob = _flatten(y_true, y_prob, valid)
    pred = prob >= threshold
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(truth.size) - tp - fp - fn}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def scores(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall, F1 and IoU from confusion counts; ``0 / 0`` gives ``0.0``.

    Args:
        counts: A dict with ``tp``, ``fp`` and ``fn`` (``tn`` is not needed).
    """
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
    }


def best_threshold(
    y_true: Any, y_prob: Any, valid: Any = None, bins: int = 1000
) -> tuple[float, float]:
    """The decision threshold that maximises landslide F1, found from histograms.

    Probabilities are binned on the thresholds ``i / bins`` (``i = 0..bins``) once; the
    counts above every threshold are cumulative sums, so the cost is one pass over the
    pixels plus ``O(bins)``. The counts equal :func:`confusion_counts` at each candidate.

    Args:
        y_true: Class ids (non-zero = landslide, 255 = ignored).
        y_prob: Landslide probabilities (see :func:`confusion_counts`).
        valid: Optional boolean mask of pixels to count.
        bins: Threshold resolution (``1 / bins``).

    Returns:
        ``(threshold, f1)``; the lowest threshold among equally good ones, strictly inside
        (0, 1): 0 and 1 would only separate saturated float32 outputs, which does not carry
        over to new data. Without any landslide pixel or prediction the F1 is 0 and the
        threshold 0.5.
    """
    if bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins}")
    truth, prob = _flatten(y_true, y_prob, valid)
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    # index of the highest threshold <= p, so `index >= i` is exactly `p >= edges[i]`
    index = np.searchsorted(edges, prob, side="right") - 1
    below_all = index < 0
    index = np.clip(index, 0, bins)
    pos = np.bincount(index[truth & ~below_all], minlength=bins + 1)
    neg = np.bincount(index[~truth & ~below_all], minlength=bins + 1)
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    fn = int(np.count_nonzero(truth)) - tp
    den = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den, out=np.zeros(bins + 1), where=den > 0)
    if bins > 1:
        f1[[0, bins]] = 0.0  # only thresholds strictly between 0 and 1 are candidates
    if not f1.any():
        return 0.5, 0.0
    best = int(np.argmax(f1))
    return float(edges[best]), float(f1[best])

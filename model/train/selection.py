"""How a run picks its best epoch and its decision threshold: F1 at the best threshold.

During training, :class:`BestThresholdF1` (``f1_best``; :data:`MONITOR` on the validation
split) drives early stopping, reduce-on-plateau and the best checkpoint, unless the run
follows the validation loss instead (:data:`MONITORS`). After training,
:func:`calibrate` finds the threshold with the best F1 on the whole validation split.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.errors import ConfigError
from model.metrics import best_threshold, confusion_counts, scores
from model.schema import IGNORE_VALUE

#: What early stopping, reduce-on-plateau and the best checkpoint follow by default.
MONITOR = "val_f1_best"
#: What they may follow instead, and whether higher (``max``) or lower (``min``) is better:
#: ``val_f1_best`` is the figure a user wants, but on a small validation split it jumps by
#: several points between epochs, so a run stops (and keeps) an early, noisy peak;
#: ``val_loss`` moves smoothly and keeps improving while the model still learns.
MONITORS: dict[str, str] = {"val_f1_best": "max", "val_loss": "min"}


class BestThresholdF1(keras.metrics.Metric):
    """Landslide F1 at the best decision threshold ``i / bins`` strictly inside (0, 1).

    Keeps two histograms of the landslide probability (labelled landslide and background
    pixels; 255 ignored), so the confusion counts at every threshold are cumulative sums:
    the same counts as :func:`model.metrics.best_threshold` at that resolution, over the
    same candidates (``i = 1..bins - 1``; both ends too when ``bins`` is 1): thresholds 0
    and 1 only separate saturated outputs, and :func:`calibrate` never picks them, so an
    epoch is not ranked by an F1 the artifact cannot have. Used for model selection:
    independent of where the outputs' calibration currently puts 0.5.
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
        f1 = tf.math.divide_no_nan(2.0 * tp, 2.0 * tp + fp + fn)
        if self.bins > 1:  # the candidates of best_threshold: not 0, not 1
            f1 = f1[1:self.bins]
        return tf.reduce_max(f1)

    def reset_state(self) -> None:
        for var in (self.pos, self.neg):
            var.assign(tf.zeros_like(var))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins}


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

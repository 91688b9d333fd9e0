"""Losses and metrics: hand-computed values, ignore pixels, Keras vs numpy agreement."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import losses, metrics
from model.errors import ConfigError
from model.schema import IGNORE_VALUE

ALL_LOSSES = ["tversky", "focal_tversky", "dice", "bce", "bce_dice"]


def _binary_case(rng, shape=(2, 8, 8, 1), ignore_fraction=0.2):
    y_true = (rng.random(shape) < 0.3).astype(np.float32)
    y_true[rng.random(shape) < ignore_fraction] = IGNORE_VALUE
    y_pred = rng.random(shape).astype(np.float32)
    return y_true, y_pred


def _softmax_case(rng, shape=(2, 8, 8), k=3, ignore_fraction=0.2):
    y_true = rng.integers(0, k, size=(*shape, 1)).astype(np.float32)
    y_true[rng.random((*shape, 1)) < ignore_fraction] = IGNORE_VALUE
    logits = rng.normal(size=(*shape, k))
    y_pred = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    return y_true, y_pred


def _value(loss, y_true, y_pred) -> float:
    return float(loss(tf.constant(y_true), tf.constant(y_pred)))


def test_tversky_by_hand():
    y_true = np.array([1, 0, 1, 0, IGNORE_VALUE], np.float32).reshape(1, 5, 1, 1)
    y_pred = np.array([0.9, 0.2, 0.4, 0.1, 0.99], np.float32).reshape(1, 5, 1, 1)
    tp, fp, fn = 0.9 + 0.4, 0.2 + 0.1, 0.1 + 0.6  # the ignored pixel counts nowhere
    expected = 1 - tp / (tp + 0.3 * fp + 0.7 * fn)
    got = _value(losses.TverskyLoss(smooth=0.0), y_true, y_pred)
    assert got == pytest.approx(expected, rel=1e-6)
    focal = _value(losses.FocalTverskyLoss(smooth=0.0), y_true, y_pred)
    assert focal == pytest.approx(expected**0.75, rel=1e-6)
    bce = _value(losses.get_loss("bce"), y_true, y_pred)
    expected_bce = -np.mean(np.log([0.9, 0.8, 0.4, 0.9]))
    assert bce == pytest.approx(expected_bce, rel=1e-6)


@pytest.mark.parametrize("case", [_binary_case, _softmax_case])
def test_tversky_half_half_is_dice(rng, case):
    y_true, y_pred = case(rng)
    for smooth in (0.0, 1.0):
        tversky = _value(losses.TverskyLoss(alpha=0.5, beta=0.5, smooth=smooth), y_true, y_pred)
        dice = _value(losses.DiceLoss(smooth=smooth), y_true, y_pred)
        assert tversky == pytest.approx(dice, rel=1e-5)
        assert 0.0 < dice < 1.0


def test_softmax_tversky_averages_landslide_classes(rng):
    y_true, y_pred = _softmax_case(rng)
    valid = y_true[..., 0] != IGNORE_VALUE
    expected = []
    for c in (1, 2):  # class 0 (background) is not a landslide class
        t = (y_true[..., 0] == c) & valid
        p = y_pred[..., c] * valid
        tp, fp, fn = (p * t).sum(), (p * ~t).sum(), ((1 - p) * t * valid).sum()
        expected.append(tp / (tp + 0.3 * fp + 0.7 * fn))
    got = _value(losses.TverskyLoss(smooth=0.0), y_true, y_pred)
    assert got == pytest.approx(1 - np.mean(expected), rel=1e-5)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_perfect_prediction_scores_zero(rng, name):
    y_true, _ = _binary_case(rng)
    y_pred = (y_true == 1).astype(np.float32)
    assert _value(losses.get_loss(name), y_true, y_pred) == pytest.approx(0.0, abs=1e-4)
    wrong = 1.0 - y_pred
    assert _value(losses.get_loss(name), y_true, wrong) > 0.5
    y_true3, _ = _softmax_case(rng)
    perfect3 = np.eye(3, dtype=np.float32)[np.where(y_true3[..., 0] == 255, 0, y_true3[..., 0])
                                            .astype(int)]
    assert _value(losses.get_loss(name), y_true3, perfect3) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("case", [_binary_case, _softmax_case])
def test_ignored_pixels_do_not_count(rng, name, case):
    y_true, y_pred = case(rng)
    ignored = y_true[..., 0] == IGNORE_VALUE
    assert ignored.any()
    scrambled = y_pred.copy()
    scrambled[ignored] = y_pred[ignored][::-1]
    loss = losses.get_loss(name)
    base = _value(loss, y_true, y_pred)
    assert _value(loss, y_true, scrambled) == pytest.approx(base, rel=1e-6)
    # the same as scoring only the labelled pixels
    keep = ~ignored
    only_valid = _value(loss, y_true[keep][None, :, None], y_pred[keep][None, :, None])
    assert only_valid == pytest.approx(base, rel=1e-5)


def test_focal_tversky_gradient_is_finite_at_perfection(rng):
    y_true, _ = _binary_case(rng)
    y_pred = tf.Variable((y_true == 1).astype(np.float32))
    with tf.GradientTape() as tape:
        value = losses.FocalTverskyLoss()(tf.constant(y_true), y_pred)
    assert np.isfinite(tape.gradient(value, y_pred).numpy()).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_losses_serialize(name):
    loss = losses.get_loss(name, **({"smooth": 0.5} if name != "bce" else {}))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()


def test_get_loss_errors():
    with pytest.raises(ConfigError, match=r"unknown loss 'lovasz'.*'bce'"):
        losses.get_loss("lovasz")
    with pytest.raises(ConfigError, match="delta"):
        losses.get_loss("dice", delta=2)
    assert losses.get_loss("tversky", alpha=0.5).alpha == 0.5


@pytest.mark.parametrize("case", [_binary_case, _softmax_case])
def test_keras_metrics_equal_numpy_scores(rng, case):
    y_true, y_pred = case(rng, shape=(4, 8, 8) if case is _softmax_case else (4, 8, 8, 1))
    counts = metrics.confusion_counts(y_true, y_pred, threshold=0.4)
    expected = metrics.scores(counts)
    assert counts["tp"] > 0 and counts["fp"] > 0 and counts["fn"] > 0
    assert sum(counts.values()) == int((y_true != IGNORE_VALUE).sum())
    for metric in metrics.landslide_metrics(threshold=0.4):
        for batch in (slice(0, 2), slice(2, 4)):  # state accumulates over batches
            metric.update_state(tf.constant(y_true[batch]), tf.constant(y_pred[batch]))
        assert float(metric.result()) == pytest.approx(expected[metric.name], rel=1e-6)
        metric.reset_state()
        assert float(metric.result()) == 0.0


def test_scores_by_hand_and_zero_division():
    assert metrics.scores({"tp": 6, "fp": 2, "fn": 4, "tn": 100}) == pytest.approx(
        {"precision": 0.75, "recall": 0.6, "f1": 12 / 18, "iou": 0.5})
    assert metrics.scores({"tp": 0, "fp": 0, "fn": 0, "tn": 5}) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
    f1 = metrics.F1()
    f1.update_state(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 1)))
    assert float(f1.result()) == 0.0


def test_confusion_counts_valid_mask_and_shapes():
    y_true = np.array([[1, 0], [1, IGNORE_VALUE]])
    y_prob = np.array([[0.8, 0.6], [0.1, 0.9]])
    assert metrics.confusion_counts(y_true, y_prob) == {"tp": 1, "fp": 1, "fn": 1, "tn": 0}
    valid = np.array([[True, False], [True, True]])
    assert metrics.confusion_counts(y_true, y_prob, valid=valid) == {
        "tp": 1, "fp": 0, "fn": 1, "tn": 0}
    assert metrics.confusion_counts(y_true[..., None], y_prob[..., None]) == \
        metrics.confusion_counts(y_true, y_prob)
    with pytest.raises(ConfigError, match="does not fit"):
        metrics.confusion_counts(y_true, y_prob[:1])


def test_metrics_serialize_with_threshold():
    metric = metrics.IoU(threshold=0.3)
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is metrics.IoU
    assert (restored.name, restored.threshold) == ("iou", 0.3)


def test_best_threshold_finds_the_optimum(rng):
    # positives at 0.7 (10) and 0.3 (2); negatives at 0.5 (3) and 0.2 (10):
    # thresholds in (0.5, 0.7] give F1 = 20/22, better than (0.2, 0.3] with 24/27.
    y_prob = np.array([0.7] * 10 + [0.3] * 2 + [0.5] * 3 + [0.2] * 10)
    y_true = np.array([1] * 12 + [0] * 13)
    order = rng.permutation(y_prob.size)
    threshold, f1 = metrics.best_threshold(y_true[order], y_prob[order], bins=100)
    assert 0.5 < threshold <= 0.7
    assert f1 == pytest.approx(20 / 22)
    # brute force over the same candidate thresholds agrees
    brute = [metrics.scores(metrics.confusion_counts(y_true, y_prob, t / 100))["f1"]
             for t in range(101)]
    assert max(brute) == pytest.approx(f1)
    assert threshold == pytest.approx(int(np.argmax(brute)) / 100)


def test_best_threshold_matches_brute_force_on_random_data(rng):
    y_true = (rng.random(20000) < 0.2).astype(np.uint8)
    y_prob = np.clip(0.35 * y_true + rng.random(20000) * 0.7, 0, 1)
    y_true[:500] = IGNORE_VALUE
    threshold, f1 = metrics.best_threshold(y_true, y_prob, bins=50)
    brute = [metrics.scores(metrics.confusion_counts(y_true, y_prob, t / 50))["f1"]
             for t in range(1, 50)]  # candidates strictly inside (0, 1)
    assert f1 == pytest.approx(max(brute))
    assert threshold == pytest.approx((int(np.argmax(brute)) + 1) / 50)
    assert metrics.best_threshold(np.zeros(10), np.zeros(10)) == (0.5, 0.0)


def test_best_threshold_never_returns_0_or_1():
    # saturated outputs: p == 1.0 exactly for every landslide pixel, and for no other
    y_true = np.array([1, 1, 1, 0, 0, 0], np.uint8)
    y_prob = np.array([1.0, 1.0, 1.0, 0.999, 0.999, 0.2], np.float32)
    threshold, f1 = metrics.best_threshold(y_true, y_prob, bins=1000)
    assert 0.0 < threshold < 1.0
    assert f1 == pytest.approx(metrics.scores(
        metrics.confusion_counts(y_true, y_prob, threshold))["f1"])

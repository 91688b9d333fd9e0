"""BestThresholdF1 (val_f1_best) scores the thresholds calibrate can pick, not 0 and 1."""

from __future__ import annotations

import numpy as np
import pytest

from model.metrics import best_threshold
from model.train.selection import BestThresholdF1


def _both(truth: np.ndarray, prob: np.ndarray, bins: int = 200) -> tuple[float, float]:
    metric = BestThresholdF1(bins=bins)
    metric.update_state(truth[None, :, None], prob[None, :, None].astype(np.float32))
    return float(metric.result()), best_threshold(truth, prob.astype(np.float32), bins=bins)[1]


@pytest.mark.parametrize(("truth", "prob"), [
    # saturated sigmoid: landslides at exactly 1.0, a background pixel at 0.9999; only
    # threshold 1.0 separates them (F1 1.0), which calibrate never picks
    ([1, 1, 0, 0, 0, 0], [1.0, 1.0, 0.9999, 0.2, 0.1, 0.0]),
    # a model that learned nothing (constant 0.0): threshold 0 marks every pixel (F1 0.75)
    ([1] * 6 + [0] * 4, [0.0] * 10),
])
def test_the_monitor_excludes_thresholds_0_and_1_as_calibrate_does(truth, prob):
    metric, calibrated = _both(np.array(truth, np.uint8), np.array(prob))
    assert metric == pytest.approx(calibrated, abs=1e-6) and metric < 1.0


def test_the_monitor_ranks_epochs_as_calibrate_would_score_them():
    """Two epochs that both separate the classes, one only at threshold 1.0 (saturated),
    one inside (0, 1). The monitor tied them, though calibrate can only use the second."""
    truth = np.array([1, 1, 0, 0, 0, 0], np.uint8)
    saturated = _both(truth, np.array([1.0, 1.0, 0.9999, 0.2, 0.1, 0.0]))
    inside = _both(truth, np.array([0.9, 0.6, 0.4, 0.2, 0.1, 0.0]))
    assert saturated[0] == pytest.approx(saturated[1]) and inside[0] == pytest.approx(inside[1])
    assert inside[0] > saturated[0]
    # thresholds inside are scored as before; a single bin has only its two ends to offer
    rng = np.random.default_rng(4)
    truth = (rng.random(500) < 0.3).astype(np.uint8)
    prob = np.clip(0.5 * truth + rng.random(500) * 0.6, 0.0, 1.0)
    metric, calibrated = _both(truth, prob)
    assert metric == pytest.approx(calibrated, abs=1e-6) and metric > 0.5
    assert _both(np.array([1, 0], np.uint8), np.array([1.0, 0.2]), bins=1)[0] == 1.0

"""Segmentation losses that ignore unlabelled pixels.

Conventions shared with :mod:`model.metrics`:

* ``y_true`` holds class ids as floats, ``(B, H, W, 1)`` or ``(B, H, W)``: 0 background,
  1.. landslide classes, :data:`~model.schema.IGNORE_VALUE` (255) = no label (nodata,
  outside the image after augmentation). Ignored pixels get weight 0 in every loss and
  metric, so their predictions never change a value.
* ``y_pred`` is a sigmoid ``(B, H, W, 1)`` landslide probability (binary; every non-zero
  class id counts as landslide) or a softmax ``(B, H, W, K)`` (class 0 background, the
  ``K - 1`` others landslide classes, e.g. scarp and deposit).

Region losses (Tversky, focal Tversky, Dice) sum over the whole batch, per landslide class,
and average the classes; they return one scalar per batch (a ``sample_weight`` scales it).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from model.errors import ConfigError
from model.schema import IGNORE_VALUE

_EPS = 1e-7
_PACKAGE = "landslides"


def _as_label_tensor(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_true.shape) != len(y_pred.shape):
        raise ConfigError(
            f"y_true of shape {y_true.shape} does not fit y_pred of shape {y_pred.shape}: "
            "expected (B, H, W, 1) or (B, H, W) class ids"
        )
    return y_true, y_pred


def class_targets(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    """Per-class targets, probabilities and weights of the landslide classes.

    Args:
        y_true: Class ids (255 = ignore), ``(B, H, W, 1)`` or ``(B, H, W)``.
        y_pred: Sigmoid ``(B, H, W, 1)`` or softmax ``(B, H, W, K)`` probabilities.

    Returns:
        ``(target, prob, weight)``: ``target`` and ``prob`` are ``(B, H, W, K')`` with
        ``K' = 1`` (binary) or ``K - 1`` (the landslide classes of a softmax); ``weight`` is
        ``(B, H, W, 1)``, 1 for labelled pixels and 0 for ignored ones.
    """
    y_true, y_pred = _as_label_tensor(y_true, y_pred)
    valid = ops.not_equal(y_true, IGNORE_VALUE)
    weight = ops.cast(valid, y_pred.dtype)
    n_classes = y_pred.shape[-1]
    if n_classes == 1:
        target = ops.cast(ops.logical_and(valid, ops.greater(y_true, 0)), y_pred.dtype)
        return target, y_pred, weight
    ids = ops.cast(ops.where(valid, y_true, ops.zeros_like(y_true)), "int32")[..., 0]
    target = ops.one_hot(ids, n_classes, dtype=y_pred.dtype)
    return target[..., 1:] * weight, y_pred[..., 1:], weight


def tversky_index(y_true: Any, y_pred: Any, alpha: float, beta: float, smooth: float) -> Any:
    """Soft Tversky index ``(TP + s) / (TP + alpha FP + beta FN + s)`` per landslide class.

    Sums run over the batch and all pixels with non-zero weight.

    Returns:
        A ``(K',)`` tensor, one index per landslide class.
    """
    target, prob, weight = class_targets(y_true, y_pred)
    axes = tuple(range(len(prob.shape) - 1))
    tp = ops.sum(weight * prob * target, axis=axes)
    fp = ops.sum(weight * prob * (1.0 - target), axis=axes)
    fn = ops.sum(weight * (1.0 - prob) * target, axis=axes)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


class _LandslideLoss(keras.losses.Loss):
    """Base class: config handling for the losses below."""

    def __init__(self, name: str, params: dict[str, float], reduction: str = "sum_over_batch_size",
                 dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._params = tuple(params)
        for key, value in params.items():
            setattr(self, key, float(value))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **{k: getattr(self, k) for k in self._params}}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TverskyLoss(_LandslideLoss):
    """``1 - Tversky index``; ``alpha`` weighs false positives, ``beta`` false negatives.

    The default ``alpha=0.3, beta=0.7`` favours recall, as rare landslide pixels need;
    ``alpha = beta = 0.5`` is the Dice loss.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0,
                 name: str = "tversky", **kwargs: Any) -> None:
        if alpha < 0 or beta < 0 or alpha + beta <= 0:
            raise ConfigError(f"Tversky alpha and beta must be >= 0, not both 0: {alpha}, {beta}")
        super().__init__(name, {"alpha": alpha, "beta": beta, "smooth": smooth}, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ti = tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        return 1.0 - ops.mean(ti)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FocalTverskyLoss(_LandslideLoss):
    """``(1 - Tversky index) ** gamma`` per class, averaged over the landslide classes."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                 smooth: float = 1.0, name: str = "focal_tversky", **kwargs: Any) -> None:
        if gamma <= 0:
            raise ConfigError(f"focal Tversky gamma must be positive, got {gamma}")
        super().__init__(
            name, {"alpha": alpha, "beta": beta, "gamma": gamma, "smooth": smooth}, **kwargs
        )

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ti = tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        # Clamped away from 0: d/dx x**gamma is infinite at 0 for gamma < 1.
        return ops.mean(ops.power(ops.maximum(1.0 - ti, _EPS), self.gamma))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceLoss(_LandslideLoss):
    """``1 - (2 sum(p t) + 2 s) / (sum(p) + sum(t) + 2 s)`` per class, averaged.

    ``smooth`` is on the same (true-positive) scale as in :class:`TverskyLoss`, so this
    equals ``TverskyLoss(alpha=0.5, beta=0.5, smooth=s)``.
    """

    def __init__(self, smooth: float = 1.0, name: str = "dice", **kwargs: Any) -> None:
        super().__init__(name, {"smooth": smooth}, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        target, prob, weight = class_targets(y_true, y_pred)
        axes = tuple(range(len(prob.shape) - 1))
        inter = ops.sum(weight * prob * target, axis=axes)
        total = ops.sum(weight * prob, axis=axes) + ops.sum(weight * target, axis=axes)
        dice = (2.0 * inter + 2.0 * self.smooth) / (total + 2.0 * self.smooth)
        return 1.0 - ops.mean(dice)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CrossEntropyLoss(_LandslideLoss):
    """Pixel cross-entropy averaged over labelled pixels.

    Binary cross-entropy for a sigmoid output, categorical cross-entropy over all ``K``
    classes for a softmax output. A batch without labelled pixels scores 0.
    """

    def __init__(self, name: str = "bce", **kwargs: Any) -> None:
        super().__init__(name, {}, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = _as_label_tensor(y_true, y_pred)
        valid = ops.not_equal(y_true, IGNORE_VALUE)
        weight = ops.cast(valid, y_pred.dtype)[..., 0]
        prob = ops.clip(y_pred, _EPS, 1.0 - _EPS)
        if y_pred.shape[-1] == 1:
            target = ops.cast(ops.logical_and(valid, ops.greater(y_true, 0)), y_pred.dtype)
            pixel = -(target * ops.log(prob) + (1.0 - target) * ops.log(1.0 - prob))[..., 0]
        else:
            ids = ops.cast(ops.where(valid, y_true, ops.zeros_like(y_true)), "int32")[..., 0]
            target = ops.one_hot(ids, y_pred.shape[-1], dtype=y_pred.dtype)
            pixel = -ops.sum(target * ops.log(prob), axis=-1)
        return ops.sum(pixel * weight) / ops.maximum(ops.sum(weight), 1.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BceDiceLoss(_LandslideLoss):
    """Cross-entropy plus Dice loss: pixel-wise calibration and region overlap."""

    def __init__(self, smooth: float = 1.0, name: str = "bce_dice", **kwargs: Any) -> None:
        super().__init__(name, {"smooth": smooth}, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        bce = CrossEntropyLoss().call(y_true, y_pred)
        return bce + DiceLoss(smooth=self.smooth).call(y_true, y_pred)


LOSSES: dict[str, type[keras.losses.Loss]] = {
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "dice": DiceLoss,
    "bce": CrossEntropyLoss,
    "bce_dice": BceDiceLoss,
}


def get_loss(name: str, **kwargs: Any) -> keras.losses.Loss:
    """Build a loss by name.

    Args:
        name: One of ``tversky``, ``focal_tversky``, ``dice``, ``bce``, ``bce_dice``.
        **kwargs: Loss parameters (``alpha``, ``beta``, ``gamma``, ``smooth``).

    Raises:
        ConfigError: for an unknown name or parameter.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}: choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad parameters {kwargs} for loss {name!r}: {exc}") from exc

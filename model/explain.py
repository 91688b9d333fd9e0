"""Grad-CAM heat maps: which parts of an input drive a model's decision.

Grad-CAM (Selvaraju et al., 2017) weighs the feature maps ``A_k`` of one convolutional
layer by the mean gradient of a score with respect to them, ``alpha_k = mean(dS/dA_k)``,
and keeps the positive part of ``sum_k alpha_k A_k``, upsampled (bilinear) to the input.

* Image classifier (:mod:`model.classify`): the score is the logit of the class asked for
  (``landslide``: the logit; ``non_landslide``: its negative); the layer is the one named,
  or the last layer with a spatial (4-D) output, the backbone's last feature map.
* U-Net (:mod:`model.unet`): the score is the landslide probability summed over a region
  (a pixel mask or box), or over the pixels the model predicts as landslide
  (``probability >= threshold``) when no region is given, as in Seg-Grad-CAM (Vinogradova
  et al., 2020); the layer defaults to the deepest encoder block (the bottleneck), the
  widest context.

Maps come raw (in the units of the score per unit of feature) and, from
:func:`normalize`, scaled to [0, 1] per image. Models are run in inference mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.errors import ConfigError

logger = logging.getLogger(__name__)

#: What a score can target.
TARGETS = ("landslide", "non_landslide")
CLASSIFIER_LOGIT = "logit"


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM of a batch of inputs.

    Attributes:
        cams: ``(n, h, w)`` raw Grad-CAM maps at the input resolution (>= 0).
        layer: The layer whose feature maps were weighed.
        scores: ``(n,)`` the score explained (logit, or summed probability).
        probability: ``(n,)`` P(landslide) of a classifier, or ``(n, h, w)`` of a U-Net.
    """

    cams: np.ndarray
    layer: str
    scores: np.ndarray
    probability: np.ndarray

    @property
    def normalized(self) -> np.ndarray:
        """The maps scaled to [0, 1] per image (see :func:`normalize`)."""
        return normalize(self.cams)


def normalize(cams: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (an all-zero map stays zero)."""
    cams = np.asarray(cams, np.float32)
    top = cams.reshape(len(cams), -1).max(axis=1) if cams.size else np.zeros(len(cams))
    top = np.where(top > 0, top, 1.0).astype(np.float32)
    return cams / top.reshape(-1, *([1] * (cams.ndim - 1)))


def is_classifier(model: keras.Model) -> bool:
    """Whether ``model`` is a classifier of :mod:`model.classify` (it has a logit layer)."""
    return any(layer.name == CLASSIFIER_LOGIT for layer in model.layers)


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D ``(batch, h, w, channels)`` output, in order."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = getattr(layer.output, "shape", None)
        if shape is not None and len(shape) == 4:
            out.append(layer.name)
    return out


def find_layer(model: keras.Model, name: str | None = None) -> str:
    """The layer Grad-CAM weighs: ``name`` (checked), or the default of the model's kind.

    Classifier: the last layer with a spatial output. U-Net: the last layer of the deepest
    encoder block.

    Raises:
        ConfigError: ``name`` is not a layer of the model, or has no spatial output.
    """
    candidates = spatial_layers(model)
    if name is not None:
        if name not in {layer.name for layer in model.layers}:
            raise ConfigError(f"the model has no layer {name!r}; layers with feature maps "
                              f"include {candidates[-8:]}: pick one of them with --layer")
        if name not in candidates:
            raise ConfigError(f"layer {name!r} has no spatial (4-D) output, so Grad-CAM "
                              f"cannot map it; pick one of {candidates[-8:]}")
        return name
    if is_classifier(model):
        names = [n for n in candidates if n not in ("image", "input_normalization")]
        if not names:
            raise ConfigError("the classifier has no convolutional feature map to explain")
        return names[-1]
    from model.unet import ENCODER_PREFIX

    encoder = [n for n in candidates if n.startswith(ENCODER_PREFIX)
               and not n.endswith("_pool")]
    if encoder:
        return encoder[-1]
    inner = [n for n in candidates if n != model.layers[-1].name]
    if not inner:
        raise ConfigError("the model has no inner layer with feature maps to explain")
    return inner[-1]


def _grad_model(model: keras.Model, layer: str, output: str | None) -> keras.Model:
    target = model.get_layer(output).output if output else model.outputs[0]
    return keras.Model(model.inputs, [model.get_layer(layer).output, target])


def _cams(grad_model: keras.Model, x: np.ndarray, score_fn: Any
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cams, scores, outputs)`` of one batch; cams at the input's size."""
    xt = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        acts, out = grad_model(xt, training=False)
        tape.watch(acts)
        scores = score_fn(out)
    grads = tape.gradient(scores, acts)
    if grads is None:
        raise ConfigError("the score does not depend on the chosen layer: pick a layer on the "
                          "path from the input to the output")
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(alpha * acts, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, tf.shape(xt)[1:3], method="bilinear")[..., 0]
    return cam.numpy(), scores.numpy(), np.asarray(out)


def _batches(x: np.ndarray, batch_size: int) -> list[slice]:
    step = max(1, int(batch_size))
    return [slice(i, i + step) for i in range(0, len(x), step)]


def explain_classifier(model: keras.Model, images: np.ndarray, layer: str | None = None,
                       target: str = "landslide", batch_size: int = 16) -> Explanation:
    """Grad-CAM of a classifier for a batch of ``(n, S, S, C)`` images (model's size).

    Raises:
        ConfigError: an unknown target or layer, or a model that is not a classifier.
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
    if not is_classifier(model):
        raise ConfigError("the model is not an image classifier (no 'logit' layer); explain "
                          "a U-Net with explain_segmentation")
    name = find_layer(model, layer)
    sign = 1.0 if target == "landslide" else -1.0
    grad_model = _grad_model(model, name, CLASSIFIER_LOGIT)
    cams, scores, logits = [], [], []
    for part in _batches(images, batch_size):
        c, s, out = _cams(grad_model, images[part], lambda o: sign * o[:, 0])
        cams.append(c)
        scores.append(s)
        logits.append(out[:, 0])
    logit = np.concatenate(logits)
    return Explanation(np.concatenate(cams), name, np.concatenate(scores),
                       (1.0 / (1.0 + np.exp(-logit))).astype(np.float32))


def landslide_probability(out: tf.Tensor) -> tf.Tensor:
    """P(landslide) per pixel from a U-Net output: the sigmoid, or 1 - P(background)."""
    return out[..., 0] if out.shape[-1] == 1 else 1.0 - out[..., 0]


def _pixel_mask(mask: np.ndarray, images: np.ndarray, what: str) -> np.ndarray:
    """A ``(h, w)`` or ``(n, h, w)`` boolean mask as ``(n, h, w)`` of ``images``.

    Raises:
        ConfigError: a mask of another shape.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim == 2 and mask.shape == images.shape[1:3]:
        mask = np.broadcast_to(mask, images.shape[:3])
    if mask.shape != images.shape[:3]:
        raise ConfigError(f"{what} of shape {mask.shape} does not fit images of "
                          f"{images.shape[1:3]} px: give an (h, w) or (n, h, w) mask of them")
    return mask


def explain_segmentation(model: keras.Model, images: np.ndarray, layer: str | None = None,
                         region: np.ndarray | None = None, threshold: float = 0.5,
                         batch_size: int = 8, valid: np.ndarray | None = None
                         ) -> Explanation:
    """Grad-CAM of a U-Net: landslide probability summed over a region or the prediction.

    Args:
        model: A segmentation model (input sides must fit it).
        images: ``(n, h, w, c)``.
        layer: The layer to weigh (default: the bottleneck, see :func:`find_layer`).
        region: ``(h, w)`` or ``(n, h, w)`` boolean mask of the pixels whose probability is
            summed; default: each image's predicted landslide pixels (``>= threshold``).
        threshold: Decision threshold of the predicted mask.
        batch_size: Images per gradient pass.
        valid: ``(h, w)`` or ``(n, h, w)`` boolean mask of the pixels that belong to the
            image (``False``: padding); only they count in the score, with a region or
            without. Default: every pixel.

    Raises:
        ConfigError: a region or valid mask of the wrong shape, an unknown layer.
    """
    name = find_layer(model, layer)
    by_prediction = region is None
    # the pixels that may count: the region, or every pixel (the prediction picks); of
    # them only the valid ones
    counted = None if region is None else _pixel_mask(region, images, "region")
    if valid is not None:
        valid = _pixel_mask(valid, images, "valid mask")
        counted = valid if counted is None else counted & valid
    grad_model = _grad_model(model, name, None)
    cams, scores, probs = [], [], []
    for part in _batches(images, batch_size):
        mask = None if counted is None else tf.constant(counted[part], tf.float32)

        def score(out: tf.Tensor, mask: tf.Tensor | None = mask) -> tf.Tensor:
            prob = landslide_probability(out)
            chosen = tf.ones_like(prob) if mask is None else mask
            if by_prediction:
                chosen *= tf.stop_gradient(tf.cast(prob >= threshold, tf.float32))
            return tf.reduce_sum(prob * chosen, axis=(1, 2))

        c, s, out = _cams(grad_model, images[part], score)
        cams.append(c)
        scores.append(s)
        probs.append(out[..., 0] if out.shape[-1] == 1 else 1.0 - out[..., 0])
    return Explanation(np.concatenate(cams), name, np.concatenate(scores),
                       np.concatenate(probs).astype(np.float32))


def pad_to_multiple(images: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad ``(n, h, w, c)`` images at the bottom and right to multiples of ``multiple``.

    Reflecting (edge for tiny images); returns the padded images and the original
    ``(h, w)``.
    """
    h, w = images.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return images, (h, w)
    pads = ((0, 0), (0, int(ph)), (0, int(pw)), (0, 0))
    if ph < h and pw < w:
        return np.pad(images, pads, mode="reflect"), (h, w)
    return np.pad(images, pads, mode="edge"), (h, w)


def explain(model: keras.Model, images: np.ndarray, *, layer: str | None = None,
            target: str = "landslide", region: np.ndarray | None = None,
            threshold: float = 0.5, size_multiple: int = 1,
            batch_size: int = 8) -> Explanation:
    """Grad-CAM of a classifier or a U-Net, whichever ``model`` is.

    U-Net inputs are padded to ``size_multiple`` and the maps cropped back; the padding
    never counts in the score (:func:`explain_segmentation`'s ``valid``), so the default
    score is the probability summed over the image's own predicted pixels.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ConfigError(f"images must be (n, h, w, bands), got shape {images.shape}")
    n_in = model.inputs[0].shape[-1]
    if images.shape[-1] != n_in:
        raise ConfigError(f"the model takes {n_in} band(s), the images have "
                          f"{images.shape[-1]}: give images with the model's bands")
    if is_classifier(model):
        return explain_classifier(model, images, layer, target, batch_size)
    padded, (h, w) = pad_to_multiple(images, max(1, int(size_multiple)))
    valid = None
    if padded.shape[1:3] != (h, w):  # the padding is no part of the image: it never counts
        pads = ((0, padded.shape[1] - h), (0, padded.shape[2] - w))
        valid = np.pad(np.ones((h, w), bool), pads)
        if region is not None:
            region = np.asarray(region, bool)
            region = np.pad(region, pads if region.ndim == 2 else ((0, 0), *pads))
    exp = explain_segmentation(model, padded, layer, region, threshold, batch_size, valid)
    return Explanation(exp.cams[:, :h, :w], exp.layer, exp.scores,
                       exp.probability[:, :h, :w])


def region_mask(shape: Sequence[int], box: Sequence[int]) -> np.ndarray:
    """A ``(h, w)`` mask of the pixel box ``(col0, row0, col1, row1)`` (end exclusive).

    Raises:
        ConfigError: an empty box or one outside the image.
    """
    h, w = int(shape[0]), int(shape[1])
    c0, r0, c1, r1 = (int(v) for v in box)
    if not (0 <= c0 < c1 <= w and 0 <= r0 < r1 <= h):
        raise ConfigError(f"region {c0},{r0},{c1},{r1} (col0,row0,col1,row1) is empty or "
                          f"outside the {w} x {h} px image")
    mask = np.zeros((h, w), bool)
    mask[r0:r1, c0:c1] = True
    return mask


__all__ = [
    "TARGETS",
    "Explanation",
    "explain",
    "explain_classifier",
    "explain_segmentation",
    "find_layer",
    "is_classifier",
    "landslide_probability",
    "normalize",
    "pad_to_multiple",
    "region_mask",
    "spatial_layers",
]

"""Reproducible, graph-safe data augmentation for (image, mask) patches.

Every random draw is a ``tf.random.stateless_*`` op seeded from the ``seed`` passed to
:func:`augment`, so a ``tf.data`` pipeline that derives seeds from an element index gives
the same augmentations on every run. Geometric transforms are identical for image and
mask: flips and 90 degree rotations permute pixels exactly; a free rotation
(``rot45``) and a shear go through one ``ImageProjectiveTransformV3`` resampling, bilinear
for the image and nearest for the mask. Pixels brought in from outside the patch (every
pixel whose bilinear sample touches the outside) get image value 0 and mask value
:data:`~model.schema.IGNORE_VALUE` (255, not scored). Blur and sharpening change the image
only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from model.errors import ConfigError
from model.schema import IGNORE_VALUE

# Order of the sub-seeds split from the caller's seed; fixed so results stay reproducible.
_FLIP_H, _FLIP_V, _ROT90, _ANGLE, _SHEAR, _BLUR, _SHARPEN = range(7)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply.

    Attributes:
        flip_h: Random left-right flip (probability 0.5).
        flip_v: Random up-down flip (probability 0.5).
        rot90: Random rotation by 0, 90, 180 or 270 degrees (0 or 180 for non-square
            patches).
        rot45: Random rotation by an angle uniform in [-45, 45] degrees (with ``rot90``:
            any angle).
        shear: Maximum shear factor; x and y shear are drawn uniformly in
            ``[-shear, shear]`` (0 disables; must be < 1).
        blur: Probability of a 3x3 Gaussian blur of the image.
        sharpen: Probability of a 3x3 unsharp-mask sharpening of the image.
        enabled: False turns :func:`augment` into the identity.
    """

    flip_h: bool = True
    flip_v: bool = True
    rot90: bool = True
    rot45: bool = False
    shear: float = 0.0
    blur: float = 0.0
    sharpen: float = 0.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.shear < 1.0:
            raise ConfigError(f"shear must be in [0, 1) (a shear factor), got {self.shear}")
        for name in ("blur", "sharpen"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a probability in [0, 1], got {value}")


def _gaussian_blur(image: tf.Tensor) -> tf.Tensor:
    """3x3 Gaussian (binomial 1-2-1) blur per channel, reflecting at the edges."""
    taps = tf.constant([1.0, 2.0, 1.0], dtype=tf.float32) / 4.0
    kernel = taps[:, None] * taps[None, :]
    channels = tf.shape(image)[-1]
    kernel = tf.tile(kernel[:, :, None, None], tf.stack([1, 1, channels, 1]))
    padded = tf.pad(image[None], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]


def _coin(seed: tf.Tensor, probability: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed) < probability


def _affine_transform(
    seeds: tf.Tensor, config: AugmentConfig, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """The output->input pixel mapping of a random rotation+shear about the patch centre.

    Returns:
        ``(1, 8)`` float32 coefficients for ``ImageProjectiveTransformV3``.
    """
    angle = tf.constant(0.0)
    if config.rot45:
        angle = tf.random.stateless_uniform(
            [], seed=seeds[_ANGLE], minval=-math.pi / 4, maxval=math.pi / 4
        )
    shear = tf.zeros([2])
    if config.shear > 0:
        shear = tf.random.stateless_uniform(
            [2], seed=seeds[_SHEAR], minval=-config.shear, maxval=config.shear
        )
    cos, sin = tf.cos(angle), tf.sin(angle)
    # forward map (input -> output) = rotation @ [[1, sx], [sy, 1]]
    m00 = cos - sin * shear[1]
    m01 = cos * shear[0] - sin
    m10 = sin + cos * shear[1]
    m11 = sin * shear[0] + cos
    det = m00 * m11 - m01 * m10  # = 1 - sx * sy > 0 for |shear| < 1
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    tx = cx - i00 * cx - i01 * cy
    ty = cy - i10 * cx - i11 * cy
    return tf.stack([i00, i01, tx, i10, i11, ty, 0.0, 0.0])[None, :]


def _resample(image: tf.Tensor, transform: tf.Tensor, fill: float, method: str) -> tf.Tensor:
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=tf.constant(fill, tf.float32),
        interpolation=method,
        fill_mode="CONSTANT",
    )[0]


def augment(
    image: Any, mask: Any, config: AugmentConfig, seed: Any
) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply the configured random augmentations to one patch.

    Args:
        image: ``(H, W, C)`` float pixels.
        mask: ``(H, W, 1)`` or ``(H, W)`` class ids (255 = ignore), any numeric dtype.
        config: What to apply.
        seed: Shape ``(2,)`` integer seed; equal seeds give equal results.

    Returns:
        ``(image, mask)`` with the input shapes and dtypes.
    """
    image = tf.convert_to_tensor(image)
    mask = tf.convert_to_tensor(mask)
    if not config.enabled:
        return image, mask
    if image.shape.rank != 3:
        raise ConfigError(f"augment expects an (H, W, C) image, got shape {image.shape}")
    squeeze = mask.shape.rank == 2
    mask_dtype, image_dtype = mask.dtype, image.dtype
    labels = tf.cast(mask[..., None] if squeeze else mask, tf.float32)
    pixels = tf.cast(image, tf.float32)
    channels = tf.shape(pixels)[-1]
    seeds = tf.random.experimental.stateless_split(
        tf.cast(tf.convert_to_tensor(seed), tf.int64), num=7
    )

    # Exact pixel permutations, applied to image and mask stacked along channels.
    stack = tf.concat([pixels, labels], axis=-1)
    if config.flip_h:
        stack = tf.cond(_coin(seeds[_FLIP_H], 0.5), lambda: tf.reverse(stack, [1]),
                        lambda: stack)
    if config.flip_v:
        stack = tf.cond(_coin(seeds[_FLIP_V], 0.5), lambda: tf.reverse(stack, [0]),
                        lambda: stack)
    if config.rot90:
        h, w = image.shape[0], image.shape[1]
        if h is not None and w is not None and h != w:
            k = 2 * tf.random.stateless_uniform([], seeds[_ROT90], 0, 2, dtype=tf.int32)
        else:
            k = tf.random.stateless_uniform([], seeds[_ROT90], 0, 4, dtype=tf.int32)
        stack = tf.image.rot90(stack, k)
    pixels, labels = stack[..., :channels], stack[..., channels:]

    if config.rot45 or config.shear > 0:
        shape = tf.shape(pixels)
        transform = _affine_transform(seeds, config, shape[0], shape[1])
        # One extra all-ones channel measures how much of each bilinear sample lies inside
        # the patch: pixels that touch the outside become ignore (mask 255, image 0) so
        # that no pixel mixes fill values into its features.
        covered = _resample(tf.concat([pixels, tf.ones_like(pixels[..., :1])], axis=-1),
                            transform, 0.0, "BILINEAR")
        inside = covered[..., -1:] > 1.0 - 1e-4
        pixels = tf.where(inside, covered[..., :-1], 0.0)
        labels = _resample(labels, transform, float(IGNORE_VALUE), "NEAREST")
        labels = tf.where(inside, labels, float(IGNORE_VALUE))

    if config.blur > 0:
        pixels = tf.cond(_coin(seeds[_BLUR], config.blur), lambda: _gaussian_blur(pixels),
                         lambda: pixels)
    if config.sharpen > 0:
        pixels = tf.cond(_coin(seeds[_SHARPEN], config.sharpen),
                         lambda: 2.0 * pixels - _gaussian_blur(pixels), lambda: pixels)

    out_image = tf.cast(pixels, image_dtype)
    out_mask = tf.cast(labels, mask_dtype)
    if squeeze:
        out_mask = out_mask[..., 0]
    # Shapes only change under an odd rot90, drawn only when the sides may be equal.
    if not config.rot90 or (image.shape[0] is not None and image.shape[1] is not None):
        out_image.set_shape(image.shape)
        out_mask.set_shape(mask.shape)
    else:
        out_image.set_shape([None, None, image.shape[2]])
        out_mask.set_shape([None, None] if squeeze else [None, None, mask.shape[2]])
    return out_image, out_mask

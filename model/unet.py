"""A fully convolutional U-Net for landslide segmentation, built from stock Keras layers.

The model normalises its own input (a ``keras.layers.Normalization`` holding the
manifest's per-band mean and variance) so that inference can never normalise differently
from training, and it contains no ``Lambda`` layer, so it saves and loads with
``keras.saving.load_model(path, safe_mode=True)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import keras
import numpy as np

from model.errors import ConfigError

logger = logging.getLogger(__name__)

#: Name of the in-model normalisation layer (read by the artifact code).
NORMALIZATION_LAYER = "normalization"
#: Prefix of every encoder layer's name (``enc{level}_conv1`` ...), for freezing the encoder.
ENCODER_PREFIX = "enc"
#: Prefix of the per-pixel stem's units (``enc_stem0_conv`` ...): part of the encoder.
STEM_PREFIX = f"{ENCODER_PREFIX}_stem"


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The encoder's layers (convolutions, batch norms, pooling) of a :func:`build_unet` model."""
    return [layer for layer in model.layers if layer.name.startswith(ENCODER_PREFIX)]


def size_multiple(depth: int) -> int:
    """Input sides must be a multiple of this for a U-Net of ``depth`` blocks."""
    return 2 ** (depth - 1)


def _unit(
    x: keras.KerasTensor, filters: int, kernel: int, batch_norm: bool, bn_momentum: float,
    name: str, suffix: str = "",
) -> keras.KerasTensor:
    """Conv (``kernel`` x ``kernel``) - [batch norm] - ReLU."""
    x = keras.layers.Conv2D(
        filters, kernel, padding="same", use_bias=not batch_norm,
        kernel_initializer="he_normal", name=f"{name}_conv{suffix}",
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn{suffix}")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu{suffix}")(x)


def _conv_block(
    x: keras.KerasTensor, filters: int, batch_norm: bool, dropout: float, name: str,
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """Two (conv 3x3 - [batch norm] - ReLU) units with dropout between them."""
    for i in (1, 2):
        x = _unit(x, filters, 3, batch_norm, bn_momentum, name, str(i))
        if i == 1 and dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def _normalization(
    n_bands: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> keras.layers.Normalization:
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std (per-band statistics), or neither")
    if mean is None or std is None:
        logger.warning("build_unet without mean/std: the model normalises with mean 0, std 1")
        mean_arr, std_arr = np.zeros(n_bands), np.ones(n_bands)
    else:
        mean_arr = np.asarray(mean, dtype=np.float64).reshape(-1)
        std_arr = np.asarray(std, dtype=np.float64).reshape(-1)
    for what, arr in (("mean", mean_arr), ("std", std_arr)):
        if arr.shape != (n_bands,):
            raise ConfigError(f"{what} has {arr.size} values for {n_bands} bands")
        if not np.isfinite(arr).all():
            raise ConfigError(f"{what} holds non-finite values: {arr.tolist()}")
    if (std_arr <= 0).any():
        raise ConfigError(
            f"std must be positive for every band, got {std_arr.tolist()}: a constant band "
            "carries no information, drop it from the band list"
        )
    return keras.layers.Normalization(
        axis=-1, mean=mean_arr.tolist(), variance=(std_arr**2).tolist(),
        name=NORMALIZATION_LAYER, dtype="float32",  # float16 would round elevations
    )


def build_unet(
    bands: Sequence[str],
    base_filters: int = 16,
    depth: int = 5,
    dropout: float = 0.1,
    batch_norm: bool = True,
    n_classes: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    patch_size: int | None = None,
    name: str = "unet",
    bn_momentum: float = 0.99,
    stem: Sequence[int] = (),
) -> keras.Model:
    """Build the U-Net.

    An optional stem of 1x1 convolutions (conv-BN-ReLU units of ``stem`` widths) first
    mixes each pixel's channels on its own, before any 3x3 filter: a small per-pixel
    network over the stack's bands and change bands (how far a scar has regrown is a
    non-linear function of the bands of several dates; the first 3x3 block alone has only
    ``base_filters`` combinations of them). The encoder has ``depth`` blocks of two
    conv-BN-ReLU units (``base_filters * 2**i`` filters) with 2x2 max pooling between
    them; the decoder upsamples with 2x2 transposed convolutions, concatenates the
    encoder's skip connection and applies another block. The head is a 1x1 convolution
    with a sigmoid (``n_classes == 1``: landslide probability) or a softmax
    (``n_classes > 1``: background + landslide classes such as scarp/deposit), computed in
    float32 also under mixed precision.

    Args:
        bands: Input band names, in channel order (only their number shapes the model; the
            names travel in the artifact).
        base_filters: Filters of the first block.
        depth: Number of encoder blocks (``depth - 1`` poolings).
        dropout: Dropout rate inside every block (0 disables it).
        batch_norm: Batch normalisation after every convolution.
        n_classes: 1 for a binary sigmoid output, else the number of softmax classes.
        mean: Per-band mean for the in-model normalisation (from the manifest).
        std: Per-band standard deviation for the in-model normalisation.
        patch_size: Training patch size; only checked to be a multiple of
            ``2**(depth-1)``. The model input stays ``(None, None, C)``: it runs on any size
            that is such a multiple.
        name: Model name.
        bn_momentum: Momentum of the batch-norm moving statistics (Keras' 0.99 suits long
            runs; short runs and fine-tuning need a lower value such as 0.9 for the
            inference statistics to catch up with the weights).
        stem: Widths of the 1x1 convolution units before the first block (empty: none).

    Returns:
        An uncompiled ``keras.Model`` mapping ``(B, H, W, C)`` float32 to ``(B, H, W,
        n_classes)`` probabilities.

    Raises:
        ConfigError: for invalid sizes, rates or statistics.
    """
    if isinstance(bands, str) or len(bands) == 0:
        raise ConfigError(f"bands must be a non-empty sequence of band names, got {bands!r}")
    n_bands = len(bands)
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"depth must be a positive integer, got {depth!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ConfigError(f"base_filters must be a positive integer, got {base_filters!r}")
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ConfigError(f"n_classes must be a positive integer, got {n_classes!r}")
    if not (0.0 <= dropout < 1.0) or math.isnan(dropout):
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    if not (0.0 <= bn_momentum < 1.0) or math.isnan(bn_momentum):
        raise ConfigError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
    stem = tuple(stem)
    if any(isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1 for w in stem):
        raise ConfigError(f"stem must be positive integer widths, got {list(stem)!r}")
    multiple = size_multiple(depth)
    if patch_size is not None and (patch_size <= 0 or patch_size % multiple):
        nearest = max(multiple, round(patch_size / multiple) * multiple)
        raise ConfigError(
            f"patch_size {patch_size} is not a positive multiple of {multiple} = "
            f"2**(depth-1) for depth {depth}: use e.g. {nearest}"
        )

    inputs = keras.Input(shape=(None, None, n_bands), name="image")
    x = _normalization(n_bands, mean, std)(inputs)
    for i, width in enumerate(stem):
        x = _unit(x, int(width), 1, batch_norm, bn_momentum, f"{STEM_PREFIX}{i}")
    skips = []
    for level in range(depth):
        if level:
            x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = _conv_block(x, base_filters * 2**level, batch_norm, dropout, f"{ENCODER_PREFIX}{level}",
                        bn_momentum)
        skips.append(x)
    for level in reversed(range(depth - 1)):
        filters = base_filters * 2**level
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, batch_norm, dropout, f"dec{level}", bn_momentum)
    logits = keras.layers.Conv2D(n_classes, 1, name="head")(x)
    activation = "sigmoid" if n_classes == 1 else "softmax"
    outputs = keras.layers.Activation(activation, dtype="float32", name="probability")(logits)
    return keras.Model(inputs, outputs, name=name)

"""Image classifiers on ``keras.applications`` backbones (or a small baseline CNN).

:func:`build_classifier` makes one flat functional model (every backbone layer is a layer
of the model, so Grad-CAM can reach any of them)::

    image (S, S, C) physical units
      -> input_normalization   per-band z-score from the training data, mapped to the
                               range the backbone's own ``preprocess_input`` produces
      -> backbone              keras.applications.<Name>(include_top=False) or "baseline"
      -> pool -> head_dropout -> logit (Dense 1) -> probability (sigmoid, float32)

It holds only stock Keras layers, so the artifact loads with Keras safe mode.

Weights (``weights``): ``none`` trains from scratch; ``imagenet`` asks Keras for its
ImageNet file (downloaded once into ``~/.keras/models/``; when the internet cannot be
reached the error says which file to put there); a path loads a weights file of the
3-band backbone (Keras' own ImageNet ``.h5`` or a ``.weights.h5`` saved from the 3-band
backbone). Pretrained weights are loaded into a 3-band reference backbone and copied layer
by layer; the input stage (the first convolution and any per-channel normalisation before
it) is adapted to the ``C`` bands: the bands named red, green and blue take the pretrained
filters of those colours (in the channel order the backbone expects, BGR for the
``caffe``-style ResNets and VGGs), every other band starts from their mean.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from model.errors import ConfigError

logger = logging.getLogger(__name__)

BASELINE = "baseline"
#: Names of the classifier's own layers around the backbone.
INPUT, NORMALIZATION = "image", "input_normalization"
POOL, DROPOUT, LOGIT, PROBABILITY = "pool", "head_dropout", "logit", "probability"
OWN_LAYERS = (INPUT, NORMALIZATION, POOL, DROPOUT, LOGIT, PROBABILITY)
#: The ImageNet pixel statistics (RGB, 0..255) the pretrained backbones were trained on.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: Band names recognised as red, green and blue (lower case; Sentinel-2 numbering).
RGB_NAMES = (("red", "r", "b4"), ("green", "g", "b3"), ("blue", "b", "b2"))
#: The layer types whose kernel ends the input stage of a backbone.
_KERNEL_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                  keras.layers.SeparableConv2D, keras.layers.Dense)


# ----------------------------------------------------------------------------- names
def application_names() -> list[str]:
    """Every model constructor of ``keras.applications``, by name."""
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def resolve_backbone(name: str) -> str:
    """The canonical name of a backbone (``baseline`` or a ``keras.applications`` model).

    Case-insensitive: ``efficientnetb3`` is ``EfficientNetB3``.

    Raises:
        ConfigError: an unknown name; the message suggests the closest ones.
    """
    text = str(name).strip()
    if text.lower() == BASELINE:
        return BASELINE
    names = application_names()
    by_lower = {n.lower(): n for n in names}
    if text.lower() in by_lower:
        return by_lower[text.lower()]
    close = difflib.get_close_matches(text.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = (f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else "")
    raise ConfigError(f"unknown backbone {name!r}{hint}: use {BASELINE} or a keras.applications "
                      f"model ({', '.join(names)})")


def constructor(name: str) -> Callable[..., keras.Model]:
    """The ``keras.applications`` constructor of a canonical backbone name."""
    return getattr(keras.applications, name)


# ----------------------------------------------------------------------------- input range
def input_range(name: str) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """How a backbone wants its pixels: ``(position, scale, offset)`` per RGB colour.

    Found by probing the backbone module's ``preprocess_input`` (an affine map per channel
    in every ``keras.applications`` mode) with 0..255 RGB pixels: colour ``k`` (red,
    green, blue) is channel ``position[k]`` of the backbone's input and becomes
    ``scale[k] * value + offset[k]`` there. The baseline takes z-scores (scale 0).
    """
    if name == BASELINE:
        return (0, 1, 2), np.zeros(3), np.zeros(3)
    module = sys.modules[constructor(name).__module__]
    pre = getattr(module, "preprocess_input", None)
    base = np.zeros((1, 1, 1, 3), np.float32)

    def probe(x: np.ndarray) -> np.ndarray:
        return np.asarray(pre(x.copy()) if pre is not None else x, np.float64).reshape(3)

    zero = probe(base)
    position, scale = [0, 0, 0], np.zeros(3)
    for k in range(3):
        x = base.copy()
        x[..., k] = 100.0
        delta = probe(x) - zero
        channel = int(np.argmax(np.abs(delta)))
        position[k], scale[k] = channel, delta[channel] / 100.0
    offset = np.array([zero[position[k]] for k in range(3)])
    return (position[0], position[1], position[2]), scale, offset


def rgb_bands(bands: Sequence[str], rgb: Sequence[str] | None = None
              ) -> tuple[int, int, int] | None:
    """Indices of the red, green and blue bands among ``bands`` (``None``: not all found).

    Raises:
        ConfigError: ``rgb`` names a band that is not among ``bands``.
    """
    if rgb is not None:
        missing = [b for b in rgb if b not in bands]
        if missing:
            raise ConfigError(f"rgb names band(s) {missing} that the data lack (bands "
                              f"{list(bands)}): name three of those, in red, green, blue "
                              f"order")
        return (list(bands).index(rgb[0]), list(bands).index(rgb[1]),
                list(bands).index(rgb[2]))
    lower = [b.lower() for b in bands]
    found = []
    for names in RGB_NAMES:
        index = next((lower.index(n) for n in names if n in lower), None)
        if index is None:
            return None
        found.append(index)
    return found[0], found[1], found[2]


def normalization_layer(name: str, mean: Sequence[float], std: Sequence[float],
                        rgb: tuple[int, int, int] | None) -> keras.layers.Normalization:
    """The input normalisation: z-score per band, then the backbone's input range.

    A band of colour ``k`` becomes ``scale[k] * (IMAGENET_MEAN[k] + IMAGENET_STD[k] * z)
    + offset[k]``: data with the spread of ImageNet pixels, after the backbone's own
    preprocessing. Other bands take the mean of the three maps. Both steps are affine, so
    one ``Normalization`` layer holds them. The baseline takes plain z-scores.
    """
    mean_arr = np.asarray(mean, np.float64)
    std_arr = np.asarray(std, np.float64)
    if mean_arr.shape != std_arr.shape or mean_arr.ndim != 1:
        raise ConfigError(f"mean {mean_arr.tolist()} and std {std_arr.tolist()} must be one "
                          "value per band")
    if not (np.isfinite(std_arr).all() and (std_arr > 0).all()):
        raise ConfigError(f"std must be positive for every band, got {std_arr.tolist()}: a "
                          "constant band carries no information, drop it")
    if name == BASELINE:
        gain, shift = np.ones_like(mean_arr), np.zeros_like(mean_arr)
    else:
        _, scale, offset = input_range(name)
        colour_gain = scale * np.asarray(IMAGENET_STD)
        colour_shift = scale * np.asarray(IMAGENET_MEAN) + offset
        gain = np.full_like(mean_arr, colour_gain.mean())
        shift = np.full_like(mean_arr, colour_shift.mean())
        for k, band in enumerate(rgb or ()):
            gain[band], shift[band] = colour_gain[k], colour_shift[k]
    # gain * (x - m) / s + shift == (x - m') / s'
    std_new = std_arr / gain
    mean_new = mean_arr - shift * std_new
    return keras.layers.Normalization(axis=-1, mean=mean_new.tolist(),
                                      variance=(std_new ** 2).tolist(), name=NORMALIZATION,
                                      dtype="float32")


# ----------------------------------------------------------------------------- build
def _baseline(x: Any, filters: int) -> Any:
    """The baseline CNN: four blocks of two 3x3 conv-BN-ReLU with 2x2 max pooling between."""
    for block in range(4):
        if block:
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        width = filters * 2 ** block
        for i in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    kernel_initializer="he_normal",
                                    name=f"block{block}_conv{i}")(x)
            x = keras.layers.BatchNormalization(name=f"block{block}_bn{i}")(x)
            x = keras.layers.Activation("relu", name=f"block{block}_relu{i}")(x)
    return x


def _application(name: str, x: Any, size: int) -> Any:
    """``keras.applications.<name>`` without its top, built on the tensor ``x``.

    Constructors whose built-in preprocessing has three channels fixed (ConvNeXt) are
    built without it for other band counts; the input range then comes from
    ``preprocess_input`` all the same.
    """
    fn = constructor(name)
    kwargs: dict[str, Any] = {"include_top": False, "weights": None, "input_tensor": x}
    try:
        return fn(**kwargs).output
    except Exception as exc:
        if "include_preprocessing" in inspect.signature(fn).parameters:
            try:
                return fn(**kwargs, include_preprocessing=False).output
            except Exception:
                pass
        raise ConfigError(f"backbone {name} cannot be built for {x.shape[-1]} band(s) of "
                          f"{size} x {size} px: {type(exc).__name__}: {exc}. Pick another "
                          f"--backbone, or a larger --image-size") from exc


def build_classifier(
    backbone: str,
    bands: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    weights: str = "none",
    rgb: Sequence[str] | None = None,
    dropout: float = 0.2,
    baseline_filters: int = 32,
) -> keras.Model:
    """The classifier model (see the module docstring); its output is P(landslide).

    Args:
        backbone: ``baseline`` or a ``keras.applications`` name (any case).
        bands: Input band names, in channel order.
        image_size: Side of the square input.
        mean: Per-band mean of the training data.
        std: Per-band standard deviation of the training data.
        weights: ``none``, ``imagenet`` or the path of a 3-band backbone weights file.
        rgb: The red, green and blue band names (default: found by name).
        dropout: Dropout before the output layer.
        baseline_filters: First-block filters of the baseline CNN.

    Returns:
        An uncompiled flat ``keras.Model``.

    Raises:
        ConfigError: an unknown backbone, pretrained weights without RGB bands, weights
            that cannot be had or do not fit.
    """
    name = resolve_backbone(backbone)
    bands = list(bands)
    if not bands:
        raise ConfigError("bands is empty: a classifier needs at least one input band")
    pretrained = weights != "none" and name != BASELINE
    rgb_idx = rgb_bands(bands, rgb)
    if pretrained and rgb_idx is None:
        raise ConfigError(
            f"pretrained weights ({weights!r}) need red, green and blue bands, and none of "
            f"bands {bands} are named so: name them with --rgb (e.g. --rgb B4,B3,B2), or "
            f"train from scratch with --weights none")
    inputs = keras.Input((image_size, image_size, len(bands)), name=INPUT)
    x = normalization_layer(name, mean, std, rgb_idx)(inputs)
    if name == BASELINE:
        if weights not in ("none", "imagenet"):
            logger.info("the baseline CNN has no pretrained weights; %s is not used", weights)
        features = _baseline(x, baseline_filters)
    else:
        features = _application(name, x, image_size)
    y = keras.layers.GlobalAveragePooling2D(name=POOL)(features)
    y = keras.layers.Dropout(dropout, name=DROPOUT)(y)
    y = keras.layers.Dense(1, name=LOGIT)(y)
    y = keras.layers.Activation("sigmoid", dtype="float32", name=PROBABILITY)(y)
    model = keras.Model(inputs, y, name=f"classifier_{name}")
    if pretrained:
        assert rgb_idx is not None
        ref = reference_backbone(name, image_size, weights)
        position = input_range(name)[0]
        channel_map = [-1] * len(bands)
        for k, band in enumerate(rgb_idx):
            channel_map[band] = position[k]
        own = backbone_layers(model)
        copied = transfer_weights(ref, own, channel_map)
        logger.info("%s: %d layers take the %s weights; bands %s take the pretrained "
                    "red, green, blue filters%s", name, copied, weights,
                    [bands[i] for i in rgb_idx],
                    f", {[b for i, b in enumerate(bands) if i not in rgb_idx]} their mean"
                    if len(bands) > 3 else "")
    return model


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of a classifier between its input normalisation and its pooling."""
    return [layer for layer in model.layers if layer.name not in OWN_LAYERS
            and not isinstance(layer, keras.layers.InputLayer)]


# ----------------------------------------------------------------------------- weights
def _cache_file(exc: BaseException) -> tuple[str, str]:
    """``(Keras cache path, URL)`` of the file a failed download asked for."""
    url = re.search(r"https?://\S+?(?=[:\s]|$)", str(exc))
    name = os.path.basename(url.group(0)) if url else "<the backbone's weights file>"
    return os.path.join(keras_home(), "models", name), (url.group(0) if url else "")


def keras_home() -> str:
    """The folder Keras caches downloads in (``KERAS_HOME``, default ``~/.keras``)."""
    try:
        from keras.src.backend.config import keras_home as home

        return os.path.expanduser(str(home()))
    except ImportError:  # a Keras without that helper: its documented default
        return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def reference_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    """The 3-band backbone with the pretrained ``weights`` loaded.

    Raises:
        ConfigError: the weights file is missing, cannot be downloaded (the message names
            the Keras cache path to put it at), or does not fit the backbone.
    """
    fn = constructor(name)
    if weights != "imagenet" and not os.path.exists(weights):
        raise ConfigError(f"weights file {weights!r} does not exist: give the path of a "
                          f"weights file of the 3-band {name}, imagenet, or none")
    kwargs: dict[str, Any] = {"include_top": False, "weights": weights,
                              "input_shape": (image_size, image_size, 3)}
    if "include_preprocessing" in inspect.signature(fn).parameters:
        try:
            return fn(**kwargs)
        except Exception:
            kwargs["include_preprocessing"] = False
    try:
        return fn(**kwargs)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if weights == "imagenet" and ("URL fetch failure" in text or "fetch" in text.lower()):
            path, url = _cache_file(exc)
            raise ConfigError(
                f"cannot download the ImageNet weights of {name} (no internet?): {exc}. "
                f"Download {url or 'the file'} elsewhere and put it at {path} (Keras' cache), "
                f"or pass a weights file with --weights PATH, or train from scratch with "
                f"--weights none") from exc
        raise ConfigError(f"weights {weights!r} do not load into the 3-band {name} at "
                          f"{image_size} px: {text}. Give a weights file of that backbone "
                          f"(without its top), imagenet, or none") from exc


def _adapt(value: np.ndarray, axis: int, channel_map: Sequence[int]) -> np.ndarray:
    """Per-band slices of a 3-channel weight: the mapped channel, or the channels' mean."""
    mean = value.mean(axis=axis, keepdims=True)
    parts = [np.take(value, [c], axis=axis) if c >= 0 else mean for c in channel_map]
    return np.concatenate(parts, axis=axis).astype(value.dtype)


def _input_axis(layer: keras.layers.Layer, value: np.ndarray) -> int | None:
    """The input-channel axis of a weight of the input stage, if it has one."""
    if isinstance(layer, _KERNEL_LAYERS) and value.ndim == 4:
        return 2  # (h, w, in, out) or the depthwise (h, w, in, multiplier)
    if value.ndim == 1 and value.shape[0] == 3:
        return 0  # per-channel statistics (a normalisation inside the backbone)
    return None


def _fold_rescaling(rescale: keras.layers.Layer, norm: keras.layers.Layer,
                    channel_map: Sequence[int]) -> None:
    """Fold a per-channel ``Rescaling`` after ``norm`` into ``norm``'s statistics.

    Keras' EfficientNet adds such a layer only when it loads ImageNet weights itself.
    """
    scale = np.broadcast_to(np.asarray(rescale.scale, np.float64), (3,))
    offset = np.broadcast_to(np.asarray(rescale.offset, np.float64), (3,))
    s = np.array([scale[c] if c >= 0 else scale.mean() for c in channel_map])
    o = np.array([offset[c] if c >= 0 else offset.mean() for c in channel_map])
    weights = norm.get_weights()
    mean, variance = np.asarray(weights[0], np.float64), np.asarray(weights[1], np.float64)
    # s * (x - m) / sqrt(v) + o == (x - m') / sqrt(v')
    new_sd = np.sqrt(variance) / s
    weights[0] = (mean - o * new_sd).astype(weights[0].dtype)
    weights[1] = (new_sd ** 2).astype(weights[1].dtype)
    norm.set_weights(weights)
    norm.finalize_state()


def transfer_weights(ref: keras.Model, layers: Sequence[keras.layers.Layer],
                     channel_map: Sequence[int]) -> int:
    """Copy the 3-band reference backbone's weights into ``layers``, adapting the input.

    Layers are paired in order (both come from the same constructor). Weights of the input
    stage (up to the first kernel) are adapted along their input-channel axis with
    ``channel_map`` (band -> reference channel, -1: the mean of the three).

    Returns:
        The number of layers whose weights were copied.

    Raises:
        ConfigError: the two architectures do not pair up.
    """
    ref_layers = [lyr for lyr in ref.layers if not isinstance(lyr, keras.layers.InputLayer)]
    ours = list(layers)
    i = j = copied = 0
    input_stage = True
    last_norm: keras.layers.Layer | None = None
    while i < len(ref_layers):
        r = ref_layers[i]
        if j < len(ours) and type(ours[j]) is type(r):
            o = ours[j]
            values = [np.asarray(v) for v in r.get_weights()]
            if input_stage:
                values = [_adapt(v, axis, channel_map) if (axis := _input_axis(r, v))
                          is not None else v for v in values]
            if values:
                try:
                    o.set_weights(values)
                except ValueError as exc:
                    raise ConfigError(f"the pretrained weights of layer {r.name!r} do not fit "
                                      f"{o.name!r}: {exc}") from exc
                copied += 1
            if isinstance(o, keras.layers.Normalization):
                o.finalize_state()
                last_norm = o
            if isinstance(o, _KERNEL_LAYERS):
                input_stage = False
            i, j = i + 1, j + 1
        elif isinstance(r, keras.layers.Rescaling) and input_stage and last_norm is not None:
            _fold_rescaling(r, last_norm, channel_map)
            i += 1
        else:
            theirs = type(r).__name__
            mine = type(ours[j]).__name__ if j < len(ours) else "nothing"
            raise ConfigError(f"cannot pair the pretrained backbone's layer {r.name!r} "
                              f"({theirs}) with {mine}: the weights belong to another "
                              f"architecture")
    if j != len(ours):
        raise ConfigError(f"the pretrained backbone has {len(ref_layers)} layers, ours "
                          f"{len(ours)}: the weights belong to another architecture")
    return copied


__all__ = [
    "BASELINE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOGIT",
    "NORMALIZATION",
    "OWN_LAYERS",
    "POOL",
    "PROBABILITY",
    "application_names",
    "backbone_layers",
    "build_classifier",
    "constructor",
    "input_range",
    "keras_home",
    "normalization_layer",
    "reference_backbone",
    "resolve_backbone",
    "rgb_bands",
    "transfer_weights",
]

"""Transfer learning: a run that starts from a trained artifact (``init_from``).

The artifact's architecture is read back from its layers, the requested bands must be the
artifact's (by name) and the shards' classes its classes, weights are copied layer by layer
with an error naming any mismatch, and the encoder can be frozen. (The shards' references
and pixel size are compared with the artifact's by
:func:`model.train.inputs.check_inputs_match`.)
"""

from __future__ import annotations

import logging
from typing import Any

import keras

from model import data as data_mod
from model.artifact import Artifact, load_artifact, require_segmentation
from model.errors import ArtifactError, ConfigError
from model.train.inputs import BINARY, by_id, classes_of, resolve_classes
from model.unet import STEM_PREFIX, encoder_layers

logger = logging.getLogger(__name__)

#: The settings :func:`architecture_of` reads from a U-Net: a run with ``init_from`` takes
#: them from the artifact, whatever its config says.
ARCHITECTURE = ("base_filters", "depth", "batch_norm", "bn_momentum", "dropout", "n_classes",
                "stem")


def architecture_of(model: keras.Model) -> dict[str, Any]:
    """The :func:`model.unet.build_unet` settings of a built U-Net, read from its layers.

    Returns:
        The settings named by :data:`ARCHITECTURE`.

    Raises:
        ArtifactError: when the model is not a U-Net built by :mod:`model.unet`.
    """
    names = {layer.name for layer in model.layers}
    try:
        depth = 0
        while f"enc{depth}_conv1" in names:
            depth += 1
        first = model.get_layer("enc0_conv1")
        batch_norm = "enc0_bn1" in names
        stem: list[int] = []
        while f"{STEM_PREFIX}{len(stem)}_conv" in names:
            stem.append(int(model.get_layer(f"{STEM_PREFIX}{len(stem)}_conv").filters))
        return {
            "base_filters": int(first.filters),
            "depth": depth,
            "batch_norm": batch_norm,
            "bn_momentum": float(model.get_layer("enc0_bn1").momentum) if batch_norm else 0.9,
            "dropout": float(model.get_layer("enc0_dropout").rate)
            if "enc0_dropout" in names else 0.0,
            "n_classes": int(model.outputs[0].shape[-1]),
            "stem": tuple(stem),
        }
    except (ValueError, AttributeError) as exc:
        raise ArtifactError(
            f"the model {model.name!r} is not a U-Net built by model.unet ({exc}); "
            "--init-from needs an artifact written by `landslides train`"
        ) from exc


def copy_weights(src: keras.Model, dst: keras.Model, what: str) -> None:
    """Copy weights layer by layer (by name), with a clear error on any mismatch."""
    for layer in src.layers:
        if not layer.weights:
            continue
        try:
            dst.get_layer(layer.name).set_weights(layer.get_weights())
        except ValueError as exc:
            raise ArtifactError(f"cannot copy the weights of layer {layer.name!r} from "
                                f"{what}: {exc}") from exc


def load_init(path: str) -> Artifact:
    """Load the ``init_from`` artifact; its errors name ``--init-from``."""
    try:
        art = load_artifact(path)
        require_segmentation(art.meta, path, "fine-tuning the U-Net")
        return art
    except ArtifactError as exc:
        raise ArtifactError(f"--init-from {path!r}: {exc}") from exc


def init_bands(init: Artifact, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The bands to train on: the artifact's, in its order (``requested`` may reorder them).

    Raises:
        ConfigError: ``requested`` lacks some of the artifact's bands or adds others.
    """
    if requested is None or tuple(requested) == init.bands:
        return init.bands
    missing = sorted(set(init.bands) - set(requested))
    extra = sorted(set(requested) - set(init.bands))
    if missing or extra:
        raise ConfigError(
            f"--init-from {init.path!r} was trained on bands {list(init.bands)}; the requested "
            f"bands {list(requested)} lack {missing} and add {extra}: fine-tune on the same "
            "bands (by name), or train from scratch"
        )
    logger.info("bands reordered to the artifact's order %s", list(init.bands))
    return init.bands


def init_classes(init: Artifact, n_outputs: int, shards: data_mod.ShardSet,
                 requested: int | None) -> dict[str, int]:
    """The classes of a model fine-tuned from ``init`` on ``shards``: the artifact's.

    The model keeps the artifact's outputs, so the shards must label what they predict: a
    multi-class model needs the classes (names and ids) a run from scratch with its
    outputs would give these shards, and a binary model binary shards, unless
    ``requested`` is 1 (every landslide class trains as landslide, as ``n_classes: 1``
    does from scratch).

    Args:
        init: The ``init_from`` artifact.
        n_outputs: Its model's outputs (1: sigmoid).
        shards: The training shards.
        requested: ``TrainConfig.n_classes``.

    Raises:
        ConfigError: another number of classes asked for, or shards whose classes are not
            the artifact's; names both and the ways out.
    """
    labelled, theirs = classes_of(shards), by_id(init.classes)
    if requested is not None and requested != n_outputs:
        raise ConfigError(
            f"--init-from {init.path!r} has {n_outputs} output(s) (classes {theirs}) and "
            f"n_classes {requested} was asked for: fine-tuning keeps the artifact's outputs; "
            "drop n_classes, or train from scratch")
    if n_outputs == 1:
        if len(labelled) > 2 and requested != 1:
            raise ConfigError(
                f"--init-from {init.path!r} is a binary model (landslide or not), the shards "
                f"of {shards.source!r} have the classes {by_id(labelled)}: fine-tuning it "
                "would train every landslide class as one. Pass --n-classes 1 if that is "
                "meant, export the shards with binary labels, or train a multi-class model "
                "from scratch")
        return dict(BINARY)
    try:
        expected = resolve_classes(shards, n_outputs)[1]
    except ConfigError as exc:
        raise ConfigError(f"--init-from {init.path!r} predicts the classes {theirs}: {exc}"
                          ) from exc
    if expected != init.classes:
        ids = ",".join(f"{name}={i}" for name, i in theirs.items() if i)
        raise ConfigError(
            f"--init-from {init.path!r} predicts the classes {theirs}, the shards of "
            f"{shards.source!r} have {by_id(labelled)}: fine-tuning would teach the "
            f"artifact's outputs other classes under its names. Export the shards with the "
            f"artifact's classes (--classes {ids}), or train from scratch")
    return dict(init.classes)


def set_frozen(model: keras.Model) -> int:
    """Make the encoder's layers untrainable; returns how many."""
    layers = encoder_layers(model)
    for layer in layers:
        layer.trainable = False
    return len(layers)

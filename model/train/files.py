"""Files of a training run, local or ``gs://`` (through ``tf.io.gfile``).

Small text and JSON files and weights are written atomically (temp + rename; one object on
GCS); folders are copied and removed whole.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

from model import data as data_mod
from model.artifact import json_default


def join(*parts: str) -> str:
    """Join path parts, local or ``gs://``."""
    return data_mod._join(*parts)


def write_text(path: str, text: str) -> None:
    """Write a small text file atomically (temp + rename; one object on GCS)."""
    tmp = f"{path}.partial"
    parent = os.path.dirname(path)
    if parent and not tf.io.gfile.exists(parent):
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def save_weights(model: keras.Model, path: str) -> None:
    """Save a model's weights to ``path`` (``*.weights.h5``) atomically."""
    tmp = path.replace(".weights.h5", ".partial.weights.h5")
    model.save_weights(tmp, overwrite=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def remove_tree(path: str) -> None:
    """Remove a folder and everything in it, if it exists."""
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def copy_tree(src: str, dst: str) -> None:
    """Replace ``dst`` by a copy of the folder ``src``."""
    remove_tree(dst)
    for folder, _, files in tf.io.gfile.walk(src):
        rel = folder[len(src.rstrip("/")):].strip("/")
        target = join(dst, rel) if rel else dst
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(join(folder, name), join(target, name), overwrite=True)

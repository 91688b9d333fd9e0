"""Resuming an interrupted run from its ``_backup/`` folder.

:class:`Checkpointer` writes, at every epoch end, the last weights (with the optimizer
state), the best weights and the callbacks' state (best validation F1 or loss, patience
counters, learning rate) and what the run reads (:func:`~model.train.inputs.inputs_record`);
:func:`read_state` reads them back and refuses a run with other settings or other inputs;
:func:`trim_history` drops the history rows of epochs that will run again.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from model import data as data_mod
from model.errors import ConfigError
from model.train.config import TrainConfig
from model.train.files import join, save_weights, write_json, write_text
from model.train.inputs import changed_inputs, describe_inputs
from model.train.selection import MONITOR, MONITORS

#: Fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("epochs",)


class Checkpointer(keras.callbacks.Callback):
    """Saves last/best weights and the callbacks' state at every epoch end; restores it."""

    def __init__(self, backup: str, config: dict, early: keras.callbacks.EarlyStopping | None,
                 plateau: keras.callbacks.ReduceLROnPlateau | None, state: dict | None,
                 started: float, write: bool = True, monitor: str = MONITOR,
                 inputs: dict | None = None) -> None:
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if MONITORS[monitor] == "max" else -1.0  # compare sign * value
        self.backup = backup
        self.write = write  # only the chief worker writes
        self.config = config
        self.inputs = inputs
        self.early = early
        self.plateau = plateau
        self.state = state or {}
        self.best = float(self.state.get("best", -self.sign * math.inf))
        self.best_epoch = int(self.state.get("best_epoch", -1))
        self.seconds = float(self.state.get("seconds", 0.0))
        self.started = started

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Runs after EarlyStopping/ReduceLROnPlateau reset themselves in theirs.
        for name, cb in (("early", self.early), ("plateau", self.plateau)):
            for attr, value in self.state.get(name, {}).items():
                if cb is not None:
                    setattr(cb, attr, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is not None and self.sign * float(value) > self.sign * self.best
        if value is not None and improved:
            self.best, self.best_epoch = float(value), epoch
        if not self.write:
            return
        tf.io.gfile.makedirs(self.backup)
        if improved:
            save_weights(self.model, join(self.backup, "best.weights.h5"))
        save_weights(self.model, join(self.backup, "last.weights.h5"))
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state = {
            "epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch, "lr": lr,
            "seconds": self.seconds + time.perf_counter() - self.started,
            "config": self.config,
            **({"inputs": self.inputs} if self.inputs is not None else {}),
            "early": _callback_state(self.early, ("wait", "best", "best_epoch")),
            "plateau": _callback_state(self.plateau, ("wait", "best", "cooldown_counter")),
        }
        write_json(join(self.backup, "state.json"), state)


def _callback_state(cb: keras.callbacks.Callback | None, attrs: Sequence[str]) -> dict:
    if cb is None:
        return {}
    out = {}
    for attr in attrs:
        value = getattr(cb, attr, None)
        if isinstance(value, int | float | np.generic) and math.isfinite(float(value)):
            out[attr] = value.item() if isinstance(value, np.generic) else value
    return out


def trim_history(path: str, next_epoch: int) -> None:
    """Drop rows of epochs that will be run again (written after the last checkpoint)."""
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path, "r") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and int(r[0]) < next_epoch]
    if len(kept) != len(body):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *kept])
        write_text(path, buf.getvalue())


def read_state(backup: str, config: dict, inputs: dict | None = None) -> dict | None:
    """The state of an interrupted run in ``backup``, or None when there is none.

    Args:
        backup: The ``_backup/`` folder.
        config: The resolved settings of the run that starts.
        inputs: What it reads (:func:`~model.train.inputs.inputs_record`); compared with
            what the interrupted run recorded (a state written before inputs were recorded
            is compared on its settings only).

    Raises:
        ConfigError: the interrupted run had other settings (only ``epochs`` may change),
            or read other shards or another ``init_from`` artifact.
    """
    path = join(backup, "state.json")
    if not (tf.io.gfile.exists(path) and tf.io.gfile.exists(join(backup, "last.weights.h5"))):
        return None
    state = data_mod.read_json(path)
    # a setting added since the run was interrupted had its default then
    saved = {**TrainConfig().to_dict(), **state.get("config", {})}
    differ = sorted(k for k in set(saved) | set(config)
                    if k not in _RESUMABLE_CHANGES and saved.get(k) != config.get(k))
    if differ:
        raise ConfigError(
            f"{backup!r} holds an interrupted run with other settings ({differ}: "
            f"{[saved.get(k) for k in differ]} then, {[config.get(k) for k in differ]} now): "
            "resume it with the same settings, use another --out, or delete that folder"
        )
    recorded = state.get("inputs")
    if inputs is not None and isinstance(recorded, dict):
        changed = changed_inputs(recorded, inputs)
        if changed:
            raise ConfigError(
                f"{backup!r} holds a run interrupted while it trained on "
                f"{describe_inputs(recorded)}; this run reads {describe_inputs(inputs)}, and "
                f"the {' and the '.join(changed)} differ: resume it with the same --data "
                "(and --val-data, --init-from), train on these with another --out, or delete "
                "that folder")
    return state


def epochs_in_history(path: str) -> int:
    """Rows (epochs) of a ``history.csv``; 0 when it does not exist."""
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path, "r") as f:
        return max(0, sum(1 for row in csv.reader(f) if row) - 1)

"""Callbacks of a run: one log line per epoch, TensorBoard scalars, averaged weights."""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.train.files import join

logger = logging.getLogger(__name__)


class ProgressLog(keras.callbacks.Callback):
    """One log line per epoch with the metrics, patches/s and the ETA."""

    def __init__(self, epochs: int, batch_size: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.batch_size = batch_size
        self.times: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        took = time.perf_counter() - self.start
        self.times.append(took)
        eta = (self.epochs - epoch - 1) * float(np.median(self.times))
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                         if k in ("loss", "f1", "val_loss", "val_precision", "val_recall",
                                  "val_f1", "val_f1_best", "learning_rate"))
        logger.info("epoch %d/%d: %s (%.1f s, %.1f patches/s, ETA %.0f s)", epoch + 1,
                    self.epochs, shown, took, self.steps * self.batch_size / max(took, 1e-9),
                    eta)


class EpochSummaries(keras.callbacks.Callback):
    """TensorBoard scalars per epoch (``logs/train``, ``logs/validation``).

    Written as plain ``simple_value`` summaries with TensorFlow's own event writer, which
    TensorBoard reads, so training does not need the ``tensorboard`` package installed
    (Keras' ``TensorBoard`` callback does).
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        if name not in self.writers:
            self.writers[name] = tf.summary.create_file_writer(join(self.log_dir, name))
        return self.writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from tensorflow.core.framework import summary_pb2

        groups: dict[str, list] = {"train": [], "validation": []}
        for key, value in (logs or {}).items():
            group, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            groups[group].append(summary_pb2.Summary.Value(tag=f"epoch_{tag}",
                                                           simple_value=float(value)))
        for group, values in groups.items():
            if values:
                with self._writer(group).as_default():
                    tf.summary.experimental.write_raw_pb(
                        summary_pb2.Summary(value=values).SerializeToString(), step=epoch)
                self._writer(group).flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self.writers.values():
            writer.close()


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Puts the optimizer's moving average of the weights in the model outside training.

    With an optimizer built with ``use_ema=True``, validation runs on the averaged weights,
    and at every epoch end they are in the model for the callbacks that follow this one
    (the checkpointer saves them as the last and best weights, and the trained weights
    stay in the optimizer's average slots, which the checkpoint holds too); the next epoch
    swaps the trained weights back in. Keras' :class:`~keras.callbacks.SwapEMAWeights`
    does the swapping; this says where a run resumed from such a checkpoint starts, and
    keeps the trained weights at every epoch end, the last one included.

    Args:
        resumed: The model was loaded from a checkpoint written at an epoch end, so it
            holds the average and the optimizer the trained weights: the first epoch
            swaps them.
    """

    def __init__(self, resumed: bool = False) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Keras' version also overwrites the trained weights with the average at the
        # epoch end that ``params["epochs"]`` calls the last, for its own end of fit; the
        # checkpoint of that epoch then held no trained weights, and a run resumed from it
        # with more epochs trained on from the average. After fit, the model takes its
        # weights from the checkpoint (see :func:`model.train.fit.train`).
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

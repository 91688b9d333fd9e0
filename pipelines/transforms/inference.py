"""Our RunInference model handler for a landslide model artifact.

Why our own handler: Beam's ``tensorflow_inference`` handlers import ``tensorflow_hub``,
which drags in ``tf_keras`` and the full TensorFlow wheel beside ``tensorflow-cpu``. This
one loads the model artifact once per worker (:func:`model.artifact.load_artifact`, Keras
safe mode) and keeps RunInference's batching, metrics, model sharing and dead-letter
output.

One RunInference example is the stack of windows of one chunk (``(n, h, w, c)`` float32
physical units, or an object holding it as ``.windows``); its inference is ``(n, h, w)``
landslide probabilities. Each example is predicted on its own, in model batches of
``batch_size`` windows, so a chunk's prediction never depends on which other chunks
shared its RunInference batch (reruns give bit-identical outputs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

if TYPE_CHECKING:
    from model.artifact import Artifact

log = logging.getLogger(__name__)

#: Beam metrics namespace of the handler (and of the predict sweep's DoFns).
METRICS_NAMESPACE = "landslides_predict"


class InferenceError:
    """The inference of an example that failed (with ``capture_errors``): why, as text."""

    def __init__(self, reason: str, text: str) -> None:
        self.reason, self.text = reason, text

    def __repr__(self) -> str:
        return f"InferenceError({self.text!r})"


def _windows(example: Any) -> np.ndarray:
    w = getattr(example, "windows", example)
    if w is None:
        raise ValueError("The example holds no windows (already consumed?).")
    return w


class KerasModelHandler(ModelHandler[Any, PredictionResult, "Artifact"]):
    """RunInference handler for a landslide model artifact.

    Args:
        artifact_path: The artifact folder (local or ``gs://``).
        batch_size: Windows per model call.
        max_chunks_per_batch: Examples (chunks) RunInference groups into one call of
            :meth:`run_inference`; memory grows with it, speed does not (each example is
            already batched), so 1 is best unless examples are tiny.
        large_model: Share one model per machine across processes (Beam's
            ``multi_process_shared``); for models too big to load once per process.
        capture_errors: An example whose prediction raises gets an
            :class:`InferenceError` as its inference instead of failing the batch, so a
            pipeline can dead-letter it without ``with_exception_handling`` (a
            multi-output step, which not every runner supports).
        precision: ``fp32``, ``bf16`` or ``int8`` (see :mod:`model.precision`).
    """

    def __init__(self, artifact_path: str, batch_size: int = 16, max_chunks_per_batch: int = 1,
                 large_model: bool = False, capture_errors: bool = False,
                 precision: str = "fp32") -> None:
        super().__init__(min_batch_size=1, max_batch_size=max(1, int(max_chunks_per_batch)),
                         large_model=large_model)
        self.artifact_path = str(artifact_path)
        self.batch_size = int(batch_size)
        self.capture_errors = bool(capture_errors)
        self.precision = str(precision)

    def load_model(self) -> Artifact:
        from model.precision import load_for_inference

        t0 = time.monotonic()
        art = load_for_inference(self.artifact_path, self.precision)
        log.info("Loaded model %s (%s) from %s in %.1f s", art.model_id, self.precision,
                 self.artifact_path, time.monotonic() - t0)
        art.warm_up(background=True)  # traced while the first chunk is read
        return art

    def run_inference(self, batch: Sequence[Any], model: Artifact,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        out = []
        for example in batch:
            try:
                probs: Any = self._predict(example, model)
            except Exception as exc:
                if not self.capture_errors:
                    raise
                log.warning("inference failed: %s: %s", type(exc).__name__, exc)
                probs = InferenceError(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            out.append(PredictionResult(example, probs, model_id=model.model_id))
        return out

    def _predict(self, example: Any, model: Artifact) -> np.ndarray:
        x = _windows(example)
        if len(x):
            return model.predict(x, batch_size=self.batch_size)
        return np.zeros((0, *x.shape[1:3]), dtype=np.float32)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return int(sum(_windows(e).nbytes for e in batch))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


__all__ = ["METRICS_NAMESPACE", "InferenceError", "KerasModelHandler"]

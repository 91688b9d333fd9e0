"""Our RunInference model handler for a landslide model artifact.

Why our own handler: Beam's ``tensorflow_inference`` handlers import ``tensorflow_hub``,
which drags in ``tf_keras`` and the full TensorFlow wheel beside ``tensorflow-cpu``. This
one loads the model artifact once per worker (:func:`model.artifact.load_artifact`, Keras
safe mode) and keeps RunInference's batching, metrics, model sharing and dead-letter
output.

With ``large_model`` Beam loads the model once per machine (``multi_process_shared``) and
hands :meth:`KerasModelHandler.run_inference` a proxy of it: a client of the process that
holds the model, on which only methods can be called (``model.predict(...)``), never
attributes read. So the handler keeps what it needs to know about the model (its id, its
input bands) itself, read from ``artifact.json`` (or given by the launcher's plan), and
only calls ``predict`` on the model it is handed, whichever of the two it is.

One RunInference example is the stack of windows of one chunk: an ``(n, h, w, c)``
float32 array in physical units, or an object that cuts it, such as
:class:`~pipelines.predict.chunk.ChunkTiles`: its ``windows()`` returns the array,
``windows_nbytes`` its size without cutting it, and ``without_pixels()`` a copy without
the pixels, which the :class:`PredictionResult` holds as its example (so a runner that
encodes the results, or estimates their size by encoding them, does not carry the pixels
again; a plain array example is kept as it is). Its inference is ``(n, h, w)`` landslide
probabilities, or with ``explain_layer`` ``(n, h, w, 2)``: the probabilities and
each window's Grad-CAM (:func:`model.explain.explain_segmentation`). Each example is
predicted on its own, in model batches of ``batch_size`` windows, so a chunk's prediction
never depends on which other chunks shared its RunInference batch (reruns give
bit-identical outputs).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
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
    """An example's ``(n, h, w, c)`` windows: the array itself, or what it cuts."""
    cut = getattr(example, "windows", None)
    return np.asarray(example) if cut is None else cut()


def _windows_nbytes(example: Any) -> int:
    """Bytes of an example's windows, without cutting them."""
    nbytes = getattr(example, "windows_nbytes", None)
    return int(np.asarray(example).nbytes if nbytes is None else nbytes)


def _without_pixels(example: Any) -> Any:
    """What a :class:`PredictionResult` keeps of a predicted example."""
    drop = getattr(example, "without_pixels", None)
    return example if drop is None else drop()


class KerasModelHandler(ModelHandler[Any, PredictionResult, Any]):
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
        meta: The artifact's ``artifact.json`` as the launcher read it (at least
            ``model_id`` and ``bands``); read from ``artifact_path`` when first needed
            if not given. The model loaded on a worker must have the same id.
        precision: ``fp32``, ``bf16`` or ``int8`` (see :mod:`model.precision`).
        explain_layer: Also compute each window's Grad-CAM at this layer (the landslide
            probability summed over the window's pixels at ``explain_threshold`` and
            above).
        explain_threshold: The threshold of that predicted mask.
    """

    def __init__(self, artifact_path: str, batch_size: int = 16, max_chunks_per_batch: int = 1,
                 large_model: bool = False, capture_errors: bool = False,
                 meta: Mapping[str, Any] | None = None, precision: str = "fp32",
                 explain_layer: str | None = None, explain_threshold: float = 0.5) -> None:
        super().__init__(min_batch_size=1, max_batch_size=max(1, int(max_chunks_per_batch)),
                         large_model=large_model)
        self.artifact_path = str(artifact_path)
        self.batch_size = int(batch_size)
        self.capture_errors = bool(capture_errors)
        self._spec: dict[str, Any] | None = _spec_of(meta) if meta is not None else None
        self.precision = str(precision)
        self.explain_layer = explain_layer
        self.explain_threshold = float(explain_threshold)

    # ------------------------------------------------------------------ what the model is
    def _meta(self) -> dict[str, Any]:
        if self._spec is None:
            from model.artifact import read_meta

            self._spec = _spec_of(read_meta(self.artifact_path))
        return self._spec

    @property
    def model_id(self) -> str:
        """The artifact's model id (from ``artifact.json``, not from the loaded model)."""
        return str(self._meta()["model_id"])

    @property
    def bands(self) -> tuple[str, ...]:
        """The model's input channels, in order."""
        return tuple(self._meta()["bands"])

    # ------------------------------------------------------------------ Beam's interface
    def load_model(self) -> Artifact:
        """Load the artifact (Keras safe mode) and start tracing it on a thread.

        With ``large_model`` Beam calls this in one process per machine and serves the
        result to the others.

        Raises:
            ArtifactError: the artifact cannot be loaded, or is not the model the launcher
                planned with (replaced at the same path since).
        """
        from model.errors import ArtifactError
        from model.precision import load_for_inference

        t0 = time.monotonic()
        art = load_for_inference(self.artifact_path, self.precision)
        if art.model_id != self.model_id:
            raise ArtifactError(
                f"The model artifact {self.artifact_path!r} is {art.model_id} on this worker "
                f"but was {self.model_id} when the sweep was planned: it was replaced "
                f"during the run. Run the sweep again.")
        log.info("Loaded model %s (%s) from %s in %.1f s", art.model_id, self.precision,
                 self.artifact_path, time.monotonic() - t0)
        art.warm_up(background=True)  # traced while the first chunk is read
        return art

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        """Predict each example of ``batch`` on its own.

        ``model`` is what :meth:`load_model` returned, or with ``large_model`` Beam's
        proxy of it: only its ``predict`` method is called. Each result's example is the
        example without its pixels where it can drop them (``without_pixels()``); the
        examples of ``batch`` are not changed.
        """
        model_id = self.model_id
        out = []
        for example in batch:
            try:
                probs: Any = self._predict(example, model)
            except Exception as exc:
                if not self.capture_errors:
                    raise
                log.warning("inference failed: %s: %s", type(exc).__name__, exc)
                probs = InferenceError(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            out.append(PredictionResult(_without_pixels(example), probs, model_id=model_id))
        return out

    def _predict(self, example: Any, model: Any) -> np.ndarray:
        x = _windows(example)
        bands = self.bands
        if x.ndim != 4 or x.shape[-1] != len(bands):  # before it is sent to a shared model
            from model.errors import ArtifactError

            raise ArtifactError(f"Expected input (n, h, w, {len(bands)}) for bands {bands}, "
                                f"got {x.shape}.")
        if not len(x):
            extra = (2,) if self.explain_layer else ()
            return np.zeros((0, *x.shape[1:3], *extra), dtype=np.float32)
        if self.explain_layer:  # a Keras model in this process (plan refuses the others)
            from model.explain import explain_segmentation

            exp = explain_segmentation(model.model, np.asarray(x, np.float32),
                                       self.explain_layer, threshold=self.explain_threshold,
                                       batch_size=self.batch_size)
            return np.stack([exp.probability, exp.cams], axis=-1).astype(np.float32)
        return np.asarray(model.predict(x, batch_size=self.batch_size))

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(_windows_nbytes(e) for e in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _spec_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the handler keeps of an artifact's metadata."""
    missing = [k for k in ("model_id", "bands") if k not in meta]
    if missing:
        from model.errors import ArtifactError

        raise ArtifactError(f"The model metadata lacks {missing}; pass the artifact's "
                            f"artifact.json (or its model_id and bands).")
    return {"model_id": str(meta["model_id"]), "bands": [str(b) for b in meta["bands"]]}


def new_model_tag() -> str:
    """A tag naming one model to share: made once when a pipeline is built."""
    return f"landslides-model-{uuid.uuid4().hex}"


def acquire_model(handler: KerasModelHandler, tag: str) -> Any:
    """The handler's model outside ``RunInference``, shared as ``RunInference`` shares it.

    With ``large_model`` the first process of a machine to ask loads the model and serves
    it (Beam's ``multi_process_shared``, keyed by ``tag``, which must be the same in
    every process of a pipeline and differ between pipelines); every caller, that one
    included, gets a proxy of it. Otherwise the model is loaded in this process.
    """
    if handler.share_model_across_processes():
        from apache_beam.utils.multi_process_shared import MultiProcessShared

        return MultiProcessShared(handler.load_model, tag=tag, always_proxy=True).acquire()
    return handler.load_model()


__all__ = ["METRICS_NAMESPACE", "InferenceError", "KerasModelHandler", "acquire_model",
           "new_model_tag"]

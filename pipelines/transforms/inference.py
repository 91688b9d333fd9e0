"""Beam parts of the predict sweep: our Keras model handler and thin DoFns.

The DoFns call the sweep's per-chunk steps (:class:`pipelines.predict.Sweep`).

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

import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.transforms.background import InBackground

if TYPE_CHECKING:
    from model.artifact import Artifact
    from pipelines.predict import Sweep

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "landslides_predict"


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
    """

    def __init__(self, artifact_path: str, batch_size: int = 16, max_chunks_per_batch: int = 1,
                 large_model: bool = False) -> None:
        super().__init__(min_batch_size=1, max_batch_size=max(1, int(max_chunks_per_batch)),
                         large_model=large_model)
        self.artifact_path = str(artifact_path)
        self.batch_size = int(batch_size)

    def load_model(self) -> Artifact:
        from model.artifact import load_artifact

        t0 = time.monotonic()
        art = load_artifact(self.artifact_path)
        log.info("Loaded model %s from %s in %.1f s", art.model_id, self.artifact_path,
                 time.monotonic() - t0)
        art.warm_up(background=True)  # traced while the first chunk is read
        return art

    def run_inference(self, batch: Sequence[Any], model: Artifact,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        out = []
        for example in batch:
            x = _windows(example)
            if len(x):
                probs = model.predict(x, batch_size=self.batch_size)
            else:
                probs = np.zeros((0, *x.shape[1:3]), dtype=np.float32)
            out.append(PredictionResult(example, probs, model_id=model.model_id))
        return out

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return int(sum(_windows(e).nbytes for e in batch))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ReadChunk(InBackground):
    """Skip a chunk already done for the same inputs, or read it and cut its windows.

    The next chunk is read on a reader thread while this one goes through inference and
    blending downstream (one fused stage), the way ``tf.data`` prefetches.

    Main output: ``((job, key), ChunkTiles)`` for RunInference. Tagged ``result``:
    ``(job, record)`` of skipped and empty chunks. Tagged ``failed``: ``(job, failure)``.
    """

    thread_name = "chunk-read"

    def __init__(self, sweep: Sweep, total: int, read_ahead: int = 1) -> None:
        super().__init__(max_pending=read_ahead)
        self.sweep = sweep  # sources built once on the launcher, pickled without clients
        self.total = total

    def setup(self) -> None:
        from pipelines.progress import Progress

        super().setup()  # one reader thread: sources are read by it, one chunk at a time
        self.sweep.open()
        self.progress = Progress(self.total, "predict", "chunks")
        self.counters = {n: Metrics.counter(METRICS_NAMESPACE, n)
                         for n in ("chunks_skipped", "chunks_empty", "chunks_read_failed",
                                   "windows")}

    def teardown(self) -> None:
        super().teardown()
        self.sweep.close()

    def process(self, element: tuple[int, str, bytes, dict],
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        yield from self._submit(element, timestamp, window, self.sweep.prepare, *element)

    def _outputs(self, element: tuple[int, str, bytes, dict], future: Future):
        job, key = element[0], element[1]
        self.progress.update()
        try:
            outcome = future.result()
        except Exception as exc:  # dead letter: recorded, counted, never silent
            log.warning("chunk %s (%s) failed: %s", key, self.sweep.jobs[job].label, exc)
            self.counters["chunks_read_failed"].inc()
            yield beam.pvalue.TaggedOutput("failed", (job, self.sweep.failure(
                job, key, "read", exc)))
            return
        if isinstance(outcome, dict):
            self.counters["chunks_skipped" if outcome["action"] == "skipped"
                          else "chunks_empty"].inc()
            yield beam.pvalue.TaggedOutput("result", (job, outcome))
            return
        self.counters["windows"].inc(len(outcome.origins))
        yield ((job, key), outcome)


class BlendWrite(InBackground):
    """Blend a chunk's window predictions, write its COGs, polygons and done-record.

    On a writer thread, while the model predicts the next chunk. Main output:
    ``(job, record)``; tagged ``failed``: ``(job, failure)``.
    """

    thread_name = "chunk-write"

    def __init__(self, sweep: Sweep, max_pending: int = 2) -> None:
        super().__init__(max_pending=max_pending)
        self.sweep = sweep

    def setup(self) -> None:
        super().setup()
        self.done = Metrics.counter(METRICS_NAMESPACE, "chunks_done")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "chunks_write_failed")

    def process(self, element: tuple[tuple[int, str], PredictionResult],
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        (job, key), result = element
        tiles: Any = result.example
        tiles.windows = None  # blending does not need the windows' pixels: free them now
        yield from self._submit((job, key), timestamp, window, self.sweep.finish, tiles,
                                np.asarray(result.inference))

    def _outputs(self, context: tuple[int, str], future: Future):
        job, key = context
        try:
            record = future.result()
        except Exception as exc:
            log.warning("chunk %s (%s) failed: %s", key, self.sweep.jobs[job].label, exc)
            self.failed.inc()
            yield beam.pvalue.TaggedOutput("failed", (job, self.sweep.failure(
                job, key, "write", exc)))
            return
        self.done.inc()
        yield job, record


def inference_failures(item: tuple[Any, Any], sweep: Sweep) -> Iterable[tuple[int, dict]]:
    """Turn one RunInference dead-letter item ``(batch, error)`` into chunk failures."""
    batch, err = item
    if isinstance(err, tuple) and len(err) >= 2:  # (type, repr(exception), traceback)
        reason = getattr(err[0], "__name__", str(err[0]))
        text = f"{reason}: {err[1]}"
    else:
        reason, text = type(err).__name__, str(err)
    for (job, key), _ in (batch if isinstance(batch, list | tuple) else [batch]):
        yield job, sweep.failure(job, key, "inference", text, reason=reason)


def finalize_job(item: tuple[int, dict[str, list]], sweep: Sweep) -> str:
    """Write one job's mosaics, inventory, STAC catalog and run record; returns run.json."""
    job, groups = item
    run = sweep.finalize(job, list(groups.get("result", [])), list(groups.get("failed", [])))
    return json.dumps({"job": job, "run_json": run["outputs"]["run"]})


__all__ = [
    "METRICS_NAMESPACE",
    "BlendWrite",
    "KerasModelHandler",
    "ReadChunk",
    "finalize_job",
    "inference_failures",
]

"""The predict sweep as a Beam pipeline: composite transforms over the per-chunk steps.

Owns the module-level DoFns and composite ``PTransform``s of the sweep and
:func:`build_pipeline`, which wires them::

    chunks of every AOI (planned on the launcher; reshuffled over workers)
      | PrepareChunks: skip or read each chunk and find its windows
      |                (the next chunk on a reader thread, during this one's inference)
      | PredictChunks: RunInference(KeyedModelHandler(KerasModelHandler))
      |                (model loaded once per worker)
      | FinishChunks:  blend, write the COGs and the done-record
      |                (on a writer thread, during the next inference)
      +-> Finalize: ChunkOutputs, per chunk: its STAC item; a small summary and its
          |         polygons on chunk edges
          | MergeEdges, per AOI and UTM zone (GroupByKey): edge polygons joined
          +-> Finish, per AOI (CoGroupByKey of summaries, failures, joined polygons):
              inventory (streamed), mosaics, STAC catalog, dead letters, run.json

The DoFns open what they need in ``setup`` (the plan's sources; RunInference loads the
model) and only call the plain functions of :mod:`pipelines.predict.chunk`,
:mod:`pipelines.predict.finalize` and :mod:`pipelines.predict.inventory`. No key of
finalize holds every chunk's arrays or polygons: per AOI it groups chunk summaries (a few
hundred bytes each) and the polygons that cross chunk edges. Failed chunks go to a
dead-letter output at every stage, recorded in ``failed_chunks.jsonl``, never dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from pipelines.predict.chunk import ChunkTiles, failure_record, finish_chunk, prepare_chunk
from pipelines.predict.coder import register as register_chunk_coder
from pipelines.predict.finalize import chunk_outputs, finish_job
from pipelines.predict.inventory import merge_edges
from pipelines.predict.plan import ChunkElement, SweepPlan
from pipelines.transforms.background import InBackground
from pipelines.transforms.inference import (
    METRICS_NAMESPACE,
    InferenceError,
    KerasModelHandler,
    acquire_model,
    new_model_tag,
)
from pipelines.transforms.tagged import SplitTags

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- DoFns
class ReadChunkFn(InBackground):
    """Skip a chunk already done for the same inputs, or read it and find its windows.

    The next chunk is read on a reader thread while this one goes through inference and
    blending downstream (one fused stage), the way ``tf.data`` prefetches. The plan's
    sources are opened in ``setup`` and closed in ``teardown``.

    Outputs ``(tag, value)`` pairs (see :mod:`pipelines.transforms.tagged`): ``tiles``:
    ``((job, key), ChunkTiles)`` for RunInference; ``result``: ``(job, record)`` of
    skipped and empty chunks; ``failed``: ``(job, failure)``.
    """

    thread_name = "chunk-read"

    def __init__(self, plan: SweepPlan, total: int, read_ahead: int = 1,
                 overlap: bool = True) -> None:
        super().__init__(max_pending=read_ahead, overlap=overlap)
        self.plan = plan  # sources built once on the launcher, pickled without clients
        self.total = total

    def setup(self) -> None:
        from pipelines.progress import Progress

        super().setup()  # one reader thread: sources are read by it, one chunk at a time
        self.sources = list(self.plan.sources)
        for source in self.sources:
            source.open()
        self.progress = Progress(self.total, "predict", "chunks")
        self.counters = {n: Metrics.counter(METRICS_NAMESPACE, n)
                         for n in ("chunks_skipped", "chunks_empty", "chunks_read_failed",
                                   "windows")}

    def teardown(self) -> None:
        super().teardown()
        for source in self.sources:
            source.close()

    def process(self, element: ChunkElement,
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        yield from self._submit(element, timestamp, window, prepare_chunk, self.plan,
                                self.sources, *element)

    def _outputs(self, element: ChunkElement, future: Future):
        job, key = element[0], element[1]
        self.progress.update()
        try:
            outcome = future.result()
        except Exception as exc:  # dead letter: recorded, counted, never silent
            log.warning("chunk %s (%s) failed: %s", key, self.plan.jobs[job].label, exc)
            self.counters["chunks_read_failed"].inc()
            yield "failed", (job, failure_record(self.plan, job, key, "read", exc))
            return
        if isinstance(outcome, dict):
            self.counters["chunks_skipped" if outcome["action"] == "skipped"
                          else "chunks_empty"].inc()
            yield "result", (job, outcome)
            return
        self.counters["windows"].inc(len(outcome.origins))
        yield "tiles", ((job, key), outcome)


class BlendWriteFn(InBackground):
    """Blend a chunk's window predictions, write its COGs, polygons and done-record.

    On a writer thread, while the model predicts the next chunk. Outputs ``("result",
    (job, record))`` and ``("failed", (job, failure))``; a chunk whose inference failed
    (its result holds an :class:`InferenceError`) becomes an ``inference`` failure.
    """

    thread_name = "chunk-write"

    def __init__(self, plan: SweepPlan, max_pending: int = 2, overlap: bool = True) -> None:
        super().__init__(max_pending=max_pending, overlap=overlap)
        self.plan = plan

    def setup(self) -> None:
        super().setup()
        self.done = Metrics.counter(METRICS_NAMESPACE, "chunks_done")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "chunks_write_failed")

    def process(self, element: tuple[tuple[int, str], PredictionResult],
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        (job, key), result = element
        if isinstance(result.inference, InferenceError):
            err = result.inference
            self.failed.inc()
            yield "failed", (job, failure_record(self.plan, job, key, "inference", err.text,
                                                 reason=err.reason))
            return
        # the handler's result holds the chunk without its pixels: blending needs none
        yield from self._submit((job, key), timestamp, window, finish_chunk, self.plan,
                                result.example, np.asarray(result.inference))

    def _outputs(self, context: tuple[int, str], future: Future):
        job, key = context
        try:
            record = future.result()
        except Exception as exc:
            log.warning("chunk %s (%s) failed: %s", key, self.plan.jobs[job].label, exc)
            self.failed.inc()
            yield "failed", (job, failure_record(self.plan, job, key, "write", exc))
            return
        self.done.inc()
        yield "result", (job, record)


class ChunkOutputsFn(beam.DoFn):
    """Write a chunk's STAC item; emit its summary and the polygons on its edges.

    Input: ``(job, record)``. Outputs ``("summary", (job, ChunkSummary))`` and, per
    polygon touching the chunk's edge, ``("edge", ((job, epsg), PolygonPart))`` (see
    :mod:`pipelines.transforms.tagged`).
    """

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan

    def process(self, item: tuple[int, dict]):
        job, record = item
        summary, edges = chunk_outputs(self.plan, job, record)
        yield "summary", (job, summary)
        for part in edges:
            yield "edge", ((job, summary.epsg), part)


class MergeEdgesFn(beam.DoFn):
    """``((job, epsg), [PolygonPart])`` -> ``(job, [PolygonPart])`` joined across edges."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan

    def process(self, item: tuple[tuple[int, int], Iterable]):
        (job, epsg), parts = item
        yield job, merge_edges(self.plan, epsg, parts)


class FinishJobFn(beam.DoFn):
    """Write one job's inventory, mosaics, STAC catalog and run record.

    Input: ``(job, {"job": ..., "summary": [ChunkSummary], "failed": [failures],
    "merged": [[PolygonPart]]})``. Output: a JSON line naming the job and its
    ``run.json``.
    """

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan

    def process(self, item: tuple[int, dict[str, Iterable]]):
        job, groups = item
        merged = [p for parts in groups.get("merged", []) for p in parts]
        run = finish_job(self.plan, job, list(groups.get("summary", [])),
                         list(groups.get("failed", [])), merged)
        yield json.dumps({"job": job, "run_json": run["outputs"]["run"]})


def inference_failures(item: tuple[Any, Any], plan: SweepPlan) -> Iterable[tuple[int, dict]]:
    """Turn one RunInference dead-letter item ``(batch, error)`` into chunk failures.

    For ``RunInference(...).with_exception_handling()``; the sweep itself records its
    inference failures in the handler (see :class:`PredictChunks`).
    """
    batch, err = item
    if isinstance(err, tuple) and len(err) >= 2:  # (type, repr(exception), traceback)
        reason = getattr(err[0], "__name__", str(err[0]))
        text = f"{reason}: {err[1]}"
    else:
        reason, text = type(err).__name__, str(err)
    for (job, key), _ in (batch if isinstance(batch, list | tuple) else [batch]):
        yield job, failure_record(plan, job, key, "inference", text, reason=reason)


# ----------------------------------------------------------------------------- transforms
class PrepareChunks(beam.PTransform):
    """Chunk elements -> ``{"tiles", "result", "failed"}`` (see :class:`ReadChunkFn`).

    ``tiles`` is typed ``((job, key), ChunkTiles)``: Beam encodes its elements (and
    RunInference's batches of them), and sizes them for its output counters, with
    :class:`~pipelines.predict.coder.ChunkTilesCoder` instead of pickling their pixels.
    The reader's own ``(tag, value)`` pairs mix chunks with records, a union Beam has no
    coder for: the few of them its counters sample are still pickled.
    """

    def __init__(self, plan: SweepPlan, total: int, overlap: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.total = total
        self.overlap = overlap

    def expand(self, elements: beam.PCollection) -> dict[str, beam.PCollection]:
        register_chunk_coder()  # "tiles" is typed: encoded and sized by ChunkTilesCoder
        return (elements
                | "Read" >> beam.ParDo(ReadChunkFn(self.plan, self.total,
                                                   overlap=self.overlap))
                | "Split" >> SplitTags("tiles", "result", "failed",
                                       types={"tiles": tuple[tuple[int, str], ChunkTiles]}))


class PredictChunks(beam.PTransform):
    """``((job, key), ChunkTiles)`` -> ``((job, key), PredictionResult)``.

    The result's ``inference`` is the windows' probabilities, or an
    :class:`InferenceError` for a chunk whose inference failed (:class:`FinishChunks`
    records it). The handler catches the errors rather than
    ``RunInference.with_exception_handling``: that is a multi-output ``ParDo``, which
    Beam 2.77's Dask runner mixes up (see :mod:`pipelines.transforms.tagged`).
    ``batched=False`` predicts each chunk in a plain ``ParDo`` (model loaded in its
    ``setup``) instead of ``RunInference``, whose ``BatchElements`` emits a bundle's
    last batch in ``finish_bundle``: for runners that drop such outputs. With the
    configuration's ``large_model`` either way loads the model once per machine.
    """

    def __init__(self, plan: SweepPlan, batched: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.batched = batched

    def expand(self, tiles: beam.PCollection) -> beam.PCollection:
        cfg = self.plan.config
        handler = KerasModelHandler(
            cfg.model, batch_size=cfg.batch_size, max_chunks_per_batch=cfg.chunks_per_batch,
            large_model=cfg.large_model, capture_errors=True, meta=self.plan.meta,
            precision=cfg.precision, explain_layer=self.plan.meta.get("explain_layer"),
            explain_threshold=self.plan.threshold)
        if not self.batched:
            return tiles | "InferEach" >> beam.ParDo(InferEachFn(handler))
        return tiles | "Infer" >> RunInference(KeyedModelHandler(handler))


class InferEachFn(beam.DoFn):
    """``(key, example)`` -> ``(key, PredictionResult)``, one example per model call.

    The model is the handler's, shared as ``RunInference`` shares it (once per machine
    with ``large_model``: see :func:`pipelines.transforms.inference.acquire_model`).
    """

    def __init__(self, handler: KerasModelHandler) -> None:
        self.handler = handler
        self.model_tag = new_model_tag()  # one per pipeline, the same in every worker

    def setup(self) -> None:
        self.model = acquire_model(self.handler, self.model_tag)

    def process(self, element: tuple[Any, Any]):
        key, example = element
        yield key, next(iter(self.handler.run_inference([example], self.model)))


class FinishChunks(beam.PTransform):
    """``((job, key), PredictionResult)`` -> ``{"result", "failed"}``.

    See :class:`BlendWriteFn`.
    """

    def __init__(self, plan: SweepPlan, overlap: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.overlap = overlap

    def expand(self, predictions: beam.PCollection) -> dict[str, beam.PCollection]:
        return (predictions
                | "BlendWrite" >> beam.ParDo(BlendWriteFn(self.plan, overlap=self.overlap))
                | "Split" >> SplitTags("result", "failed"))


class Finalize(beam.PTransform):
    """``{"result": (job, record), "failed": (job, failure)}`` -> one JSON line per job.

    Chunk STAC items are written in parallel, one per chunk; edge polygons are joined per
    AOI and UTM zone; each AOI's products are finished from its chunks' summaries. Every
    job is finalized, also one whose chunks all failed or that has none. Everything flows
    into the last step (runners such as Beam's Dask runner compute only what it reads).
    """

    def __init__(self, plan: SweepPlan) -> None:
        super().__init__()
        self.plan = plan

    def expand(self, pcolls: dict[str, beam.PCollection]) -> beam.PCollection:
        jobs = (pcolls["result"].pipeline
                | "Jobs" >> beam.Create([(i, None) for i in range(len(self.plan.jobs))]))
        chunks = (pcolls["result"]
                  | "ChunkOutputs" >> beam.ParDo(ChunkOutputsFn(self.plan))
                  | "SplitChunkOutputs" >> SplitTags("summary", "edge"))
        merged = (chunks["edge"]
                  | "GroupEdges" >> beam.GroupByKey()
                  | "MergeEdges" >> beam.ParDo(MergeEdgesFn(self.plan)))
        return ({"job": jobs, "summary": chunks["summary"], "failed": pcolls["failed"],
                 "merged": merged}
                | "PerJob" >> beam.CoGroupByKey()
                | "Finish" >> beam.ParDo(FinishJobFn(self.plan)))


def build_pipeline(p, plan: SweepPlan, elements: Sequence[tuple]) -> None:
    """Add the sweep to the Beam pipeline ``p``.

    The plan's sources must have been adapted to ``p``'s workers first
    (:func:`pipelines.workers.for_workers`).
    """
    from pipelines.beam_util import in_process, keeps_finish_bundle_outputs

    overlap = keeps_finish_bundle_outputs(p.options)
    read = (p
            # spread over workers, unless one worker in this process takes them all
            | "Chunks" >> beam.Create(list(elements), reshuffle=not in_process(p.options))
            | "Prepare" >> PrepareChunks(plan, len(elements), overlap=overlap))
    predicted = read["tiles"] | "Predict" >> PredictChunks(plan, batched=overlap)
    written = predicted | "Finish" >> FinishChunks(plan, overlap=overlap)
    results = (read["result"], written["result"]) | "Results" >> beam.Flatten()
    failed = (read["failed"], written["failed"]) | "Failed" >> beam.Flatten()
    _ = {"result": results, "failed": failed} | "Finalize" >> Finalize(plan)


__all__ = [
    "BlendWriteFn",
    "ChunkOutputsFn",
    "Finalize",
    "FinishJobFn",
    "FinishChunks",
    "InferEachFn",
    "MergeEdgesFn",
    "PredictChunks",
    "PrepareChunks",
    "ReadChunkFn",
    "build_pipeline",
    "inference_failures",
]

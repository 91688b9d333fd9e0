"""A DoFn base that runs each element's work on a background thread, in order.

Export and predict read the next chunk (and predict writes the last one) while the
steps downstream in the same fused Beam stage run on the current one: GDAL decoding,
numpy, compression and file I/O release the GIL, so they overlap with encoding or
inference, the way ``tf.data`` prefetches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue


class InBackground(beam.DoFn):
    """A DoFn whose per-element work runs on background threads, emitted in order.

    A subclass's ``process`` calls :meth:`_submit` with the element's work; its
    :meth:`_outputs` turns the finished work into outputs, on the bundle's thread.
    ``_submit`` hands the work to the thread, then emits the oldest elements' outputs
    while more than ``max_pending`` are in flight (waiting for their work);
    ``finish_bundle`` emits the rest. So inside a fused stage the steps downstream of
    this one run while the thread works on the next elements. Outputs keep their
    element's window and timestamp; metrics and counters belong in ``_outputs`` (Beam's
    metrics are per thread).

    Args:
        max_pending: Elements whose work may be queued or running besides the one being
            emitted (memory grows with it).
        overlap: False to emit each element's outputs in its ``process`` (no overlap),
            for runners that drop what ``finish_bundle`` emits (Beam 2.77's Dask runner
            collects a bundle's outputs before it calls ``finish_bundle``); see
            :func:`pipelines.beam_util.keeps_finish_bundle_outputs`.
        workers: Threads doing the work (default one: each element's work after the
            last's); outputs are emitted in the elements' order either way.
    """

    thread_name = "background"

    def __init__(self, max_pending: int, overlap: bool = True, workers: int = 1) -> None:
        self.max_pending = max(1, int(max_pending)) if overlap else 0
        self.workers = max(1, int(workers))

    def setup(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix=self.thread_name)

    def teardown(self) -> None:
        self._pool.shutdown(wait=True)

    def start_bundle(self) -> None:
        self._pending: deque[tuple[Any, Future, WindowedValue]] = deque()

    def _submit(self, context: Any, timestamp: Any, window: Any, fn: Callable[..., Any],
                *args: Any):
        """Queue ``fn(*args)``; yield the outputs that are due (use ``yield from``)."""
        where = WindowedValue(None, timestamp, (window,))
        self._pending.append((context, self._pool.submit(fn, *args), where))
        while len(self._pending) > self.max_pending:  # this element's work is queued
            yield from self._emit(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            yield from self._emit(*self._pending.popleft())

    def _emit(self, context: Any, future: Future, where: WindowedValue):
        for out in self._outputs(context, future):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, where.with_value(out.value))
            else:
                yield where.with_value(out)

    def _outputs(self, context: Any, future: Future) -> Iterable[Any]:
        """The outputs of one element; ``future.result()`` raises its work's error."""
        raise NotImplementedError


__all__ = ["InBackground"]

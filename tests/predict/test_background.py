"""InBackground: work on the next element overlaps with the steps downstream."""

from __future__ import annotations

import threading

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms.background import InBackground

# Module state: the DirectRunner runs this in-process; only the test below touches it.
_STARTED: dict[int, threading.Event] = {}
_OVERLAPPED: list[tuple[int, bool]] = []


class _Square(InBackground):
    def __init__(self, max_pending: int) -> None:
        super().__init__(max_pending=max_pending)

    def process(self, element: int, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        yield from self._submit(element, timestamp, window, self._work, element)

    @staticmethod
    def _work(i: int) -> int:
        _STARTED[i].set()
        if i == 3:
            raise RuntimeError("three")
        return i * i

    def _outputs(self, element: int, future):
        try:
            yield future.result()
        except RuntimeError as exc:
            yield beam.pvalue.TaggedOutput("failed", f"{element}: {exc}")


def _downstream(x: int, n: int, ahead: int) -> int:
    i = round(x ** 0.5)
    if i + ahead < n:  # the next elements' work runs while this one is handled here
        _OVERLAPPED.append((i, _STARTED[i + ahead].wait(timeout=5)))
    return x


@pytest.mark.parametrize("ahead", [1, 2])
def test_in_background_overlaps_the_next_elements_with_downstream_work(ahead):
    n = 6
    _STARTED.clear()
    _STARTED.update({i: threading.Event() for i in range(n)})
    _OVERLAPPED.clear()
    with TestPipeline() as p:
        res = (p
               | beam.Create(list(range(n)), reshuffle=False)  # one bundle, in order
               | beam.ParDo(_Square(ahead)).with_outputs("failed", main="squares"))
        squares = res.squares | beam.Map(_downstream, n=n, ahead=ahead)
        assert_that(squares, equal_to([0, 1, 4, 16, 25]))
        assert_that(res.failed, equal_to(["3: three"]), label="failed")
    # without the background thread, element i + ahead would start only after element i
    # left the downstream step: each wait would time out
    assert _OVERLAPPED and all(ok for _, ok in _OVERLAPPED), _OVERLAPPED

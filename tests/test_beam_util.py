"""Read-ahead helpers: work on the next element overlaps with the current one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.beam_util import read_ahead
from pipelines.transforms.inference import InBackground


def test_read_ahead_submits_the_next_item_before_handing_over_the_current():
    submitted: list[int] = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append(args[0])
            return super().submit(fn, *args, **kwargs)

    def work(i: int) -> int:
        if i == 2:
            raise ValueError("bad item 2")
        return i * 10

    seen = []
    with Recording(max_workers=1) as pool:
        for item, future in read_ahead(pool, work, iter(range(5)), depth=1):
            # when item i is handed over, item i + 1 is already on its way
            assert submitted == list(range(min(item + 2, 5)))  # depth 1
            if item == 2:
                with pytest.raises(ValueError, match="bad item 2"):
                    future.result()  # its own failure only
                continue
            seen.append(future.result())
    assert seen == [0, 10, 30, 40]
    submitted.clear()
    with Recording(max_workers=1) as pool:
        for item, _ in read_ahead(pool, work, range(5), depth=2):
            assert submitted == list(range(min(item + 3, 5)))
    assert list(read_ahead(ThreadPoolExecutor(1), work, [])) == []


# Module state: the DirectRunner runs this in-process; only the test below touches it.
_STARTED: dict[int, threading.Event] = {}
_OVERLAPPED: list[tuple[int, bool]] = []


class _Square(InBackground):
    def __init__(self, n: int) -> None:
        super().__init__(max_pending=1)
        self.n = n

    def process(self, element: int, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        from apache_beam.utils.windowed_value import WindowedValue

        yield from self._submit(element, WindowedValue(None, timestamp, (window,)),
                                self._work, element)

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


def _downstream(x: int, n: int) -> int:
    i = round(x ** 0.5)
    if i + 1 < n:  # the next element's work runs while this one is handled here
        _OVERLAPPED.append((i, _STARTED[i + 1].wait(timeout=5)))
    return x


def test_in_background_overlaps_the_next_element_with_downstream_work():
    n = 6
    _STARTED.clear()
    _STARTED.update({i: threading.Event() for i in range(n)})
    _OVERLAPPED.clear()
    with TestPipeline() as p:
        res = (p
               | beam.Create(list(range(n)), reshuffle=False)  # one bundle, in order
               | beam.ParDo(_Square(n)).with_outputs("failed", main="squares"))
        squares = res.squares | beam.Map(_downstream, n=n)
        assert_that(squares, equal_to([0, 1, 4, 16, 25]))
        assert_that(res.failed, equal_to(["3: three"]), label="failed")
    # without the background thread, element i + 1 would start only after element i
    # left the downstream step: each wait would time out
    assert _OVERLAPPED and all(ok for _, ok in _OVERLAPPED), _OVERLAPPED

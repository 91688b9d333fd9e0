"""bench/predict.py: where a sweep's seconds go, from the sweep's own log records."""

from __future__ import annotations

import logging
import time

import pytest

from pipelines.progress import Progress
from tests.scripts import load_script


def _bench():
    return load_script("bench/predict.py", "bench_predict")


def test_phases_come_from_the_planning_and_progress_records(caplog) -> None:
    b = _bench()
    run_log = logging.getLogger("pipelines.predict.run")
    times = b._LogTimes()
    start = time.perf_counter()
    with caplog.at_level(logging.INFO), times:
        time.sleep(0.05)  # planning
        run_log.info("Predicting %d chunk(s) of 1 AOI(s)", 3)
        progress = Progress(3, "predict", "chunks", every_s=0.0)
        time.sleep(0.1)  # graph, runner and the first read
        progress.update()
        for _ in range(2):
            time.sleep(0.1)  # the other reads
            progress.update()
        time.sleep(0.05)  # the last chunk's model and writing, then finishing
        run_log.info("Predict finished")
    end = time.perf_counter()
    ph = times.phases(start, end)
    assert ph is not None and list(ph) == ["plan_s", "start_s", "chunks_s", "finish_s"]
    # each phase holds its sleeps (a busy machine only lengthens them) and no other's
    for name, slept in (("plan_s", 0.05), ("start_s", 0.1), ("chunks_s", 0.2),
                        ("finish_s", 0.05)):
        assert slept <= ph[name] < slept + 0.09, (name, ph)
    assert sum(ph.values()) == pytest.approx(end - start)
    # nothing reached other handlers (the child's stdout carries only its JSON line), and
    # the loggers are as they were afterwards
    assert not [r for r in caplog.records if r.name in times.LOGGERS]
    assert all(logging.getLogger(n).propagate for n in times.LOGGERS)
    assert all(times not in logging.getLogger(n).handlers for n in times.LOGGERS)


def test_no_phases_without_progress_records() -> None:
    times = _bench()._LogTimes()
    with times:
        logging.getLogger("pipelines.predict.run").info("Predicting %d chunk(s)", 1)
    assert times.phases(0.0, 1.0) is None

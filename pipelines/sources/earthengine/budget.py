"""The Earth Engine request budget: one for the whole job, split over its worker processes.

Earth Engine's quotas are per Cloud project: by default 40 requests in flight and 100
requests per second, shared by every worker of a job (and by anything else using the
project). :class:`~pipelines.sources.earthengine.config.EEConfig` holds the job's budget,
``max_concurrent_requests`` (C) and ``requests_per_second`` (R); :func:`split_budget`
divides it over the job's P worker processes (read from the Beam pipeline options by
:func:`pipelines.workers.worker_layout`, or given as ``worker_processes``)::

    P = workers x SDK processes per worker     (threads of a process share its part)
    c = floor(C / P)     requests in flight per process  ->  P x c <= C for the job
    r = R / P            requests started per second per process  ->  P x r = R

For example 10 ``n2-highmem-4`` Dataflow workers run P = 10 x 4 = 40 processes: with the
default budget each keeps c = 1 request in flight and starts at most r = 2.5 per second.
A job with more processes than C cannot be split (one process needs at least one request
in flight): it is refused before launch, naming the fixes (fewer workers, one SDK process
per worker, or a larger quota and budget).

Inside one process, :class:`ProcessBudget` holds the process's part for every source of
the same project: a semaphore of c slots, requests started at least 1/r seconds apart,
and Beam's :class:`~apache_beam.io.components.adaptive_throttler.AdaptiveThrottler`,
which delays a new request (with jitter) with the probability that recent requests were
refused with HTTP 429 / RESOURCE_EXHAUSTED (when something else uses the same quota); a
retry is not held again, it already waited its exponential backoff.
Time spent waiting is reported to the runner as Beam's ``cumulativeThrottlingSeconds``
counter, which Dataflow's autoscaler reads as "throttled: do not add workers".
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.errors import ConfigError
from pipelines.sources.earthengine.config import EEConfig
from pipelines.workers import WorkerLayout

__all__ = ["BudgetShare", "ProcessBudget", "process_budget", "split_budget"]

#: Beam metrics namespace of the throttling counter.
METRICS_NAMESPACE = "earthengine"
#: The adaptive throttler's history and its target ratio of requests to accepted ones.
THROTTLER_WINDOW_MS = 60_000
THROTTLER_BUCKET_MS = 1_000
THROTTLER_OVERLOAD_RATIO = 1.25


@dataclass(frozen=True)
class BudgetShare:
    """One worker process's part of the job's Earth Engine budget.

    Attributes:
        concurrency: Requests this process may have in flight (c).
        requests_per_second: Requests this process may start per second (r).
        processes: Worker processes the job's budget is split over (P).
        basis: Where P comes from (the pipeline options read), for messages.
    """

    concurrency: int
    requests_per_second: float
    processes: int
    basis: str = "one process"

    def describe(self) -> str:
        return (f"{self.concurrency} request(s) in flight and {self.requests_per_second:.3g}"
                f"/s per process x {self.processes} process(es) ({self.basis})")


def split_budget(config: EEConfig, layout: WorkerLayout | None = None) -> BudgetShare:
    """Split ``config``'s job-wide budget over the worker processes of ``layout``.

    ``config.worker_processes``, when set, overrides the layout's count; without either,
    the budget is this process's alone.

    Raises:
        ConfigError: the number of processes is unknown, or exceeds the concurrent
            requests of the budget (each process needs at least one).
    """
    total = config.max_concurrent_requests
    if config.worker_processes:
        processes: int | None = config.worker_processes
        basis = f"worker_processes {processes}"
    elif layout is None:
        processes, basis = 1, "this process only"
    else:
        processes, basis = layout.processes, layout.basis
    if processes is None:
        raise ConfigError(
            f"Cannot split the Earth Engine budget of {total} concurrent requests over this "
            f"job's workers: {basis}. Bound the workers (--max_num_workers on Dataflow), or "
            f"give --ee-worker-processes N (scan file: worker_processes), the number of "
            f"worker processes the job runs.")
    if processes > total:
        per_worker = (layout.processes_per_worker or 1) if layout and \
            not config.worker_processes else 1
        fewer = (f"at most {total // per_worker} worker(s) of {per_worker} SDK processes "
                 f"(--max_num_workers), or one SDK process per worker (--experiments "
                 f"no_use_multiple_sdk_containers)" if per_worker > 1
                 else "fewer workers (--max_num_workers)")
        raise ConfigError(
            f"The Earth Engine budget of {total} concurrent requests cannot be split over "
            f"{processes} worker processes ({basis}): each needs at least one. Run at most "
            f"{total} processes: {fewer}; or, once the project's Earth Engine quota is "
            f"raised, raise --ee-max-concurrent-requests to at least {processes} (scan "
            f"file: max_concurrent_requests).")
    return BudgetShare(total // processes, config.requests_per_second / processes,
                       processes, basis)


class ProcessBudget:
    """One process's part of the budget: slots, pacing and adaptive throttling.

    Thread-safe; shared by every source of the same endpoint and project in the process
    (:func:`process_budget`).

    Args:
        share: This process's part.
        throttle_delay_s: Base of the jittered delay of a request the adaptive throttler
            holds back.
    """

    def __init__(self, share: BudgetShare, throttle_delay_s: float) -> None:
        from apache_beam.io.components.adaptive_throttler import (
            AdaptiveThrottler,
            ThrottlingSignaler,
        )

        self.share = share
        self._slots = threading.BoundedSemaphore(share.concurrency)
        self._interval = 1.0 / share.requests_per_second
        self._next_start = 0.0
        self._lock = threading.Lock()
        self._throttler = AdaptiveThrottler(THROTTLER_WINDOW_MS, THROTTLER_BUCKET_MS,
                                            THROTTLER_OVERLOAD_RATIO)
        self._signaler = ThrottlingSignaler(METRICS_NAMESPACE)
        self._throttle_delay_s = throttle_delay_s
        self._unreported_s = 0.0
        self.throttled_s = 0.0  # total time requests waited (held back or backing off)
        self.in_flight = 0
        self.peak_in_flight = 0

    @contextlib.contextmanager
    def request(self, retry: bool = False) -> Iterator[None]:
        """Hold a slot for one request, started no sooner than the pacing and throttler allow.

        Args:
            retry: The request repeats one refused before: it already waited its backoff,
                so the throttler counts it but does not hold it back again.
        """
        with self._slots:
            self._wait_turn(hold=not retry)
            with self._lock:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                with self._lock:
                    self.in_flight -= 1

    def _wait_turn(self, hold: bool) -> None:
        with self._lock:
            held = self._throttler.throttle_request(_now_ms())
        if held and hold:  # recent requests were refused: hold this one back a while
            self.wait(self._throttle_delay_s * random.uniform(0.5, 1.0))
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            time.sleep(start - now)

    def answered(self, overloaded: bool) -> None:
        """Record an answer: ``overloaded`` for HTTP 429 / RESOURCE_EXHAUSTED."""
        if not overloaded:
            with self._lock:
                self._throttler.successful_request(_now_ms())

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` because of throttling, and report it to the runner."""
        time.sleep(seconds)
        with self._lock:
            self.throttled_s += seconds
            self._unreported_s += seconds
            whole = math.floor(self._unreported_s)
            self._unreported_s -= whole
        if whole:
            self._signaler.signal_throttled(whole)


def _now_ms() -> float:
    return time.time() * 1000.0


_BUDGETS: dict[tuple, ProcessBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def process_budget(config: EEConfig, share: BudgetShare) -> ProcessBudget:
    """The process-wide budget of ``config``'s endpoint and project for ``share``."""
    key = (config.url, config.project, share.concurrency, share.requests_per_second,
           config.backoff_initial_s)
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None:
            budget = _BUDGETS[key] = ProcessBudget(share, config.backoff_initial_s)
        return budget

"""SIGTERM, what Dataflow, Kubernetes and batch schedulers send before they kill.

Without a handler Python dies on the spot, wherever its threads are. With
:func:`handle_sigterm` (installed by ``landslides`` for the length of a command) a SIGTERM
instead:

* sets :data:`stopping` and raises :class:`Terminated` in the main thread, which unwinds
  the command (every local write is temp + rename, so nothing half-written is published);
* lets the chunk whose work already started finish (its COGs, then its done-record), and
  abandons the chunks that had not started (:func:`check` raises at their start), so a
  rerun of the same command resumes exactly where it stopped;
* is logged: what was in flight, and which of it finished or was abandoned.

:class:`Terminated` derives from :class:`BaseException`, like :class:`KeyboardInterrupt`,
so the ``except Exception`` of dead-lettering never mistakes it for a failed chunk.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: The exit code of a command stopped by SIGTERM (128 + 15, as a shell reports it).
EXIT_SIGTERM = 128 + signal.SIGTERM

#: Set once a SIGTERM arrived: work that has not started must not start.
stopping = threading.Event()

_lock = threading.RLock()  # re-entrant: the handler runs in the main thread
_in_flight: dict[int, str] = {}
_ended: list[tuple[str, bool]] = []  # (what, finished) of work in flight at the SIGTERM
_ids = iter(range(1, 1 << 62))


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, and by :func:`check` once it came."""


def check(what: str) -> None:
    """Raise :class:`Terminated` when a SIGTERM came: ``what`` is abandoned before it starts."""
    if stopping.is_set():
        with _lock:
            _ended.append((what, False))
        raise Terminated(f"{what}: abandoned after SIGTERM")


@contextlib.contextmanager
def in_flight(what: str) -> Iterator[None]:
    """Record ``what`` (e.g. ``chunk 32645_0_1 of aoi: write``) while it runs.

    Abandoned before it starts when a SIGTERM already came (:func:`check`); once started
    it runs to its end, and if a SIGTERM came meanwhile its ending is logged.
    """
    check(what)
    with _lock:
        ident = next(_ids)
        _in_flight[ident] = what
    ok = False
    try:
        yield
        ok = True
    finally:
        with _lock:
            _in_flight.pop(ident, None)
            if stopping.is_set():
                _ended.append((what, ok))
        if stopping.is_set():
            log.warning("%s %s after SIGTERM", what, "finished" if ok else "abandoned")


def running() -> list[str]:
    """What is in flight now."""
    with _lock:
        return list(_in_flight.values())


def wait_idle(timeout_s: float) -> list[str]:
    """Wait until nothing is in flight (at most ``timeout_s``); returns what still is."""
    deadline = time.monotonic() + timeout_s
    while (left := running()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def ended() -> list[tuple[str, bool]]:
    """The work that ended after the SIGTERM: ``(what, finished)``."""
    with _lock:
        return list(_ended)


def _on_sigterm(signum: int, frame: object) -> None:
    if stopping.is_set():
        return  # a second SIGTERM while unwinding: the first one is being handled
    stopping.set()
    work = running()
    log.warning("terminated by SIGTERM; in flight: %s", "; ".join(work) if work else "nothing")
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reset() -> None:
    """Forget a SIGTERM (for tests that call the CLI in one process)."""
    stopping.clear()
    with _lock:
        _in_flight.clear()
        _ended.clear()


__all__ = ["EXIT_SIGTERM", "Terminated", "check", "ended", "handle_sigterm", "in_flight",
           "running", "stopping", "wait_idle"]

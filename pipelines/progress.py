"""Progress with rate and ETA for long local runs, through logging (no print)."""

from __future__ import annotations

import logging
import time


class Progress:
    """Log ``done/total``, rate and ETA at most every ``every_s`` seconds.

    Works inside Beam DoFns (one per worker process: the counts are that worker's) and in
    plain loops.
    """

    def __init__(self, total: int | None, label: str, unit: str = "items",
                 every_s: float = 5.0, logger: logging.Logger | None = None) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.every_s = every_s
        self.log = logger or logging.getLogger("landslides.progress")
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total and self.done >= self.total):
            self._last = now
            self.log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            left = max(self.total - self.done, 0)
            eta = left / rate if rate > 0 else float("inf")
            return (f"{self.label}: {self.done}/{self.total} {self.unit} "
                    f"({100.0 * self.done / self.total:.0f}%), {rate:.2f} {self.unit}/s, "
                    f"ETA {_fmt(eta)}")
        return f"{self.label}: {self.done} {self.unit}, {rate:.2f} {self.unit}/s"


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")

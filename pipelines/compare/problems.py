"""The warnings and errors a comparison meets on the way, kept for metrics.json and the report.

Bad input does not stop a comparison: each problem is logged once here and recorded, and
the report lists them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Problems:
    """Warnings and errors met on the way; they go to metrics.json and the report."""

    items: list[dict] = field(default_factory=list)

    def add(self, level: str, message: str, side: str | None = None, year: int | None = None,
            exc: BaseException | None = None) -> None:
        log = logger.error if level == "error" else logger.warning
        where = " ".join(str(v) for v in (side, year) if v is not None)
        log("%s%s", f"[{where}] " if where else "", message)
        self.items.append({"level": level, "side": side, "year": year, "message": message,
                           "type": type(exc).__name__ if exc is not None else None})

    def errors(self) -> list[dict]:
        return [p for p in self.items if p["level"] == "error"]

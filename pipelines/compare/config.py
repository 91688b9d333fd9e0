"""What one comparison is asked to do: :class:`CompareConfig`, its validation, the year list.

:class:`CompareConfig` (the options of ``landslides compare``), the ``--years`` parser and
the "projected in metres" test of a CRS are defined in :mod:`pipelines.options.compare` and
re-exported here; this module adds the key a year is filed under in ``metrics.json``.
"""

from __future__ import annotations

from pipelines.options.compare import METRICS_VERSION, CompareConfig, parse_years

__all__ = ["METRICS_VERSION", "CompareConfig", "_year_key", "parse_years"]


def _year_key(year: int | None) -> str:
    return "all" if year is None else str(year)

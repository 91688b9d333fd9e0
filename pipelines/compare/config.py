"""What one comparison is asked to do: :class:`CompareConfig`, its validation, the year list.

:class:`CompareConfig` (the options of ``landslides compare``), the ``--years`` parser and
the "projected in metres" test of a CRS are defined in :mod:`pipelines.options.compare` and
re-exported here; this module adds the key a year is filed under in ``metrics.json`` and
the sentence that says a side is the same inventory every year.
"""

from __future__ import annotations

from pipelines.options.compare import METRICS_VERSION, CompareConfig, parse_years

__all__ = ["METRICS_VERSION", "CompareConfig", "_year_key", "parse_years", "static_note"]


def _year_key(year: int | None) -> str:
    return "all" if year is None else str(year)


def static_note(config: CompareConfig) -> str | None:
    """The sentence saying which side is the same inventory every year, if any.

    For the report and the multi-temporal table of a comparison over ``years`` where one
    side's path holds no ``{year}`` (e.g. one reference inventory against yearly
    predictions).
    """
    if not config.static_sides:
        return None
    role = config.static_sides[0]
    other = "predicted" if role == "reference" else "reference"
    return (f"The {role} path {getattr(config, role)!r} holds no {{year}}: it is the same "
            f"inventory in every year ({', '.join(map(str, config.years or ()))}). Each "
            f"year's metrics score that year's {other} inventory against it; its own "
            f"numbers do not change from year to year (other than through what each year "
            f"observed), so it has no peak year or change across years, and no correlation "
            f"across years is given.")

"""Areas of interest for a sweep: polygons, a bbox, a point, or an event catalogue.

An AOI is a polygon file or bbox, a point with a buffer, or one square per event of a
catalogue, each with its own date window.

The event catalogue is a CSV of points with dates such as NASA's Global Landslide Catalog
(columns ``event_id``, ``event_date``, ``latitude``, ``longitude``); common variants of the
column names (``id``, ``date``, ``lat``, ``lon``...) are accepted.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines import fsio
from pipelines.errors import ConfigError, DataNotFoundError, InputError
from pipelines.geo.grid import Region, load_region, point_region

log = logging.getLogger(__name__)

#: Accepted column names (lower case, spaces/dashes as underscores), in priority order.
LAT_COLUMNS = ("latitude", "lat", "y")
LON_COLUMNS = ("longitude", "lon", "lng", "long", "x")
DATE_COLUMNS = ("event_date", "date", "event_time", "datetime", "time", "eventdate")
ID_COLUMNS = ("event_id", "id", "objectid", "eventid", "name")


@dataclass(frozen=True)
class AOI:
    """One area to sweep.

    Attributes:
        name: Folder-safe name (event id, region name); ``""`` for a single AOI.
        region: The area (WGS 84).
        start: Date window start (YYYY-MM-DD) or ``None``.
        end: Date window end or ``None``.
        event_date: The event's date for catalogue AOIs (YYYY-MM-DD), else ``None``.
    """

    name: str
    region: Region
    start: str | None
    end: str | None
    event_date: str | None = None


def safe_name(text: str) -> str:
    """A name usable as a folder in a path or bucket (letters, digits, ``._-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).strip()).strip("._")
    return s[:80] or "aoi"


def parse_point(text: str) -> tuple[float, float]:
    """Parse ``"LAT,LON"`` (decimal degrees) into ``(lat, lon)``.

    Raises:
        ConfigError: not two numbers, or out of range.
    """
    try:
        lat, lon = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(f"Bad --point {text!r}: expected 'LAT,LON' in decimal degrees, "
                          f"e.g. 28.16,85.36.") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ConfigError(f"Bad --point {text!r}: latitude must be in [-90, 90] and longitude "
                          f"in [-180, 180] (the order is LAT,LON).")
    return lat, lon


def _norm(col: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(col).strip().lower())


def _pick(columns: dict[str, str], names: Sequence[str], what: str, path: str,
          required: bool = True) -> str | None:
    for n in names:
        if n in columns:
            return columns[n]
    if required:
        raise InputError(
            f"The event catalogue {path!r} has no {what} column: expected one of "
            f"{', '.join(names)}; it has {', '.join(columns.values())}."
        )
    return None


def _unique_names(names: Sequence[str]) -> list[str]:
    """The folder names of events: each name, with ``-<n>`` added to its repeats.

    The first event of a name keeps it; a repeat gets the first ``<name>-<n>`` (n = 1,
    2, ...) that is neither an event's own name anywhere in the catalogue nor a name
    already given, so that every event has a folder of its own.
    """
    taken = set(names)
    given: set[str] = set()
    out: list[str] = []
    for name in names:
        if name in given:
            n = 1
            while f"{name}-{n}" in taken or f"{name}-{n}" in given:
                n += 1
            name = f"{name}-{n}"
        given.add(name)
        out.append(name)
    return out


#: Dates without a day: a year, a year and month (either order), or a time of day alone.
_PARTIAL_DATE = re.compile(
    r"^(\d{4}|\d{4}[-/.]\d{1,2}|\d{1,2}[-/.]\d{4}|\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?)$")
_DATE_HINT = "write dates as YYYY-MM-DD, e.g. 2015-04-25 or 2015-04-25 06:11:00"


def _event_days(values: Sequence[str], path: str) -> list[dt.date]:
    """The UTC calendar day of every date of a catalogue's date column.

    ISO 8601 rows (``2015-04-25``, ``2015/04/25 06:11``, ``2015-04-25T23:30:00-05:00``)
    are read as such; the other rows with one format inferred from them (``%d/%m/%Y``...)
    that reads every one of them (catalogues such as NASA's mix both). Rows that all read
    in both day orders are read month-first (with a warning). Times with a zone are converted to
    UTC before their day is taken.

    Args:
        values: The column's text, one per row (the first is the file's row 2).
        path: The catalogue, for the messages.

    Returns:
        The days, in row order.

    Raises:
        InputError: a partial date (a year, a year and month, a time alone), a row that
            reads in no format or only in another format than the others (e.g. another
            day/month order), naming the row.
    """
    import warnings

    import pandas as pd
    from pandas.tseries.api import guess_datetime_format

    texts = pd.Series([str(v).strip() for v in values], dtype=object)
    for i, text in enumerate(texts, start=2):
        if not text or _PARTIAL_DATE.match(text):
            raise InputError(f"{path!r} row {i}: the date {text!r} is not a full date (a "
                             f"year, month and day); {_DATE_HINT}.")

    def parse(fmt: str, rows: pd.Series) -> pd.Series:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.to_datetime(rows, format=fmt, utc=True, errors="coerce")

    iso = parse("ISO8601", texts)
    if iso.notna().all():
        return [t.date() for t in iso]
    # ISO rows are unambiguous; the others must share one format (one day/month order)
    rest = texts[iso.isna()]
    formats: list[str] = []
    for text in rest:
        for dayfirst in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fmt = guess_datetime_format(text, dayfirst=dayfirst)
            if fmt and fmt not in formats:
                formats.append(fmt)
    # 12-hour clocks, which pandas does not guess (NASA's "04/26/2015 12:00:00 AM")
    formats += [f"{d} {t}" for d in ("%m/%d/%Y", "%d/%m/%Y") for t in ("%I:%M:%S %p", "%I:%M %p")
                if f"{d} {t}" not in formats]
    parsed = {fmt: parse(fmt, rest) for fmt in formats}
    fits = [fmt for fmt, when in parsed.items() if when.notna().all()]
    if fits:
        fmt = fits[0]
        if any(not parsed[f].equals(parsed[fmt]) for f in fits[1:]):
            log.warning("%s: every non-ISO date reads as %s and as %s; reading them as %s "
                        "(%s).", path, fmt, " or ".join(fits[1:]), fmt, _DATE_HINT)
        days = iso.copy()
        days[rest.index] = parsed[fmt]
        return [t.date() for t in days]
    # no one format reads every non-ISO row: name a row that breaks the format most have
    if not parsed:
        row = int(rest.index[0])
        raise InputError(f"{path!r} row {row + 2}: cannot read the date {texts[row]!r}: it "
                         f"reads in no date format; {_DATE_HINT}.")
    best, best_when = max(parsed.items(), key=lambda kv: int(kv[1].notna().sum()))
    row = int(best_when.index[best_when.isna().to_numpy().argmax()])
    others = [f for f, when in parsed.items() if f != best and pd.notna(when[row])]
    first_ok = int(best_when.index[best_when.notna().to_numpy().argmax()])
    why = (f"it reads only as {others[0]}, while row {first_ok + 2} "
           f"({texts[first_ok]!r}) and the others read as {best}" if others
           else "it reads in no date format")
    raise InputError(f"{path!r} row {row + 2}: cannot read the date {texts[row]!r}: {why}. "
                     f"Every row that is not ISO 8601 must have the same format (the same "
                     f"day/month order); {_DATE_HINT}.")


def read_events(path: str, buffer_m: float, days_before: int = 0, days_after: int = 90,
                limit: int | None = None) -> list[AOI]:
    """One AOI per event of a CSV catalogue.

    Each event gets a square of half-side ``buffer_m`` around its point and the date
    window ``[date - days_before, date + days_after)``: the end is exclusive, as
    ``--end`` is, so ``days_after=1`` reads the event's day alone and the day
    ``date + days_after`` is not read. The dates are read as :func:`_event_days` says
    (one format for the whole column; zoned times taken in UTC).

    Args:
        path: The CSV catalogue (local or gs://).
        buffer_m: Half-side of each event's square, in metres.
        days_before: Days of the window before each event's date.
        days_after: Days of the window from each event's date on (end exclusive).
        limit: Read at most this many events.

    Returns:
        One AOI per event, in file order.

    Raises:
        DataNotFoundError: no such file.
        InputError: missing columns, unparseable rows or dates (naming the row), partial
            or mixed-format dates, or no events.
        ConfigError: a window that would be empty.
    """
    import pandas as pd

    if days_before < 0 or days_after < 0 or days_before + days_after < 1:
        raise ConfigError(
            f"--days-before {days_before} / --days-after {days_after} give an empty window: "
            f"both must be >= 0 and together at least 1 day."
        )
    if not fsio.exists(path):
        raise DataNotFoundError(f"Event catalogue {path!r} does not exist.")
    try:
        with fsio.local_copy(path) as local:
            df = pd.read_csv(local, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise InputError(f"Cannot read the event catalogue {path!r} as CSV: {exc}") from exc
    columns = {_norm(c): c for c in df.columns}
    lat_c = _pick(columns, LAT_COLUMNS, "latitude", path)
    lon_c = _pick(columns, LON_COLUMNS, "longitude", path)
    date_c = _pick(columns, DATE_COLUMNS, "date", path)
    id_c = _pick(columns, ID_COLUMNS, "id", path, required=False)
    if df.empty:
        raise InputError(f"The event catalogue {path!r} holds no events.")
    rows = [dict(zip(df.columns, row)) for row in df.itertuples(index=False)]
    raw_ids = [rec[id_c] if id_c and str(rec[id_c]).strip() else f"event-{i}"
               for i, rec in enumerate(rows, start=1)]
    names = _unique_names([safe_name(r) for r in raw_ids])
    days = _event_days([str(rec[date_c]) for rec in rows], path)
    aois: list[AOI] = []
    for i, (rec, raw_id, name) in enumerate(zip(rows, raw_ids, names), start=2):  # 1: header
        try:
            lat, lon = float(rec[lat_c]), float(rec[lon_c])
        except ValueError:
            raise InputError(f"{path!r} row {i}: latitude {rec[lat_c]!r} / longitude "
                             f"{rec[lon_c]!r} are not numbers.") from None
        day = days[i - 2]
        try:
            region = point_region(lat, lon, buffer_m)
        except InputError as exc:
            raise InputError(f"{path!r} row {i}: {exc}") from exc
        region = Region(f"event {raw_id}", region.wkb)
        aois.append(AOI(name, region, (day - dt.timedelta(days=days_before)).isoformat(),
                        (day + dt.timedelta(days=days_after)).isoformat(), day.isoformat()))
        if limit is not None and len(aois) >= limit:
            break
    log.info("Read %d events from %s", len(aois), path)
    return aois


def resolve_aois(aoi: str | None, point: str | None, buffer_m: float, events: str | None,
                 start: str | None, end: str | None, days_before: int = 0,
                 days_after: int = 90) -> list[AOI]:
    """The AOIs of a sweep from exactly one of ``aoi``, ``point`` or ``events``.

    Raises:
        ConfigError: none or several of them given, or a date window given with events.
    """
    given = [n for n, v in (("--aoi", aoi), ("--point", point), ("--events", events)) if v]
    if len(given) != 1:
        raise ConfigError(
            f"Give exactly one of --aoi FILE|BBOX, --point LAT,LON (with --buffer-m) or "
            f"--events CSV; got {', '.join(given) or 'none'}."
        )
    if events:
        if start or end:
            raise ConfigError("--events gives each event its own date window "
                              "(--days-before/--days-after); drop --start/--end.")
        return read_events(events, buffer_m, days_before, days_after)
    if point:
        lat, lon = parse_point(point)
        return [AOI("", point_region(lat, lon, buffer_m), start, end)]
    assert aoi is not None
    return [AOI("", load_region(aoi), start, end)]


__all__ = ["AOI", "parse_point", "read_events", "resolve_aois", "safe_name"]

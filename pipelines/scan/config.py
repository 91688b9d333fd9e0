"""The scan file: its keys, its periods, and :class:`ScanConfig`, validated on creation.

Parses and checks the YAML mapping (unknown keys, types, paths relative to the file's
folder, the predict/compare option blocks against the stage configurations), parses the
``periods`` forms, lays out a period's folders and fingerprints what its outputs depend
on. Also the names of the records a scan writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import posixpath
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines import fsio
from pipelines.errors import ConfigError
from pipelines.options.compare import CompareConfig
from pipelines.options.fields import is_option, type_name, value_fits, yaml_keys
from pipelines.options.predict import PredictConfig
from pipelines.options.source import check_spec

FORMAT = "landslides-scan/1"
RECORD = "period.json"
SUBMITTED = "submitted.json"
#: The scan's record of the inputs a period's sweep was last launched with
SWEEP_INPUTS = "sweep_inputs.json"
SCAN_RECORD = "scan.json"
CONFIG_COPY = "scan_config.json"

PERIOD_KEYS = ("name", "start", "end")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_BBOX = re.compile(r"\s*-?[\d.]+\s*(,\s*-?[\d.]+\s*){3}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Period:
    """One period of a scan: a name (its folder) and a date window.

    Attributes:
        name: Folder name and label (letters, digits, ``.``, ``_``, ``-``).
        start: First day, ``YYYY-MM-DD``.
        end: End of the window, ``YYYY-MM-DD``, exclusive (as Earth Engine's
            ``filterDate``); a calendar year ``Y`` is ``Y-01-01 .. Y+1-01-01``.
    """

    name: str
    start: str
    end: str

    @property
    def year(self) -> int:
        """The year the period is about (its start's), which fills ``{year}``."""
        return int(self.start[:4])

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "start": self.start, "end": self.end}


def _date(value: Any, key: str) -> str:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a date YYYY-MM-DD, got {value!r}.")
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise ConfigError(f"{key} is not a valid date: {value!r}; use YYYY-MM-DD "
                          f"(e.g. 2017-06-01).") from None


def _years(value: Any, today: dt.date | None = None) -> tuple[int, ...]:
    """Years of ``periods.years``.

    Accepts ``2016-2023``, ``2016,2018``, ``[2016, 2017]``, ``2016`` or ``2016-`` (open:
    up to the last complete calendar year, for scans that grow every year).
    """
    from pipelines.options.compare import parse_years

    key = "periods.years"
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{key} must be a year range like 2016-2023, got {value!r}.")
    if isinstance(value, int):
        years: tuple[int, ...] = (value,)
    elif isinstance(value, list | tuple):
        if not all(isinstance(y, int) and not isinstance(y, bool) for y in value):
            raise ConfigError(f"{key} must list whole years, got {value!r}.")
        years = tuple(sorted(set(value)))
    elif isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"(\d{4})\s*-\s*", text)
        if m:
            last = (today or dt.date.today()).year - 1
            first = int(m.group(1))
            if first > last:
                raise ConfigError(f"{key} {value!r}: no calendar year since {first} has "
                                  f"ended yet (the last complete year is {last}).")
            years = tuple(range(first, last + 1))
        else:
            try:
                years = parse_years(text) or ()
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    else:
        raise ConfigError(f"{key} must be a year range like 2016-2023, got {value!r}.")
    if not years:
        raise ConfigError(f"{key} is empty: give e.g. 2016-2023.")
    for y in years:
        if not 1950 <= y <= 2100:
            raise ConfigError(f"{key}: year {y} is outside 1950..2100.")
    return years


def parse_periods(value: Any, today: dt.date | None = None) -> tuple[Period, ...]:
    """Periods from the ``periods`` value of a scan file.

    Either ``{"years": "2016-2023"}`` (one period per calendar year, named by the year)
    or a list of ``{"name", "start", "end"}`` mappings (e.g. monsoon seasons).

    Raises:
        ConfigError: empty, malformed, duplicated or unordered periods; the message names
            the key (``periods[2].end``...).
    """
    if isinstance(value, tuple) and value and all(isinstance(p, Period) for p in value):
        periods: tuple[Period, ...] = value
    elif value is None or (isinstance(value, Sequence | Mapping) and len(value) == 0):
        raise ConfigError("periods is empty: give `years: 2016-2023` (a period per calendar "
                          "year) or a list of {name, start, end}.")
    elif isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k != "years")
        if unknown:
            raise ConfigError(f"Unknown key periods.{unknown[0]}; known keys: years (or give "
                              f"a list of {{name, start, end}}).")
        periods = tuple(Period(str(y), f"{y}-01-01", f"{y + 1}-01-01")
                        for y in _years(value.get("years"), today))
    elif isinstance(value, Sequence) and not isinstance(value, str):
        out = []
        for i, item in enumerate(value):
            key = f"periods[{i}]"
            if isinstance(item, Period):
                out.append(item)
                continue
            if not isinstance(item, Mapping):
                raise ConfigError(f"{key} must be a mapping {{name, start, end}}, got {item!r}.")
            unknown = sorted(str(k) for k in item if k not in PERIOD_KEYS)
            if unknown:
                raise ConfigError(f"Unknown key {key}.{unknown[0]}; known keys: "
                                  f"{', '.join(PERIOD_KEYS)}.")
            for k in PERIOD_KEYS:
                if item.get(k) is None:
                    raise ConfigError(f"{key}.{k} is missing: each period needs name, start "
                                      f"and end.")
            out.append(Period(str(item["name"]), _date(item["start"], f"{key}.start"),
                              _date(item["end"], f"{key}.end")))
        periods = tuple(out)
    else:
        raise ConfigError(f"periods must be `years: 2016-2023` or a list of {{name, start, "
                          f"end}}, got {value!r}.")
    seen: set[str] = set()
    for i, p in enumerate(periods):
        key = f"periods[{i}]"
        if not _NAME.fullmatch(p.name):
            raise ConfigError(f"{key}.name {p.name!r} is not a valid folder name: use "
                              f"letters, digits, '.', '_' or '-' (e.g. monsoon-2017).")
        if p.name in seen:
            raise ConfigError(f"{key}.name {p.name!r} is used twice: period names must be "
                              f"unique.")
        seen.add(p.name)
        start, end = _date(p.start, f"{key}.start"), _date(p.end, f"{key}.end")
        if end <= start:
            raise ConfigError(f"{key}.end {end} is not after {key}.start {start}: the end "
                              f"is exclusive, e.g. 2017-06-01 .. 2017-10-01.")
    return periods


def _fixed(cls: type) -> frozenset[str]:
    """Options of ``cls`` the scan sets itself (not keys of its YAML block)."""
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if is_option(f)) - frozenset(yaml_keys(cls))


def _check_block(block: str, values: Any, cls: type) -> dict[str, Any]:
    """Check an option block against the YAML options of ``cls`` (names and types)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{block} must be a mapping of {cls.__name__} options, got "
                          f"{values!r}.")
    hints = typing.get_type_hints(cls)
    known = yaml_keys(cls)
    fixed = _fixed(cls)
    for k, v in values.items():
        if k in fixed:
            raise ConfigError(f"{block}.{k} is set by the scan itself (from region, model, "
                              f"out, periods, reference); remove it. Known keys: "
                              f"{', '.join(known)}.")
        if k not in known:
            raise ConfigError(f"Unknown key {block}.{k}; known keys: {', '.join(known)}.")
        if not value_fits(v, hints[k]):
            raise ConfigError(f"{block}.{k} must be {type_name(hints[k])}, got {v!r}.")
    return dict(values)


def _resolve_source(src: Mapping[str, Any], base: str | None) -> dict[str, Any]:
    """The source spec with its paths (as the kind's options say) relative to ``base``."""
    from pipelines.options.source import path_keys

    out = dict(src)
    for k in path_keys(str(out.get("kind"))):
        value = out.get(k)
        if isinstance(value, Mapping):  # reference_images: name -> path(s)
            out[k] = {n: [_resolve(v, base, f"source.{k}.{n}") for v in p]
                      if isinstance(p, list) else _resolve(p, base, f"source.{k}.{n}")
                      for n, p in value.items()}
        elif isinstance(value, list):
            out[k] = [_resolve(v, base, f"source.{k}") for v in value]
        elif value is not None:
            out[k] = _resolve(value, base, f"source.{k}")
    return out


def _resolve_block(block: str, values: Mapping[str, Any], cls: type,
                   base: str | None) -> dict[str, Any]:
    """An option block with its path options (``path`` in their metadata) resolved.

    Each such key of ``cls`` (a file, or a list of files or globs such as
    ``compare.explanations``) is taken relative to the folder ``base``, like the scan
    file's other paths; the other keys and the types are left for :func:`_check_block`.

    Args:
        block: The block's name in the scan file (``predict``, ``compare``), for messages.
        values: The block as written.
        cls: The stage configuration whose YAML options the block holds.
        base: The scan file's folder (local or URL); ``None`` leaves the paths as they are.

    Returns:
        A copy of the block.

    Raises:
        ConfigError: a path option that is not a path (or a list of paths).
    """
    out = dict(values)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if not f.metadata.get("path") or not f.metadata.get("yaml", True) or value is None:
            continue
        key = f"{block}.{f.name}"
        if isinstance(value, list | tuple):  # of the type given (a default's tuple stays one)
            out[f.name] = type(value)(_resolve(v, base, f"{key}[{i}]")
                                      for i, v in enumerate(value))
        else:
            out[f.name] = _resolve(value, base, key)
    return out


def _resolve(path: Any, base: str | None, key: str) -> Any:
    """``path`` relative to the folder ``base`` (local or URL); absolute ones unchanged."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{key} must be a path, got {path!r}.")
    path = os.path.expanduser(path.strip())
    if base is None or fsio.is_remote(path) or os.path.isabs(path):
        return path
    if fsio.is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(base, path))


@dataclass(frozen=True)
class ScanConfig:
    """A scheduled scan, validated on creation (before anything runs).

    Attributes:
        name: Scan name (STAC ids, Dataflow job names).
        region: Vector file (GeoJSON, GeoPackage...) or ``minlon,minlat,maxlon,maxlat``.
        source: Source spec as in :mod:`pipelines.sources.factory`, without a date window
            (the periods give it).
        model: Model artifact folder (local or ``gs://``).
        out: Output folder (local or ``gs://``).
        periods: The periods (see :func:`parse_periods` for the accepted forms).
        reference: Optional reference inventory for compare; ``{year}`` and ``{period}``
            are filled per period.
        predict: Options passed to :class:`~pipelines.predict.PredictConfig`.
        compare: Options passed to :class:`~pipelines.compare.CompareConfig`.
        resubmit_after_hours: With ``--submit-only``: a submitted sweep that has not
            finished after this long is submitted again.
    """

    name: str
    region: str
    source: dict[str, Any]
    model: str
    out: str
    periods: tuple[Period, ...]
    reference: str | None = None
    predict: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    resubmit_after_hours: float = 24.0

    def __post_init__(self) -> None:

        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"name {self.name!r} must be a short identifier (letters, digits, "
                              f"'.', '_', '-'), e.g. himalaya.")
        for key in ("region", "model", "out"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{key} is required and must be a path"
                                  f"{' or a bbox' if key == 'region' else ''}, got {value!r}.")
        object.__setattr__(self, "source", check_spec(self.source))
        object.__setattr__(self, "periods", parse_periods(self.periods))
        if self.reference is not None:
            if not isinstance(self.reference, str) or not self.reference.strip():
                raise ConfigError(f"reference must be a path template, got {self.reference!r}.")
            bad = [m for m in _PLACEHOLDER.findall(self.reference) if m not in ("year", "period")]
            if bad:
                raise ConfigError(f"reference {self.reference!r} holds {{{bad[0]}}}: only "
                                  f"{{year}} and {{period}} are filled.")
        object.__setattr__(self, "predict", _check_block("predict", self.predict,
                                                         PredictConfig))
        object.__setattr__(self, "compare", _check_block("compare", self.compare,
                                                         CompareConfig))
        if not value_fits(self.resubmit_after_hours, float) or self.resubmit_after_hours <= 0:
            raise ConfigError(f"resubmit_after_hours must be a positive number, got "
                              f"{self.resubmit_after_hours!r}.")
        # Values (ranges, choices) are checked by building the stage configurations once.
        p0 = self.periods[0]
        try:
            self.predict_config(p0)
        except ConfigError as exc:
            raise ConfigError(f"predict: {exc}") from None
        try:
            self.compare_config(p0)
        except ConfigError as exc:
            raise ConfigError(f"compare: {exc}") from None

    # ---- loading
    @classmethod
    def from_dict(cls, data: Any, base: str | None = None,
                  today: dt.date | None = None) -> ScanConfig:
        """Build from a parsed YAML mapping; relative paths are taken from folder ``base``.

        Raises:
            ConfigError: unknown or missing keys, or a bad value (the message names it).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"A scan file must be a mapping of {', '.join(KEYS)}; got "
                              f"{type(data).__name__}.")
        unknown = [str(k) for k in data if k not in KEYS]
        if unknown:
            raise ConfigError(f"Unknown key {unknown[0]!r} in the scan file; known keys: "
                              f"{', '.join(KEYS)}.")
        missing = [k for k in REQUIRED if data.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"{missing[0]} is missing from the scan file (required: "
                              f"{', '.join(REQUIRED)}).")
        d = dict(data)
        region = d["region"]
        if isinstance(region, list | tuple) and len(region) == 4:
            region = ",".join(str(v) for v in region)
        if not isinstance(region, str):
            raise ConfigError(f"region must be a vector file or a bbox, got {region!r}.")
        d["region"] = region if _BBOX.fullmatch(region) else _resolve(region, base, "region")
        d["model"] = _resolve(d["model"], base, "model")
        d["out"] = _resolve(d["out"], base, "out")
        if d.get("reference") is not None:
            d["reference"] = _resolve(d["reference"], base, "reference")
        if isinstance(d["source"], Mapping):
            d["source"] = _resolve_source(d["source"], base)
        for block, options in (("predict", PredictConfig), ("compare", CompareConfig)):
            if isinstance(d.get(block), Mapping):
                d[block] = _resolve_block(block, d[block], options, base)
        d["periods"] = parse_periods(d["periods"], today)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str) -> ScanConfig:
        """Load and validate a scan file (local or ``gs://``).

        Raises:
            ConfigError: unreadable YAML or an invalid configuration.
            DataNotFoundError: ``path`` does not exist.
        """
        import yaml

        text = fsio.read_bytes(path).decode("utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"Scan file {path!r} is not valid YAML: {exc}") from None
        path = str(path)
        base = path.rsplit("/", 1)[0] if fsio.is_remote(path) else os.path.dirname(
            os.path.abspath(path))
        return cls.from_dict(data, base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["periods"] = [p.to_dict() for p in self.periods]
        return d

    # ---- per period
    def period_path(self, period: Period, *parts: str) -> str:
        return fsio.join(self.out, "periods", period.name, *parts)

    def predict_config(self, period: Period) -> PredictConfig:
        return PredictConfig(model=self.model, source=dict(self.source),
                             out=self.period_path(period, "sweep"), aoi=self.region,
                             start=period.start, end=period.end, **self.predict)

    @property
    def static_reference(self) -> bool:
        """Whether the reference is the same inventory in every period of several.

        A reference path without ``{year}`` or ``{period}`` compares each period's sweep
        against one inventory (a legitimate use: an event or multi-year inventory); the
        summary then says so and gives that reference no trend.
        """
        return (self.reference is not None and len(self.periods) > 1
                and not any(m in ("year", "period")
                            for m in _PLACEHOLDER.findall(self.reference)))

    def reference_for(self, period: Period) -> str | None:
        if self.reference is None:
            return None
        return self.reference.replace("{year}", str(period.year)).replace("{period}",
                                                                          period.name)

    def compare_config(self, period: Period) -> CompareConfig:
        """Compare against the reference, or describe the predicted inventory alone."""
        predicted = self.period_path(period, "sweep", "inventory.gpkg")
        ref = self.reference_for(period)
        return CompareConfig(reference=ref or predicted, predicted=predicted if ref else None,
                             out=self.period_path(period, "compare"), aoi=self.region,
                             **self.compare)

    def sweep_fingerprint(self, period: Period, model_id: str, region_digest: str) -> str:
        """Hash of what a period's sweep depends on.

        The model, the source, the region (its path and its content's digest), the
        period and the predict options; not the reference or the compare options, which
        only the comparison reads.
        """
        return fsio.digest({"format": FORMAT, "part": "sweep", "model_id": model_id,
                            "source": self.source, "region": self.region,
                            "region_digest": region_digest, "period": period.to_dict(),
                            "predict": self.predict})

    def reference_digest(self, period: Period) -> str:
        """SHA-256 of the period's resolved reference file, ``""`` without one.

        ``""`` too when the file cannot be read (the comparison then reports it missing
        and records nothing).
        """
        path = self.reference_for(period)
        if path is None:
            return ""
        try:
            return hashlib.sha256(fsio.read_bytes(path)).hexdigest()
        except Exception:  # missing or unreadable: the comparison says why
            return ""

    def fingerprint(self, period: Period, model_id: str, region_digest: str = "",
                    reference_digest: str = "") -> str:
        """Hash of everything a period's outputs depend on (not the output folder).

        The sweep's part (:meth:`sweep_fingerprint`) and the comparison's (reference
        path and, when given, its content's digest (:meth:`reference_digest`), compare
        options). Hashed as one mapping, as before the sweep's part had a hash of its
        own; the reference digest is a key only when given, so records of scans without
        a reference stay done. Only the comparison depends on it: a changed reference
        file makes its periods compared again, their sweeps are kept.
        """
        parts = {"format": FORMAT, "model_id": model_id, "source": self.source,
                 "region": self.region, "region_digest": region_digest,
                 "period": period.to_dict(), "reference": self.reference,
                 "predict": self.predict, "compare": self.compare}
        if reference_digest:
            parts["reference_digest"] = reference_digest
        return fsio.digest(parts)


#: Keys of the scan YAML (the fields of ScanConfig), in the order they are documented.
KEYS = tuple(f.name for f in dataclasses.fields(ScanConfig))
REQUIRED = tuple(f.name for f in dataclasses.fields(ScanConfig)
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _period_of(config: ScanConfig, rec: dict) -> Period:
    return Period(**rec["period"])


__all__ = [
    "CONFIG_COPY",
    "FORMAT",
    "KEYS",
    "PERIOD_KEYS",
    "RECORD",
    "REQUIRED",
    "SCAN_RECORD",
    "SUBMITTED",
    "SWEEP_INPUTS",
    "Period",
    "ScanConfig",
    "parse_periods",
]

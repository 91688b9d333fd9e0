"""``landslides scan``: scheduled regional scans, period by period.

A scan is a YAML file naming a region, an imagery source, a model artifact and a list of
periods (calendar years or explicit date windows). Every run of the scan::

    for each period not done yet (its done-record is missing or has another fingerprint):
        predict  -> out/periods/<name>/sweep/     (pipelines.predict, Beam)
        compare  -> out/periods/<name>/compare/   (pipelines.compare; against the reference
                                                   inventory when one is configured, else
                                                   statistics of the predicted inventory)
        record   -> out/periods/<name>/period.json   (written last: "done")
    summary      -> out/summary/                  trends.csv/.json, figures, summary.html
    STAC         -> out/stac/catalog.json         links every period's sweep catalog
    run record   -> out/scan.json

The fingerprint of a period covers the model (its ``model_id``, not its path), the source,
the region, the period and every predict/compare option, so a re-run skips what is done
and redoes what changed. A period whose sweep fails (chunks in the dead-letter file, no
imagery, a year the source lacks) is reported and left undone; the other periods go on
and the scan exits 1. The summary is rebuilt after every run from the done-records of
all configured periods.

Beam options after the scan's own arguments go to every sweep (``--runner DataflowRunner
--project ... --region ... --temp_location ...``); each Dataflow job is named after the
scan and the period unless ``--job_name`` is given.

Detached runs (``--submit-only``, forced when running inside a Dataflow Flex Template
launcher, which turns a pipeline into a job file instead of running it): sweeps are
submitted without waiting (a launcher makes one job, so at most one), and a later run
compares and records the periods whose sweeps have finished. ``submitted.json`` marks a
sweep in flight so it is not submitted twice within ``resubmit_after_hours``.

Paths in the YAML file that are relative are relative to the YAML file's folder (local
or ``gs://``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import html
import json
import logging
import math
import os
import posixpath
import re
import tempfile
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import fsio
from pipelines.errors import ConfigError, LandslideError

log = logging.getLogger(__name__)

FORMAT = "landslides-scan/1"
RECORD = "period.json"
SUBMITTED = "submitted.json"
SCAN_RECORD = "scan.json"
CONFIG_COPY = "scan_config.json"

#: Keys of the scan YAML, in the order they are documented.
KEYS = ("name", "region", "source", "model", "out", "periods", "reference", "predict",
        "compare", "resubmit_after_hours")
REQUIRED = ("name", "region", "source", "model", "out", "periods")
PERIOD_KEYS = ("name", "start", "end")
#: PredictConfig / CompareConfig fields the scan sets itself (not allowed in the blocks).
PREDICT_FIXED = frozenset({"model", "source", "out", "aoi", "point", "buffer_m", "events",
                           "days_before", "days_after", "start", "end"})
COMPARE_FIXED = frozenset({"reference", "predicted", "out", "aoi", "years"})
#: Source spec keys per kind (see pipelines.sources.factory); earthengine adds EEConfig's.
SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "synthetic": ("world",),
    "geotiff": ("images", "dem", "dem_nodata", "band_map", "scale", "nodata", "mask_zero"),
    "earthengine": ("token_env",),
}
#: Source keys holding paths (resolved relative to the YAML file).
SOURCE_PATHS = ("world", "images", "dem")
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
    from pipelines.compare import parse_years

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


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(
            _type_ok(v, args[0]) for v in value) if args else isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    return True


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_block(block: str, values: Any, cls: type, fixed: frozenset[str]) -> dict[str, Any]:
    """Check an option block against the fields of ``cls`` (names and types)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{block} must be a mapping of {cls.__name__} options, got "
                          f"{values!r}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    for k, v in values.items():
        if k in fixed:
            raise ConfigError(f"{block}.{k} is set by the scan itself (from region, model, "
                              f"out, periods, reference); remove it. Known keys: "
                              f"{', '.join(known)}.")
        if k not in known:
            raise ConfigError(f"Unknown key {block}.{k}; known keys: {', '.join(known)}.")
        if not _type_ok(v, hints[k]):
            raise ConfigError(f"{block}.{k} must be {_type_name(hints[k])}, got {v!r}.")
    return dict(values)


def _check_source(spec: Any) -> dict[str, Any]:
    from pipelines.sources.factory import KINDS

    if not isinstance(spec, Mapping):
        raise ConfigError(f"source must be a mapping with a kind ({', '.join(KINDS)}), got "
                          f"{spec!r}.")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"source.kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    known = list(SOURCE_KEYS[kind])
    if kind == "earthengine":
        from pipelines.sources.earthengine import EEConfig

        known += [f.name for f in dataclasses.fields(EEConfig) if f.name not in ("start", "end")]
    for k in spec:
        if k != "kind" and k not in known:
            extra = (" (the scan's periods give the date window)" if k in ("start", "end", "year")
                     else "")
            raise ConfigError(f"Unknown key source.{k} for a {kind} source{extra}; known keys: "
                              f"kind, {', '.join(known)}.")
    if kind == "synthetic" and not spec.get("world"):
        raise ConfigError("source.world is required for the synthetic source: the world folder "
                          "written by `landslides synth`.")
    if kind == "geotiff" and not (spec.get("images") or spec.get("dem")):
        raise ConfigError("source.images and/or source.dem are required for the geotiff source.")
    if kind == "geotiff" and isinstance(spec.get("images"), str):
        spec = {**spec, "images": [spec["images"]]}
    return dict(spec)


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
        from pipelines.compare import CompareConfig
        from pipelines.predict import PredictConfig

        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"name {self.name!r} must be a short identifier (letters, digits, "
                              f"'.', '_', '-'), e.g. himalaya.")
        for key in ("region", "model", "out"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{key} is required and must be a path"
                                  f"{' or a bbox' if key == 'region' else ''}, got {value!r}.")
        object.__setattr__(self, "source", _check_source(self.source))
        object.__setattr__(self, "periods", parse_periods(self.periods))
        if self.reference is not None:
            if not isinstance(self.reference, str) or not self.reference.strip():
                raise ConfigError(f"reference must be a path template, got {self.reference!r}.")
            bad = [m for m in _PLACEHOLDER.findall(self.reference) if m not in ("year", "period")]
            if bad:
                raise ConfigError(f"reference {self.reference!r} holds {{{bad[0]}}}: only "
                                  f"{{year}} and {{period}} are filled.")
        object.__setattr__(self, "predict", _check_block("predict", self.predict,
                                                         PredictConfig, PREDICT_FIXED))
        object.__setattr__(self, "compare", _check_block("compare", self.compare,
                                                         CompareConfig, COMPARE_FIXED))
        if not _type_ok(self.resubmit_after_hours, float) or self.resubmit_after_hours <= 0:
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
        src = d["source"]
        if isinstance(src, Mapping):
            src = dict(src)
            for k in SOURCE_PATHS:
                if isinstance(src.get(k), list):
                    src[k] = [_resolve(v, base, f"source.{k}") for v in src[k]]
                elif src.get(k) is not None:
                    src[k] = _resolve(src[k], base, f"source.{k}")
            d["source"] = src
        if isinstance(d.get("compare"), Mapping) and d["compare"].get("background"):
            d["compare"] = {**d["compare"], "background": _resolve(
                d["compare"]["background"], base, "compare.background")}
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

    def predict_config(self, period: Period):  # -> PredictConfig
        from pipelines.predict import PredictConfig

        return PredictConfig(model=self.model, source=dict(self.source),
                             out=self.period_path(period, "sweep"), aoi=self.region,
                             start=period.start, end=period.end, **self.predict)

    def reference_for(self, period: Period) -> str | None:
        if self.reference is None:
            return None
        return self.reference.replace("{year}", str(period.year)).replace("{period}",
                                                                          period.name)

    def compare_config(self, period: Period):  # -> CompareConfig
        """Compare against the reference, or describe the predicted inventory alone."""
        from pipelines.compare import CompareConfig

        predicted = self.period_path(period, "sweep", "inventory.gpkg")
        ref = self.reference_for(period)
        return CompareConfig(reference=ref or predicted, predicted=predicted if ref else None,
                             out=self.period_path(period, "compare"), aoi=self.region,
                             **self.compare)

    def fingerprint(self, period: Period, model_id: str, region_digest: str = "") -> str:
        """Hash of everything a period's outputs depend on (not the output folder)."""
        return _digest({"format": FORMAT, "model_id": model_id, "source": self.source,
                        "region": self.region, "region_digest": region_digest,
                        "period": period.to_dict(), "reference": self.reference,
                        "predict": self.predict, "compare": self.compare})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ScanInputs:
    """What the scan reads once before running: the model id and the region."""

    model_id: str
    region_digest: str
    region_wkb: bytes = field(repr=False)

    @property
    def geometry(self):
        import shapely

        return shapely.from_wkb(self.region_wkb)


def check_inputs(config: ScanConfig) -> ScanInputs:
    """Check that the model, the region and the source's files exist.

    Raises:
        ConfigError: naming the key (``model``, ``region``, ``source.world``) whose value
            cannot be used, and why.
    """
    from model.artifact import META
    from pipelines.geo.grid import load_region

    meta_path = fsio.join(config.model, META)
    if not fsio.exists(meta_path):
        raise ConfigError(f"model: no model artifact at {config.model!r} ({META} is missing). "
                          f"Train one with `landslides train` or fix the path.")
    try:
        model_id = str(fsio.read_json(meta_path)["model_id"])
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"model: {meta_path!r} is not a readable artifact record ({exc}).") \
            from None
    try:
        region = load_region(config.region)
    except LandslideError as exc:
        raise ConfigError(f"region: {exc}") from None
    if config.source["kind"] == "synthetic":
        world = fsio.join(config.source["world"], "world.json")
        if not fsio.exists(world):
            raise ConfigError(f"source.world: {config.source['world']!r} is not a synthetic "
                              f"world (no world.json); generate one with `landslides synth`.")
    return ScanInputs(model_id, hashlib.sha256(region.wkb).hexdigest(), region.wkb)


def select_periods(config: ScanConfig, names: str | Sequence[str] | None) -> list[Period]:
    """The periods named in ``names`` (comma-separated or a list), else all of them."""
    if names is None or names == "" or names == []:
        return list(config.periods)
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)
              if n.strip()]
    by_name = {p.name: p for p in config.periods}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ConfigError(f"--periods names {unknown[0]!r}, which is not a period of scan "
                          f"{config.name!r}; periods: {', '.join(by_name)}.")
    return [p for p in config.periods if p.name in set(wanted)]


# ----------------------------------------------------------------------------- state
def load_record(config: ScanConfig, period: Period, fingerprint: str) -> dict | None:
    """The period's done-record when it matches ``fingerprint`` and its files exist."""
    path = config.period_path(period, RECORD)
    rec = fsio.read_record(path)
    if rec is None or rec.get("fingerprint") != fingerprint:
        return None
    if not fsio.exists(config.period_path(period, "sweep", "run.json")):
        log.warning("Period %s: %s exists but the sweep's run.json is gone; redoing it",
                    period.name, path)
        return None
    return rec


def _norm(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def finished_sweep(config: ScanConfig, period: Period, model_id: str) -> dict | None:
    """The sweep's ``run.json`` if this model and predict configuration made it.

    ``None`` when there is none, it is another configuration's, or it is older than a
    pending submission.
    """
    path = config.period_path(period, "sweep", "run.json")
    if not fsio.exists(path):
        return None
    try:
        run = fsio.read_json(path)
    except (ValueError, OSError):
        return None
    if (run.get("model") or {}).get("model_id") != model_id:
        return None
    if _norm(run.get("config")) != _norm(config.predict_config(period).to_dict()):
        return None
    sub = _submitted(config, period)
    if sub and str((run.get("timings") or {}).get("started", "")) < str(sub.get("started")):
        return None  # an older run; the submitted sweep has not finished yet
    return run


def _submitted(config: ScanConfig, period: Period) -> dict | None:
    path = config.period_path(period, SUBMITTED)
    if not fsio.exists(path):
        return None
    try:
        return fsio.read_json(path)
    except (ValueError, OSError):
        return None


def _in_flight(config: ScanConfig, period: Period, fingerprint: str) -> dict | None:
    sub = _submitted(config, period)
    if not sub or sub.get("fingerprint") != fingerprint:
        return None
    try:
        when = dt.datetime.fromisoformat(str(sub["submitted"]))
    except (KeyError, ValueError):
        return None
    age_h = (dt.datetime.now(dt.UTC) - when).total_seconds() / 3600.0
    return sub if age_h < config.resubmit_after_hours else None


def sweep_problem(run: dict) -> str | None:
    """Why a finished sweep cannot count as done, or ``None`` when it can."""
    status = run.get("status")
    if status == "ok":
        return None
    if status == "partial":
        f = run.get("failures") or {}
        reasons = ", ".join(f"{k} x{v}" for k, v in (f.get("reasons") or {}).items())
        where = (run.get("outputs") or {}).get("failed_chunks", "failed_chunks.jsonl")
        return (f"{(run.get('counts') or {}).get('chunks_failed', '?')} chunk(s) failed "
                f"({reasons}); see {where}. Re-run the scan to retry them.")
    if status == "no_data":
        return "no valid imagery in the period (every pixel is nodata)."
    return f"the sweep ended with status {status!r}."


class PeriodError(LandslideError):
    """A period that could not be completed (its sweep or comparison failed)."""


# ----------------------------------------------------------------------------- plan
@dataclass
class PlanEntry:
    """What a run will do with one period."""

    period: Period
    fingerprint: str
    action: str  # skip | run | compare | wait | not_selected
    note: str = ""


def plan_scan(config: ScanConfig, inputs: ScanInputs, selected: Sequence[Period],
              submit_only: bool = False) -> list[PlanEntry]:
    """Decide, for every period of the scan, whether this run skips or runs it."""
    chosen = {p.name for p in selected}
    plan = []
    for p in config.periods:
        fp = config.fingerprint(p, inputs.model_id, inputs.region_digest)
        if p.name not in chosen:
            plan.append(PlanEntry(p, fp, "not_selected"))
            continue
        if load_record(config, p, fp) is not None:
            plan.append(PlanEntry(p, fp, "skip", "done"))
            continue
        run = finished_sweep(config, p, inputs.model_id)
        if run is not None and run.get("status") == "ok":
            plan.append(PlanEntry(p, fp, "compare", "sweep finished"))
            continue
        sub = _in_flight(config, p, fp) if submit_only else None
        if sub is not None:
            plan.append(PlanEntry(p, fp, "wait", f"sweep submitted at {sub.get('submitted')}"))
            continue
        plan.append(PlanEntry(p, fp, "run", "submit the sweep" if submit_only
                              else "predict + compare"))
    return plan


def plan_lines(config: ScanConfig, plan: Sequence[PlanEntry]) -> list[str]:
    """A readable plan, one line per period."""
    words = {"skip": "skip", "run": "run", "compare": "compare only", "wait": "wait",
             "not_selected": "not selected"}
    todo = sum(e.action in ("run", "compare") for e in plan)
    lines = [f"Scan {config.name}: {len(plan)} period(s), {todo} to do, "
             f"{sum(e.action == 'skip' for e in plan)} done; output {config.out}"]
    for e in plan:
        note = f" ({e.note})" if e.note else ""
        lines.append(f"  {e.period.name:<16} {e.period.start} .. {e.period.end}  "
                     f"{words[e.action]}{note}")
    return lines


# ----------------------------------------------------------------------------- running
def _options(beam_args: Sequence[str] | None):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(list(beam_args or []))


def template_mode(beam_args: Sequence[str] | None) -> bool:
    """True inside a Flex Template launcher.

    There ``--template_location`` makes Dataflow write a job file instead of running the
    pipeline, so a launch creates exactly one job and cannot wait for it.
    """
    from pipelines.beam_util import submitted_only

    return submitted_only(_options(beam_args))


def period_beam_args(config: ScanConfig, period: Period,
                     beam_args: Sequence[str] | None) -> list[str]:
    """Beam options for one period's sweep: a unique Dataflow job name unless one is set."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    args = list(beam_args or [])
    opts = _options(args)
    if "Dataflow" in str(opts.view_as(StandardOptions).runner or "") and \
            not opts.view_as(GoogleCloudOptions).job_name:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        name = re.sub(r"[^a-z0-9-]+", "-", f"landslides-{config.name}-{period.name}".lower())
        args.append(f"--job_name={name.strip('-')[:40]}-{stamp}")
    return args


def submit_sweep(config: ScanConfig, period: Period, fingerprint: str,
                 beam_args: Sequence[str] | None) -> dict:
    """Launch a period's sweep without waiting; records ``submitted.json``.

    The sweep itself writes ``run.json`` when it ends; a later scan run compares it.
    """
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options
    from pipelines.predict import CONFIG, build_pipeline, plan_predict

    pcfg = config.predict_config(period)
    sweep, elements = plan_predict(pcfg)
    fsio.makedirs(pcfg.out)
    fsio.write_json(fsio.join(pcfg.out, CONFIG), pcfg.to_dict())
    opts = pipeline_options(period_beam_args(config, period, beam_args), "landslides-predict")
    p = beam.Pipeline(options=opts)
    build_pipeline(p, sweep, elements)
    result = p.run()
    job_id = None
    get_id = getattr(result, "job_id", None)  # only Dataflow results have a job id
    if callable(get_id):
        with contextlib.suppress(Exception):
            job_id = get_id()
    rec = {"format": FORMAT, "period": period.to_dict(), "fingerprint": fingerprint,
           "started": sweep.started, "submitted": _now(), "chunks": len(elements),
           "job_id": job_id}
    fsio.write_json(config.period_path(period, SUBMITTED), rec)
    log.info("Period %s: sweep of %d chunk(s) submitted%s", period.name, len(elements),
             f" as job {job_id}" if job_id else "")
    return rec


def complete_period(config: ScanConfig, period: Period, inputs: ScanInputs,
                    fingerprint: str, run: dict) -> dict:
    """Compare a finished sweep and write the period's done-record (last).

    Raises:
        PeriodError: the comparison could not compute anything.
    """
    from pipelines.compare import run_compare

    ccfg = config.compare_config(period)
    metrics = run_compare(ccfg)
    if metrics.get("status") == "failed":
        errs = "; ".join(p["message"] for p in metrics.get("problems", [])
                         if p.get("level") == "error")
        raise PeriodError(f"compare failed: {errs or 'nothing could be computed'} "
                           f"(report in {ccfg.out}).")
    entry = (metrics.get("years") or {}).get("all") or {}
    stats = entry.get("stats") or {}
    if config.reference:
        pred, ref = stats.get("predicted"), stats.get("reference")
    else:
        pred, ref = stats.get("reference"), None  # stats-only: the prediction is described
    pixel = dict(entry["pixel"]) if entry.get("pixel") else None
    if pixel:
        pixel.pop("grid", None)
    rec = {
        "format": FORMAT,
        "scan": config.name,
        "period": period.to_dict(),
        "fingerprint": fingerprint,
        "model_id": inputs.model_id,
        "completed": _now(),
        "sweep": {"status": run.get("status"), "counts": run.get("counts"),
                  "km2": run.get("km2"), "epsg": (run.get("aoi") or {}).get("epsg"),
                  "run": config.period_path(period, "sweep", "run.json"),
                  "stac": (run.get("outputs") or {}).get("stac")},
        "compare": {"status": metrics.get("status"), "mode": metrics.get("mode"),
                    "density_area": metrics.get("density_area"),
                    "metrics": fsio.join(ccfg.out, "metrics.json"),
                    "report": fsio.join(ccfg.out, "report.html"),
                    "problems": [p["message"] for p in metrics.get("problems", [])]},
        "stats": {"predicted": pred, "reference": ref},
        "pixel": pixel,
        "object": entry.get("object"),
    }
    fsio.write_json(config.period_path(period, RECORD), rec)  # last: the period is done
    return rec


def run_scan(config: ScanConfig, periods: str | Sequence[str] | None = None,
             beam_args: Sequence[str] | None = None, dry_run: bool = False,
             submit_only: bool = False) -> dict:
    """Run (or plan) the scan; returns the run record written to ``out/scan.json``.

    Args:
        config: The validated scan.
        periods: Only these periods (names); the summary still covers all done ones.
        beam_args: Beam pipeline options for every sweep.
        dry_run: Only plan: log what would run and what is skipped, write nothing.
        submit_only: Submit sweeps without waiting; compare the finished ones.

    Raises:
        ConfigError: the model, region or source cannot be used, or ``periods`` names an
            unknown period; nothing has run.
    """
    inputs = check_inputs(config)
    selected = select_periods(config, periods)
    template = template_mode(beam_args)
    if template and not submit_only:
        log.info("Running inside a Flex Template launcher: one sweep is submitted per launch "
                 "(--submit-only).")
        submit_only = True
    plan = plan_scan(config, inputs, selected, submit_only)
    for line in plan_lines(config, plan):
        log.info("%s", line)
    record: dict[str, Any] = {"format": FORMAT, "scan": config.name, "started": _now(),
                              "dry_run": dry_run, "submit_only": submit_only,
                              "model_id": inputs.model_id,
                              "plan": [{"period": e.period.name, "action": e.action,
                                        "note": e.note} for e in plan]}
    if dry_run:
        return record
    fsio.makedirs(config.out)
    fsio.write_json(fsio.join(config.out, CONFIG_COPY), config.to_dict())
    results: list[dict] = []
    todo = [e for e in plan if e.action in ("run", "compare")]
    t_start = time.monotonic()
    submitted = 0
    for i, e in enumerate(todo, 1):
        p = e.period
        head = f"[{i}/{len(todo)}] period {p.name}"
        t0 = time.monotonic()
        res: dict[str, Any] = {"period": p.name, "action": "done"}
        try:
            run = finished_sweep(config, p, inputs.model_id)
            if run is None or run.get("status") != "ok":
                if submit_only:
                    if template and submitted >= 1:
                        res.update(action="queued", note="one sweep per Flex Template launch")
                        results.append(res)
                        continue
                    log.info("%s: submitting the sweep", head)
                    sub = submit_sweep(config, p, e.fingerprint, beam_args)
                    submitted += 1
                    res.update(action="submitted", job_id=sub.get("job_id"))
                    run = finished_sweep(config, p, inputs.model_id)  # DirectRunner: done now
                    if run is None or run.get("status") != "ok":
                        results.append(res)
                        continue
                else:
                    from pipelines.predict import run_predict

                    log.info("%s: predicting %s .. %s", head, p.start, p.end)
                    run = run_predict(config.predict_config(p),
                                      period_beam_args(config, p, beam_args))[0]
            problem = sweep_problem(run)
            if problem:
                raise PeriodError(problem)
            log.info("%s: comparing", head)
            rec = complete_period(config, p, inputs, e.fingerprint, run)
            pred = (rec["stats"].get("predicted") or {})
            res.update(action="done", landslides=pred.get("count"))
        except Exception as exc:  # one failed period must not stop the others
            msg = f"{type(exc).__name__}: {exc}"
            log.error("%s failed: %s", head, msg, exc_info=not isinstance(exc, LandslideError))
            res.update(action="failed", error=msg)
        res["seconds"] = round(time.monotonic() - t0, 1)
        results.append(res)
        elapsed = time.monotonic() - t_start
        eta = elapsed / i * (len(todo) - i)
        log.info("%s: %s in %.0f s (%d/%d, ETA %.0f s)", head, res["action"], res["seconds"],
                 i, len(todo), eta)
    summary = update_summary(config, inputs)
    outcome = {r["period"]: r for r in results}
    record["periods"] = [
        outcome.get(e.period.name, {"period": e.period.name,
                                    "action": {"skip": "skipped", "wait": "in_flight"}.get(
                                        e.action, e.action)})
        for e in plan]
    record.update(finished=_now(), summary=summary["paths"], stac=summary["stac"],
                  failed=[r["period"] for r in results if r["action"] == "failed"],
                  done_periods=summary["done"])
    fsio.write_json(fsio.join(config.out, SCAN_RECORD), record)
    return record


# ----------------------------------------------------------------------------- summary
#: Columns of ``trends.csv``.
TREND_COLUMNS = (
    "period", "start", "end",
    "predicted_count", "predicted_total_area_m2", "predicted_density_per_km2",
    "predicted_count_change",
    "reference_count", "reference_total_area_m2", "reference_density_per_km2",
    "diff_count", "diff_total_area_m2", "diff_density_per_km2",
    "pixel_precision", "pixel_recall", "pixel_f1", "pixel_iou", "object_f1",
    "valid_km2", "aoi_km2", "sweep_landslide_km2", "model_id",
)


def _years_axis(records: Sequence[dict]) -> tuple[list[int], dict[int, str] | None]:
    """The x positions of the periods: their years when every period is a calendar year."""
    names = [r["period"]["name"] for r in records]
    if all(n.isdigit() and int(n) == int(r["period"]["start"][:4]) for n, r in
           zip(names, records)) and len(set(names)) == len(names):
        return [int(n) for n in names], None
    xs = list(range(len(records)))
    return xs, dict(zip(xs, names))


def trend_table(records: Sequence[dict], with_reference: bool) -> dict:
    """The multi-temporal table of done periods, with differences and correlations.

    Args:
        records: Done-records (``period.json``), sorted by start date.
        with_reference: Whether a reference inventory is configured.

    Returns:
        ``rows`` (one per period, :data:`TREND_COLUMNS`), ``multitemporal`` (the structure
        :func:`pipelines.report.trends_figure` draws), ``correlations`` (Pearson r with
        p-values; ``None`` with a note below 3 periods).
    """
    from pipelines.geo import compare_metrics as cm

    xs, labels = _years_axis(records)
    pred: dict[int, dict] = {x: r["stats"]["predicted"] for x, r in zip(xs, records)
                             if r["stats"].get("predicted")}
    ref: dict[int, dict] = {x: r["stats"]["reference"] for x, r in zip(xs, records)
                            if r["stats"].get("reference")}
    multi = cm.multitemporal(ref if with_reference else {}, pred)
    if labels:
        multi["labels"] = labels
        multi["x_label"] = "Period"
    by_x = {row["year"]: row for row in multi["rows"]}
    rows = []
    prev = None
    for x, r in zip(xs, records):
        m = by_x.get(x, {})
        pix = r.get("pixel") or {}
        obj = r.get("object") or {}
        km2 = (r.get("sweep") or {}).get("km2") or {}
        count = m.get("predicted_count")
        row = {
            "period": r["period"]["name"], "start": r["period"]["start"],
            "end": r["period"]["end"],
            **{k: m.get(k) for k in TREND_COLUMNS if k.startswith(("predicted_", "reference_",
                                                                    "diff_"))},
            "predicted_count_change": None if count is None or prev is None else count - prev,
            "pixel_precision": pix.get("precision"), "pixel_recall": pix.get("recall"),
            "pixel_f1": pix.get("f1"), "pixel_iou": pix.get("iou"),
            "object_f1": obj.get("f1"),
            "valid_km2": km2.get("valid"), "aoi_km2": km2.get("aoi"),
            "sweep_landslide_km2": km2.get("landslides"), "model_id": r.get("model_id"),
        }
        if not with_reference:
            for k in list(row):
                if k.startswith(("reference_", "diff_")):
                    row[k] = None
        if count is not None:
            prev = count
        rows.append(row)
    t = [_decimal_year(r["period"]["start"]) for r in records]
    counts = [_num(row["predicted_count"]) for row in rows]
    areas = [_num(row["predicted_total_area_m2"]) for row in rows]
    corr = {"predicted_count_vs_time": cm.pearson(t, counts),
            "predicted_total_area_vs_time": cm.pearson(t, areas)}
    if with_reference:
        rc = [_num(row["reference_count"]) for row in rows]
        ra = [_num(row["reference_total_area_m2"]) for row in rows]
        corr["predicted_vs_reference_count"] = cm.pearson(rc, counts)
        corr["predicted_vs_reference_total_area"] = cm.pearson(ra, areas)
        corr["reference_count_vs_time"] = cm.pearson(t, rc)
    return {"rows": rows, "multitemporal": multi, "correlations": corr}


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy scalars as Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _decimal_year(date: str) -> float:
    d = dt.date.fromisoformat(date)
    start = dt.date(d.year, 1, 1)
    return d.year + (d - start).days / (dt.date(d.year + 1, 1, 1) - start).days


def update_summary(config: ScanConfig, inputs: ScanInputs) -> dict:
    """Rebuild ``out/summary/`` and ``out/stac/`` from every done period of the scan.

    Returns:
        ``{"done": [names], "paths": {name: path}, "stac": catalog path}``.
    """
    from pipelines import report as rpt

    records: list[dict] = []
    pending: list[Period] = []
    for p in sorted(config.periods, key=lambda p: (p.start, p.name)):
        rec = load_record(config, p, config.fingerprint(p, inputs.model_id,
                                                        inputs.region_digest))
        if rec:
            records.append(rec)
        else:
            pending.append(p)
    table = trend_table(records, bool(config.reference))
    folder = fsio.join(config.out, "summary")
    figures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="landslides-scan-") as stage:
        if table["multitemporal"]["rows"]:
            try:
                rpt.trends_figure(table["multitemporal"], os.path.join(stage, "trends.png"))
                figures.append({"path": "trends.png", "title": "Landslides per period"})
            except Exception as exc:  # a figure must not lose the summary
                log.warning("Trend figure not drawn: %s", exc)
        fad = {"predicted": {r["period"]["name"]: r["stats"]["predicted"] for r in records
                             if r["stats"].get("predicted")}}
        if config.reference:
            fad["reference"] = {r["period"]["name"]: r["stats"]["reference"] for r in records
                                if r["stats"].get("reference")}
        if any(fad.values()):
            try:
                rpt.fad_figure(fad, os.path.join(stage, "frequency_area.png"))
                figures.append({"path": "frequency_area.png",
                                "title": "Frequency-area distributions per period"})
            except Exception as exc:
                log.warning("Frequency-area figure not drawn: %s", exc)
        summary = {
            "format": FORMAT, "scan": config.name, "updated": _now(),
            "model_id": inputs.model_id, "region": config.region,
            "mode": "comparison" if config.reference else "stats-only",
            "periods_done": [r["period"]["name"] for r in records],
            "periods_not_done": [p.name for p in pending],
            "rows": table["rows"], "correlations": table["correlations"],
            "peak_period": _peak(table["rows"]),
            "figures": figures,
            "periods": {r["period"]["name"]: {"report": r["compare"]["report"],
                                              "sweep_stac": r["sweep"].get("stac"),
                                              "record": config.period_path(
                                                  _period_of(config, r), RECORD)}
                        for r in records},
        }
        files = {"trends.csv": fsio.csv_bytes(table["rows"], TREND_COLUMNS),
                 "trends.json": json.dumps(_finite(summary), indent=2).encode("utf-8"),
                 "summary.html": render_summary_html(config, summary).encode("utf-8")}
        for name, data in files.items():
            Path(stage, name).write_bytes(data)
        fsio.makedirs(folder)
        for rel in [f["path"] for f in figures] + ["trends.csv", "trends.json", "summary.html"]:
            fsio.put_file(os.path.join(stage, rel), fsio.join(folder, rel))
    paths = {name: fsio.join(folder, name) for name in
             ["trends.csv", "trends.json", "summary.html"] + [f["path"] for f in figures]}
    stac = write_scan_stac(config, inputs, records, paths)
    log.info("Summary of %d done period(s) in %s; STAC catalog %s", len(records), folder, stac)
    return {"done": summary["periods_done"], "paths": paths, "stac": stac}


def _period_of(config: ScanConfig, rec: dict) -> Period:
    return Period(**rec["period"])


def _peak(rows: Sequence[dict]) -> str | None:
    counted = [r for r in rows if r.get("predicted_count") is not None]
    return max(counted, key=lambda r: r["predicted_count"])["period"] if counted else None


def render_summary_html(config: ScanConfig, summary: Mapping) -> str:
    """A small static page: the trend table, correlations, figures and links per period."""
    from pipelines.report import CSS

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape(str(v))

    cols = [("period", "Period"), ("start", "Start"), ("end", "End (excl.)"),
            ("predicted_count", "Landslides"), ("predicted_total_area_m2", "Area (m²)"),
            ("predicted_density_per_km2", "Density (/km²)"),
            ("predicted_count_change", "Change")]
    if summary["mode"] == "comparison":
        cols += [("reference_count", "Reference landslides"),
                 ("reference_total_area_m2", "Reference area (m²)"),
                 ("diff_count", "Difference"), ("pixel_f1", "Pixel F1"),
                 ("object_f1", "Object F1")]
    cols += [("valid_km2", "Imaged km²")]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols) + "<th>Report</th>"
    body = []
    for r in summary["rows"]:
        link = summary["periods"].get(r["period"], {}).get("report")
        rel = _rel_link(link, fsio.join(config.out, "summary")) if link else None
        cells = "".join(f"<td>{fmt(r.get(k))}</td>" for k, _ in cols)
        a = f'<a href="{html.escape(rel)}">report</a>' if rel else "-"
        body.append(f"<tr>{cells}<td>{a}</td></tr>")
    corr = "".join(
        f"<li>{html.escape(k.replace('_', ' '))}: "
        + (f"r = {v['r']:.3f} (p = {v['p_value']:.3g}, n = {v['n']})" if v.get("r") is not None
           else html.escape(str(v.get("note") or "undefined")))
        + "</li>" for k, v in summary["correlations"].items())
    figs = "".join(
        f'<figure><a href="{html.escape(f["path"])}"><img src="{html.escape(f["path"])}" '
        f'alt="{html.escape(f["title"])}"></a><figcaption>{html.escape(f["title"])}'
        f"</figcaption></figure>" for f in summary["figures"])
    pending = summary["periods_not_done"]
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Landslide scan {html.escape(config.name)}</title><style>{CSS}</style>"
        "</head><body>"
        f"<h1>Landslide scan: {html.escape(config.name)}</h1>"
        f"<p>Model <code>{html.escape(str(summary['model_id']))}</code>, region "
        f"<code>{html.escape(config.region)}</code>, {len(summary['rows'])} period(s) done"
        f"{', not done: ' + html.escape(', '.join(pending)) if pending else ''}. "
        f"Updated {html.escape(summary['updated'])}. Mode: {html.escape(summary['mode'])}"
        f"{' (statistics of the predicted inventories)' if summary['mode'] == 'stats-only' else ''}"
        ".</p>"
        f"<h2>Trends</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
        f"</table><h2>Correlations</h2><ul>{corr}</ul><h2>Figures</h2>{figs or '<p>-</p>'}"
        "<p>Data: <a href=\"trends.csv\">trends.csv</a>, <a href=\"trends.json\">trends.json"
        "</a>; STAC catalog: <a href=\"../stac/catalog.json\">stac/catalog.json</a>.</p>"
        "</body></html>")


def _rel_link(target: str, start_dir: str) -> str:
    if fsio.is_remote(target) != fsio.is_remote(start_dir):
        return target
    return fsio.relative_href(
        target if fsio.is_remote(target) else os.path.abspath(target),
        start_dir if fsio.is_remote(start_dir) else os.path.abspath(start_dir))


def write_scan_stac(config: ScanConfig, inputs: ScanInputs, records: Sequence[dict],
                    summary_paths: Mapping[str, str]) -> str:
    """Write the root STAC catalog of the scan.

    One item per done period (its comparison and inventory), a summary item, and a child
    link to every period's sweep catalog.

    Hrefs are relative, so the output folder can be moved or served as it is.

    Returns:
        The path of ``out/stac/catalog.json``.
    """
    import pystac
    from shapely.geometry import mapping

    folder = fsio.join(config.out, "stac")
    geom = inputs.geometry
    bbox = list(geom.bounds)

    def when(date: str) -> dt.datetime:
        return dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)

    def asset(path: str, item_id: str, title: str, media: str,
              roles: tuple[str, ...] = ("data",)) -> pystac.Asset:
        return pystac.Asset(href=_rel_link(path, fsio.join(folder, item_id)), title=title,
                            media_type=media, roles=list(roles))

    cat = pystac.Catalog(id=f"landslides-scan-{config.name}",
                         description=f"Landslide scan {config.name}: predictions and "
                                     f"comparisons per period, and their trends.",
                         title=f"Landslide scan {config.name}")
    children = []
    for rec in records:
        p = _period_of(config, rec)
        item_id = f"period-{p.name}"
        pred = rec["stats"].get("predicted") or {}
        props = {"landslides:scan": config.name, "landslides:period": p.name,
                 "landslides:model_id": rec.get("model_id"),
                 "landslides:count": pred.get("count"),
                 "landslides:total_area_m2": pred.get("total_area_m2"),
                 "landslides:density_per_km2": pred.get("density_per_km2")}
        item = pystac.Item(id=item_id, geometry=mapping(geom), bbox=bbox, datetime=None,
                           start_datetime=when(p.start), end_datetime=when(p.end),
                           properties={k: v for k, v in props.items() if v is not None})
        sweep = config.period_path(p, "sweep")
        comp = config.period_path(p, "compare")
        for key, path, title, media, roles in (
                ("inventory_gpkg", fsio.join(sweep, "inventory.gpkg"), "Landslide polygons",
                 "application/geopackage+sqlite3", ("data",)),
                ("inventory_parquet", fsio.join(sweep, "inventory.parquet"),
                 "Landslide polygons (GeoParquet)", "application/vnd.apache.parquet", ("data",)),
                ("report", fsio.join(comp, "report.html"), "Comparison report", "text/html",
                 ("overview",)),
                ("metrics", fsio.join(comp, "metrics.json"), "Comparison metrics",
                 "application/json", ("metadata",)),
                ("stats", fsio.join(comp, "stats.csv"), "Inventory statistics", "text/csv",
                 ("metadata",)),
                ("record", config.period_path(p, RECORD), "Period record", "application/json",
                 ("metadata",))):
            item.add_asset(key, asset(path, item_id, title, media, roles))
        cat.add_item(item)
        sweep_cat = (rec.get("sweep") or {}).get("stac")
        if sweep_cat and fsio.exists(sweep_cat):
            children.append({"rel": "child", "href": _rel_link(sweep_cat, folder),
                             "type": "application/json", "title": f"Sweep {p.name}"})
    if records:
        starts = [r["period"]["start"] for r in records]
        ends = [r["period"]["end"] for r in records]
        item = pystac.Item(id="summary", geometry=mapping(geom), bbox=bbox, datetime=None,
                           start_datetime=when(min(starts)), end_datetime=when(max(ends)),
                           properties={"landslides:scan": config.name,
                                       "landslides:periods": [r["period"]["name"]
                                                              for r in records]})
        types = {".csv": "text/csv", ".json": "application/json", ".html": "text/html",
                 ".png": "image/png"}
        for fname, fpath in summary_paths.items():
            stem, ext = os.path.splitext(fname)
            item.add_asset(stem, asset(fpath, "summary", fname, types.get(ext, "application/"
                                                                         "octet-stream"),
                                       ("overview",) if ext in (".png", ".html")
                                       else ("metadata",)))
        cat.add_item(item)
    with tempfile.TemporaryDirectory(prefix="landslides-scan-stac-") as tmp:
        cat.normalize_hrefs(tmp)
        cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        root = os.path.join(tmp, "catalog.json")
        with open(root, encoding="utf-8") as f:
            doc = json.load(f)
        doc["links"].extend(children)  # added after saving: pystac would copy the children
        with open(root, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        written = sorted((os.path.relpath(os.path.join(d, n), tmp)
                          for d, _, names in os.walk(tmp) for n in names),
                         key=lambda r: (r == "catalog.json", r))
        for rel in written:
            fsio.put_file(os.path.join(tmp, rel), fsio.join(folder, *rel.split(os.sep)))
    return fsio.join(folder, "catalog.json")


# ----------------------------------------------------------------------------- CLI
def scan_cli(config: str, periods: str | None = None, dry_run: bool = False,
             submit_only: bool = False, beam_args: list[str] | None = None) -> int:
    """``landslides scan``: load the YAML, run the scan, say what happened.

    Returns:
        0 when every selected period is done (or skipped, submitted, in flight), 1 when
        some failed (they are listed in ``out/scan.json``).
    """
    cfg = ScanConfig.from_yaml(config)
    rec = run_scan(cfg, periods, beam_args, dry_run=dry_run, submit_only=submit_only)
    if dry_run:
        return 0
    failed = rec.get("failed") or []
    errors = {r["period"]: r.get("error") for r in rec.get("periods", []) if r.get("error")}
    for name in failed:
        log.error("Period %s failed: %s", name, errors.get(name))
    log.info("Scan %s: %d period(s) done (%s); summary %s", cfg.name,
             len(rec.get("done_periods", [])), ", ".join(rec.get("done_periods", [])) or "-",
             rec.get("summary", {}).get("summary.html"))
    if failed:
        log.error("%d period(s) failed: %s. Re-run the scan to retry them; done periods are "
                  "skipped.", len(failed), ", ".join(failed))
        return 1
    return 0


__all__ = [
    "Period",
    "ScanConfig",
    "ScanInputs",
    "check_inputs",
    "complete_period",
    "finished_sweep",
    "parse_periods",
    "plan_lines",
    "plan_scan",
    "run_scan",
    "scan_cli",
    "select_periods",
    "submit_sweep",
    "template_mode",
    "trend_table",
    "update_summary",
    "write_scan_stac",
]

"""What a scan run will do: its inputs, the state of each period, and the plan.

Reads what the scan needs once (the model's id, the region), selects the periods named on
the command line, reads each period's done-record, finished sweep and pending submission,
and decides for every period whether this run skips, runs, compares or waits for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines import fsio
from pipelines.errors import ConfigError, LandslideError
from pipelines.geo.stack import StackSpec
from pipelines.scan.config import (
    FORMAT,
    RECORD,
    SUBMITTED,
    SWEEP_INPUTS,
    Period,
    ScanConfig,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ScanInputs:
    """What the scan reads once before running: the model id, its stack, the region."""

    model_id: str
    region_digest: str
    region_wkb: bytes = field(repr=False)
    stack: dict[str, Any] | None = None

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
        meta = fsio.read_json(meta_path)
        model_id = str(meta["model_id"])
        record = meta.get("stack") or (meta.get("manifest") or {}).get("stack")
        stack = StackSpec.of({"stack": record, "bands": meta["bands"]}).to_dict()
    except (ValueError, KeyError, OSError, LandslideError) as exc:
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
    return ScanInputs(model_id, hashlib.sha256(region.wkb).hexdigest(), region.wkb, stack)


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
    """The period's done-record when it matches ``fingerprint`` and its files exist.

    The sweep's ``run.json`` must still be the run the record compared (its start time,
    recorded in ``period.json``; for older records, its model and predict configuration
    must be this scan's), not one a stale job wrote over it since; and the record must
    have been made after the period's window ended.
    """
    path = config.period_path(period, RECORD)
    rec = fsio.read_record(path)
    if rec is None or rec.get("fingerprint") != fingerprint:
        return None
    if str(rec.get("completed", ""))[:10] < period.end:  # swept before its imagery was all in
        log.info("Period %s: done on %s, before its window ended (%s); redoing it",
                 period.name, rec.get("completed"), period.end)
        return None
    if not fsio.exists(config.period_path(period, "sweep", "run.json")):
        log.warning("Period %s: %s exists but the sweep's run.json is gone; redoing it",
                    period.name, path)
        return None
    run = _sweep_run(config, period)
    if run is None:
        return None
    recorded = (rec.get("sweep") or {}).get("started")
    same = (run_started(run) == str(recorded) if recorded is not None
            else _same_sweep(config, period, run, rec.get("model_id")))
    if not same:  # another sweep (e.g. an older job) overwrote the one compared
        log.warning("Period %s: the sweep's run.json is not the one compared; redoing it",
                    period.name)
        return None
    return rec


def _norm(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _with_defaults(config: dict | None) -> dict:
    """A sweep's recorded configuration, with options added since at their defaults.

    A sweep made before an option existed ran as its default does (e.g. ``precision``
    fp32), so upgrading does not make every finished period look like another one.
    """
    from pipelines.options.fields import MISSING, default_of
    from pipelines.options.predict import PredictConfig

    defaults = {f.name: default_of(f) for f in dataclasses.fields(PredictConfig)}
    return {**{k: v for k, v in defaults.items() if v is not MISSING}, **(config or {})}


def finished_sweep(config: ScanConfig, period: Period, inputs: ScanInputs) -> dict | None:
    """The sweep's ``run.json`` if it was made from this scan's inputs.

    The scan's record of the sweep's last launch (:data:`SWEEP_INPUTS`) must hold the
    sweep fingerprint of these inputs (the model, source, region content, period and
    predict options), the run must have started after that launch, and ``run.json`` must
    name this model and predict configuration. ``None`` when there is none, it is another
    configuration's (e.g. of the region before its file was edited), or it is older than
    a pending submission.
    """
    run = _sweep_run(config, period)
    if run is None or not _same_sweep(config, period, run, inputs.model_id):
        return None
    started = run_started(run)
    launched = _launched(config, period, inputs)
    if launched is None or not _not_before(started, launched):
        return None  # another sweep's inputs, or a run from before the last launch
    sub = _submitted(config, period)
    if sub and not _not_before(started, str(sub.get("started"))):
        return None  # an older run; the submitted sweep has not finished yet
    return run


def _sweep_run(config: ScanConfig, period: Period) -> dict | None:
    """The period's sweep ``run.json``, or ``None`` when it is missing or unreadable."""
    path = config.period_path(period, "sweep", "run.json")
    if not fsio.exists(path):
        return None
    try:
        return fsio.read_json(path)
    except (ValueError, OSError):
        return None


def _same_sweep(config: ScanConfig, period: Period, run: dict, model_id: Any) -> bool:
    """Whether ``run`` is a sweep of model ``model_id`` with this scan's predict config."""
    return ((run.get("model") or {}).get("model_id") == model_id
            and _norm(_with_defaults(run.get("config")))
            == _norm(config.predict_config(period).to_dict()))


def run_started(run: dict) -> str:
    """When a sweep run started (``run.json``'s ``timings.started``; ``""`` if unknown)."""
    return str((run.get("timings") or {}).get("started", ""))


def _not_before(when: str, then: str) -> bool:
    """True when the ISO 8601 time ``when`` is not earlier than ``then``."""
    try:
        return dt.datetime.fromisoformat(when) >= dt.datetime.fromisoformat(then)
    except (TypeError, ValueError):
        return False


def _launched(config: ScanConfig, period: Period, inputs: ScanInputs) -> str | None:
    """When the sweep of ``inputs`` was last launched for ``period``, or ``None``.

    ``None`` when the scan's last launch there was of other inputs, or none is recorded.
    A sweep submitted before launches were recorded counts through its submission record,
    whose (whole period) fingerprint covers the sweep's inputs.
    """
    rec = fsio.read_record(config.period_path(period, SWEEP_INPUTS))
    if rec is not None:
        fp = config.sweep_fingerprint(period, inputs.model_id, inputs.region_digest)
        return str(rec.get("launched")) if rec.get("sweep_fingerprint") == fp else None
    sub = _submitted(config, period)
    if sub and "sweep_fingerprint" not in sub and sub.get("fingerprint") == \
            config.fingerprint(period, inputs.model_id, inputs.region_digest):
        return str(sub.get("started"))
    return None


def record_launch(config: ScanConfig, period: Period, inputs: ScanInputs,
                  launched: str) -> None:
    """Record the inputs of the sweep about to be launched for ``period`` (before it runs).

    Args:
        config: The scan.
        period: The period whose sweep is launched.
        inputs: The model id and region digest it runs with.
        launched: The launch time (ISO 8601, UTC); the sweep's ``run.json`` must start
            no earlier to count as this launch's.
    """
    fsio.makedirs(config.period_path(period))
    fsio.write_json(config.period_path(period, SWEEP_INPUTS), {
        "format": FORMAT, "period": period.to_dict(), "launched": launched,
        "sweep_fingerprint": config.sweep_fingerprint(period, inputs.model_id,
                                                      inputs.region_digest),
        "model_id": inputs.model_id, "region_digest": inputs.region_digest})


def _submitted(config: ScanConfig, period: Period) -> dict | None:
    path = config.period_path(period, SUBMITTED)
    if not fsio.exists(path):
        return None
    try:
        return fsio.read_json(path)
    except (ValueError, OSError):
        return None


def _in_flight(config: ScanConfig, period: Period, inputs: ScanInputs) -> dict | None:
    """The submission of this period's sweep still running, or ``None``.

    Only the sweep's part of the fingerprint is compared: a changed compare option does
    not make the sweep in flight another one (submissions recorded before the sweep's
    part had a hash of its own hold the whole period's).
    """
    sub = _submitted(config, period)
    if not sub:
        return None
    if "sweep_fingerprint" in sub:
        same = sub["sweep_fingerprint"] == config.sweep_fingerprint(
            period, inputs.model_id, inputs.region_digest)
    else:
        same = sub.get("fingerprint") == config.fingerprint(period, inputs.model_id,
                                                            inputs.region_digest)
    if not same:
        return None
    try:
        when = dt.datetime.fromisoformat(str(sub["submitted"]))
    except (KeyError, ValueError):
        return None
    age_h = (dt.datetime.now(dt.UTC) - when).total_seconds() / 3600.0
    return sub if age_h < config.resubmit_after_hours else None


# ----------------------------------------------------------------------------- plan
@dataclass
class PlanEntry:
    """What a run will do with one period."""

    period: Period
    fingerprint: str
    action: str  # skip | run | compare | wait | not_selected | not_ended
    note: str = ""


def period_fingerprint(config: ScanConfig, period: Period, inputs: ScanInputs) -> str:
    """The fingerprint a period's done-record must hold: inputs and reference content."""
    return config.fingerprint(period, inputs.model_id, inputs.region_digest,
                              config.reference_digest(period))


def ended(period: Period, today: dt.date | None = None) -> bool:
    """Whether the period's window has ended (its exclusive end is today or earlier)."""
    today = today or dt.datetime.now(dt.UTC).date()
    return dt.date.fromisoformat(period.end) <= today


def plan_scan(config: ScanConfig, inputs: ScanInputs, selected: Sequence[Period],
              submit_only: bool = False, today: dt.date | None = None) -> list[PlanEntry]:
    """Decide, for every period of the scan, whether this run skips or runs it.

    A selected period whose window has not ended yet (``today`` before its exclusive
    end, UTC) is ``not_ended``: its imagery is incomplete, so it is neither swept nor
    failed; a later run does it once it has ended.
    """
    chosen = {p.name for p in selected}
    plan = []
    for p in config.periods:
        fp = period_fingerprint(config, p, inputs)
        if p.name not in chosen:
            plan.append(PlanEntry(p, fp, "not_selected"))
            continue
        if not ended(p, today):
            plan.append(PlanEntry(p, fp, "not_ended", f"the window ends on {p.end}"))
            continue
        if load_record(config, p, fp) is not None:
            plan.append(PlanEntry(p, fp, "skip", "done"))
            continue
        run = finished_sweep(config, p, inputs)
        if run is not None and run.get("status") == "ok":
            plan.append(PlanEntry(p, fp, "compare", "sweep finished"))
            continue
        # a submitted sweep that ended (not ok) is no longer in flight: it is reported
        sub = _in_flight(config, p, inputs) if submit_only and run is None else None
        if sub is not None:
            plan.append(PlanEntry(p, fp, "wait", f"sweep submitted at {sub.get('submitted')}"))
            continue
        if submit_only and run is not None:
            note = f"the submitted sweep ended with status {run.get('status')!r}"
        else:
            note = "submit the sweep" if submit_only else "predict + compare"
        plan.append(PlanEntry(p, fp, "run", note))
    return plan


def check_periods(config: ScanConfig, inputs: ScanInputs, plan: Sequence[PlanEntry]
                  ) -> dict[str, str]:
    """Which periods this run would sweep the source cannot supply, and why.

    A period is checked with every date of the model's input stack (its references
    included), on the launcher and in dry runs, so a plan never lists as runnable a
    period the source lacks. The entries of such periods get the reason as their note.

    Returns:
        Period name -> the source's message (e.g. the year the world lacks).
    """
    from pipelines.sources.stacked import make_stacked_source

    if not inputs.stack:
        return {}
    stack = StackSpec.from_dict(inputs.stack)
    problems: dict[str, str] = {}
    for e in plan:
        if e.action != "run":
            continue
        try:
            make_stacked_source(config.source, stack, e.period.start, e.period.end).close()
        except LandslideError as exc:
            problems[e.period.name] = str(exc)
            e.note = f"cannot run: {exc}"
    return problems


def plan_lines(config: ScanConfig, plan: Sequence[PlanEntry]) -> list[str]:
    """A readable plan, one line per period."""
    words = {"skip": "skip", "run": "run", "compare": "compare only", "wait": "wait",
             "not_selected": "not selected", "not_ended": "not ended yet"}
    todo = sum(e.action in ("run", "compare") for e in plan)
    lines = [f"Scan {config.name}: {len(plan)} period(s), {todo} to do, "
             f"{sum(e.action == 'skip' for e in plan)} done; output {config.out}"]
    for e in plan:
        note = f" ({e.note})" if e.note else ""
        lines.append(f"  {e.period.name:<16} {e.period.start} .. {e.period.end}  "
                     f"{words[e.action]}{note}")
    return lines


__all__ = [
    "PlanEntry",
    "ScanInputs",
    "check_inputs",
    "check_periods",
    "ended",
    "finished_sweep",
    "load_record",
    "period_fingerprint",
    "plan_lines",
    "plan_scan",
    "record_launch",
    "run_started",
    "select_periods",
]

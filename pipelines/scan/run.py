"""Running a scan: predict and compare each period to do, record it, rebuild the summary.

Sweeps run in this process (``run_predict``, waiting for each Dataflow job) or are
submitted without waiting (``--submit-only``, forced inside a Flex Template launcher: a
Dataflow job, or work handed to a Dask cluster's scheduler that its workers finish after
the launcher exits; local runners still run the sweep here); finished sweeps are
compared and their periods recorded as done. One failed period does not stop the others.
:func:`scan_command` is the ``landslides scan`` command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from pipelines import fsio
from pipelines.errors import LandslideError
from pipelines.options.scan import ScanOptions
from pipelines.scan.config import (
    CONFIG_COPY,
    FORMAT,
    RECORD,
    SCAN_RECORD,
    SUBMITTED,
    Period,
    ScanConfig,
    _now,
)
from pipelines.scan.plan import (
    ScanInputs,
    _submitted,
    check_inputs,
    check_periods,
    finished_sweep,
    plan_lines,
    plan_scan,
    record_launch,
    run_started,
    select_periods,
)
from pipelines.scan.summary import update_summary

log = logging.getLogger(__name__)

#: With ``--submit-only``: submissions of one sweep (same inputs) that may end without
#: status ``ok`` (or outlive ``resubmit_after_hours``) before its period is failed for good
MAX_SUBMISSIONS = 3


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


def submit_sweep(config: ScanConfig, period: Period, inputs: ScanInputs, fingerprint: str,
                 beam_args: Sequence[str] | None) -> dict:
    """Launch a period's sweep without waiting; records ``submitted.json``.

    The sweep itself writes ``run.json`` when it ends; a later scan run compares it.
    :func:`pipelines.beam_util.submit` makes the sweep outlive this process: a Dataflow
    job, or work handed to a Dask cluster's scheduler (``--runner dask``); local runners
    run it here before this returns.
    The launch's inputs are recorded first (:func:`~pipelines.scan.plan.record_launch`),
    and ``submitted.json`` holds the sweep's part of the fingerprint too, so a sweep in
    flight is recognised when only a compare option changed.
    """
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options, submit
    from pipelines.predict import CONFIG, plan_predict
    from pipelines.predict.pipeline import build_pipeline
    from pipelines.workers import for_workers

    pcfg = config.predict_config(period)
    sweep, elements = plan_predict(pcfg)
    opts = pipeline_options(period_beam_args(config, period, beam_args), "landslides-predict",
                            runs_model=True)
    for_workers(sweep.sources, opts)  # e.g. each worker process's part of a quota
    fsio.makedirs(pcfg.out)
    fsio.write_json(fsio.join(pcfg.out, CONFIG), pcfg.to_dict())
    record_launch(config, period, inputs, sweep.started)
    p = beam.Pipeline(options=opts)
    build_pipeline(p, sweep, elements)
    result = submit(p, opts)  # outlives this process (Dataflow, a Dask cluster) or waited
    job_id = None
    get_id = getattr(result, "job_id", None)  # only Dataflow results have a job id
    if callable(get_id):
        with contextlib.suppress(Exception):
            job_id = get_id()
    before = _same_submission(config, period, inputs) or {}
    attempts = _attempts(before) + 1
    rec = {"format": FORMAT, "period": period.to_dict(), "fingerprint": fingerprint,
           "sweep_fingerprint": config.sweep_fingerprint(period, inputs.model_id,
                                                         inputs.region_digest),
           "started": sweep.started, "submitted": _now(), "chunks": len(elements),
           "job_id": job_id, "attempts": attempts}
    if before.get("failure_reported"):  # an old run.json of the same second is not news
        rec["failure_reported"] = before["failure_reported"]
    fsio.write_json(config.period_path(period, SUBMITTED), rec)
    log.info("Period %s: sweep of %d chunk(s) submitted%s", period.name, len(elements),
             f" as job {job_id}" if job_id else "")
    return rec


def _attempts(sub: dict | None) -> int:
    """How many times the sweep of a submission record has been submitted."""
    if not sub:
        return 0
    try:
        return max(1, int(sub.get("attempts") or 1))
    except (TypeError, ValueError):
        return 1


def check_submission(config: ScanConfig, period: Period, inputs: ScanInputs,
                     run: dict | None, resubmit: bool = True) -> None:
    """With ``--submit-only``: fail a period whose submitted sweep ended, or gave up.

    A submitted sweep whose ``run.json`` (started no earlier than the submission, see
    :func:`~pipelines.scan.plan.finished_sweep`) ended with another status than ``ok``
    fails the period once, as in a waiting run; the next run submits it again. A sweep
    submitted :data:`MAX_SUBMISSIONS` times (same sweep inputs) without ending ``ok`` is
    not submitted again: the period fails until ``submitted.json`` is removed or the
    sweep's inputs change.

    Args:
        config: The scan.
        period: The period about to be (re)submitted.
        inputs: The scan's inputs.
        run: The period's finished sweep of these inputs (``None`` when none ended).
        resubmit: Whether the sweep is about to be submitted again (the bound applies);
            ``False`` right after a submission a local runner finished.

    Raises:
        PeriodError: the submitted sweep ended not ``ok`` (first report), or the sweep was
            submitted :data:`MAX_SUBMISSIONS` times already.
    """
    sub = _same_submission(config, period, inputs)
    attempts = _attempts(sub)
    if sub is not None and run is not None and run.get("status") != "ok":
        started = run_started(run)
        if sub.get("failure_reported") != started:
            fsio.write_json(config.period_path(period, SUBMITTED),
                            {**sub, "failure_reported": started})
            again = ("it is submitted again on the next run" if attempts < MAX_SUBMISSIONS
                     else "it is not submitted again")
            raise PeriodError(f"{sweep_problem(run)} (submitted sweep, attempt {attempts} "
                              f"of {MAX_SUBMISSIONS}; {again})")
    if resubmit and attempts >= MAX_SUBMISSIONS:
        raise PeriodError(f"the sweep was submitted {attempts} times (the last at "
                          f"{sub.get('submitted') if sub else '?'}) without ending ok; it is "
                          f"not submitted again. Fix the cause, then remove "
                          f"{config.period_path(period, SUBMITTED)} to retry.")


def _same_submission(config: ScanConfig, period: Period, inputs: ScanInputs) -> dict | None:
    """The period's submission record when it is of this sweep's inputs, else ``None``."""
    sub = _submitted(config, period)
    if sub is None or sub.get("sweep_fingerprint") != config.sweep_fingerprint(
            period, inputs.model_id, inputs.region_digest):
        return None
    return sub


def complete_period(config: ScanConfig, period: Period, inputs: ScanInputs,
                    fingerprint: str, run: dict) -> dict:
    """Compare a finished sweep and write the period's done-record (last).

    Only a complete comparison (status ``ok``) makes the period done; a ``partial`` one
    (e.g. the period's reference inventory is missing) is no record, so the next run
    compares again.

    Raises:
        PeriodError: the comparison could not compute anything, or only part of it.
    """
    from pipelines.compare import incomplete_reasons, run_compare

    ccfg = config.compare_config(period)
    metrics = run_compare(ccfg)
    status = metrics.get("status")
    if status != "ok":
        why = incomplete_reasons(metrics)
        what = "failed" if status == "failed" else f"is incomplete (status {status!r})"
        raise PeriodError(f"compare {what}: {'; '.join(why) or 'nothing could be computed'} "
                          f"(report in {ccfg.out}). Provide what is missing and re-run the "
                          f"scan: the period is compared again, its sweep is kept.")
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
                  "started": (run.get("timings") or {}).get("started"),
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
    problems = check_periods(config, inputs, plan)
    for line in plan_lines(config, plan):
        log.info("%s", line)
    record: dict[str, Any] = {"format": FORMAT, "scan": config.name, "started": _now(),
                              "dry_run": dry_run, "submit_only": submit_only,
                              "model_id": inputs.model_id,
                              "plan": [{"period": e.period.name, "action": e.action,
                                        "note": e.note} for e in plan],
                              "problems": problems}
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
            run = finished_sweep(config, p, inputs)
            if run is None or run.get("status") != "ok":
                if submit_only:
                    check_submission(config, p, inputs, run)
                    if template and submitted >= 1:
                        res.update(action="queued", note="one sweep per Flex Template launch")
                        results.append(res)
                        continue
                    log.info("%s: submitting the sweep", head)
                    sub = submit_sweep(config, p, inputs, e.fingerprint, beam_args)
                    submitted += 1
                    res.update(action="submitted", job_id=sub.get("job_id"))
                    run = finished_sweep(config, p, inputs)  # local runners: done now
                    if run is not None and run.get("status") != "ok":
                        check_submission(config, p, inputs, run, resubmit=False)
                        run = None  # a failure reported before: the new sweep runs on
                    if run is None:
                        results.append(res)
                        continue
                else:
                    from pipelines.predict import run_predict

                    log.info("%s: predicting %s .. %s", head, p.start, p.end)
                    record_launch(config, p, inputs, _now())
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


# ----------------------------------------------------------------------------- CLI
def scan_command(options: ScanOptions, beam_args: Sequence[str] | None = None) -> int:
    """``landslides scan``: load the YAML, run the scan, say what happened.

    Returns:
        0 when every selected period is done (or skipped, submitted, in flight), 1 when
        some failed (they are listed in ``out/scan.json``) or, in a dry run, when the
        source cannot supply a period the plan would run.
    """
    cfg = ScanConfig.from_yaml(options.config)
    rec = run_scan(cfg, options.periods, beam_args, dry_run=options.dry_run,
                   submit_only=options.submit_only)
    if options.dry_run:
        for name, problem in (rec.get("problems") or {}).items():
            log.error("Period %s cannot run: %s", name, problem)
        return 1 if rec.get("problems") else 0
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
    "MAX_SUBMISSIONS",
    "PeriodError",
    "check_submission",
    "complete_period",
    "period_beam_args",
    "run_scan",
    "scan_command",
    "submit_sweep",
    "sweep_problem",
    "template_mode",
]

"""Running a sweep: :func:`run_predict` on the launcher and ``landslides predict``.

Owns the launch: plan the sweep, check the output folders (one run per folder), save the
configuration, run the Beam pipeline, then read back every AOI's ``run.json``, write
``events.json`` for event sweeps and report failed chunks.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from pipelines import fsio
from pipelines.errors import NoDataError
from pipelines.predict.config import CONFIG, RUN, PredictConfig
from pipelines.predict.plan import one_run_per_folder, plan_predict

log = logging.getLogger(__name__)

#: The summary of an event sweep in ``out``: every event swept, and those skipped.
EVENTS = "events.json"


def run_predict(config: PredictConfig, beam_args: Sequence[str] | None = None) -> list[dict]:
    """Run the sweep; returns the run record (``run.json``) of every AOI.

    Raises:
        InputError: bad configuration or input, before anything is launched.
        OutputError: an output folder or bucket cannot be written.
        NoDataError: no AOI had a single valid pixel of imagery (e.g. a date window with
            no images), after the run.
    """
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options, release, submitted_only
    from pipelines.predict.pipeline import build_pipeline  # loads Apache Beam
    from pipelines.workers import for_workers

    t0 = time.monotonic()
    plan, elements = plan_predict(config)
    opts = pipeline_options(beam_args, "landslides-predict", runs_model=True)
    for_workers(plan.sources, opts)  # e.g. each worker process's part of a quota
    for job in plan.jobs:
        fsio.check_writable(job.out)
    one_run_per_folder(config)
    fsio.write_json(fsio.join(config.out, CONFIG), config.to_dict())
    log.info("Predicting %d chunk(s) of %d AOI(s) (%.1f km2) with model %s, %d-px windows, "
             "stride %d, halo %d, into %s", len(elements), len(plan.jobs),
             sum(j.area_km2 for j in plan.jobs), plan.meta["model_id"],
             plan.lattice.window, plan.lattice.stride, plan.halo, config.out)
    with beam.Pipeline(options=opts) as p:
        build_pipeline(p, plan, elements)
    release(p)
    if submitted_only(opts):
        log.info("Dataflow job written to %s; it writes run.json in %s when it ends.",
                 opts.get_all_options()["template_location"], config.out)
        return []
    runs = [fsio.read_json(job.path(RUN)) for job in plan.jobs]
    if len(plan.jobs) > 1 or plan.jobs[0].name:
        fsio.write_json(fsio.join(config.out, EVENTS), {
            "events": [{"name": j.name, "out": j.out, "status": r["status"],
                        "counts": r["counts"]} for j, r in zip(plan.jobs, runs)],
            # events of the catalogue not swept (outside the source): never silently left out
            "skipped": list(plan.skipped)})
    n_failed = sum(r["counts"]["chunks_failed"] for r in runs)
    if n_failed == 0 and all(r["status"] == "no_data" for r in runs):
        windows = sorted({f"{j.start}..{j.end}" for j in plan.jobs})
        raise NoDataError(
            f"No valid imagery in the AOI for the date window(s) {', '.join(windows)}: every "
            f"pixel is nodata (no image, or all clouds). Widen the date window or check the "
            f"source.")
    log.info("Predict finished in %.1f s: %s", time.monotonic() - t0,
             "; ".join(f"{r['aoi']['name']}: {r['counts']}" for r in runs[:5]))
    if plan.skipped:
        warn_skipped(config, plan.skipped)
    return runs


def warn_skipped(config: PredictConfig, skipped: Sequence[dict]) -> None:
    """Say, at the end of a sweep, which events of the catalogue were not swept and why.

    An event outside the source's data (a catalogue wider than the imagery) is skipped by
    design and does not fail the sweep; this warning after the run and ``events.json``'s
    ``skipped`` list make it visible in the outputs.
    """
    names = [e["name"] for e in skipped]
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    log.warning("%d of the events of %s were not swept: they lie outside the source's data "
                "(%s%s); %s lists them under 'skipped'. Give a source that covers them to "
                "map them.", len(names), config.events, ", ".join(names[:20]), more,
                fsio.join(config.out, EVENTS))


def predict_command(config: PredictConfig, beam_args: Sequence[str] | None = None) -> int:
    """``landslides predict``: run the sweep and say which chunks failed.

    Returns:
        0 when every chunk was written, 1 when some failed (they are listed in
        ``failed_chunks.jsonl`` of their AOI). Events of a catalogue that lie outside the
        source's data are not swept and do not make it 1: no rerun could sweep them (a
        catalogue is often wider than the imagery, by design); ``events.json`` lists them
        under ``skipped`` and a warning at the end of the run names them.
    """
    runs = run_predict(config, beam_args)
    failed = [(r, r["failures"]) for r in runs if r["failures"]["count"]]
    if failed:
        n = sum(r["counts"]["chunks_failed"] for r, _ in failed)
        reasons: Counter[str] = Counter()
        for _, f in failed:
            reasons.update(f["reasons"])
        why = ", ".join(f"{k} x{v}" for k, v in reasons.most_common())
        files = ", ".join(r["outputs"].get("failed_chunks", "") for r, _ in failed[:3])
        log.error("%d chunk(s) failed after %d retries (%s); see %s. Rerun the same command "
                  "to retry them: finished chunks are skipped.", n, config.retries, why, files)
        return 1
    return 0


__all__ = ["EVENTS", "predict_command", "run_predict", "warn_skipped"]

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
the region (its file's content too), the period and every predict/compare option, so a
re-run skips what is done and redoes what changed. Its sweep's part (all but the reference
and the compare options) is recorded in ``sweep_inputs.json`` when a sweep is launched: a
finished sweep is only compared again when that part is unchanged (an edited region file
is swept again), and a sweep in flight is not submitted again for a compare option. A
period whose sweep fails (chunks in the dead-letter file, no imagery, a year the source
lacks) or whose comparison is incomplete (e.g. its reference inventory is missing) is
reported and left undone; the other periods go on and the scan exits 1. The summary is
rebuilt after every run from the done-records of all configured periods.

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

Modules, in the order a run uses them:

- :mod:`~pipelines.scan.config`: the YAML keys, periods and :class:`ScanConfig`.
- :mod:`~pipelines.scan.plan`: inputs read once, each period's state, the plan.
- :mod:`~pipelines.scan.run`: predict/submit, compare, record; ``scan_command``.
- :mod:`~pipelines.scan.trends`: the multi-temporal table.
- :mod:`~pipelines.scan.summary`: ``out/summary/`` and the HTML page.
- :mod:`~pipelines.scan.stac`: the root STAC catalog (through :mod:`pipelines.geo.stac`).
"""

from __future__ import annotations

from pipelines.scan.config import SUBMITTED, Period, ScanConfig, parse_periods
from pipelines.scan.plan import (
    ScanInputs,
    check_inputs,
    finished_sweep,
    plan_lines,
    plan_scan,
    select_periods,
)
from pipelines.scan.run import (
    complete_period,
    run_scan,
    scan_command,
    submit_sweep,
    template_mode,
)
from pipelines.scan.stac import write_scan_stac
from pipelines.scan.summary import update_summary
from pipelines.scan.trends import trend_table

__all__ = [
    "SUBMITTED",
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
    "scan_command",
    "select_periods",
    "submit_sweep",
    "template_mode",
    "trend_table",
    "update_summary",
    "write_scan_stac",
]

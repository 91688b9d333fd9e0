"""The options of ``landslides scan``: :class:`ScanOptions` (the scan itself is a YAML file).

The YAML file's keys are the fields of :class:`pipelines.scan.config.ScanConfig`; its
``source:``, ``predict:`` and ``compare:`` mappings take the options of
:class:`~pipelines.options.source.SourceOptions`,
:class:`~pipelines.options.predict.PredictConfig` and
:class:`~pipelines.options.compare.CompareConfig` marked ``yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options.fields import option


@dataclass(frozen=True)
class ScanOptions:
    """How to run a scan file."""

    config: str = option(help="Scan YAML (local or gs://): region, source, model, out, "
                         "periods, reference, predict/compare options.", path=True,
                         label="Scan configuration", regex=r"^gs://.+\.ya?ml$")
    periods: str | None = option(
        None, "Only these periods, e.g. 2019,2020 (default: all).",
        regex=r"^[A-Za-z0-9][A-Za-z0-9._-]*(,[A-Za-z0-9][A-Za-z0-9._-]*)*$")
    dry_run: bool = option(False, "Print the plan (periods to do / skipped) without running.")
    # a template launch is always submit-only (pipelines.scan.run.template_mode)
    submit_only: bool = option(False, "Submit sweeps without waiting; compare the finished "
                               "ones (detached runs, Flex Template launches).",
                               template=False)


__all__ = ["ScanOptions"]

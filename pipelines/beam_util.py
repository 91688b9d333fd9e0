"""Beam pipeline options shared by every Beam stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def pipeline_options(beam_args: Sequence[str] | None, job_name: str):  # -> PipelineOptions
    """Pipeline options from the Beam arguments that follow a stage's own.

    Defaults to the DirectRunner. On Dataflow, ships this project to the workers with
    ``--setup_file`` (unless given) and names the job.
    """
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        PipelineOptions,
        SetupOptions,
        StandardOptions,
    )

    opts = PipelineOptions(list(beam_args or []))
    std = opts.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    if "Dataflow" in str(std.runner):
        setup = opts.view_as(SetupOptions)
        if not setup.setup_file and not setup.requirements_file:
            candidate = Path(__file__).resolve().parents[1] / "setup.py"
            if candidate.exists():
                setup.setup_file = str(candidate)
                log.info("Shipping the project to Dataflow workers with %s", candidate)
        gco = opts.view_as(GoogleCloudOptions)
        if not gco.job_name:
            gco.job_name = job_name.replace("_", "-").lower()
    return opts


def beam_option_strings() -> list[str]:
    """Every registered Beam pipeline option as a flag (``--runner``, ``--project``...)."""
    import contextlib
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions

    for module in ("apache_beam.runners.dask.dask_runner",):  # options of optional runners
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return sorted(f"--{name}" for name in PipelineOptions([]).get_all_options())


def unknown_beam_args(args: Sequence[str]) -> list[str]:
    """The options of ``args`` that are not registered Beam pipeline options.

    Beam itself only logs "Discarding unparseable args" and runs with defaults, so a typo
    such as ``--treshold`` would silently change a run.
    """
    known = set(beam_option_strings())
    out = []
    for a in args:
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            if name not in known:
                out.append(name)
    return out


def is_direct(opts) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return "Direct" in str(opts.view_as(StandardOptions).runner) or "Prism" in str(
        opts.view_as(StandardOptions).runner)


def in_process(opts) -> bool:
    """True when the DirectRunner runs one worker in this process (its default mode).

    Spreading elements over workers (a reshuffle) is then pure overhead.
    """
    from apache_beam.options.pipeline_options import DirectOptions

    return is_direct(opts) and opts.view_as(DirectOptions).direct_running_mode == "in_memory"


def submitted_only(opts) -> bool:
    """True when the pipeline was turned into a job file, not run here.

    A Dataflow Flex Template launcher runs the program with ``--template_location``: the
    runner writes the job there and returns at once, and Dataflow starts the job after
    the program exits. Nothing the job writes exists yet, so a stage must not read its
    outputs back.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    return bool(opts.view_as(GoogleCloudOptions).template_location)

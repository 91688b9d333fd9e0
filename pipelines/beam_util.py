"""Beam pipeline options shared by every Beam stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: ``--runner`` short names of the runners this project documents
RUNNER_ALIASES = {"dask": "apache_beam.runners.dask.dask_runner.DaskRunner"}
DASK_RUNNER = RUNNER_ALIASES["dask"]


def pipeline_options(beam_args: Sequence[str] | None, job_name: str,
                     runs_model: bool = False):  # -> PipelineOptions
    """Pipeline options from the Beam arguments that follow a stage's own.

    Defaults to the DirectRunner. On Dataflow, ships this project to the workers with
    ``--setup_file`` unless one is given (see :func:`project_setup_file`; a
    ``--requirements_file`` of the user's does not change that, it only adds packages),
    and names the job ``job_name-<UTC time>-<random>`` unless ``--job_name`` is given, so
    that two jobs launched in one project and region do not collide. Workers install the
    package's ``install_requires``, which do not hold TensorFlow (export needs none). A
    stage whose workers run the model (``runs_model``: predict, scan) also gets
    TensorFlow to them: see :func:`ship_tensorflow`. ``--runner dask`` is Beam's Dask
    runner on the dask.distributed scheduler ``--dask_client_address`` or
    ``--dask_scheduler_file`` names; unless ``--dask_npartitions`` or
    ``--dask_partition_size`` is given, the work is cut into two partitions per worker
    thread of that cluster (Beam's default puts up to 128 chunks in one partition, which
    one worker runs alone).

    Args:
        beam_args: The Beam pipeline options, as on the command line.
        job_name: The stem of the default Dataflow job name (``landslides-predict``).
        runs_model: The stage's workers run the model (they need TensorFlow).

    Raises:
        ConfigError: on Dataflow, this copy of the project has no ``setup.py`` to ship
            (a pip-installed copy) and no ``--sdk_container_image`` holds it either.
        DataNotFoundError: a ``--dask_scheduler_file`` that does not exist.
    """
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        PipelineOptions,
        StandardOptions,
    )

    opts = PipelineOptions(list(beam_args or []))
    std = opts.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    std.runner = RUNNER_ALIASES.get(str(std.runner).lower(), std.runner)
    if is_dask(opts):
        _default_dask_partitions(opts)
    if "Dataflow" in str(std.runner):
        _ship_project(opts)
        if runs_model:
            ship_tensorflow(opts)
        gco = opts.view_as(GoogleCloudOptions)
        if not gco.job_name:
            gco.job_name = unique_job_name(job_name)
            log.info("Dataflow job name: %s (pass --job_name to choose one)", gco.job_name)
    return opts


def project_setup_file() -> str | None:
    """The project's ``setup.py`` when this copy is a source checkout, else None.

    A checkout (or an editable install of one) has ``setup.py`` beside ``pipelines/``;
    a copy installed by ``pip install .`` (as in ``infra/Dockerfile``) has not.
    """
    candidate = Path(__file__).resolve().parents[1] / "setup.py"
    return str(candidate) if candidate.is_file() else None


def _ship_project(opts) -> None:
    """Give Dataflow workers this project: ``--setup_file`` unless given, or refuse.

    ``--setup_file`` is defaulted whether or not a ``--requirements_file`` is given (that
    file lists third-party packages; it cannot install this project). With
    ``--sdk_container_image`` it is defaulted too when a ``setup.py`` is found (the
    workers reinstall the same code over the image's copy); without one, the image's
    copy is used. ``--template_location`` (a Flex Template launcher) is let through
    without either: the launch request's environment names the workers' image, which
    the launcher's own options need not repeat.

    Raises:
        ConfigError: no ``setup.py`` to ship and no worker image named.
    """
    from apache_beam.options.pipeline_options import SetupOptions, WorkerOptions

    from pipelines.errors import ConfigError

    setup = opts.view_as(SetupOptions)
    if setup.setup_file:
        return
    found = project_setup_file()
    if found:
        setup.setup_file = found
        log.info("Shipping the project to Dataflow workers with --setup_file %s", found)
        return
    if opts.view_as(WorkerOptions).sdk_container_image:
        log.info("No setup.py beside this installed copy of the project: Dataflow workers "
                 "use the project installed in --sdk_container_image")
        return
    if submitted_only(opts):
        log.warning("No setup.py beside this installed copy of the project and no "
                    "--sdk_container_image: the Flex Template launch's sdkContainerImage "
                    "must hold the project")
        return
    import pipelines

    raise ConfigError(
        f"Dataflow workers cannot get this project: it is an installed copy "
        f"({Path(pipelines.__file__).parent}) with no setup.py beside it to ship, and no "
        f"--sdk_container_image is given. Either pass --setup_file PATH/setup.py of a "
        f"checkout of landslide-mapper (the same version), or --sdk_container_image IMAGE "
        f"--sdk_location container with an image that has the project installed "
        f"(infra/Dockerfile).")


def unique_job_name(stem: str) -> str:
    """A Dataflow job name from ``stem``, unique per launch: ``stem-YYYYmmdd-HHMMSS-xxxx``.

    Dataflow refuses a job whose name is that of a job still running in the same
    project and region, so a fixed default name would make concurrent launches collide.
    The result is a valid Dataflow job name (lower-case letters, digits and hyphens,
    starting with a letter).
    """
    import datetime as dt
    import re
    import secrets

    base = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or "landslides"
    if not base[0].isalpha():
        base = f"landslides-{base}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{base[:40].rstrip('-')}-{stamp}-{secrets.token_hex(2)}"


#: Distributions that provide ``import tensorflow``, the CPU wheel first
TENSORFLOW_DISTS = ("tensorflow-cpu", "tensorflow")


def ship_tensorflow(opts) -> str | None:
    """Make Dataflow workers of a stage that runs the model install TensorFlow.

    ``--setup_file`` installs the package's ``install_requires`` only (Dataflow installs
    no extras of it), and TensorFlow is in the ``tf`` extra. With ``--sdk_container_image``
    the image provides it (infra/Dockerfile, infra/Dockerfile.gpu) and nothing is added;
    with a ``--requirements_file`` of the user's, that file must name it. Otherwise a
    requirements file naming ``tensorflow-cpu`` at the launcher's own TensorFlow version
    is written and passed as ``--requirements_file``: Beam downloads the wheel on the
    launcher, stages it, and workers install it before they start.

    Returns:
        The requirements file written, or None when nothing was added.
    """
    import tempfile
    from importlib import metadata

    from apache_beam.options.pipeline_options import SetupOptions, WorkerOptions

    setup = opts.view_as(SetupOptions)
    if opts.view_as(WorkerOptions).sdk_container_image or setup.requirements_file:
        return None
    version = None
    for dist in TENSORFLOW_DISTS:
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    if version is None:
        from pipelines.errors import InputError

        raise InputError("This stage runs the model, which needs TensorFlow on the launcher "
                         "and the workers: pip install 'landslide-mapper[tf]', or pass "
                         "--sdk_container_image with an image that holds it.")
    folder = tempfile.mkdtemp(prefix="landslides-workers-")
    path = str(Path(folder) / "requirements.txt")
    Path(path).write_text(f"tensorflow-cpu=={version}\n", encoding="utf-8")
    setup.requirements_file = path
    log.info("Dataflow workers install tensorflow-cpu==%s (--requirements_file %s); pass "
             "--sdk_container_image with the project's worker image to skip it", version,
             path)
    return path


def is_dask(opts) -> bool:
    """True when ``opts`` run on Beam's Dask runner."""
    from apache_beam.options.pipeline_options import StandardOptions

    return "DaskRunner" in str(opts.view_as(StandardOptions).runner)


def keeps_finish_bundle_outputs(opts) -> bool:
    """False on runners that drop what a DoFn emits in ``finish_bundle``.

    Beam 2.77's Dask runner collects a partition's outputs before it calls
    ``finish_bundle`` (``apply_dofn_to_bundle``), so such outputs are lost.
    """
    return not is_dask(opts)


def _default_dask_partitions(opts) -> None:
    """Two Dask bag partitions per worker thread, unless the user chose a size.

    The cluster is asked for its threads at ``--dask_client_address`` or through
    ``--dask_scheduler_file`` (:func:`pipelines.workers.dask_client`); with neither, Beam
    starts a cluster in this process and its own default stays.
    """
    from apache_beam.runners.dask.dask_runner import DaskOptions

    from pipelines.workers import dask_client, dask_options, dask_where

    dask = dask_options(opts)
    if dask.get("npartitions") or dask.get("partition_size"):
        return  # chosen by the user
    with dask_client(opts) as client:
        if client is None:
            return  # a cluster Beam starts in this process
        threads = sum(client.nthreads().values())
    opts.view_as(DaskOptions).npartitions = max(2, 2 * threads)
    log.info("Dask cluster at %s has %d worker threads: %d partitions", dask_where(opts),
             threads, max(2, 2 * threads))


def release(p) -> None:
    """Close what the runner left open after ``p`` ran (the Dask runner's client)."""
    client = getattr(getattr(p, "result", None), "client", None)
    if client is not None:
        client.close()


def submit(p, opts):  # -> apache_beam.runners.runner.PipelineResult
    """Start pipeline ``p`` (built with ``opts``) so that it completes without this process.

    For a launcher that does not wait (``landslides scan --submit-only``), runner by
    runner:

    * Dataflow: the service runs the job; ``p.run()`` returns once it is submitted.
    * ``--runner dask``: ``p.run()`` only holds futures in this process's client, and
      the cluster drops their tasks when the client goes. The result's futures are
      handed to the scheduler with ``distributed.fire_and_forget`` and the client is
      closed, so the cluster's workers finish the work after this process exits. Its
      result is not gathered: what the pipeline writes (``run.json``) says how it ended.
      A cluster that Beam would start in this process (no ``--dask_client_address`` or
      ``--dask_scheduler_file``) ends with it, so then the work is waited for.
    * Local runners (DirectRunner, Prism) run in this process: waited for.
    * Other runners: returned as ``p.run()`` returns.

    Returns:
        The pipeline result (its state RUNNING where the work goes on elsewhere).
    """
    result = p.run()
    if is_dask(opts):
        from pipelines.workers import dask_cluster_given

        if not dask_cluster_given(opts):
            result.wait_until_finish()
            result.client.close()
            return result
        from distributed import fire_and_forget

        fire_and_forget(result.futures)
        result.client.close()  # sends what is queued (the graph, the keys) first
        log.info("Work handed to the Dask scheduler: it goes on after this process exits")
    elif is_direct(opts):
        result.wait_until_finish()
    return result


def beam_parser():  # -> apache_beam.options.pipeline_options._BeamArgumentParser
    """The parser Beam reads pipeline options with, holding every registered option.

    It is the one :meth:`PipelineOptions.get_all_options` builds (every
    ``PipelineOptions`` class's flags, no abbreviations), taken through its
    ``add_extra_args_fn`` hook, so what it accepts is what Beam accepts. The options of
    optional runners this project documents (Dask) are registered first.
    """
    import contextlib
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions

    for module in ("apache_beam.runners.dask.dask_runner",):  # options of optional runners
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    built: list = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
    return built[0]


def beam_option_strings() -> list[str]:
    """Every registered Beam pipeline option as a flag (``--runner``, ``--project``...).

    Flags whose destination differs from their name are included
    (``--dask_client_address`` sets ``address``).
    """
    parser = beam_parser()
    return sorted({s for action in parser._actions for s in action.option_strings
                   if s.startswith("--")})


def unknown_beam_args(args: Sequence[str]) -> list[str]:
    """The words of ``args`` that Beam's own option parser does not use.

    Those are options Beam does not know (``--treshold``), single-dash words
    (``-periods``) and stray words that are no option's value (the second file of a
    shell-expanded glob after ``--images``); the value of a Beam option given without
    ``=`` (``--project p``) is used, so it is not among them. Beam itself only logs
    "Discarding unparseable args" and runs with defaults, so each of them would silently
    change a run.

    Raises:
        InputError: a Beam option's value that Beam cannot parse (``--num_workers x``).
    """
    import argparse

    from pipelines.errors import InputError

    parser = beam_parser()
    parser.exit_on_error = False  # a bad value raises, not exits with Beam's usage text
    try:
        _, unknown = parser.parse_known_args(list(args))
    except argparse.ArgumentError as exc:
        raise InputError(f"Beam pipeline option {exc}; fix its value (see Beam's pipeline "
                         f"options reference).") from None
    return list(unknown)


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

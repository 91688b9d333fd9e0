"""How many worker processes a Beam job runs, read from its pipeline options.

A budget shared by the whole job (Earth Engine's per-project request quota, see
:mod:`pipelines.sources.earthengine.budget`) is split over the job's worker *processes*:
threads of one process share that process's part. :func:`worker_layout` reads the
layout from the pipeline options, runner by runner:

``DirectRunner``
    ``in_memory`` (the default) and ``multi_threading``: one process, this one, with
    ``direct_num_workers`` threads; ``multi_processing``: ``direct_num_workers`` processes
    (0: one per CPU), started from this one (they inherit its environment).
``DataflowRunner``
    workers = ``--max_num_workers``, or ``--num_workers`` with
    ``--autoscaling_algorithm NONE`` (otherwise Dataflow may autoscale to any size: the
    worker count is unknown); processes per worker = one SDK process per vCPU of
    ``--machine_type`` (Dataflow's default for Python; ``n1-standard-1``, 1 vCPU, when no
    machine type is given), or 1 with ``--experiments no_use_multiple_sdk_containers``;
    threads per process = ``--number_of_worker_harness_threads`` (Dataflow's choice when
    unset).
``--runner dask``
    one process per Dask worker of the cluster at ``--dask_client_address`` or named by
    ``--dask_scheduler_file`` (asked from its scheduler); with neither, Beam starts a
    local cluster of at most one process per CPU.
``PrismRunner``
    one process (its Python workers run in this one by default).
Other runners
    unknown (``processes`` is None): a budget that needs the count asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.errors import DataNotFoundError

log = logging.getLogger(__name__)

__all__ = ["DATAFLOW_DEFAULT_MACHINE", "WorkerLayout", "dask_client", "dask_cluster_given",
           "dask_options", "dask_where", "for_workers", "machine_memory_gb", "machine_vcpus",
           "worker_layout"]

#: The machine type Dataflow gives batch workers when none is asked for.
DATAFLOW_DEFAULT_MACHINE = "n1-standard-1"
#: vCPUs of the machine types whose name does not end in their vCPU count.
_SHARED_CORE = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}
#: vCPUs per GPU of the accelerator-optimised families named ``FAMILY-<n>g``.
_PER_GPU = {"a2-highgpu": 12, "a2-ultragpu": 12, "a2-megagpu": 6, "a3-highgpu": 26}


@dataclass(frozen=True)
class WorkerLayout:
    """The worker processes of a Beam job.

    Attributes:
        runner: The runner's class name (``DirectRunner``, ``DataflowRunner``...).
        workers: Machines (1 for local runners); None when the runner may start any number.
        processes_per_worker: SDK processes on each machine; None when unknown.
        threads_per_process: Threads running bundles in one process; None when the
            runner chooses.
        remote: The workers do not run on this machine and do not share its environment
            (environment variables, files, stored credentials).
        basis: How the numbers were read from the options, for messages.
    """

    runner: str
    workers: int | None
    processes_per_worker: int | None
    threads_per_process: int | None
    remote: bool
    basis: str

    @property
    def processes(self) -> int | None:
        """Every worker process of the job (None when the runner does not say)."""
        if self.workers is None or self.processes_per_worker is None:
            return None
        return self.workers * self.processes_per_worker

    @classmethod
    def local(cls, processes: int = 1, threads: int = 1) -> WorkerLayout:
        """A layout of ``processes`` processes on this machine (tests, in-process use)."""
        return cls("local", 1, processes, threads, False, f"{processes} local process(es)")


def machine_vcpus(machine_type: str) -> int | None:
    """The vCPUs of a Compute Engine machine type (``n2-highmem-4`` -> 4), None if unknown.

    Understands ``FAMILY-CLASS-N`` names, custom types (``custom-8-32768``,
    ``n2-custom-8-32768``), shared-core types and the GPU families named by GPU count
    (``a2-highgpu-2g`` -> 24).
    """
    name = machine_type.strip().lower()
    if name in _SHARED_CORE:
        return _SHARED_CORE[name]
    custom = re.search(r"(?:^|-)custom-(\d+)-\d+(?:-ext)?$", name)
    if custom:
        return int(custom.group(1))
    gpus = re.fullmatch(r"([a-z0-9]+-[a-z]+)-(\d+)g", name)
    if gpus:
        per_gpu = _PER_GPU.get(gpus.group(1))
        return per_gpu * int(gpus.group(2)) if per_gpu else None
    plain = re.fullmatch(r"[a-z][a-z0-9]*-[a-z]+-(\d+)(?:-lssd)?", name)
    return int(plain.group(1)) if plain else None


#: GB of memory per vCPU of the predefined classes: n1, and the later families.
_GB_PER_VCPU = {("n1", "standard"): 3.75, ("n1", "highmem"): 6.5, ("n1", "highcpu"): 0.9,
                # the highcpu types of these series have 2 GB per vCPU, not 1
                **{(family, "highcpu"): 2.0 for family in ("c2d", "c3", "c3d", "c4", "n4")}}
_GB_PER_VCPU_LATER = {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0}
_SHARED_CORE_GB = {"e2-micro": 1.0, "e2-small": 2.0, "e2-medium": 4.0, "f1-micro": 0.6,
                   "g1-small": 1.7}


def machine_memory_gb(machine_type: str) -> float | None:
    """GB of memory of a Compute Engine machine type (``n2-highmem-4`` -> 32), None if unknown.

    Custom types carry it in their name (``custom-8-32768``: 32 GB); predefined
    ``standard``, ``highmem`` and ``highcpu`` types have a fixed amount per vCPU.
    """
    name = machine_type.strip().lower()
    if name in _SHARED_CORE_GB:
        return _SHARED_CORE_GB[name]
    custom = re.search(r"(?:^|-)custom-\d+-(\d+)(?:-ext)?$", name)
    if custom:
        return int(custom.group(1)) / 1024
    plain = re.fullmatch(r"([a-z][a-z0-9]*)-(standard|highmem|highcpu)-(\d+)", name)
    if not plain or plain.group(1) in ("m1", "m2", "m3", "a2", "a3"):
        return None
    family, cls, vcpus = plain.group(1), plain.group(2), int(plain.group(3))
    per = _GB_PER_VCPU.get((family, cls)) or _GB_PER_VCPU_LATER[cls]
    return per * vcpus


def worker_layout(opts: Any) -> WorkerLayout:
    """The worker processes that the pipeline options ``opts`` will run (see the module).

    Args:
        opts: Beam ``PipelineOptions`` (as :func:`pipelines.beam_util.pipeline_options`
            returns them: the runner is always set).

    Raises:
        DataNotFoundError: a ``--dask_scheduler_file`` that does not exist.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    runner = str(opts.view_as(StandardOptions).runner or "DirectRunner")
    name = runner.rsplit(".", 1)[-1]
    if "Dataflow" in name:
        return _dataflow(opts, name)
    if "DaskRunner" in name:
        return _dask(opts, name)
    if "Direct" in name:
        return _direct(opts, name)
    if "Prism" in name:
        return WorkerLayout(name, 1, 1, None, False, "Prism runs its Python workers in "
                            "this process")
    return WorkerLayout(name, None, None, None, True,
                        f"{name} does not say how many worker processes it starts")


class AdaptsToWorkers(Protocol):
    """What :func:`for_workers` adapts: a :class:`~pipelines.sources.base.Source`."""

    def for_workers(self, layout: WorkerLayout) -> None: ...


def for_workers(sources: Iterable[AdaptsToWorkers], opts: Any) -> WorkerLayout:
    """Adapt ``sources`` to the workers of pipeline options ``opts``; returns their layout.

    Called on the launcher before the sources are pickled into the pipeline (see
    :meth:`pipelines.sources.base.Source.for_workers`).

    Raises:
        ConfigError: a source cannot be read by those workers as configured.
        DataNotFoundError: a ``--dask_scheduler_file`` that does not exist.
    """
    layout = worker_layout(opts)
    log.debug("Workers: %s", layout)
    for source in sources:
        source.for_workers(layout)
    return layout


def _direct(opts: Any, name: str) -> WorkerLayout:
    from apache_beam.options.pipeline_options import DirectOptions

    direct = opts.view_as(DirectOptions)
    count = int(direct.direct_num_workers or 0) or (os.cpu_count() or 1)
    mode = direct.direct_running_mode
    if mode == "multi_processing":
        return WorkerLayout(name, 1, count, 1, False,
                            f"--direct_running_mode multi_processing: {count} processes")
    threads = count if mode == "multi_threading" else 1
    return WorkerLayout(name, 1, 1, threads, False,
                        f"--direct_running_mode {mode}: 1 process, {threads} thread(s)")


def _dataflow(opts: Any, name: str) -> WorkerLayout:
    from apache_beam.options.pipeline_options import DebugOptions, WorkerOptions

    w = opts.view_as(WorkerOptions)
    debug = opts.view_as(DebugOptions)
    notes = []
    workers: int | None
    if w.max_num_workers:
        workers = int(w.max_num_workers)
        notes.append(f"--max_num_workers {workers}")
    elif w.num_workers and w.autoscaling_algorithm == "NONE":
        workers = int(w.num_workers)
        notes.append(f"--num_workers {workers} without autoscaling")
    else:
        workers = None
        notes.append("no --max_num_workers: Dataflow may autoscale to any number of workers")
    per_worker: int | None
    if debug.lookup_experiment("no_use_multiple_sdk_containers"):
        per_worker = 1
        notes.append("one SDK process per worker (no_use_multiple_sdk_containers)")
    else:
        machine = w.machine_type or DATAFLOW_DEFAULT_MACHINE
        per_worker = machine_vcpus(machine)
        notes.append(f"one SDK process per vCPU of {machine} ("
                     f"{per_worker if per_worker else 'unknown'})"
                     + ("" if w.machine_type else ", Dataflow's default machine type"))
    threads = debug.number_of_worker_harness_threads
    return WorkerLayout(name, workers, per_worker, int(threads) if threads else None, True,
                        "; ".join(notes))


def dask_options(opts: Any) -> dict[str, Any]:
    """The Dask runner options given in ``opts`` (``address``, ``scheduler_file``, ...)."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    return opts.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)


def dask_cluster_given(opts: Any) -> bool:
    """Whether ``opts`` name a running cluster (else Beam starts one in the launcher)."""
    dask = dask_options(opts)
    return bool(dask.get("address") or dask.get("scheduler_file"))


@contextlib.contextmanager
def dask_client(opts: Any) -> Iterator[Any]:
    """A ``distributed.Client`` of the cluster Beam's DaskRunner will run ``opts`` on.

    That cluster is the one at ``--dask_client_address`` or, as Beam passes it to
    ``distributed.Client``, the one ``--dask_scheduler_file`` names. Yields None when
    neither is given (Beam then starts a local cluster in the launcher). The client is
    closed on exit and is not made the default one.

    Raises:
        DataNotFoundError: a ``--dask_scheduler_file`` that does not exist (the client
            would wait for it forever).
    """
    dask = dask_options(opts)
    address = dask.get("address")
    scheduler_file = dask.get("scheduler_file")
    if not address and not scheduler_file:
        yield None
        return
    if not address and not os.path.isfile(str(scheduler_file)):
        raise DataNotFoundError(
            f"--dask_scheduler_file {scheduler_file!r} does not exist: give the file the "
            f"Dask scheduler wrote (dask scheduler --scheduler-file PATH), or "
            f"--dask_client_address.")
    from distributed import Client

    with Client(address, scheduler_file=scheduler_file, timeout=dask.get("timeout") or 30,
                set_as_default=False) as client:
        yield client


def dask_where(opts: Any) -> str:
    """The cluster of ``opts`` in words, for messages (its address or scheduler file)."""
    dask = dask_options(opts)
    if dask.get("address"):
        return str(dask["address"])
    if dask.get("scheduler_file"):
        return f"the scheduler of {dask['scheduler_file']}"
    return "a local Dask cluster"


def _dask(opts: Any, name: str) -> WorkerLayout:
    with dask_client(opts) as client:
        if client is None:
            count = os.cpu_count() or 1
            return WorkerLayout(name, 1, count, None, False,
                                f"a local Dask cluster of at most {count} processes")
        nthreads = client.nthreads()
    threads = max(nthreads.values()) if nthreads else None
    return WorkerLayout(name, len(nthreads), 1, threads, True,
                        f"{len(nthreads)} Dask worker process(es) at {dask_where(opts)}")

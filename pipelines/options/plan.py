"""The options of ``landslides plan``: :class:`PlanOptions` and the price inputs, :class:`Prices`.

The sweep's grid options (chunk size, window, overlap, pixel size, CRS) mean what they
mean for ``landslides predict`` and default the same (``tests/test_plan.py`` checks it);
the Earth Engine budget is the imagery source's own two options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ConfigError
from pipelines.options.fields import BBOX_OR_GCS, nested, option
from pipelines.options.predict import PROB_DTYPES
from pipelines.options.source import SourceOptions

SWEEP = "the sweep (as landslides predict)"
WORKERS = "workers"
PRICES = ("prices in USD (defaults: Dataflow batch and Cloud Storage Standard list prices "
          "in us-central1; see cloud.google.com/dataflow/pricing)")
ASSUMED = "assumptions"
#: The Earth Engine source options a plan reads: the job's request budget.
EE_BUDGET = ("ee_max_concurrent_requests", "ee_requests_per_second")


def _years(text: str) -> tuple[int, ...]:
    from pipelines.synth.config import parse_years

    return parse_years(text) if str(text).strip() else ()


def _ee_budget(source: SourceOptions) -> dict[str, Any]:
    """``{max_concurrent_requests, requests_per_second}``, Earth Engine's defaults if unset."""
    from pipelines.sources.earthengine.config import (
        DEFAULT_CONCURRENT_REQUESTS,
        DEFAULT_REQUESTS_PER_SECOND,
    )

    return {"max_concurrent_requests":
            source.ee_max_concurrent_requests or DEFAULT_CONCURRENT_REQUESTS,
            "requests_per_second": float(source.ee_requests_per_second
                                         or DEFAULT_REQUESTS_PER_SECOND)}


@dataclass(frozen=True)
class Prices:
    """Unit prices of a sweep's resources, in USD.

    The defaults are list prices in ``us-central1``: Dataflow batch workers as Apache Beam
    2.77 records them (``apache_beam/testing/load_tests/dataflow_cost_consts.py``, from
    cloud.google.com/dataflow/pricing; ``tests/test_plan.py`` checks they agree) and
    Cloud Storage Standard storage. Prices differ by region and change: give yours.
    """

    vcpu_hour: float = option(0.056, "One worker vCPU for an hour (%(default)s).",
                              flag="--price-vcpu-hour", group=PRICES)
    memory_gb_hour: float = option(0.003557, "One GB of worker memory for an hour "
                                   "(%(default)s).", flag="--price-gb-hour", group=PRICES)
    disk_gb_hour: float = option(0.000054, "One GB of worker persistent disk for an hour "
                                 "(%(default)s).", flag="--price-disk-gb-hour", group=PRICES)
    gpu_hour: float = option(0.672, "One worker GPU for an hour (%(default)s: an NVIDIA L4).",
                             flag="--price-gpu-hour", group=PRICES)
    storage_gb_month: float = option(0.020, "One GB of Cloud Storage for a month "
                                     "(%(default)s).", flag="--price-storage-gb-month",
                                     group=PRICES)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value >= 0:
                raise ConfigError(f"--price-{f.name.replace('_', '-')} must be >= 0 (USD), "
                                  f"got {value!r}.")


@dataclass(frozen=True)
class PlanOptions:
    """Everything ``landslides plan`` is told."""

    aoi: str = option(help="Area of interest: vector file or minlon,minlat,maxlon,maxlat.",
                      regex=BBOX_OR_GCS, label="Area of interest")
    model: str | None = option(
        None, "Model artifact: its bands, input stack and window, and its throughput "
        "(recorded in artifact.json, else measured here on a few random tiles). Default: "
        "the default U-Net of `landslides train` on the export's default bands.", path=True)
    years: tuple[int, ...] = option((), "Years to sweep, e.g. 2016-2023 or 2016,2020 "
                                    "(default: one period).", parse=_years)
    workers: int | None = option(None, "Workers to estimate for (default: the suggested "
                                 "count).", group=WORKERS)
    machine_type: str = option("n2-highmem-4", "Worker machine type (%(default)s, as "
                               "infra/schedule.yaml): one SDK process per vCPU.",
                               group=WORKERS)
    worker_memory_gb: float | None = option(None, "Memory of a worker in GB (default: the "
                                            "machine type's).", group=WORKERS)
    worker_gpus: int = option(0, "GPUs per worker, priced per GPU-hour (%(default)s). The "
                              "model rate is then per GPU: --model-rate measured on that "
                              "GPU, or the artifact's throughput.mpx_per_gpu_s; the compute "
                              "is spread over workers x GPUs, and a worker runs one SDK "
                              "process (--experiments no_use_multiple_sdk_containers, as "
                              "infra/README's GPU setup).", group=WORKERS)
    disk_gb: int = option(50, "Persistent disk of a worker in GB (%(default)s, as "
                          "infra/schedule.yaml).", group=WORKERS)
    chunk_size: int = option(512, "Chunk side in pixels (%(default)s).", units="px",
                             group=SWEEP)
    window: int | None = option(None, "Window side in pixels (default: the model's).",
                                units="px", group=SWEEP)
    overlap: float = option(0.5, "Window overlap in [0, 1) (%(default)s).", group=SWEEP)
    pixel_size: float | None = option(None, "Metres (default: the model's, else 10).",
                                      units="m", group=SWEEP)
    epsg: int | None = option(None, "Use one projected CRS instead of UTM zones.",
                              group=SWEEP)
    prob_dtype: str = option("uint8", "Probability COGs: uint8 or float32 (%(default)s).",
                             choices=PROB_DTYPES, group=SWEEP)
    ee: dict[str, Any] = nested(
        SourceOptions, convert=_ee_budget, group="Earth Engine budget",
        default_factory=lambda: _ee_budget(SourceOptions()),
        exclude=tuple(f.name for f in dataclasses.fields(SourceOptions)
                      if f.name not in EE_BUDGET))
    ee_seconds_per_request: float = option(
        10.0, "Seconds Earth Engine takes to answer one request (%(default)s: an "
        "assumption for a cloud-masked median composite of one chunk; measure yours).",
        units="s", group=ASSUMED)
    model_rate: float | None = option(
        None, "Model throughput in megapixels per second per vCPU, or per GPU with "
        "--worker-gpus (default: the artifact's recorded or calibrated rate, else the "
        "default U-Net's; with --worker-gpus, the artifact's recorded GPU rate, else "
        "required).", group=ASSUMED)
    startup_s: float = option(300.0, "Fixed time of a job: worker start-up and the final "
                              "mosaics and STAC, in seconds (%(default)s).", units="s",
                              group=ASSUMED)
    prices: Prices = nested(Prices, default_factory=Prices)
    as_json: bool = option(False, "Print the plan as JSON.", flag="--json")

    def __post_init__(self) -> None:
        if isinstance(self.years, str):
            object.__setattr__(self, "years", _years(self.years))
        checks = (("workers", self.workers, 1), ("worker_gpus", self.worker_gpus, 0),
                  ("disk_gb", self.disk_gb, 0), ("chunk_size", self.chunk_size, 8),
                  ("window", self.window, 8))
        for name, value, least in checks:
            if value is not None and value < least:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {least}, got "
                                  f"{value}.")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"--overlap must be in [0, 1) (0.5 = half a window), got "
                              f"{self.overlap!r}.")
        for name in ("pixel_size", "worker_memory_gb", "model_rate", "ee_seconds_per_request"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, "
                                  f"got {value!r}.")
        if self.startup_s < 0:
            raise ConfigError(f"--startup-s must be >= 0 seconds, got {self.startup_s!r}.")
        if self.prob_dtype not in PROB_DTYPES:
            raise ConfigError(f"--prob-dtype must be one of {', '.join(PROB_DTYPES)}, got "
                              f"{self.prob_dtype!r}.")


__all__ = ["EE_BUDGET", "PlanOptions", "Prices"]

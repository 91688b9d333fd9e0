"""Work submitted to a long-lived Dask cluster outlives the process that submitted it.

``landslides scan --submit-only --runner dask`` starts a sweep and exits. Beam's Dask
runner only holds the work's futures in the launcher's client, and the scheduler drops
tasks no client wants once that client goes: the launcher must hand them to the
scheduler (:func:`pipelines.beam_util.submit`). Here the launcher is a real process that
exits, and the cluster is a loopback ``LocalCluster`` of two worker processes that lives
on. Also: the default partitioning reaches a cluster named by ``--dask_scheduler_file``
as it does one named by ``--dask_client_address``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                                        "(apache-beam[dask])")

REPO = Path(__file__).resolve().parents[2]
BANDS = ("B4", "B8", "slope")


def _env() -> dict[str, str]:
    """This environment with the checkout first on the path (the workers import it)."""
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *([old] if old else [])])}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A long-lived cluster: two worker processes on 127.0.0.1, a client, a scheduler file."""
    old = dict(os.environ)
    os.environ.update(_env())
    try:
        lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None)
    finally:
        os.environ.clear()
        os.environ.update(old)
    client = distributed.Client(lc)
    scheduler_file = tmp_path_factory.mktemp("dask") / "scheduler.json"
    client.write_scheduler_file(str(scheduler_file))
    yield lc, client, str(scheduler_file)
    client.close()
    lc.close()


def _wait_for(check, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def _worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


# ----------------------------------------------------------------------------- submit
def test_submitted_work_finishes_after_the_launcher_exits(cluster, tmp_path):
    """8 elements of 1.5 s each on 2 worker threads take ~6 s: the launcher exits first,
    and every element is still processed, by the cluster's workers."""
    lc, client, _ = cluster
    out = tmp_path / "out"
    out.mkdir()
    launcher = subprocess.run(
        [sys.executable, "-m", "tests.distributed.launch_submit", str(out), "8", "1.5",
         "--runner", "dask", "--dask_client_address", lc.scheduler_address],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert launcher.returncode == 0, launcher.stderr[-3000:]
    assert "submitted RUNNING" in launcher.stdout  # it did not wait
    assert len(list(out.iterdir())) < 8  # the launcher is gone before the work is done

    done = _wait_for(lambda: len([p for p in out.iterdir() if p.suffix != ".tmp"]) == 8,
                     timeout=60)
    assert done, f"only {sorted(p.name for p in out.iterdir())} of 8 elements were processed"
    pids = {int(p.read_text()) for p in out.iterdir()}
    assert pids <= _worker_pids(client)  # run by the cluster's workers


# ----------------------------------------------------------------------------- partitions
def test_a_scheduler_file_gets_the_default_partitions_and_spreads_the_work(cluster,
                                                                            tmp_path):
    import apache_beam as beam
    from apache_beam.runners.dask.dask_runner import DaskOptions

    from pipelines.beam_util import pipeline_options, release
    from tests.distributed.launch_submit import slow_write

    lc, client, scheduler_file = cluster
    by_file = pipeline_options(["--runner", "dask", f"--dask_scheduler_file={scheduler_file}"],
                               "x")
    by_address = pipeline_options(["--runner", "dask",
                                   f"--dask_client_address={lc.scheduler_address}"], "x")
    # two partitions per worker thread, whichever way the cluster is named
    assert by_file.view_as(DaskOptions).npartitions == 4
    assert by_address.view_as(DaskOptions).npartitions == 4

    out = tmp_path / "out"
    out.mkdir()
    with beam.Pipeline(options=by_file) as p:
        _ = (p | beam.Create(list(range(8)), reshuffle=False)
             | beam.Map(slow_write, out=str(out), seconds=0.3))
    release(p)
    pids = {int(f.read_text()) for f in out.iterdir()}
    assert len(list(out.iterdir())) == 8
    assert pids == _worker_pids(client)  # both worker processes, not one


def test_a_missing_scheduler_file_is_named(tmp_path):
    from pipelines.beam_util import pipeline_options
    from pipelines.errors import DataNotFoundError

    missing = str(tmp_path / "nope.json")
    with pytest.raises(DataNotFoundError, match="--dask_scheduler_file .*nope.json"):
        pipeline_options(["--runner", "dask", f"--dask_scheduler_file={missing}"], "x")


# ----------------------------------------------------------------------------- scan
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A 2.5 km synthetic world (2016) and a small seeded U-Net, as tests/scan's."""
    import keras

    from model.artifact import save_artifact
    from model.unet import build_unet
    from pipelines.synth import WorldConfig, generate_world

    d = tmp_path_factory.mktemp("dask_scan")
    generate_world(str(d / "world"), WorldConfig(seed=3, size_km=2.5, years=(2015, 2016),
                                                 event_year=2016))
    keras.utils.set_random_seed(0)
    mean, std = [0.08, 0.25, 25.0], [0.04, 0.08, 12.0]
    unet = build_unet(BANDS, base_filters=4, depth=3, mean=mean, std=std)
    save_artifact(unet, str(d / "model"), BANDS, patch_size=64, mean=mean, std=std,
                  size_multiple=8, saved_model=False)
    return d


def test_scan_submit_only_on_dask_completes_the_sweep_after_the_launcher_exits(
        cluster, world, tmp_path):
    """As a scheduled scan does: a ``--submit-only`` launch exits at once; the sweep ends on
    the cluster and writes run.json; the next launch compares it and the period is done."""
    import yaml

    from pipelines import cli

    lc = cluster[0]
    out = tmp_path / "out"
    doc = {"name": "valley", "region": str(world / "world" / "study_area.geojson"),
           "source": {"kind": "synthetic", "world": str(world / "world")},
           "model": str(world / "model"), "out": str(out), "periods": {"years": "2016"},
           "predict": {"chunk_size": 128}, "compare": {"resolution": 10.0, "figures": False}}
    config = tmp_path / "scan.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    dask = ["--runner", "dask", "--dask_client_address", lc.scheduler_address]

    launcher = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "scan", "--config", str(config),
         "--submit-only", *dask], cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=300)
    assert launcher.returncode == 0, launcher.stderr[-3000:]
    period = out / "periods" / "2016"
    record = json.loads((out / "scan.json").read_text())
    assert [p["action"] for p in record["periods"]] == ["submitted"]
    assert (period / "submitted.json").exists()

    run_json = period / "sweep" / "run.json"
    assert _wait_for(run_json.exists, timeout=240), (
        f"the sweep never finished: {sorted(p.name for p in (period / 'sweep').iterdir())}")
    run = json.loads(run_json.read_text())
    assert run["status"] == "ok" and run["counts"]["chunks_failed"] == 0
    assert len(list((period / "sweep" / "prob").glob("*.tif"))) == run["counts"]["chunks_total"]

    # the next launch compares the finished sweep; nothing is submitted again
    assert cli.main(["scan", "--config", str(config), "--submit-only", *dask]) == 0
    record = json.loads((out / "scan.json").read_text())
    assert [p["action"] for p in record["periods"]] == ["done"]
    assert record["done_periods"] == ["2016"] and (period / "period.json").exists()

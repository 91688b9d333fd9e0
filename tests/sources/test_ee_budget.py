"""The Earth Engine budget's split over a job's workers, and credentials that reach them.

Worker layouts are read from real Beam pipeline options; the credentials tests run the
real earthengine-api and google-auth against the loopback endpoint, which also serves an
OAuth token endpoint for a generated service-account key.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.beam_util import pipeline_options
from pipelines.errors import ConfigError, DataNotFoundError, SourceError
from pipelines.sources import earthengine as eem
from pipelines.sources.earthengine.budget import ProcessBudget, split_budget
from pipelines.sources.earthengine.credentials import ApplicationDefault, TokenFromEnv
from pipelines.workers import WorkerLayout, machine_memory_gb, machine_vcpus, worker_layout
from tests.ee_server import EEServer
from tests.sources.test_source_earthengine import chunk_read_grid, loopback_credentials

ROOT = Path(__file__).resolve().parents[2]
START, END = "2021-03-01", "2021-06-01"
DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
            "--temp_location", "gs://b/tmp"]


def layout(*args: str) -> WorkerLayout:
    return worker_layout(pipeline_options(list(args), "test-job"))


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("args, processes, remote", [
    ((), 1, False),
    (("--direct_num_workers", "2", "--direct_running_mode", "multi_processing"), 2, False),
    (("--direct_num_workers", "4", "--direct_running_mode", "multi_threading"), 1, False),
    ((*DATAFLOW, "--max_num_workers", "10", "--machine_type", "n2-highmem-4"), 40, True),
    ((*DATAFLOW, "--max_num_workers", "10", "--machine_type", "n2-highmem-4",
      "--experiments", "no_use_multiple_sdk_containers"), 10, True),
    ((*DATAFLOW, "--num_workers", "5", "--autoscaling_algorithm", "NONE",
      "--worker_machine_type", "custom-8-32768"), 40, True),
    ((*DATAFLOW, "--max_num_workers", "3"), 3, True),  # n1-standard-1: 1 vCPU
    ((*DATAFLOW, "--num_workers", "5"), None, True),  # may autoscale past 5
    ((*DATAFLOW, "--max_num_workers", "3", "--machine_type", "z9-weird"), None, True),
    (("--runner", "FlinkRunner"), None, True),
])
def test_worker_processes_come_from_the_pipeline_options(args, processes, remote):
    got = layout(*args)
    assert got.processes == processes and got.remote is remote
    assert got.basis  # says how it was read


def test_threads_of_a_process_share_its_part():
    threads = layout("--direct_num_workers", "4", "--direct_running_mode", "multi_threading")
    assert (threads.processes, threads.threads_per_process) == (1, 4)
    flow = layout(*DATAFLOW, "--max_num_workers", "2", "--number_of_worker_harness_threads",
                  "12")
    assert (flow.processes, flow.threads_per_process) == (2, 12)


@pytest.mark.parametrize("machine, vcpus", [
    ("n1-standard-1", 1), ("n2-highmem-4", 4), ("c2-standard-60", 60), ("e2-medium", 2),
    ("n2d-highcpu-16", 16), ("custom-8-32768", 8), ("n2-custom-6-24576", 6),
    ("a2-highgpu-2g", 24), ("g2-standard-8", 8), ("z3-highmem-88-lssd", 88),
    ("quantum-computer", None)])
def test_machine_vcpus(machine, vcpus):
    assert machine_vcpus(machine) == vcpus


@pytest.mark.parametrize("machine, gb", [
    ("n1-standard-4", 15.0), ("n1-highcpu-4", 3.6), ("n2-highcpu-8", 8.0),
    ("n2d-highcpu-4", 4.0), ("c3-highcpu-4", 8.0), ("c3d-highcpu-4", 8.0),
    ("n4-highcpu-8", 16.0), ("c2d-highcpu-2", 4.0), ("c4-highcpu-4", 8.0),
    ("n2-highmem-4", 32.0), ("custom-8-32768", 32.0)])
def test_machine_memory_gb(machine, gb):
    assert machine_memory_gb(machine) == pytest.approx(gb)


def test_a_dask_scheduler_file_is_the_remote_cluster_it_names(tmp_path):
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=3, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        scheduler_file = str(tmp_path / "scheduler.json")
        client.write_scheduler_file(scheduler_file)
        got = layout("--runner", "dask", "--dask_scheduler_file", scheduler_file)
    assert (got.processes, got.threads_per_process, got.remote) == (2, 3, True)
    assert scheduler_file in got.basis
    with pytest.raises(DataNotFoundError, match="missing.json.*--scheduler-file"):
        layout("--runner", "dask", "--dask_scheduler_file", str(tmp_path / "missing.json"))


# --------------------------------------------------------------------------- the split
@pytest.mark.parametrize("processes", [1, 2, 3, 7, 13, 40])
def test_split_never_exceeds_the_job_budget(processes):
    cfg = eem.EEConfig(START, END)
    share = split_budget(cfg, WorkerLayout.local(processes))
    assert share.concurrency == 40 // processes >= 1
    assert processes * share.concurrency <= cfg.max_concurrent_requests
    assert processes * share.requests_per_second == pytest.approx(100.0)


def test_the_dataflow_arithmetic_of_the_docs():
    """10 n2-highmem-4 workers: 40 processes, 1 request in flight and 2.5/s each."""
    cfg = eem.EEConfig(START, END)
    share = split_budget(cfg, layout(*DATAFLOW, "--max_num_workers", "10", "--machine_type",
                                     "n2-highmem-4"))
    assert (share.concurrency, share.requests_per_second, share.processes) == (1, 2.5, 40)
    assert "40 process(es)" in share.describe()


def test_a_job_too_large_for_the_budget_is_refused_with_the_fixes():
    """The issue's 64 workers x 4 processes = 256 processes against 40 requests."""
    with pytest.raises(ConfigError) as err:
        split_budget(eem.EEConfig(START, END), layout(
            *DATAFLOW, "--max_num_workers", "64", "--machine_type", "n2-highmem-4"))
    msg = str(err.value)
    assert "40 concurrent requests" in msg and "256 worker processes" in msg
    assert "at most 10 worker(s) of 4 SDK processes" in msg
    assert "no_use_multiple_sdk_containers" in msg and "--ee-max-concurrent-requests" in msg
    with pytest.raises(ConfigError, match="--max_num_workers.*--ee-worker-processes"):
        split_budget(eem.EEConfig(START, END), layout(*DATAFLOW))
    # an explicit count replaces what the runner cannot say
    share = split_budget(eem.EEConfig(START, END, worker_processes=8),
                         layout("--runner", "FlinkRunner"))
    assert (share.concurrency, share.processes) == (5, 8)


@pytest.mark.parametrize("field, value", [("max_concurrent_requests", 0),
                                          ("max_concurrent_requests", 2.5),
                                          ("requests_per_second", 0.0),
                                          ("worker_processes", 0)])
def test_bad_budget_values_name_the_value(field, value):
    with pytest.raises(ConfigError, match=f"{field} must be .*got {value!r}"):
        eem.EEConfig(START, END, **{field: value})


def test_a_scan_file_with_the_old_per_process_key_is_told_what_replaced_it():
    from pipelines.options.source import check_spec

    with pytest.raises(ConfigError, match="replaced by max_concurrent_requests, now the "
                                          "whole job's budget"):
        check_spec({"kind": "earthengine", "max_concurrency": 4})


def test_process_budget_paces_requests_and_reports_throttling():
    import time

    share = split_budget(eem.EEConfig(START, END, requests_per_second=20.0))
    budget = ProcessBudget(share, throttle_delay_s=0.01)
    t0 = time.monotonic()
    for _ in range(5):
        with budget.request():
            budget.answered(overloaded=False)
    assert time.monotonic() - t0 >= 4 / 20.0 * 0.95  # 20/s: starts 50 ms apart
    assert budget.peak_in_flight == 1 and budget.in_flight == 0
    budget.wait(0.02)
    assert budget.throttled_s == pytest.approx(0.02)


def test_refusals_make_the_adaptive_throttler_hold_requests_back():
    """Beam's AdaptiveThrottler: while requests are accepted none waits; once most recent
    ones were refused (429), new ones wait (jittered) before they start."""
    share = split_budget(eem.EEConfig(START, END))
    accepted = ProcessBudget(share, throttle_delay_s=0.002)
    for _ in range(30):
        with accepted.request():
            accepted.answered(overloaded=False)
    assert accepted.throttled_s == 0.0
    refused = ProcessBudget(share, throttle_delay_s=0.002)
    for _ in range(30):
        with refused.request():
            refused.answered(overloaded=True)
    assert refused.throttled_s > 0  # p(no wait among the last 10) < (1/21)**10


# --------------------------------------------------------------------------- credentials
@pytest.fixture(scope="module")
def server():
    with EEServer() as srv:
        yield srv


def _config(server: EEServer, **kw) -> eem.EEConfig:
    return eem.EEConfig(START, END, endpoint=server.url, project="test-project",
                        backoff_initial_s=0.001, **kw)


def test_a_token_variable_is_refused_for_remote_workers(server, monkeypatch):
    monkeypatch.setenv("LSM_TEST_EE_TOKEN", "test-token")
    src = eem.EarthEngineSource(_config(server), bands=("B1",),
                                credentials_factory=TokenFromEnv("LSM_TEST_EE_TOKEN"))
    src.for_workers(layout("--direct_num_workers", "2", "--direct_running_mode",
                           "multi_processing"))  # local processes inherit it: fine
    with pytest.raises(ConfigError) as err:
        src.for_workers(layout(*DATAFLOW, "--max_num_workers", "2"))
    msg = str(err.value)
    assert "--ee-token-env LSM_TEST_EE_TOKEN" in msg and "DataflowRunner" in msg
    assert "application default credentials" in msg and "test-token" not in msg


def test_the_cli_refuses_it_before_writing_anything(server, monkeypatch, tmp_path, capsys):
    from pipelines import cli

    monkeypatch.setenv("LSM_TEST_EE_TOKEN", "test-token")
    out = tmp_path / "out"
    code = cli.main(["export", "--out", str(out), "--aoi", "85.300,28.100,85.303,28.103",
                     "--source", "earthengine", "--ee-endpoint", server.url,
                     "--ee-project", "test-project", "--ee-token-env", "LSM_TEST_EE_TOKEN",
                     "--start", START, "--end", END, "--bands", "B1,B2", "--chunk-size", "32",
                     "--patch-size", "32", *DATAFLOW, "--max_num_workers", "2"])
    assert code == 2 and not out.exists()
    assert "--ee-token-env LSM_TEST_EE_TOKEN reads the token" in capsys.readouterr().err


def _service_account_key(path: Path, token_uri: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test-project", "private_key_id": "k1",
        "private_key": pem, "client_email": "worker@test-project.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}))
    return path


def test_remote_workers_make_application_default_credentials_themselves(server, tmp_path):
    """The launcher picks ADC for remote workers; a fresh process (a worker: no token
    variable, no stored Earth Engine credentials) unpickles the source and, in open()
    (its DoFn's setup), gets a token for the service account of its key file."""
    src = eem.EarthEngineSource(_config(server), bands=("B1", "B2"),
                                credentials_factory=loopback_credentials)
    src.credentials_factory = None  # as built without --ee-token-env
    src.for_workers(layout(*DATAFLOW, "--max_num_workers", "2"))
    assert src.credentials_factory == ApplicationDefault()
    assert src.share.processes == 2 and src.share.concurrency == 20
    key = _service_account_key(tmp_path / "key.json", f"{server.url}/token")
    grid = chunk_read_grid(85.3, 28.1, chunk_size=8, halo=0)
    server.reset()
    worker = (
        "import pickle, sys\n"
        "src, grid = pickle.loads(sys.stdin.buffer.read())\n"
        "src.open()\n"
        "print(float(src.read(grid, ['B1', 'B2']).valid.mean()))\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    done = subprocess.run([sys.executable, "-c", worker], input=pickle.dumps((src, grid)),
                          capture_output=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "1.0"
    (grant,) = server.grants
    assert grant["iss"] == "worker@test-project.iam.gserviceaccount.com"
    assert set(grant["scope"].split()) == {"https://www.googleapis.com/auth/earthengine",
                                           "https://www.googleapis.com/auth/cloud-platform"}
    (call,) = server.pixel_requests()
    assert call.headers["authorization"] == "Bearer loopback-token-1"


def test_no_application_default_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(SourceError, match="service account.*GOOGLE_APPLICATION_CREDENTIALS"):
        ApplicationDefault()()


def test_a_token_factory_pickles_the_variable_name_only(monkeypatch):
    monkeypatch.setenv("LSM_SECRET_VAR", "ya29.do-not-leak")
    factory = TokenFromEnv("LSM_SECRET_VAR")
    state = pickle.dumps(factory)
    assert b"LSM_SECRET_VAR" in state and b"do-not-leak" not in state
    assert "do-not-leak" not in repr(factory)
    assert pickle.loads(state)().token == "ya29.do-not-leak"  # read where it is called

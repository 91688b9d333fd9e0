"""Earth Engine's per-project quota, held by the whole job (real client, loopback server).

The loopback server enforces a concurrency limit the way Earth Engine enforces a
project's quota (HTTP 429 RESOURCE_EXHAUSTED above it) and records the peak of requests
in flight it saw. Every chunk is cut into four computePixels blocks, which a process
fetches side by side when its part of the budget allows.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from tests.ee_server import EEServer, decode_xy

TOKEN_ENV = "LSM_TEST_EE_TOKEN"
AOI = "85.300,28.100,85.310,28.109"  # ~1 km box in UTM 45N: 18 chunks of 320 m
LIMIT = 3  # the server's concurrency quota
BANDS = ("B1", "B2", "B3", "B4")
CHUNK = 32
#: 8 rows of 4 bands per request: each 32-row chunk is 4 computePixels blocks.
REQUEST_BYTES = 4 * len(BANDS) * CHUNK * 8
TWO_PROCESSES = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
FOUR_THREADS = ["--direct_num_workers", "4", "--direct_running_mode", "multi_threading"]


@pytest.fixture(scope="module")
def server():
    with EEServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(monkeypatch, server):
    monkeypatch.setenv(TOKEN_ENV, "test-token")
    server.configure(max_concurrent=LIMIT, latency_s=0.03)
    server.reset()
    yield
    server.configure(max_concurrent=0, latency_s=0.0)


def _export(server, out, budget: int, beam_args: list[str]) -> dict:
    from pipelines.export import ExportConfig, run_export
    from pipelines.geo.patches import PatchRules, SplitPlan

    cfg = ExportConfig(
        source={"kind": "earthengine", "endpoint": server.url, "project": "test-project",
                "token_env": TOKEN_ENV, "max_concurrent_requests": budget,
                "max_request_bytes": REQUEST_BYTES, "max_retries": 12,
                "backoff_initial_s": 0.02, "backoff_max_s": 0.3},
        aoi=AOI, out=str(out), start="2021-03-01", end="2021-06-01", bands=BANDS,
        chunk_size=CHUNK, compression="none",
        patch=PatchRules(CHUNK, negative_fraction=1.0), split=SplitPlan((1.0, 0.0, 0.0)))
    return run_export(cfg, beam_args)


def _check_patches(out, expected: int) -> None:
    """Every patch holds exactly the pixels of its place (no block lost or misplaced)."""
    import tensorflow as tf

    from model import schema

    files = sorted(glob.glob(os.path.join(out, "*", "*.tfrecord")))
    patches = [schema.decode_patch(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    assert len(patches) == expected >= 4
    cols, rows = np.meshgrid(np.arange(CHUNK) + 0.5, np.arange(CHUNK) + 0.5)
    for p in patches:
        inside = p.mask != 255  # pixels outside the AOI are not exported
        assert inside.mean() > 0.5
        x, y = decode_xy(*(p.image[..., i] for i in range(4)))
        a, _, c, _, e, f = p.transform
        np.testing.assert_array_equal(x[inside], (c + a * cols)[inside])
        np.testing.assert_array_equal(y[inside], (f + e * rows)[inside])


def test_the_job_budget_holds_the_quota_over_two_processes(server, tmp_path):
    """floor(3 / 2 processes) = 1 request each: no refusal, and the peak stays <= 3.

    (With 0.1 s answers the processes overlap: telling each process the budget is its
    own, ``worker_processes: 1``, was seen to make the server refuse ~28 requests.)
    """
    server.configure(latency_s=0.1)
    manifest = _export(server, tmp_path, LIMIT, TWO_PROCESSES)
    calls = server.pixel_requests()
    assert manifest["chunks"] >= 12 and manifest["chunks_failed"] == 0
    assert len(calls) == 4 * manifest["chunks"]  # every block once: nothing refused
    assert all(r.status == 200 for r in calls)
    assert 2 <= server.max_in_flight <= LIMIT  # the processes overlapped
    _check_patches(tmp_path, manifest["patches"]["train"])


@pytest.mark.parametrize("budget", [LIMIT, 64])
def test_four_threads_of_one_process(server, tmp_path, budget):
    """Budget 3: the process's three slots bound four threads' reads. Budget 64 (no
    budget in effect): four blocks side by side in each of four threads exceed the quota,
    the server answers 429, and jittered backoff still gets every block."""
    manifest = _export(server, tmp_path, budget, FOUR_THREADS)
    calls = server.pixel_requests()
    refused = [r for r in calls if r.status == 429]
    assert manifest["chunks_failed"] == 0
    assert len(calls) - len(refused) == 4 * manifest["chunks"]
    if budget == LIMIT:
        assert not refused and 2 <= server.max_in_flight <= LIMIT
    else:
        assert refused and server.max_in_flight > LIMIT
    _check_patches(tmp_path, manifest["patches"]["train"])

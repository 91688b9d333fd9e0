"""Export through the real earthengine-api against the loopback Earth Engine endpoint."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from pipelines import cli
from tests.ee_server import EEServer, Faults, decode_xy

TOKEN_ENV = "LSM_TEST_EE_TOKEN"
AOI = "85.300,28.100,85.306,28.106"  # ~600 m box in UTM 45N


@pytest.fixture(scope="module")
def server():
    with EEServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def token(monkeypatch, server):
    monkeypatch.setenv(TOKEN_ENV, "test-token")
    server.configure(faults=Faults(), latency_s=0.0, known_bands=None, masked=None, nodata=0.0)
    server.reset()


def _args(server, out, *extra):
    return ["export", "--out", str(out), "--aoi", AOI, "--source", "earthengine",
            "--ee-endpoint", server.url, "--ee-project", "test-project",
            "--ee-token-env", TOKEN_ENV, "--start", "2021-03-01", "--end", "2021-06-01",
            "--bands", "B1,B2,B3,B4", "--chunk-size", "32", "--patch-size", "32",
            "--negative-fraction", "1", "--split", "1,0,0", "--compression", "none", *extra]


def _patches(out):
    import tensorflow as tf

    from model import schema

    files = sorted(glob.glob(os.path.join(out, "*", "*.tfrecord")))
    return [schema.decode_patch(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def test_export_from_earth_engine_is_exactly_georeferenced(server, tmp_path):
    server.configure(faults=Faults(status=429, every=3))  # and survives throttling
    assert cli.main(_args(server, tmp_path)) == 0
    patches = _patches(str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(patches) == manifest["patches"]["train"] >= 2
    assert manifest["source"]["kind"] == "earthengine"
    assert manifest["date"] == "2021-03-01/2021-06-01"
    for p in patches:
        valid = p.mask != 255
        assert valid.mean() > 0.5
        x, y = decode_xy(*(p.image[..., i] for i in range(4)))
        a, _, c, _, e, f = p.transform
        cols, rows = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5)
        np.testing.assert_array_equal(x[valid], (c + a * cols)[valid])
        np.testing.assert_array_equal(y[valid], (f + e * rows)[valid])
    calls = server.pixel_requests()
    throttled = [r for r in calls if r.status == 429]
    assert throttled and len(calls) - len(throttled) == len(server.pixel_requests(ok_only=True))


def test_chunks_that_keep_failing_are_dead_lettered(server, tmp_path):
    from pipelines.export import ExportConfig, run_export
    from pipelines.geo.patches import PatchRules, SplitPlan

    server.configure(faults=Faults(status=429, every=1))  # Earth Engine keeps refusing
    cfg = ExportConfig(
        source={"kind": "earthengine", "endpoint": server.url, "project": "test-project",
                "token_env": TOKEN_ENV, "max_retries": 1, "backoff_initial_s": 0.001,
                "backoff_max_s": 0.002},
        aoi=AOI, out=str(tmp_path), start="2021-03-01", end="2021-06-01",
        bands=("B2", "B3"), chunk_size=32, compression="none",
        patch=PatchRules(32, negative_fraction=1.0), split=SplitPlan((1.0, 0.0, 0.0)))
    manifest = run_export(cfg)
    lines = (tmp_path / "failed_chunks.jsonl").read_text().splitlines()
    assert manifest["chunks_failed"] == manifest["chunks"] == len(lines) >= 2
    assert all("429" in json.loads(line)["error"] or "Too Many" in json.loads(line)["error"]
               for line in lines)


def test_missing_token_is_a_clear_error(server, tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    assert cli.main(_args(server, tmp_path)) == 2
    assert not (tmp_path / "manifest.json").exists()


def _unpacked(blob: bytes) -> bytes:
    """A Beam-pickled payload (base64 of bz2 or zlib) as the raw pickle; else ``blob``."""
    import base64
    import binascii
    import bz2
    import zlib

    try:
        packed = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return blob
    for unpack in (bz2.decompress, zlib.decompress):
        try:
            return unpack(packed)
        except (OSError, ValueError, zlib.error):
            continue
    return blob


def test_no_token_in_pipeline_options_pickled_steps_files_or_logs(server, tmp_path,
                                                                   monkeypatch, caplog):
    """The token stays in the environment variable: the pipeline's options, its steps
    (every pickled DoFn, decompressed), the outputs and debug logs never hold it."""
    import logging
    import re

    import apache_beam as beam

    secret, var = "ya29.loopback-secret-7f3a9c", "LSM_TEST_EE_SECRET"
    monkeypatch.setenv(var, secret)  # another variable: the client initialises afresh
    seen: dict = {}
    real_run = beam.Pipeline.run

    def spy(self, *args, **kwargs):
        seen["options"] = json.dumps(self._options.get_all_options(), default=str)
        seen["proto"] = self.to_runner_api().SerializeToString()
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", spy)
    caplog.set_level(logging.DEBUG)
    args = _args(server, tmp_path)
    args[args.index(TOKEN_ENV)] = var
    assert cli.main(["-vv", *args]) == 0
    token = secret.encode()
    assert '"runner": "DirectRunner"' in seen["options"] and secret not in seen["options"]
    blobs = re.findall(rb"[A-Za-z0-9+/]{64,}={0,2}", seen["proto"])
    unpacked = [_unpacked(b) for b in blobs]
    assert any(var.encode() in u for u in unpacked)  # the source's factory is there
    assert not any(token in u for u in [seen["proto"], *unpacked])
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes(), path
    assert caplog.records and secret not in caplog.text
    # and the server did get it, as the bearer token of each request
    assert {r.headers["authorization"] for r in server.pixel_requests()} == {f"Bearer {secret}"}

"""Shared fixtures: the real datasets beside the repo, small georeferenced rasters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# google-auth otherwise probes the GCE metadata server (Beam waits ~25 s per process for
# credentials); with no credentials Beam's GCS client connects anonymously, which is what
# the local Cloud Storage emulator accepts. Inherited by multi-process DirectRunner workers.
os.environ["NO_GCE_CHECK"] = "true"
os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)


def _beam_anonymous() -> None:
    """Make Beam's GCS client anonymous at once in this process.

    Beam retries the failing default-credentials lookup with backoff (~29 s per process)
    before falling back to an anonymous client; the emulator needs no credentials, so the
    test session seeds Beam's credential cache with that fallback directly.
    """
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # pragma: no cover - beam is a pinned dependency
        return
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None


_beam_anonymous()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LANDSLIDES_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path to ``../shared/data/<name>``; skips the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name!r} not found under {SHARED_DATA} (set "
                    f"LANDSLIDES_SHARED_DATA to the folder holding it)")
    return path


@pytest.fixture
def rasuwa_dir() -> Path:
    return shared_dataset("rasuwa-inventory")


@pytest.fixture
def chittagong_dir() -> Path:
    return shared_dataset("chittagong-s2")


@pytest.fixture
def jiuzhaigou_dir() -> Path:
    return shared_dataset("jiuzhaigou-dem")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20.0) -> None:
    """Wait until ``proc`` listens on loopback ``port``; kill it and fail after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{what} did not start within {timeout_s:g} s")


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real Cloud Storage emulator (gcp-storage-emulator) on loopback for this session.

    Sets ``STORAGE_EMULATOR_HOST`` so google-cloud-storage and Beam's GCS filesystem talk to
    it. Yields the emulator's base URL.
    """
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    if not exe.exists():
        pytest.skip("gcp-storage-emulator is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_port(port, proc, "the Cloud Storage emulator", 30.0)
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A fresh, empty bucket in the emulator; returns ``gs://<name>``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    name = f"lsm-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    return f"gs://{name}"


def read_shards(folder, suffix: str = "*.tfrecord*") -> dict[str, list]:
    """Decode every record of an export folder's split subfolders: ``{split: [Patch]}``."""
    import glob as _glob

    import tensorflow as tf

    from model import schema

    out: dict[str, list] = {}
    for split in ("train", "val", "test"):
        files = sorted(_glob.glob(os.path.join(str(folder), split, suffix)))
        gz = [f for f in files if f.endswith(".gz")]
        plain = [f for f in files if not f.endswith(".gz")]
        recs = []
        if gz:
            recs += list(tf.data.TFRecordDataset(gz, compression_type="GZIP"))
        if plain:
            recs += list(tf.data.TFRecordDataset(plain))
        out[split] = [schema.decode_patch(r.numpy()) for r in recs]
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict:
    """A 1.28 km synthetic world of 2014-2016 (earthquake in 2015), with clouds.

    ``dir`` is its folder (a Path), ``meta`` its world.json, ``grid`` its pixel grid,
    ``aoi`` its AOI file and ``spec`` a synthetic source spec reading it. Read-only.
    """
    from pipelines.geo.grid import PixelGrid
    from pipelines.synth import WorldConfig, generate_world

    d = tmp_path_factory.mktemp("tiny_world") / "world"
    meta = generate_world(str(d), WorldConfig(seed=3, size_km=1.28, years=(2014, 2015, 2016),
                                              event_year=2015))
    grid = PixelGrid(meta["crs"], tuple(meta["transform"]), meta["width"], meta["height"])
    return {"dir": d, "meta": meta, "grid": grid, "aoi": str(d / "aoi.geojson"),
            "spec": {"kind": "synthetic", "world": str(d)}}

"""GeoTIFF sources on ``gs://``: range reads through GDAL's /vsigs/, against the real
Cloud Storage emulator, with a byte-counting proxy (its own process) in front of it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipelines import fsio
from pipelines.errors import DataNotFoundError
from pipelines.geo.grid import PixelGrid
from pipelines.sources.geotiff import GeoTIFFSource
from tests.conftest import free_port, wait_for_port
from tests.sources import test_source_geotiff as local_tests
from tests.sources.test_source_geotiff import UTM45, X0, Y0

#: The local-file tests' two overlapping tiles, served from the emulator here.
two_tiles = local_tests.two_tiles

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anonymous_gcs(monkeypatch):
    """Beam's GCS client without the ~25 s credential retries (the emulator is anonymous)."""
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)


@pytest.fixture
def counting_proxy(gcs_emulator, monkeypatch):
    """A byte-counting proxy (tests/gcs_proxy.py) in front of the emulator, made the
    ``STORAGE_EMULATOR_HOST`` of this test. Yields a function returning its requests."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_proxy", "--upstream", gcs_emulator, "--port",
         str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for_port(port, proc, "the counting proxy")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)

    def requests() -> list[dict]:
        with urllib.request.urlopen(f"{url}/__proxy_stats", timeout=10) as resp:
            return json.load(resp)["requests"]

    yield requests
    proc.terminate()
    proc.wait(timeout=10)


def test_gcs_cogs_are_read_by_range_not_downloaded(gcs_bucket, anonymous_gcs, counting_proxy,
                                                   tmp_path):
    """A 64 x 64 px window of an 11 MB COG costs its header and the tiles under it (here
    one 256 x 256 tile, 2.5 % of the file), not the whole object."""
    n = 1536
    rng = np.random.default_rng(3)
    dn = rng.integers(1, 10000, size=(2, n, n)).astype(np.uint16)  # noise: barely compresses
    local = tmp_path / "big.tif"
    with rasterio.open(local, "w", driver="COG", width=n, height=n, count=2, dtype="uint16",
                       crs=UTM45, transform=from_origin(X0, Y0, 10, 10), nodata=0,
                       compress="deflate", blocksize=256) as dst:
        dst.write(dn)
        dst.set_band_description(1, "B4")
        dst.set_band_description(2, "B8")
    size = os.path.getsize(local)
    assert size > 10_000_000
    obj = fsio.join(gcs_bucket, "scenes", "big.tif")
    fsio.put_file(str(local), obj)
    before = len(counting_proxy())

    r0, c0 = 700, 900
    grid = PixelGrid(UTM45, (10.0, 0.0, X0 + c0 * 10, 0.0, -10.0, Y0 - r0 * 10), 64, 64)
    with GeoTIFFSource(obj, resampling="nearest", scale=1.0) as src:
        r = src.read(grid, ["B4", "B8"])
        assert src._local == {}  # nothing downloaded
    np.testing.assert_array_equal(r.data, dn[:, r0:r0 + 64, c0:c0 + 64].astype(np.float32))
    assert r.valid.all()

    seen = counting_proxy()[before:]
    reads = [q for q in seen if q["path"] == f"/{gcs_bucket[5:]}/scenes/big.tif"]
    assert reads and all(q["method"] == "GET" and q["range"] for q in reads), reads
    fetched = sum(q["bytes"] for q in seen)  # everything: metadata, header, tiles
    assert fetched < 0.05 * size, (fetched, size, seen)


def test_gcs_objects_gdal_cannot_read_are_downloaded_once(gcs_bucket, anonymous_gcs, two_tiles,
                                                         monkeypatch, caplog):
    """Without credentials GDAL knows (none for the emulator here), the source falls back
    to one whole download per object, kept until close, and says so."""
    pa, pb, full, grid = two_tiles
    for p in (pa, pb):
        fsio.put_file(p, fsio.join(gcs_bucket, "tiles", Path(p).name))
    no_credentials = {"CPL_GS_ENDPOINT": os.environ["STORAGE_EMULATOR_HOST"] + "/",
                      "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    monkeypatch.setattr(fsio, "gdal_gs_options", lambda: dict(no_credentials))
    src = GeoTIFFSource(fsio.join(gcs_bucket, "tiles", "*.tif"), resampling="nearest")
    with caplog.at_level(logging.WARNING), src:
        r = src.read(grid, ["DEM"])
        local = dict(src._local)
        assert len(local) == 2 and all(os.path.exists(p) for p in local.values())
        src.read(grid, ["DEM"])
        assert src._local == local  # not downloaded again
    assert not any(os.path.exists(p) for p in local.values())
    assert "downloading it whole" in caplog.text
    np.testing.assert_array_equal(r.data[0, :, :30], full[:, :30])
    np.testing.assert_array_equal(r.data[0, :, 30:], full[:, 30:] + 1000)


def test_gcs_mosaic_by_range_and_a_missing_object(gcs_bucket, anonymous_gcs, two_tiles):
    pa, pb, full, grid = two_tiles
    for p in (pa, pb):
        fsio.put_file(p, fsio.join(gcs_bucket, "tiles", Path(p).name))
    with GeoTIFFSource(fsio.join(gcs_bucket, "tiles", "*.tif"), resampling="nearest") as src:
        r = src.read(grid, ["DEM"])
        assert src._local == {}
    np.testing.assert_array_equal(r.data[0, :, :30], full[:, :30])
    np.testing.assert_array_equal(r.data[0, :, 30:], full[:, 30:] + 1000)
    missing = GeoTIFFSource(fsio.join(gcs_bucket, "tiles", "nope.tif"))
    with pytest.raises(DataNotFoundError, match="nope.tif"):
        _ = missing.bands

"""Tiny worlds for the reliability suite, and the real ``landslides`` run as a process.

Every case of issue 17 goes through the command a user types: a subprocess of
``python -m pipelines.cli`` with this checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[2]
LEFT, TOP = 320000.0, 3120000.0  # aligned with 64-px chunks of 10 m
START, END = "2020-06-01", "2020-09-30"


def landslides_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def landslides(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``landslides ARGS`` to its end; its output is text."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT,
                          env=landslides_env(), capture_output=True, text=True,
                          timeout=timeout)


def landslides_popen(*args: str, log: Path) -> subprocess.Popen:
    """Start ``landslides ARGS``, its stdout and stderr going to ``log``."""
    f = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT,
                            env=landslides_env(), stdout=f, stderr=subprocess.STDOUT)


def write_scene(folder: Path, n: int, layout: str = "GTiff") -> Path:
    """A two-band (B4, B8) uint16 image of ``n`` x ``n`` 10-m pixels with bright blobs."""
    from pipelines.geo.grid import PixelGrid

    grid = PixelGrid("EPSG:32645", (10.0, 0.0, LEFT, 0.0, -10.0, TOP), n, n)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:n, 0:n]
    b4 = 900 + (xx * 3 + yy * 2) % 600 + rng.integers(0, 80, (n, n))
    b8 = 1500 + (xx * 5 + yy * 3) % 800 + rng.integers(0, 80, (n, n))
    for cy, cx in ((n // 4, n // 5), (n // 2, n // 2), (n - n // 5, n // 3)):
        b8[((yy - cy) / 20.0) ** 2 + ((xx - cx) / 30.0) ** 2 <= 1.0] = 5000
    path = folder / "s2.tif"
    extra = {"blocksize": 128} if layout == "COG" else {"tiled": True, "blockxsize": 128,
                                                       "blockysize": 128}
    with rasterio.open(path, "w", driver=layout, width=n, height=n, count=2, dtype="uint16",
                       crs=grid.crs, transform=grid.affine, nodata=0, compress="deflate",
                       **extra) as dst:
        dst.write(np.stack([b4, b8]).astype("uint16"))
        for i, b in enumerate(("B4", "B8"), 1):
            dst.set_band_description(i, b)
    return path


def write_aoi(folder: Path, n: int) -> Path:
    import geopandas as gpd
    from shapely.geometry import box

    path = folder / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(LEFT + 1, TOP - n * 10 + 1, LEFT + n * 10 - 1, TOP - 1)],
                     crs="EPSG:32645").to_crs("EPSG:4326").to_file(path)
    return path


@pytest.fixture(scope="session")
def threshold_model(tmp_path_factory) -> str:
    """A handcrafted artifact, p = sigmoid(40 (B8 - 0.3)): predictions are known."""
    from tests.predict.test_predict import _save_threshold_model

    return _save_threshold_model(tmp_path_factory.mktemp("rel_model") / "thr")


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory) -> dict:
    """256 x 256 px: 16 chunks of 64 px, written in a tiled GeoTIFF and as a COG."""
    d = tmp_path_factory.mktemp("rel_small")
    (d / "cog").mkdir()
    return {"image": write_scene(d, 256), "cog": write_scene(d / "cog", 256, "COG"),
            "aoi": write_aoi(d, 256)}


def predict_args(model: str, image: Path, aoi: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--model", model, "--out", str(out), "--source", "geotiff",
            "--images", str(image), "--aoi", str(aoi), "--start", START, "--end", END,
            "--chunk-size", "64", "--retries", "1", "--retry-delay", "0.01", *extra]


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def half_written(out: Path) -> list[str]:
    """Files that only an interrupted write leaves: temp files, done-records without COGs."""
    import json

    bad = [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")]
    for rec in out.glob("done/*.json"):
        files = json.loads(rec.read_text()).get("files", {})
        bad += [f"{rec.name} -> {rel}" for rel in files.values() if not (out / rel).exists()]
    return bad

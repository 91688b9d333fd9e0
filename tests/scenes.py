"""Small georeferenced scenes for end-to-end runs that several test modules share."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
from shapely.geometry import box

from tests.export import test_export as ex
from tests.predict import test_predict as pr


def make_export_scene(d: Path) -> dict:
    """The export tests' 5 km scene in ``d``: 4-band S2, DEM, two landslides, an AOI."""
    rng = np.random.default_rng(5)
    n = ex.N
    yy, xx = np.mgrid[0:n, 0:n]
    dn = np.stack([1000 + 40 * b + (xx + 3 * yy + 7 * b) % 500 for b in range(4)])
    ex._write_tif(d / "s2.tif", dn, ex.BANDS4, "uint16", nodata=0)
    dem = 2000 + 0.8 * xx * 10 * 0.3 + rng.normal(0, 0.5, (n, n))
    ex._write_tif(d / "dem.tif", dem[None], ["DEM"], "float32")
    left, top = ex.LEFT, ex.TOP
    polys = [box(left + 200, top - 900, left + 600, top - 400),
             box(left + 3000, top - 3200, left + 3400, top - 2500)]
    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32645").to_crs(4326).to_file(d / "inv.gpkg")
    gpd.GeoDataFrame(geometry=[box(left + 5, top - n * 10 + 5, left + n * 10 - 5, top - 5)],
                     crs="EPSG:32645").to_file(d / "aoi.geojson")
    return {"dir": d}


def make_predict_scene(d: Path) -> dict:
    """The predict tests' scene in ``d``: B4/B8 DNs with landslide-like B8 blobs over 16
    chunks of 64 px, a nodata hole, an AOI and a threshold model (``thr``)."""
    n = pr.N
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:n, 0:n]
    b4 = 900 + (xx * 3 + yy * 2) % 600 + rng.integers(0, 80, (n, n))
    b8 = 1500 + (xx * 5 + yy * 3) % 800 + rng.integers(0, 80, (n, n))
    b8[((yy - 128) / 20.0) ** 2 + ((xx - 64) / 30.0) ** 2 <= 1.0] = 5000  # across 4 chunks
    b8[190:220, 150:170] = 5000
    dn = np.stack([b4, b8]).astype("uint16")
    dn[:, pr.HOLE[0], pr.HOLE[1]] = 0
    pr._write_tif(d / "s2.tif", dn)
    gpd.GeoDataFrame(geometry=[box(pr.LEFT + 1, pr.TOP - n * 10 + 1, pr.LEFT + n * 10 - 1,
                                   pr.TOP - 1)], crs=pr.GRID.crs).to_crs(4326).to_file(
        d / "aoi.geojson")
    return {"dir": d, "thr": pr._save_threshold_model(d / "thr")}


def predict_args(scene: dict, out: Path) -> list[str]:
    """``landslides predict`` of the predict scene in 64-px chunks into ``out``."""
    return ["predict", "--model", scene["thr"], "--out", str(out), "--source", "geotiff",
            "--images", str(scene["dir"] / "s2.tif"), "--start", pr.START, "--end", pr.END,
            "--aoi", str(scene["dir"] / "aoi.geojson"), "--chunk-size", "64"]

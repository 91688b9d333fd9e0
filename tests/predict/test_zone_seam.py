"""With ``--min-area``, a landslide cut by a UTM zone limit is judged whole.

Each zone is swept on its own grid, so a landslide on a zone limit comes to its chunks in
two halves. A half below the minimum area must not be dropped by its chunk (as a small
polygon off the chunk's edges is): the inventory joins the halves across the limit and
filters the whole landslide.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from pipelines.geo.grid import PixelGrid
from pipelines.predict import PredictConfig, run_predict
from pipelines.predict.chunk import chunk_polygons, drop_small, zone_limit
from tests.predict.conftest import TINY_BANDS, TINY_GRID

#: A 32-px chunk of zone 45 (10 m) that 84 E (its west limit) crosses ~15.6 px from its
#: left edge, at 28 N: pixels from column 16 on lie in zone 45.
LIMIT_GRID = PixelGrid("EPSG:32645", (10.0, 0.0, 204800.0, 0.0, -10.0, 3101120.0), 32, 32)


def test_small_pieces_on_a_zone_limit_wait_for_the_other_zone():
    limit = zone_limit(LIMIT_GRID)
    assert limit is not None and limit.intersects(box(*LIMIT_GRID.bounds))
    mask = np.zeros((32, 32), bool)
    mask[10:13, 16:19] = True  # 900 m2 against the limit: its other half is in zone 44
    mask[20:23, 26:29] = True  # 900 m2 ~100 m from the limit: small, dropped
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    kept = drop_small(mask, LIMIT_GRID, 4, 2500.0, limit)
    assert kept[10:13, 16:19].all() and not kept[20:23, 26:29].any()
    polys = chunk_polygons(LIMIT_GRID, mask, prob, np.ones_like(mask), 4, 2500.0)
    assert [(p["area_m2"], p["n_pixels"], p["edge"]) for p in polys] == [(900.0, 9, False)]
    # the same mask in a chunk away from any zone limit, or off UTM: both dropped
    assert zone_limit(TINY_GRID) is None  # ~85.2 E, in the middle of zone 45
    away = PixelGrid("EPSG:32645", (10.0, 0.0, 204800.0 + 640, 0.0, -10.0, 3101120.0), 32, 32)
    laea = PixelGrid("EPSG:3035", (10.0, 0.0, 4_000_000.0, 0.0, -10.0, 3_000_000.0), 32, 32)
    for grid in (away, laea):  # 64 px east of the limit; a European LAEA grid
        assert zone_limit(grid) is None
        assert chunk_polygons(grid, mask, prob, np.ones_like(mask), 4, 2500.0) == []


def _sweep(tmp_path: Path, model: str, tag: str, col0: int) -> tuple[dict, gpd.GeoDataFrame]:
    """A 6 x 6 px (~3900 m2) landslide at column ``col0`` of a lon/lat scene at 84 E."""
    d = tmp_path / tag
    d.mkdir()
    n, res = 400, 0.0001
    xx = np.mgrid[0:n, 0:n][1]
    b8 = np.full((n, n), 1500)
    b8[300:306, col0:col0 + 6] = 5000
    with rasterio.open(d / "ll.tif", "w", driver="GTiff", width=n, height=n, count=2,
                       dtype="uint16", crs="EPSG:4326",
                       transform=from_origin(83.98, 28.02, res, res), nodata=0) as dst:
        dst.write(np.stack([1000 + xx % 300, b8]).astype("uint16"))
        dst.descriptions = TINY_BANDS
    run = run_predict(PredictConfig(
        model=model, source={"kind": "geotiff", "images": [str(d / "ll.tif")]},
        out=str(d / "out"), aoi="83.985,27.985,84.015,28.015", chunk_size=256,
        min_area_m2=2500.0, start="2020-06-01", end="2020-09-30", retries=0))[0]
    return run, gpd.read_file(d / "out" / "inventory.gpkg")


def test_a_landslide_split_by_a_zone_limit_is_kept_whole_with_min_area(tiny_scene, tmp_path):
    """Halves of ~1950 m2 each side of 84 E, under --min-area 2500: one landslide of the
    whole area, as the same landslide inside zone 45 (the control)."""
    run, inv = _sweep(tmp_path, tiny_scene["thr"], "on_limit", 197)  # 83.9997..84.0003 E
    assert run["aoi"]["epsg"] == [32644, 32645]
    halves = {}
    for path in (tmp_path / "on_limit" / "out" / "done").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["positive_px"]:
            halves[rec["epsg"]] = rec["positive_px"]
    assert set(halves) == {32644, 32645}  # one half in each zone's chunk
    assert all(px * 100.0 < 2500.0 for px in halves.values())  # each below the minimum
    assert len(inv) == run["counts"]["polygons"] == 1
    assert inv.loc[0, "area_m2"] == pytest.approx(sum(halves.values()) * 100.0)
    assert inv.loc[0, "n_pixels"] == sum(halves.values()) == run["counts"]["landslide_px"]
    x0, _, x1, _ = inv.geometry[0].bounds
    assert x0 < 84.0 < x1
    control_run, control = _sweep(tmp_path, tiny_scene["thr"], "control", 220)
    assert len(control) == control_run["counts"]["polygons"] == 1
    assert inv.loc[0, "area_m2"] == pytest.approx(control.loc[0, "area_m2"], rel=0.1)

"""A small GeoTIFF scene for export tests: 4-band S2 DNs, a DEM and an AOI, 2.56 km square."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from pipelines.geo.grid import PixelGrid

LEFT, TOP, SIDE = 320000.0, 3120000.0, 256  # aligned with 128-px chunks of 10 m
SMALL_GRID = PixelGrid("EPSG:32645", (10.0, 0.0, LEFT, 0.0, -10.0, TOP), SIDE, SIDE)
S2_BANDS = ("B2", "B3", "B4", "B8")


def write_tif(path, data, descriptions, dtype) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=len(data),
                       dtype=dtype, crs=SMALL_GRID.crs, transform=SMALL_GRID.affine) as dst:
        dst.write(np.asarray(data, dtype=dtype))
        for i, d in enumerate(descriptions, 1):
            dst.set_band_description(i, d)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> dict:
    """``{"dir": folder}`` with ``s2.tif``, ``dem.tif`` and ``aoi.geojson`` (4 chunks)."""
    d = tmp_path_factory.mktemp("small_scene")
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    write_tif(d / "s2.tif", [1000 + 40 * b + (xx + 3 * yy) % 500 for b in range(4)],
              S2_BANDS, "uint16")
    write_tif(d / "dem.tif", [2000 + 2.0 * xx], ["DEM"], "float32")
    gpd.GeoDataFrame(geometry=[box(LEFT + 5, TOP - SIDE * 10 + 5, LEFT + SIDE * 10 - 5, TOP - 5)],
                     crs=SMALL_GRID.crs).to_file(d / "aoi.geojson")
    return {"dir": d}


def small_export_args(scene: dict, out, inventory, *extra: str) -> list[str]:
    """``landslides export`` of ``scene`` with ``inventory``: one split, every patch kept."""
    d = scene["dir"]
    return ["export", "--out", str(out), "--aoi", str(d / "aoi.geojson"),
            "--inventory", str(inventory), "--source", "geotiff",
            "--images", str(d / "s2.tif"), "--bands", ",".join(S2_BANDS),
            "--chunk-size", "128", "--patch-size", "64", "--split", "1,0,0",
            "--negative-fraction", "1", *extra]

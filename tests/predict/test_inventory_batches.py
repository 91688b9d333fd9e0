"""The inventory streamed in batches declares one geometry type its features all have."""

from __future__ import annotations

import numpy as np

from pipelines.predict import PredictConfig, run_predict
from tests.predict.conftest import TINY_N, write_tiny_image


def test_an_inventory_of_many_batches_with_multipolygons_declares_a_type_they_conform_to(
        tiny_scene, tmp_path, monkeypatch):
    """--connectivity 8 and batches of one polygon (standing for a sweep of more than
    BATCH_ROWS polygons): a first batch of one Polygon, then an 8-connected MultiPolygon."""
    import geopandas as gpd
    import pyogrio

    import pipelines.predict.inventory as inventory
    from pipelines.geo.inventory import read_inventory

    monkeypatch.setattr(inventory, "BATCH_ROWS", 1)
    rng = np.random.default_rng(17)
    b4 = 900 + rng.integers(0, 300, (TINY_N, TINY_N))
    b8 = np.full((TINY_N, TINY_N), 1500)
    b8[4:10, 4:10] = 5000  # a plain square in the first chunk
    b8[40:45, 40:45] = 5000  # two squares meeting at a corner, in the last chunk
    b8[45:50, 45:50] = 5000
    tif = write_tiny_image(tmp_path / "s2.tif", b4, b8)
    out = tmp_path / "out"
    run = run_predict(PredictConfig(
        model=tiny_scene["thr"], out=str(out), aoi=tiny_scene["aoi"],
        source={"kind": "geotiff", "images": [str(tif)]}, start="2020-06-01",
        end="2020-09-30", chunk_size=32, retries=0, connectivity=8, min_area_m2=0))[0]
    gpkg = out / "inventory.gpkg"
    declared = pyogrio.read_info(gpkg)["geometry_type"]
    got = gpd.read_file(gpkg)
    assert len(got) == run["counts"]["polygons"] == 2
    assert set(got.geom_type) == {declared} == {"MultiPolygon"}
    parquet = gpd.read_parquet(out / "inventory.parquet")
    assert sorted(parquet.geom_type) == ["MultiPolygon", "Polygon"]
    assert sorted(got.area) == sorted(parquet.area) == [36 * 100.0, 50 * 100.0]
    assert len(read_inventory(str(gpkg))) == 2  # compare's reader takes it

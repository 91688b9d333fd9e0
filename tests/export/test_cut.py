"""Cutting chunks into labelled patches (pipelines.export.cut), through the real pipeline."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
from shapely.geometry import box

from pipelines import cli
from pipelines.geo.grid import PixelGrid
from pipelines.geo.inventory import rasterize
from tests.conftest import read_shards
from tests.export.conftest import LEFT, TOP, small_export_args


def test_overlapping_classes_are_burnt_in_file_order(small_scene, tmp_path):
    """Where a scarp lies on a deposit, the later feature in the file (the scarp) wins in
    every patch, as when the whole inventory is rasterised: not the spatial index's order.
    """
    geoms, kinds = [], []
    for kind, inset in (("deposit", 0), ("scarp", 20)):  # 64 deposits, then 64 scarps
        for i in range(8):
            for j in range(8):
                x, y = LEFT + j * 80, TOP - i * 80
                geoms.append(box(x + inset, y - 80 + inset, x + 80 - inset, y - inset))
                kinds.append(kind)
    inventory = gpd.GeoDataFrame({"kind": kinds}, geometry=geoms, crs="EPSG:32645")
    inventory.to_file(tmp_path / "parts.gpkg")
    classes = {"scarp": 1, "deposit": 2}
    out = tmp_path / "out"
    assert cli.main(small_export_args(small_scene, out, tmp_path / "parts.gpkg",
                                      "--class-attribute", "kind",
                                      "--classes", "scarp=1,deposit=2")) == 0
    assert json.loads((out / "manifest.json").read_text())["classes"] == {
        "background": 0, **classes}
    patches = read_shards(out)["train"]
    scarps = 0
    for p in patches:
        grid = PixelGrid(p.crs, tuple(p.transform)[:6], p.mask.shape[1], p.mask.shape[0])
        want = rasterize(inventory, grid, attribute="kind", classes=classes)
        ok = p.mask != 255  # outside the AOI (its edge is 5 m inside the scene)
        np.testing.assert_array_equal(p.mask[ok], want[ok], err_msg=p.key)
        scarps += int((p.mask == 1).sum())
    assert scarps == 64 * 16  # every scarp (4 x 4 px) whole

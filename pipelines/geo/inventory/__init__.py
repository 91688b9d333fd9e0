"""Landslide inventories: read and validate polygons, rasterize them, vectorize masks.

An inventory is a set of landslide polygons in a vector file (shapefile, GeoPackage,
GeoJSON, GeoParquet...). One module per job:

* :mod:`~pipelines.geo.inventory.read`: :func:`read_inventory` turns any inventory into
  clean, valid polygons with a geometry-derived ``area_m2`` column and an
  :class:`InventoryReport` of what it had to fix.
* :mod:`~pipelines.geo.inventory.raster`: :func:`rasterize` burns polygons into a label
  mask on a :class:`~pipelines.geo.grid.PixelGrid` (for training labels).
* :mod:`~pipelines.geo.inventory.vector`: :func:`vectorize` turns a predicted mask back
  into polygons with per-polygon area and probability statistics (for the sweep's vector
  inventory).
* :mod:`~pipelines.geo.inventory.write`: :func:`write_inventory` publishes a layer
  atomically, locally or on ``gs://``; :class:`InventoryWriter` writes one batch by batch.
* :mod:`~pipelines.geo.inventory.geometry`: the polygon clean-up they share and
  :func:`area_m2`, true areas in square metres.
"""

from pipelines.geo.inventory.geometry import area_m2
from pipelines.geo.inventory.raster import rasterize
from pipelines.geo.inventory.read import PARQUET_EXTS, InventoryReport, read_inventory
from pipelines.geo.inventory.vector import VECTOR_COLUMNS, vectorize
from pipelines.geo.inventory.write import (
    SHAPEFILE_SIDECARS,
    WRITE_DRIVERS,
    InventoryWriter,
    write_inventory,
)

__all__ = [
    "PARQUET_EXTS",
    "SHAPEFILE_SIDECARS",
    "VECTOR_COLUMNS",
    "WRITE_DRIVERS",
    "InventoryReport",
    "InventoryWriter",
    "area_m2",
    "rasterize",
    "read_inventory",
    "vectorize",
    "write_inventory",
]

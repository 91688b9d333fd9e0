"""Writing inventories: :func:`write_inventory`.

It publishes a layer atomically, locally or on ``gs://``, in the format its extension
names (GeoPackage, GeoParquet, GeoJSON, shapefile).
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd

from pipelines import fsio
from pipelines.errors import CRSError, InputError, OutputError

__all__ = ["SHAPEFILE_SIDECARS", "WRITE_DRIVERS", "write_inventory"]

#: Output format by extension (``None``: GeoParquet through pyarrow).
WRITE_DRIVERS: dict[str, str | None] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".parquet": None,
    ".geoparquet": None,
}
#: Files that make up a shapefile besides the ``.shp`` (published before it).
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")


def write_inventory(gdf: gpd.GeoDataFrame, path: str) -> str:
    """Write polygons to ``path`` atomically, in the format its extension names.

    ``.gpkg`` (GeoPackage), ``.parquet``/``.geoparquet`` (GeoParquet), ``.geojson``/``.json``
    and ``.shp``. The file is written to a local temporary folder, then published through
    :mod:`pipelines.fsio` (rename locally, one object upload on ``gs://``), so readers never
    see a partial file. A shapefile's sidecars are published before its ``.shp``.

    Args:
        gdf: Polygons with a CRS (``gdf.attrs`` is not written).
        path: Local path or ``gs://`` URL.

    Returns:
        ``path``.

    Raises:
        InputError: an unsupported extension.
        CRSError: ``gdf`` has no CRS.
        OutputError: the destination or the format writer failed.
    """
    path = str(path)
    low = path.lower()
    ext = next((e for e in WRITE_DRIVERS if low.endswith(e)), None)
    if ext is None:
        raise InputError(
            f"Cannot tell the vector format of {path!r}: use one of the extensions "
            f"{sorted(WRITE_DRIVERS)}."
        )
    if gdf.crs is None:
        raise CRSError(f"Refusing to write {path!r} without a CRS: set one with gdf.set_crs().")
    out = gdf.copy()
    out.attrs = {}  # the InventoryReport is not serialisable metadata
    driver = WRITE_DRIVERS[ext]
    layer = Path(path.rstrip("/").rsplit("/", 1)[-1]).stem
    try:
        if driver == "ESRI Shapefile":
            import tempfile

            with tempfile.TemporaryDirectory(prefix="landslides-") as d:
                local = os.path.join(d, "out.shp")
                out.to_file(local, driver=driver, engine="pyogrio")
                base = path[: -len(ext)]
                for side in SHAPEFILE_SIDECARS:
                    if os.path.exists(os.path.join(d, "out" + side)):
                        fsio.put_file(os.path.join(d, "out" + side), base + side)
                fsio.put_file(local, path)
            return path
        with fsio.staged_output(path, suffix=ext) as local:
            if driver is None:
                out.to_parquet(local)
            else:
                out.to_file(local, driver=driver, layer=layer, engine="pyogrio")
    except OutputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow raise several types
        raise OutputError(f"Cannot write the inventory {path!r}: {exc}") from exc
    return path

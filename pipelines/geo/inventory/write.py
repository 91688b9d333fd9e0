"""Writing inventories: :func:`write_inventory` and :class:`InventoryWriter`.

:func:`write_inventory` publishes a layer atomically, locally or on ``gs://``, in the
format its extension names (GeoPackage, GeoParquet, GeoJSON, shapefile).
:class:`InventoryWriter` writes one layer batch by batch into GeoPackage and GeoParquet
files, so an inventory larger than memory is never held whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import geopandas as gpd

from pipelines import fsio
from pipelines.errors import CRSError, InputError, OutputError

__all__ = ["SHAPEFILE_SIDECARS", "STREAMED", "WRITE_DRIVERS", "InventoryWriter",
           "layer_geometry_type", "write_inventory"]

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
    layer = _layer(path)
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


#: Extensions :class:`InventoryWriter` writes batch by batch.
STREAMED = (".gpkg", ".parquet", ".geoparquet")


class InventoryWriter:
    """One layer written batch by batch to GeoPackage and/or GeoParquet files.

    Each batch is saved as a local GeoParquet part; on :meth:`close` the parts are
    streamed into one GeoParquet file whose ``geo`` metadata covers every batch (bbox,
    geometry types) and, part after part, into the GeoPackage, whose layer declares the
    one geometry type every feature has (:func:`layer_geometry_type`: ``Polygon`` when
    every batch holds only polygons, ``MultiPolygon`` with every polygon promoted when
    some batch holds multipolygons), as one :func:`write_inventory` of the whole would;
    then every file is published atomically (see :mod:`pipelines.fsio`). Memory holds
    one batch at a time. A writer closed without batches writes ``template`` (an empty
    layer with the columns and types).

    Args:
        paths: The files to write (``.gpkg``, ``.parquet`` or ``.geoparquet``; local or
            ``gs://``).
        template: An empty GeoDataFrame with the layer's columns, dtypes and CRS; every
            batch has the same.

    Raises:
        InputError: an extension this writer does not stream.
        CRSError: ``template`` has no CRS.
    """

    def __init__(self, paths: Sequence[str], template: gpd.GeoDataFrame) -> None:
        for path in paths:
            if not str(path).lower().endswith(STREAMED):
                raise InputError(f"Cannot stream the inventory {path!r}: use one of "
                                 f"{list(STREAMED)}.")
        if template.crs is None:
            raise CRSError("Refusing to write an inventory without a CRS.")
        self.paths = [str(p) for p in paths]
        self.template = template
        self.rows = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="landslides-inventory-")
        self._parts: list[str] = []
        self._types: set[str] = set()

    def _local(self, path: str) -> str:
        return os.path.join(self._tmp.name, f"{self.paths.index(path)}{Path(path).suffix}")

    def write(self, gdf: gpd.GeoDataFrame) -> None:
        """Append ``gdf`` (the template's columns, in its CRS) to every file.

        Raises:
            OutputError: a format writer failed.
        """
        if not len(gdf):
            return
        out = gdf[list(self.template.columns)].set_geometry(self.template.geometry.name)
        try:
            part = os.path.join(self._tmp.name, f"part-{len(self._parts):06d}.parquet")
            out.to_parquet(part, index=False)
        except Exception as exc:  # pyarrow raises several types
            raise OutputError(f"Cannot write the inventory {self.paths}: {exc}") from exc
        self._parts.append(part)
        self._types.update(out.geometry.geom_type.dropna().unique())
        self.rows += len(out)

    def close(self) -> None:
        """Finish and publish every file (the template alone when nothing was written).

        Raises:
            OutputError: a file cannot be finished or published.
        """
        try:
            if not self.rows:
                for path in self.paths:
                    write_inventory(self.template, path)
                return
            for path in self.paths:
                local = self._local(path)
                if path.lower().endswith(".gpkg"):
                    self._join_gpkg(local, _layer(path))
                else:
                    _join_parquet(self._parts, local)
                fsio.put_file(local, path)
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"Cannot write the inventory {self.paths}: {exc}") from exc
        finally:
            self._tmp.cleanup()

    def _join_gpkg(self, dest: str, layer: str) -> None:
        """Stream the parts into one GeoPackage layer of one declared geometry type."""
        geometry_type, promote = layer_geometry_type(self._types)
        for i, part in enumerate(self._parts):
            gpd.read_parquet(part).to_file(
                dest, driver="GPKG", layer=layer, engine="pyogrio", mode="a" if i else "w",
                geometry_type=geometry_type, promote_to_multi=promote)

    def __enter__(self) -> InventoryWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # nothing published: the previous files stay as they were
            with contextlib.suppress(OSError):
                self._tmp.cleanup()


#: Single geometry types and the multi type that holds both.
_MULTI = {"Point": "MultiPoint", "LineString": "MultiLineString", "Polygon": "MultiPolygon"}


def layer_geometry_type(types: Iterable[str]) -> tuple[str, bool]:
    """The geometry type a layer holding ``types`` declares, and whether to promote.

    The rule of one GeoPackage write of the whole layer: one type is declared as it is;
    a single type and its multi type (``Polygon`` and ``MultiPolygon``) are declared as
    the multi type, every single geometry promoted to it (GeoPackage layers do not mix
    them); any other mix is declared ``Unknown`` (any geometry).

    Args:
        types: The geometry types of the features (shapely's names).

    Returns:
        ``(geometry_type, promote_to_multi)`` for pyogrio's writer.
    """
    kinds = set(types)
    if not kinds:
        return "Unknown", False
    if len(kinds) == 1:
        return next(iter(kinds)), False
    multis = {_MULTI.get(k, k) for k in kinds}
    if len(multis) == 1 and next(iter(multis)) in _MULTI.values():
        return next(iter(multis)), True
    return "Unknown", False


def _layer(path: str) -> str:
    """The layer name of a file: its name without extension, as :func:`write_inventory`."""
    return Path(path.rstrip("/").rsplit("/", 1)[-1]).stem


def _join_parquet(parts: Sequence[str], dest: str) -> None:
    """Stream GeoParquet ``parts`` (same columns) into ``dest``, one row group at a time.

    The ``geo`` metadata is the first part's with the bbox and geometry types of all.
    """
    import pyarrow.parquet as pq

    first = pq.read_schema(parts[0])
    geo = json.loads(first.metadata[b"geo"])
    col = geo["primary_column"]
    boxes, types = [], set()
    for part in parts:
        meta = json.loads(pq.read_schema(part).metadata[b"geo"])["columns"][col]
        types.update(meta.get("geometry_types", []))
        if meta.get("bbox"):
            boxes.append(meta["bbox"])
    geo["columns"][col]["geometry_types"] = sorted(types)
    if boxes:
        geo["columns"][col]["bbox"] = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                                       max(b[2] for b in boxes), max(b[3] for b in boxes)]
    schema = first.with_metadata({**first.metadata, b"geo": json.dumps(geo).encode()})
    with pq.ParquetWriter(dest, schema) as writer:
        for part in parts:
            pf = pq.ParquetFile(part)
            for i in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(i).replace_schema_metadata(
                    schema.metadata))

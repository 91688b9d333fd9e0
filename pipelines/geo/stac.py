"""The one STAC writer: self-contained catalogs of items with relative asset hrefs.

A command describes what it wrote as :class:`StacItem` values (a pixel grid or a WGS 84
geometry, assets, properties, optionally its own date window). Items are built with
``pystac`` and its projection and raster extensions (``proj:code``, ``proj:shape``,
``proj:transform``, ``proj:bbox`` from the grid; ``raster:bands`` from the assets'
:class:`RasterBandInfo`), and written one file each by :func:`write_stac_item`, so that a
pipeline writes its items in parallel, one per worker task. :func:`write_stac_root`
writes ``catalog.json`` last, from the items' ids alone, so a reader finding the catalog
finds its items. :func:`write_stac_catalog` does both for a handful of items. Hrefs are
relative, so the outputs can be moved or served as they are, from a local folder or a
``gs://`` prefix.

Used by ``landslides predict`` (a sweep's chunks and mosaics) and ``landslides scan``
(one item per period, a summary item, and child links to the sweeps' catalogs).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely

from pipelines import fsio
from pipelines.errors import InputError
from pipelines.geo.grid import WGS84, PixelGrid, to_crs

#: Media type of the items' JSON and of the catalog's.
GEOJSON = "application/geo+json"
JSON = "application/json"
#: Name of the root catalog file.
CATALOG = "catalog.json"


@dataclass(frozen=True)
class RasterBandInfo:
    """One band of a raster asset, for the STAC raster extension (``raster:bands``).

    Attributes:
        data_type: numpy name of the stored data type (``uint8``, ``float32``...).
        nodata: The stored value of missing pixels (NaN for float rasters).
        scale: ``value = stored * scale + offset``; ``None`` when values are stored as is.
        offset: See ``scale``.
        unit: Unit of the value (``"1"`` for a dimensionless quantity).
        spatial_resolution: Pixel size in metres.
    """

    data_type: str
    nodata: float | None = None
    scale: float | None = None
    offset: float | None = None
    unit: str | None = None
    spatial_resolution: float | None = None


@dataclass(frozen=True)
class StacAsset:
    """One file of a STAC item.

    Attributes:
        path: The file's path or URL (made relative to the item when written).
        title: Human-readable title.
        media_type: IANA media type (see :class:`pystac.MediaType`).
        roles: STAC asset roles (``data``, ``metadata``...).
        extra: Extra asset fields.
        bands: The raster's bands (raster extension); empty for other files.
        grid: The raster's own pixel grid (projection extension on the asset) when it is
            not the item's (a mosaic item holding one raster per CRS).
    """

    path: str
    title: str
    media_type: str
    roles: tuple[str, ...] = ("data",)
    extra: dict = field(default_factory=dict)
    bands: tuple[RasterBandInfo, ...] = ()
    grid: PixelGrid | None = None


@dataclass(frozen=True)
class StacItem:
    """One STAC item: a chunk's outputs, a sweep's mosaics and inventory, a scan period.

    Attributes:
        id: Item id (a chunk key, ``mosaic``, ``period-2017``...).
        grid: Its pixel grid (footprint, projection extension); ``None`` with ``geometry``.
        assets: Asset key to :class:`StacAsset`.
        properties: Extra item properties.
        geometry: WGS 84 footprint when ``grid`` is ``None``.
        start: First day of the item's own date window (``YYYY-MM-DD``); with ``end``
            it replaces the catalog's window for this item.
        end: End of the item's own date window.
    """

    id: str
    grid: PixelGrid | None
    assets: dict[str, StacAsset]
    properties: dict = field(default_factory=dict)
    geometry: object | None = None
    start: str | None = None
    end: str | None = None


@dataclass(frozen=True)
class StacLink:
    """A link added to the root catalog as it is, without reading its target.

    Attributes:
        path: The target's path or URL (made relative to the catalog when written).
        title: Human-readable title.
        rel: Link relation (``child`` for another catalog).
        media_type: The target's media type.
    """

    path: str
    title: str
    rel: str = "child"
    media_type: str = JSON


def link_href(target: str, start_dir: str) -> str:
    """``target`` as seen from the folder ``start_dir``.

    Relative when both are local paths or both are URLs; otherwise ``target`` itself
    (a local file cannot be reached relatively from a bucket, nor the other way round).
    """
    if fsio.is_remote(target) != fsio.is_remote(start_dir):
        return target
    return fsio.relative_href(
        target if fsio.is_remote(target) else os.path.abspath(target),
        start_dir if fsio.is_remote(start_dir) else os.path.abspath(start_dir))


def footprint(grid: PixelGrid):
    """The WGS 84 outline of ``grid`` (its edges densified, so they follow the CRS)."""
    from shapely.geometry import box

    b = box(*grid.bounds)
    b = shapely.segmentize(b, max(grid.res * max(grid.width, grid.height) / 8.0, grid.res))
    return to_crs(b, grid.crs, WGS84)


def _when(start: str | None, end: str | None) -> dict[str, Any]:
    """pystac.Item's date arguments: a window when both ends are known, else today."""
    if start and end:
        t0 = dt.datetime.fromisoformat(str(start)[:10]).replace(tzinfo=dt.UTC)
        t1 = dt.datetime.fromisoformat(str(end)[:10]).replace(tzinfo=dt.UTC)
        return {"datetime": None, "start_datetime": t0, "end_datetime": t1}
    today = dt.datetime.combine(dt.date.today(), dt.time(), tzinfo=dt.UTC)
    return {"datetime": today}


def _projection(ext, grid: PixelGrid) -> None:
    """Fill a pystac projection extension (item or asset) from ``grid``."""
    if grid.crs.split(":", 1)[0].isalpha() and grid.crs.split(":", 1)[-1].isdigit():
        ext.code = grid.crs  # an authority code such as EPSG:32645
    else:
        from rasterio.crs import CRS

        ext.code = None
        ext.wkt2 = CRS.from_user_input(grid.crs).to_wkt("WKT2_2019")
    ext.shape = [grid.height, grid.width]
    ext.transform = [float(v) for v in grid.transform]
    ext.bbox = [float(v) for v in grid.bounds]


def _raster_band(info: RasterBandInfo):
    """A pystac ``RasterBand`` (NaN nodata written as the extension's ``"nan"``)."""
    from pystac.extensions.raster import DataType, NoDataStrings, RasterBand

    nodata: Any = info.nodata
    if isinstance(nodata, float) and math.isnan(nodata):
        nodata = NoDataStrings.NAN
    return RasterBand.create(nodata=nodata, data_type=DataType(info.data_type),
                             unit=info.unit, scale=info.scale, offset=info.offset,
                             spatial_resolution=info.spatial_resolution)


def stac_item(folder: str, spec: StacItem, start: str | None = None,
              end: str | None = None) -> dict[str, Any]:
    """The JSON of ``spec`` as an item of the catalog in ``folder``.

    The item sits at ``<folder>/<id>/<id>.json``; its root and parent links point to
    ``../catalog.json`` and its asset hrefs are relative to it.

    Args:
        folder: The catalog's folder (local or ``gs://``).
        spec: The item.
        start: The catalog's date window, used unless the item has its own.
        end: See ``start``.

    Raises:
        InputError: the item has neither a grid nor a geometry.
    """
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension
    from shapely.geometry import mapping

    geom = footprint(spec.grid) if spec.grid is not None else spec.geometry
    if geom is None:
        raise InputError(f"STAC item {spec.id!r} has neither a grid nor a geometry.")
    own = _when(spec.start, spec.end) if spec.start and spec.end else _when(start, end)
    item = pystac.Item(id=spec.id, geometry=mapping(geom),
                       bbox=shapely.bounds(geom).tolist(),
                       properties=dict(spec.properties), **own)
    if spec.grid is not None:
        _projection(ProjectionExtension.ext(item, add_if_missing=True), spec.grid)
    for key, asset in spec.assets.items():
        href = link_href(asset.path, fsio.join(folder, spec.id))
        item.add_asset(key, pystac.Asset(href=href, title=asset.title,
                                         media_type=asset.media_type,
                                         roles=list(asset.roles),
                                         extra_fields=dict(asset.extra)))
        if asset.grid is not None:
            _projection(ProjectionExtension.ext(item.assets[key], add_if_missing=True),
                        asset.grid)
        if asset.bands:
            RasterExtension.ext(item.assets[key], add_if_missing=True).apply(
                [_raster_band(b) for b in asset.bands])
    for rel in ("root", "parent"):
        item.add_link(pystac.Link(rel, f"../{CATALOG}", media_type=JSON))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _dumps(doc: dict) -> bytes:
    """The JSON text of a STAC object (strict: NaN and infinity are refused)."""
    return json.dumps(doc, indent=2, allow_nan=False).encode("utf-8")


def write_stac_item(folder: str, spec: StacItem, start: str | None = None,
                    end: str | None = None) -> str:
    """Write one item of the catalog in ``folder`` at ``<folder>/<id>/<id>.json``.

    Atomic (see :func:`pipelines.fsio.write_bytes`) and independent of every other item,
    so a pipeline writes its items in parallel; :func:`write_stac_root` lists them.

    Returns:
        The item's path.

    Raises:
        InputError: the item has neither a grid nor a geometry.
        OutputError: the item cannot be written.
    """
    path = fsio.join(folder, spec.id, f"{spec.id}.json")
    fsio.write_bytes(path, _dumps(stac_item(folder, spec, start, end)))
    return path


def write_stac_root(folder: str, catalog_id: str, description: str, item_ids: Iterable[str],
                    title: str | None = None, links: Sequence[StacLink] = ()) -> str:
    """Write ``<folder>/catalog.json``, listing items already written in ``folder``.

    Args:
        folder: The catalog's folder (local or ``gs://``).
        catalog_id: The catalog's id.
        description: The catalog's description.
        item_ids: The ids of its items, in the order to list them (each at
            ``<id>/<id>.json``, see :func:`write_stac_item`).
        title: The catalog's title.
        links: Further links (e.g. other commands' catalogs as children); their targets
            are neither read nor copied.

    Returns:
        The href of ``catalog.json``.

    Raises:
        OutputError: the catalog cannot be written.
    """
    import pystac

    cat = pystac.Catalog(id=catalog_id, description=description, title=title)
    cat.clear_links()
    cat.add_link(pystac.Link("root", f"./{CATALOG}", media_type=JSON))
    for item_id in item_ids:
        cat.add_link(pystac.Link("item", f"./{item_id}/{item_id}.json", media_type=GEOJSON))
    for link in links:
        cat.add_link(pystac.Link(link.rel, link_href(link.path, folder),
                                 media_type=link.media_type, title=link.title))
    path = fsio.join(folder, CATALOG)
    fsio.write_bytes(path, _dumps(cat.to_dict(include_self_link=False, transform_hrefs=False)))
    return path


def write_stac_catalog(folder: str, catalog_id: str, description: str,
                       items: Sequence[StacItem], start: str | None, end: str | None,
                       title: str | None = None, links: Sequence[StacLink] = ()) -> str:
    """Write a self-contained STAC catalog of a few items to ``folder`` (local or ``gs://``).

    Items live at ``<folder>/<id>/<id>.json``; asset hrefs are relative, so the outputs can
    be moved or served as they are. Each item is published atomically and
    ``catalog.json`` last, so a reader finding the catalog finds its items. (A pipeline
    with many items writes them with :func:`write_stac_item` in parallel and the root with
    :func:`write_stac_root`.)

    Args:
        folder: Where the catalog goes.
        catalog_id: The catalog's id.
        description: The catalog's description.
        items: The items; each one dated by its own window, else by ``start``/``end``.
        start: First day of the items' date window (``YYYY-MM-DD``); without ``start``
            and ``end`` an item without its own window is dated today.
        end: End of the items' date window.
        title: The catalog's title.
        links: Links added to ``catalog.json`` as they are, so their targets are neither
            read nor copied (e.g. other commands' catalogs as children).

    Returns:
        The href of ``catalog.json``.

    Raises:
        InputError: an item has neither a grid nor a geometry.
        OutputError: the catalog cannot be written.
    """
    for spec in items:  # refuse before anything is written
        if spec.grid is None and spec.geometry is None:
            raise InputError(f"STAC item {spec.id!r} has neither a grid nor a geometry.")
    for spec in items:
        write_stac_item(folder, spec, start, end)
    return write_stac_root(folder, catalog_id, description, [s.id for s in items],
                           title=title, links=links)


__all__ = [
    "CATALOG",
    "RasterBandInfo",
    "StacAsset",
    "StacItem",
    "StacLink",
    "footprint",
    "link_href",
    "stac_item",
    "write_stac_catalog",
    "write_stac_item",
    "write_stac_root",
]

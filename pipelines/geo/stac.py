"""The one STAC writer: self-contained catalogs of items with relative asset hrefs.

A command describes what it wrote as :class:`StacItem` values (a pixel grid or a WGS 84
geometry, assets, properties, optionally its own date window) and hands them to
:func:`write_stac_catalog`, which builds the catalog with ``pystac``, saves it to a
temporary folder and publishes it file by file (``catalog.json`` last) to a local folder
or a ``gs://`` prefix. Hrefs are relative, so the outputs can be moved or served as
they are.

Used by ``landslides predict`` (a sweep's chunks and mosaics) and ``landslides scan``
(one item per period, a summary item, and child links to the sweeps' catalogs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely

from pipelines import fsio
from pipelines.errors import InputError, OutputError
from pipelines.geo.grid import WGS84, PixelGrid, to_crs


@dataclass(frozen=True)
class StacAsset:
    """One file of a STAC item.

    Attributes:
        path: The file's path or URL (made relative to the item when written).
        title: Human-readable title.
        media_type: IANA media type (see :class:`pystac.MediaType`).
        roles: STAC asset roles (``data``, ``metadata``...).
        extra: Extra asset fields.
    """

    path: str
    title: str
    media_type: str
    roles: tuple[str, ...] = ("data",)
    extra: dict = field(default_factory=dict)


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
    media_type: str = "application/json"


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


def _footprint(grid: PixelGrid):
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


def write_stac_catalog(folder: str, catalog_id: str, description: str,
                       items: Sequence[StacItem], start: str | None, end: str | None,
                       title: str | None = None, links: Sequence[StacLink] = ()) -> str:
    """Write a self-contained STAC catalog to ``folder`` (local or ``gs://``).

    Items live at ``<folder>/<id>/<id>.json``; asset hrefs are relative, so the outputs can
    be moved or served as they are. Written to a temporary folder first and published
    file by file (``catalog.json`` last), so a reader finding the catalog finds its items.

    Args:
        folder: Where the catalog goes.
        catalog_id: The catalog's id.
        description: The catalog's description.
        items: The items; each one dated by its own window, else by ``start``/``end``.
        start: First day of the items' date window (``YYYY-MM-DD``); without ``start``
            and ``end`` an item without its own window is dated today.
        end: End of the items' date window.
        title: The catalog's title.
        links: Links added to ``catalog.json`` after it is saved, so pystac neither
            reads nor copies their targets (e.g. other commands' catalogs as children).

    Returns:
        The href of ``catalog.json``.

    Raises:
        InputError: an item has neither a grid nor a geometry.
        OutputError: the catalog cannot be written.
    """
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from shapely.geometry import mapping

    when = _when(start, end)
    with tempfile.TemporaryDirectory(prefix="landslides-stac-") as tmp:
        cat = pystac.Catalog(id=catalog_id, description=description, title=title)
        for spec in items:
            geom = _footprint(spec.grid) if spec.grid is not None else spec.geometry
            if geom is None:
                raise InputError(f"STAC item {spec.id!r} has neither a grid nor a geometry.")
            bounds = shapely.bounds(geom).tolist()
            own = _when(spec.start, spec.end) if spec.start and spec.end else when
            item = pystac.Item(id=spec.id, geometry=mapping(geom), bbox=bounds,
                               properties=dict(spec.properties), **own)
            if spec.grid is not None:
                proj = ProjectionExtension.ext(item, add_if_missing=True)
                proj.code = spec.grid.crs
                proj.shape = [spec.grid.height, spec.grid.width]
                proj.transform = list(spec.grid.transform)
            item_dir = os.path.join(tmp, spec.id)
            for key, asset in spec.assets.items():
                href = link_href(asset.path, fsio.join(folder, spec.id))
                item.add_asset(key, pystac.Asset(href=href, title=asset.title,
                                                 media_type=asset.media_type,
                                                 roles=list(asset.roles),
                                                 extra_fields=dict(asset.extra)))
            item.set_self_href(os.path.join(item_dir, f"{spec.id}.json"))
            cat.add_item(item)
        cat.normalize_hrefs(tmp)
        cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        if links:
            root = os.path.join(tmp, "catalog.json")
            with open(root, encoding="utf-8") as f:
                doc = json.load(f)
            doc["links"].extend({"rel": link.rel, "href": link_href(link.path, folder),
                                 "type": link.media_type, "title": link.title}
                                for link in links)
            with open(root, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
        written = []
        for root_dir, _, names in os.walk(tmp):
            for name in names:
                rel = os.path.relpath(os.path.join(root_dir, name), tmp)
                written.append(rel)
        written.sort(key=lambda r: (r == "catalog.json", r))  # the catalog last
        try:
            for rel in written:
                fsio.put_file(os.path.join(tmp, rel), fsio.join(folder, *rel.split(os.sep)))
        except OutputError:
            raise
        except OSError as exc:
            raise OutputError(f"Cannot write the STAC catalog to {folder!r}: {exc}") from exc
    return fsio.join(folder, "catalog.json")


__all__ = [
    "StacAsset",
    "StacItem",
    "StacLink",
    "link_href",
    "write_stac_catalog",
]

"""The small records finalize passes around, and the names of a sweep's products.

:class:`ChunkSummary` is what finalize keeps of a chunk (a few hundred bytes, never its
pixels or polygons); :class:`PolygonPart` is one landslide polygon on its way into the
inventory. :func:`tagged` names the products of a sweep with failed chunks
``*.partial.*``; :func:`drop_other`, :func:`remove_leftovers`, :func:`remove_stac`,
:func:`remove_chunk_files` and :func:`remove_chunk_items` delete what an earlier run into
the same folder wrote and this run does not.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pipelines import fsio
from pipelines.geo.grid import ChunkKey, PixelGrid


@dataclass(frozen=True)
class ChunkSummary:
    """What finalize needs of one chunk: a few hundred bytes, never its polygons.

    Attributes:
        key: The chunk key.
        epsg: The EPSG code of its UTM zone.
        grid: Its pixel grid.
        files: ``(kind, path relative to the AOI folder)`` of its COGs (none when empty).
        state: ``done`` or ``empty``.
        action: ``computed`` or ``skipped``.
        valid_px: Pixels with valid imagery inside the AOI.
        positive_px: Pixels in the mask.
        interior: Its polygons that touch no chunk edge (final; read back from its
            done-record when the inventory is written).
        item: Its STAC item was written.
    """

    key: str
    epsg: int
    grid: PixelGrid
    files: tuple[tuple[str, str], ...]
    state: str
    action: str
    valid_px: int
    positive_px: int
    interior: int
    item: bool

    def file(self, kind: str) -> str:
        """The relative path of its ``prob`` or ``mask`` COG."""
        return dict(self.files)[kind]


class PolygonPart(NamedTuple):
    """A landslide polygon of a chunk (or joined across chunks), in its UTM CRS.

    ``key`` and ``pos`` place it in the inventory: the chunk and the position in that
    chunk's polygons of (the first of) its parts.
    """

    key: str
    pos: int
    wkb: bytes
    area_m2: float
    n_pixels: int
    prob_mean: float
    prob_max: float
    chunks: int = 1


def polygon_parts(key: str, polygons: Sequence[dict], edge: bool) -> list[PolygonPart]:
    """The done-record polygons of chunk ``key`` that touch its edge (or those that don't)."""
    return [PolygonPart(key, i, base64.b64decode(p["wkb"]), float(p["area_m2"]),
                        int(p["n_pixels"]), float(p["prob_mean"]), float(p["prob_max"]))
            for i, p in enumerate(polygons) if bool(p["edge"]) == edge]


#: What the products of a sweep with failed chunks carry in their names.
PARTIAL = ".partial"


def tagged(path: str, partial: bool) -> str:
    """``inventory.gpkg`` -> ``inventory.partial.gpkg`` for a partial sweep."""
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{PARTIAL}{dot}{ext}" if partial else path


def drop_other(path: str, partial: bool) -> None:
    """Delete the other kind of ``path`` (partial or complete) left by an older run."""
    other = tagged(path, not partial)
    if fsio.exists(other):
        fsio.delete(other)


#: The mosaic files predict writes in ``mosaic/``: ``<kind>[_<epsg>][.partial].vrt|tif``.
MOSAIC_FILE = re.compile(r"(prob|mask|explain)(_\d+)?(\.partial)?\.(vrt|tif)")


def _name(path: str) -> str:
    """The last component of a local path or URL."""
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def remove_leftovers(folder: str, stale: Callable[[str], bool]) -> list[str]:
    """Delete the files directly in ``folder`` whose names ``stale`` picks; local or gs://.

    For the products an earlier run into the same folder wrote and this run does not (a
    merged COG of a mosaic now too large to merge, the Grad-CAM maps of a run with
    ``--explain``): left, they would pass for this run's. ``stale`` must pick only names
    that predict gives its products, so that no other file is touched. An emptied local
    folder goes too.

    Returns:
        The deleted paths.
    """
    removed = []
    for path in fsio.glob(fsio.join(fsio.glob_escape(folder), "*")):
        if stale(_name(path)):
            fsio.delete(path)
            removed.append(path)
    if removed:
        fsio.remove_empty_dir(folder)
    return removed


def remove_stac(folder: str) -> list[str]:
    """Delete the STAC catalog an earlier run wrote, for a run that writes none.

    Only predict's own STAC files are touched: ``catalog.json`` and ``<id>/<id>.json``
    where ``<id>`` is ``mosaic`` or a chunk key; emptied local folders go too.

    Args:
        folder: The job's ``stac`` folder.

    Returns:
        The deleted paths.
    """
    from pipelines.geo.stac import CATALOG

    # predict's STAC items: the mosaic's and the chunks'
    removed = _remove_items(folder, lambda item_id: item_id == "mosaic"
                            or ChunkKey.is_key(item_id))
    catalog = fsio.join(folder, CATALOG)
    if fsio.exists(catalog):
        fsio.delete(catalog)
        removed.append(catalog)
    if removed:
        fsio.remove_empty_dir(folder)
    return removed


#: The per-chunk products predict writes in an AOI's folder: ``<folder>/<key><suffix>``.
CHUNK_FILES = {"prob": ".tif", "mask": ".tif", "explain": ".tif", "done": ".json"}


def chunk_key_of(name: str, suffix: str) -> str | None:
    """The chunk key that file name ``name`` is the ``<key><suffix>`` of, else ``None``."""
    if not name.endswith(suffix):
        return None
    key = name[:-len(suffix)]
    return key if ChunkKey.is_key(key) else None


def remove_chunk_files(folder: str, suffix: str, keep: Container[str]) -> list[str]:
    """Delete the chunk products ``<key><suffix>`` directly in ``folder`` of keys not in ``keep``.

    Only names made of a chunk key and ``suffix`` (predict's own) are touched; local or
    gs://. An emptied local folder goes too.

    Returns:
        The deleted paths.
    """
    def stale(name: str) -> bool:
        key = chunk_key_of(name, suffix)
        return key is not None and key not in keep

    return remove_leftovers(folder, stale)


def remove_chunk_items(folder: str, keep: Container[str]) -> list[str]:
    """Delete the chunk STAC items ``<key>/<key>.json`` in ``folder`` of keys not in ``keep``.

    Only predict's chunk items are touched (the folder and the file named after the same
    chunk key); emptied local folders go too.

    Args:
        folder: The job's ``stac`` folder.
        keep: The chunk keys whose items stay.

    Returns:
        The deleted paths.
    """
    return _remove_items(folder, lambda item_id: ChunkKey.is_key(item_id)
                         and item_id not in keep)


def _remove_items(folder: str, stale: Callable[[str], bool]) -> list[str]:
    """Delete the STAC items ``<id>/<id>.json`` in ``folder`` whose id is ``stale``.

    Only files named after their folder are items; emptied local item folders go too.

    Returns:
        The deleted paths.
    """
    removed = []
    for path in fsio.glob(fsio.join(fsio.glob_escape(folder), "*", "*.json")):
        name = _name(path)
        parent = path[:-len(name)].rstrip("/\\")
        item_id = name.removesuffix(".json")
        if _name(parent) == item_id and stale(item_id):
            fsio.delete(path)
            fsio.remove_empty_dir(parent)
            removed.append(path)
    return removed


__all__ = ["CHUNK_FILES", "MOSAIC_FILE", "PARTIAL", "ChunkSummary", "PolygonPart",
           "chunk_key_of", "drop_other", "polygon_parts", "remove_chunk_files",
           "remove_chunk_items", "remove_leftovers", "remove_stac", "tagged"]

"""The small records finalize passes around, and the names of a partial sweep's products.

:class:`ChunkSummary` is what finalize keeps of a chunk (a few hundred bytes, never its
pixels or polygons); :class:`PolygonPart` is one landslide polygon on its way into the
inventory. :func:`tagged` names the products of a sweep with failed chunks
``*.partial.*``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pipelines import fsio
from pipelines.geo.grid import PixelGrid


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


__all__ = ["PARTIAL", "ChunkSummary", "PolygonPart", "drop_other", "polygon_parts", "tagged"]

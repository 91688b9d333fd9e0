"""Band maps of GeoTIFF files: which file band holds which named band.

A band map is ``{band name: 1-based index or band description}``, given as a mapping or
as a CLI string such as ``"B4=1,B3=2,B2=3,B8=4"``. :func:`parse_band_map` and
:func:`normalise_band_map` validate it and canonicalise the names through the band
registry (:mod:`pipelines.geo.bands`); :func:`band_index` resolves it (or, without one,
the files' own band descriptions) against one file's bands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from pipelines.errors import BandError
from pipelines.geo import bands as bandreg

log = logging.getLogger(__name__)

__all__ = ["band_index", "normalise_band_map", "parse_band_map"]

#: Conventional names used to build an example ``band_map`` for undescribed files.
_EXAMPLE_ORDER = ("B4", "B3", "B2", "B8", "B11", "B12", "B5", "B6", "B7", "B8A", "B1", "B9")


def parse_band_map(text: str) -> dict[str, int | str]:
    """Parse a CLI band map such as ``"B4=1,B3=2,B2=3,B8=4"``.

    Each entry is ``NAME=REF``: ``NAME`` is a band name (aliases such as ``red`` are
    canonicalised), ``REF`` a 1-based band index or a band description in the file.

    Returns:
        ``{canonical band name: index or description}`` in the given order.

    Raises:
        BandError: an entry is malformed, a name is unknown or repeated, or an index < 1.
    """
    example = "'B4=1,B3=2,B2=3,B8=4'"
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    if not entries:
        raise BandError(f"Empty band map {text!r}; give NAME=INDEX pairs, e.g. {example}.")
    out: dict[str, int | str] = {}
    for entry in entries:
        name, sep, ref = entry.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise BandError(f"Bad band map entry {entry!r} in {text!r}: expected NAME=INDEX "
                            f"or NAME=DESCRIPTION, e.g. {example}.")
        out_name = bandreg.canonical(name.strip())
        if out_name in out:
            raise BandError(f"Band {out_name} appears twice in the band map {text!r}.")
        ref = ref.strip()
        out[out_name] = int(ref) if ref.lstrip("+-").isdigit() else ref
    checked = normalise_band_map(out)
    assert checked is not None  # out is not empty
    return checked


def normalise_band_map(band_map: Mapping[str, int | str] | str | None
                       ) -> dict[str, int | str] | None:
    """Validate a band map and canonicalise its names."""
    if band_map is None:
        return None
    if isinstance(band_map, str):
        return parse_band_map(band_map)
    if not isinstance(band_map, Mapping) or not band_map:
        raise BandError(f"band_map must be a non-empty mapping {{band name: 1-based index or "
                        f"description}}, got {band_map!r}; e.g. {{'B4': 1, 'B3': 2}}.")
    out: dict[str, int | str] = {}
    for name, ref in band_map.items():
        canon = bandreg.canonical(str(name))
        if canon in out:
            raise BandError(f"Band {canon} is mapped twice in band_map {dict(band_map)!r}.")
        if isinstance(ref, bool) or not isinstance(ref, int | str | np.integer):
            raise BandError(f"band_map[{name!r}] = {ref!r}: give a 1-based band index or a "
                            f"band description.")
        if isinstance(ref, int | np.integer):
            if int(ref) < 1:
                raise BandError(f"band_map[{name!r}] = {ref}: band indexes start at 1 "
                                f"(GDAL convention).")
            out[canon] = int(ref)
        else:
            if not ref.strip():
                raise BandError(f"band_map[{name!r}] is an empty description.")
            out[canon] = ref.strip()
    return out


def _example_band_map(count: int) -> str:
    if count == 1:
        return "'DEM=1'"
    names = list(_EXAMPLE_ORDER[:count])
    return "'" + ",".join(f"{n}={i}" for i, n in enumerate(names, start=1)) + "'"


def _description_index() -> dict[str, str]:
    """Lower-cased registry descriptions (as written by some tools) -> canonical names."""
    return {b.description.lower(): name for name, b in bandreg.REGISTRY.items()}


def _canonical_description(desc: str) -> str | None:
    """The canonical band named by a file's band description, or None if it names none."""
    try:
        return bandreg.canonical(desc)
    except BandError:
        return _description_index().get(desc.strip().lower())


def band_index(band_map: Mapping[str, int | str] | None, path: str, count: int,
               descriptions: tuple[str | None, ...]) -> dict[str, int]:
    """``{band name: 1-based index}`` of one file, from ``band_map`` or its descriptions.

    Args:
        band_map: A normalised band map (see :func:`normalise_band_map`), or None to name
            the bands by the file's band descriptions.
        path: The file, for messages.
        count: How many bands the file has.
        descriptions: The file's band descriptions (None or empty where it has none).

    Raises:
        BandError: the map names a band the file lacks, or without a map the file's
            descriptions are missing, ambiguous or name no known band.
    """
    if band_map is not None:
        out: dict[str, int] = {}
        for name, ref in band_map.items():
            if isinstance(ref, int):
                if ref > count:
                    raise BandError(f"band_map maps {name} to band {ref}, but {path!r} has "
                                    f"only {count} band(s).")
                out[name] = ref
                continue
            hits = [i for i, d in enumerate(descriptions, start=1)
                    if d and d.strip().lower() == ref.lower()]
            if not hits:
                raise BandError(f"band_map maps {name} to the description {ref!r}, which no "
                                f"band of {path!r} has (its descriptions: "
                                f"{[d for d in descriptions]}).")
            out[name] = hits[0]
        return out
    if any(not d for d in descriptions):
        raise BandError(
            f"Raster {path!r} has {count} band(s) without descriptions, so their names are "
            f"unknown. Pass a band map naming them, e.g. band_map="
            f"{_example_band_map(count)} (CLI: --band-map {_example_band_map(count)}).")
    out = {}
    for i, desc in enumerate(descriptions, start=1):
        known = _canonical_description(str(desc))
        if known is None:
            log.debug("Band %d of %s (%r) names no known band; ignored.", i, path, desc)
            continue
        if known in out:
            raise BandError(f"Bands {out[known]} and {i} of {path!r} both describe "
                            f"{known}; pass a band_map to choose one.")
        out[known] = i
    if not out:
        raise BandError(f"No band description of {path!r} ({list(descriptions)}) names a "
                        f"known band; pass a band map, e.g. {_example_band_map(count)}.")
    return out

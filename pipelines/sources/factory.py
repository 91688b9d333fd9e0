"""Build a :class:`~pipelines.sources.base.Source` from a JSON-able spec.

Specs travel inside pipeline configurations (and so to Beam workers) as plain dicts;
the source object itself is created on the launcher for validation and on every worker
in ``setup``. Specs come from :class:`pipelines.options.source.SourceOptions` (the
command-line flags) or from a scan file (checked by
:func:`pipelines.options.source.check_spec`). Kinds:

``{"kind": "synthetic", "world": DIR, "mask_clouds": bool, "composite": str}``
    The synthetic world; the year comes from the date window (or ``"year"``); a window
    over several years composites their images (``composite``: ``mosaic``, the most
    recent clear pixel, or ``greenest``); cloudy pixels are nodata unless ``mask_clouds``
    is false.
``{"kind": "geotiff", "images": [GLOB, ...], "dem": PATH?, "band_map": {..}?,
"scale": "auto"|float, "nodata": float?, "mask_zero": bool}``
    GeoTIFF/COG files (``{year}`` in a path is replaced by the window's year), plus
    terrain bands computed from ``dem`` when given.
``{"kind": "earthengine", ...EEConfig fields}``
    Earth Engine; the date window fills ``start``/``end``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.errors import ConfigError
from pipelines.options.source import KINDS
from pipelines.sources.base import Source


def window_year(start: str | None, end: str | None) -> int | None:
    """The year a date window is about (its start's year), or ``None`` without a window."""
    if not start:
        return None
    return parse_date(start, "start").year


def parse_date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except ValueError as exc:
        raise ConfigError(f"Bad {what} date {text!r}: use YYYY-MM-DD.") from exc


def years_of_window(start: str, end: str) -> list[int]:
    """Every year a date window touches, oldest first (an end on 1 January is exclusive)."""
    first, last = parse_date(start, "start"), parse_date(end, "end")
    last_year = last.year - (1 if (last.month, last.day) == (1, 1) else 0)
    return list(range(first.year, max(first.year, last_year) + 1))


def check_window(start: str | None, end: str | None) -> None:
    """Reject a date window that is half-given or empty (end not after start)."""
    if (start is None) != (end is None):
        raise ConfigError("Give both --start and --end (or neither).")
    if start and end and parse_date(end, "end") <= parse_date(start, "start"):
        raise ConfigError(
            f"Empty date window {start} .. {end}: the end must be after the start."
        )


def images_without_year(spec: Mapping[str, Any]) -> list[str]:
    """A geotiff spec's image paths when none of them holds ``{year}``, else ``[]``.

    Such images are the same whatever the date window: another date (a reference of the
    input stack, another exported year) would read the target's own pixels. Other kinds,
    and a geotiff spec of terrain only (``dem`` without images), give ``[]``.
    """
    if spec.get("kind") != "geotiff":
        return []
    images = [str(p) for p in spec.get("images") or []]
    return images if images and not any("{year}" in p for p in images) else []


def make_source(spec: Mapping[str, Any], start: str | None = None,
                end: str | None = None, bands: Sequence[str] | None = None) -> Source:
    """Create the source described by ``spec`` for the date window ``start``..``end``.

    ``bands`` are the bands the caller will read; sources that build an expression up
    front (Earth Engine) build it for exactly these.
    """
    check_window(start, end)
    kind = spec.get("kind")
    year = spec.get("year") or window_year(start, end)
    if kind == "synthetic":
        from pipelines.sources.synthetic import SyntheticSource

        if "world" not in spec:
            raise ConfigError("The synthetic source needs the world folder (--world DIR).")
        if year is None:
            raise ConfigError("The synthetic source needs a year: give --start/--end.")
        years: int | list[int] = int(year)
        if not spec.get("year") and start and end:
            # a window over several years composites the world's images of those years
            years = years_of_window(start, end)
        return SyntheticSource(spec["world"], years,
                               mask_clouds=bool(spec.get("mask_clouds", True)),
                               composite=str(spec.get("composite", "mosaic")))
    if kind == "geotiff":
        from pipelines.sources.geotiff import GeoTIFFSource, StackSource, TerrainSource

        # a window over several years reads every year's files, the most recent first (the
        # GeoTIFF mosaic keeps the first valid pixel)
        years_in = [int(year)] if year else []
        if year and not spec.get("year") and start and end:
            years_in = years_of_window(start, end)[::-1]
        images = list(dict.fromkeys(
            str(p).replace("{year}", str(y)) for y in years_in
            for p in spec.get("images", []))) if years_in else [
            str(p) for p in spec.get("images", [])]
        if "{year}" in "".join(images):
            raise ConfigError("Image paths hold {year}: give --start/--end to fill it.")
        parts: list[Source] = []
        if images:
            parts.append(GeoTIFFSource(images, band_map=spec.get("band_map"),
                                       scale=spec.get("scale", "auto"),
                                       nodata=spec.get("nodata"),
                                       mask_zero_pixels=bool(spec.get("mask_zero", False))))
        if spec.get("dem"):
            parts.append(TerrainSource(spec["dem"], nodata=spec.get("dem_nodata")))
        if not parts:
            raise ConfigError("The geotiff source needs --images and/or --dem.")
        return parts[0] if len(parts) == 1 else StackSource(parts)
    if kind == "earthengine":
        from pipelines.sources.earthengine import EarthEngineSource, EEConfig

        if not (start and end):
            raise ConfigError("The Earth Engine source needs a date window: --start and --end.")
        from pipelines.sources.earthengine.credentials import TokenFromEnv

        fields = {k: v for k, v in spec.items()
                  if k not in {"kind", "bands", "token_env"} and v is not None}
        factory = None
        if spec.get("token_env"):
            factory = TokenFromEnv(spec["token_env"])
            factory()  # fail on the launcher, before any launch
        kwargs: dict[str, Any] = {"credentials_factory": factory}
        if bands:
            kwargs["bands"] = tuple(bands)
        return EarthEngineSource(EEConfig(start=start, end=end, **fields), **kwargs)
    raise ConfigError(f"Unknown source kind {kind!r}; choose one of {', '.join(KINDS)}.")


def parse_reference_images(items: Sequence[str]) -> dict[str, list[str]]:
    """``["pre=a.tif;b.tif", ...]`` -> ``{"pre": ["a.tif", "b.tif"]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, paths = str(item).partition("=")
        if not sep or not paths.strip():
            raise ConfigError(f"--reference-images {item!r} is not NAME=PATH[;PATH...].")
        out.setdefault(name.strip(), []).extend(p.strip() for p in paths.split(";")
                                                if p.strip())
    return out

"""Structural checks of STAC JSON: core item and catalog, projection v2.0 and raster v1.1.

The JSON schemas cannot be used offline here: pystac bundles the core ones (item,
catalog, GeoJSON) but the ``jsonschema`` library is not installed, and the extension
schemas (``stac-extensions.github.io``) are neither bundled nor reachable. These checks
follow those schemas' required fields and types instead; :func:`problems` returns what
is wrong, so a test can assert it is empty.
"""

from __future__ import annotations

import math
import re
from numbers import Real
from typing import Any

PROJ_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_V11 = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
DATA_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "float16", "float32", "float64", "cint16", "cint32", "cfloat32", "cfloat64",
              "other"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any, sizes: tuple[int, ...]) -> bool:
    return isinstance(v, list) and len(v) in sizes and all(_number(x) for x in v)


def _position(p: Any) -> bool:
    return _numbers(p, (2, 3))


def _geometry(g: Any) -> list[str]:
    """GeoJSON Polygon / MultiPolygon (what the writer makes): closed rings of lon/lat."""
    if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon"):
        return [f"geometry is not a Polygon/MultiPolygon: {str(g)[:80]}"]
    polys = [g.get("coordinates")] if g["type"] == "Polygon" else g.get("coordinates")
    out = []
    for poly in polys or [None]:
        if not isinstance(poly, list) or not poly:
            out.append("polygon without rings")
            continue
        for ring in poly:
            if not (isinstance(ring, list) and len(ring) >= 4 and all(map(_position, ring))
                    and ring[0] == ring[-1]):
                out.append("ring is not a closed list of >= 4 positions")
            elif not all(-180 <= x <= 180 and -90 <= y <= 90 for x, y, *_ in ring):
                out.append("ring outside lon/lat bounds")
    return out


def _links(links: Any) -> list[str]:
    if not isinstance(links, list):
        return ["links is not a list"]
    return [f"link {i} lacks href/rel" for i, link in enumerate(links)
            if not (isinstance(link, dict) and isinstance(link.get("href"), str)
                    and isinstance(link.get("rel"), str))]


def _proj(fields: dict, where: str) -> list[str]:
    out = []
    if not any(k.startswith("proj:") for k in fields):
        return out
    code = fields.get("proj:code")
    if code is not None and not (isinstance(code, str) and re.match(r"^[A-Z]+:\w+$", code)):
        out.append(f"{where}: proj:code {code!r} is not AUTHORITY:CODE")
    if "proj:code" not in fields and "proj:wkt2" not in fields and "proj:projjson" not in fields:
        out.append(f"{where}: no proj:code, proj:wkt2 or proj:projjson")
    shape = fields.get("proj:shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
        out.append(f"{where}: proj:shape {shape!r} is not two integers")
    if "proj:transform" in fields and not _numbers(fields["proj:transform"], (6, 9)):
        out.append(f"{where}: proj:transform is not 6 or 9 numbers")
    if "proj:bbox" in fields and not _numbers(fields["proj:bbox"], (4, 6)):
        out.append(f"{where}: proj:bbox is not 4 or 6 numbers")
    return out


def _raster(bands: Any, where: str) -> list[str]:
    if not isinstance(bands, list) or not bands:
        return [f"{where}: raster:bands is not a non-empty list"]
    out = []
    for i, b in enumerate(bands):
        w = f"{where} band {i}"
        if not isinstance(b, dict):
            out.append(f"{w}: not an object")
            continue
        if "data_type" in b and b["data_type"] not in DATA_TYPES:
            out.append(f"{w}: data_type {b['data_type']!r} unknown")
        if "nodata" in b and not (_number(b["nodata"]) or b["nodata"] in ("nan", "inf", "-inf")):
            out.append(f"{w}: nodata {b['nodata']!r} is neither a number nor nan/inf/-inf")
        for key in ("scale", "offset", "spatial_resolution", "bits_per_sample"):
            if key in b and not _number(b[key]):
                out.append(f"{w}: {key} {b[key]!r} is not a number")
        if "unit" in b and not isinstance(b["unit"], str):
            out.append(f"{w}: unit is not a string")
        if "sampling" in b and b["sampling"] not in ("area", "point"):
            out.append(f"{w}: sampling {b['sampling']!r}")
    return out


def item_problems(doc: dict) -> list[str]:
    """What is wrong with a STAC 1.1 item (with the projection and raster extensions)."""
    out = []
    if doc.get("type") != "Feature":
        out.append("type is not Feature")
    for key in ("stac_version", "id"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            out.append(f"{key} missing")
    exts = doc.get("stac_extensions", [])
    if not isinstance(exts, list) or not all(isinstance(e, str) for e in exts):
        out.append("stac_extensions is not a list of URIs")
        exts = []
    if doc.get("geometry") is not None:
        out += _geometry(doc["geometry"])
        if not _numbers(doc.get("bbox"), (4, 6)):
            out.append("bbox is not 4 or 6 numbers")
    props = doc.get("properties")
    if not isinstance(props, dict):
        return [*out, "properties missing"]
    dt = props.get("datetime", "absent")
    if dt == "absent":
        out.append("properties.datetime missing")
    elif dt is None:
        for key in ("start_datetime", "end_datetime"):
            if not (isinstance(props.get(key), str) and RFC3339.match(props[key])):
                out.append(f"datetime is null and {key} is not RFC 3339")
    elif not (isinstance(dt, str) and RFC3339.match(dt)):
        out.append(f"datetime {dt!r} is not RFC 3339")
    out += _links(doc.get("links"))
    assets = doc.get("assets")
    if not isinstance(assets, dict):
        return [*out, "assets is not an object"]
    used_proj = any(k.startswith("proj:") for k in props)
    used_raster = False
    out += _proj(props, "properties")
    if any(k.startswith("raster:") for k in props):
        out.append("raster fields belong to assets")
    for key, asset in assets.items():
        if not (isinstance(asset, dict) and isinstance(asset.get("href"), str)):
            out.append(f"asset {key} lacks href")
            continue
        if "roles" in asset and not (isinstance(asset["roles"], list) and all(
                isinstance(r, str) for r in asset["roles"])):
            out.append(f"asset {key}: roles is not a list of strings")
        out += _proj(asset, f"asset {key}")
        used_proj |= any(k.startswith("proj:") for k in asset)
        if "raster:bands" in asset:
            used_raster = True
            out += _raster(asset["raster:bands"], f"asset {key}")
    if used_proj != (PROJ_V2 in exts):
        out.append("proj: fields and the projection v2.0.0 schema URI disagree")
    if used_raster != (RASTER_V11 in exts):
        out.append("raster:bands and the raster v1.1.0 schema URI disagree")
    return out


def catalog_problems(doc: dict) -> list[str]:
    """What is wrong with a STAC 1.1 catalog."""
    out = []
    if doc.get("type") != "Catalog":
        out.append("type is not Catalog")
    for key in ("stac_version", "id", "description"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            out.append(f"{key} missing")
    out += _links(doc.get("links"))
    return out

"""The imagery source options: :class:`SourceOptions`, the one definition of every one of them.

``landslides export|predict`` take them as flags (``--source geotiff --images ...``), a scan
YAML as its ``source:`` mapping (``{kind: geotiff, images: [...]}``), the Flex Template as
parameters; all three come from the fields below. A field applies to the source kinds in
its ``kinds`` metadata and has the spec key ``key`` (default: its name), e.g.
``--ee-project`` is ``project`` of an ``earthengine`` spec. :meth:`SourceOptions.to_spec`
builds the plain dict :func:`pipelines.sources.factory.make_source` reads; :func:`check_spec`
checks a spec written by hand (a scan YAML's ``source:``).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ConfigError
from pipelines.options.fields import option, type_name, value_fits

#: Source kinds (see pipelines.sources.factory).
KINDS = ("synthetic", "geotiff", "earthengine")
SYN, GEO, EE = ("synthetic",), ("geotiff",), ("earthengine",)
GROUP = "imagery source"
#: Earth Engine DEMs and cloud masks (checked against pipelines.sources.earthengine).
EE_DEMS = ("glo30", "aw3d30", "srtm", "3dep10")
EE_CLOUD_MASKS = ("scl", "cloud_prob", "none")
#: Spec keys the scan's periods set (the date window), refused in a scan's source.
WINDOW_KEYS = ("start", "end", "year")
#: Keys of earlier versions -> what replaced them (named when a scan file still uses one).
RENAMED_KEYS = {"max_concurrency": "max_concurrent_requests, now the whole job's budget "
                                   "(split over its worker processes), not one process's"}


def _scale(text: str) -> float | str:
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--scale must be a number (e.g. 0.0001) or auto, got "
                          f"{text!r}.") from None


def _band_map(text: str) -> dict[str, int | str]:
    from pipelines.sources.geotiff import parse_band_map

    return parse_band_map(text)


def _reference_images(items: Sequence[str]) -> dict[str, list[str]]:
    from pipelines.sources.factory import parse_reference_images

    return parse_reference_images(items)


@dataclass(frozen=True)
class SourceOptions:
    """Which imagery source a sweep or an export reads, and how.

    Every field is an option (its help says what it does); a field applies only to the
    kinds in its ``kinds`` metadata and is ignored by the others.
    """

    kind: str = option("synthetic", "Imagery source (default %(default)s).", flag="--source",
                       choices=KINDS, kinds=KINDS, group=GROUP)
    world: str | None = option(None, "Synthetic world folder (from `landslides synth`).",
                               kinds=SYN, path=True, group=GROUP,
                               label="Synthetic world")
    mask_clouds: bool = option(
        True, "Synthetic source: keep cloudy pixels as imagery (default: nodata; in a spec "
        "or scan file: mask_clouds: false).", flag="--keep-clouds", action="store_false",
        kinds=SYN, group=GROUP)
    images: tuple[str, ...] = option(
        (), "GeoTIFF/COG paths or globs (repeatable; {year} is filled from --start).",
        action="append", parse=tuple, kinds=GEO, path=True, group=GROUP,
        regex=r"^gs://[^,]+(,gs://[^,]+)*$")
    reference_images: dict[str, list[str]] | None = option(
        None, "geotiff source: the images of a reference date of the input stack (default: "
        "--images with {year} filled with the reference's year).", action="append",
        metavar="NAME=PATH[;PATH]", parse=_reference_images, kinds=GEO, path=True,
        group=GROUP, regex=r"^[A-Za-z0-9_]+=gs://[^,]+(,[A-Za-z0-9_]+=gs://[^,]+)*$")
    dem: str | None = option(None, "DEM raster for the terrain bands (geotiff source).",
                             kinds=GEO, path=True, group=GROUP, label="DEM")
    dem_nodata: float | None = option(None, "Treat this DEM value as nodata.", kinds=GEO,
                                      group=GROUP, label="DEM nodata")
    band_map: dict[str, int | str] | str | None = option(
        None, "Band name to file band, e.g. B4=1,B3=2,B2=3,B8=4.", parse=_band_map,
        kinds=GEO, group=GROUP,
        regex=r"^[A-Za-z0-9_]+=[0-9]+(,[A-Za-z0-9_]+=[0-9]+)*$")
    scale: float | str = option(
        "auto", "Multiplier to physical units (auto: integer S2 DNs x 1e-4).", parse=_scale,
        kinds=GEO, group=GROUP, regex=r"^(auto|[0-9.]+([eE]-?[0-9]+)?)$")
    nodata: float | None = option(None, "Image nodata value (overrides the files').",
                                  kinds=GEO, group=GROUP)
    mask_zero: bool = option(False, "Treat pixels that are 0 in every band as nodata.",
                             kinds=GEO, group=GROUP)
    ee_project: str | None = option(None, "Earth Engine cloud project.", key="project",
                                    kinds=EE, group=GROUP,
                                    regex=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    ee_dem: str | None = option(None, "Earth Engine DEM (default glo30).", key="dem",
                                choices=EE_DEMS, kinds=EE, group=GROUP,
                                label="Earth Engine DEM")
    ee_cloud_mask: str | None = option(None, "Sentinel-2 cloud masking (default scl).",
                                       key="cloud_mask", choices=EE_CLOUD_MASKS, kinds=EE,
                                       group=GROUP)
    ee_high_volume: bool = option(
        False, "Use Earth Engine's high-volume endpoint (earthengine-highvolume."
        "googleapis.com), meant for many concurrent small requests such as a sweep's.",
        key="high_volume", kinds=EE, group=GROUP)
    ee_endpoint: str | None = option(
        None, "Earth Engine API base URL (tests, private endpoints).", key="endpoint",
        kinds=EE, group=GROUP, template=False)
    ee_max_concurrent_requests: int | None = option(
        None, "Earth Engine requests in flight for the whole job, split over its worker "
        "processes (default 40, Earth Engine's default per-project quota; lower it when "
        "other jobs share the project).", key="max_concurrent_requests", kinds=EE,
        group=GROUP)
    ee_requests_per_second: float | None = option(
        None, "Earth Engine requests started per second by the whole job, split the same "
        "way (default 100, Earth Engine's default per-project rate).",
        key="requests_per_second", kinds=EE, group=GROUP)
    ee_worker_processes: int | None = option(
        None, "Worker processes that share the Earth Engine budget (default: read from the "
        "Beam pipeline options; needed for runners that do not say).",
        key="worker_processes", kinds=EE, group=GROUP)
    ee_max_retries: int | None = option(
        None, "Retries of one Earth Engine request on 429/5xx before its chunk is failed "
        "(default 6; the sweep does not retry it again).", key="max_retries", kinds=EE,
        group=GROUP)
    ee_token_env: str | None = option(
        None, "Local runs only: read an Earth Engine access token from environment variable "
        "VAR in each worker process (refused on remote runners, whose workers use "
        "application default credentials).", key="token_env", metavar="VAR", kinds=EE,
        group=GROUP, template=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Unknown source kind {self.kind!r}; choose one of "
                              f"{', '.join(KINDS)}.")
        if isinstance(self.images, str):
            object.__setattr__(self, "images", (self.images,))
        object.__setattr__(self, "images", tuple(self.images))

    def to_spec(self) -> dict[str, Any]:
        """The source spec of :mod:`pipelines.sources.factory` (unset values left out)."""
        if self.kind == "synthetic":
            spec: dict[str, Any] = {"kind": "synthetic", "world": self.world}
            if not self.mask_clouds:
                spec["mask_clouds"] = False
            return spec
        if self.kind == "geotiff":
            spec = {"kind": "geotiff", "images": list(self.images), "dem": self.dem,
                    "mask_zero": self.mask_zero}
            if self.band_map:
                spec["band_map"] = self.band_map
            if self.scale not in (None, "auto"):
                spec["scale"] = float(self.scale)
            if self.nodata is not None:
                spec["nodata"] = self.nodata
            if self.dem_nodata is not None:
                spec["dem_nodata"] = self.dem_nodata
            if self.reference_images:
                spec["reference_images"] = self.reference_images
            return spec
        spec = {"kind": "earthengine", "project": self.ee_project,
                "high_volume": self.ee_high_volume, "endpoint": self.ee_endpoint}
        for name in ("ee_dem", "ee_cloud_mask", "ee_max_concurrent_requests",
                     "ee_requests_per_second", "ee_worker_processes", "ee_max_retries",
                     "ee_token_env"):
            value = getattr(self, name)
            if value is not None and value is not False and value != "":
                spec[_FIELDS[name].metadata["key"]] = value
        return spec


_FIELDS = {f.name: f for f in dataclasses.fields(SourceOptions)}


def spec_keys(kind: str) -> dict[str, dataclasses.Field]:
    """The spec keys of ``kind`` defined here -> their field (``kind`` itself left out)."""
    return {f.metadata.get("key", f.name): f for f in dataclasses.fields(SourceOptions)
            if kind in f.metadata["kinds"] and f.name != "kind"}


def passthrough_keys(kind: str) -> tuple[str, ...]:
    """Further spec keys of ``kind`` defined by the source itself: Earth Engine's EEConfig.

    A scan file may set every :class:`~pipelines.sources.earthengine.EEConfig` field but
    the date window (e.g. ``max_cloud_prob``, ``composite``, ``max_retries``).
    """
    if kind != "earthengine":
        return ()
    from pipelines.sources.earthengine import EEConfig

    ours = spec_keys(kind)
    return tuple(f.name for f in dataclasses.fields(EEConfig)
                 if f.name not in ("start", "end") and f.name not in ours)


def path_keys(kind: str) -> tuple[str, ...]:
    """The spec keys of ``kind`` holding paths (resolved against a scan file's folder)."""
    return tuple(k for k, f in spec_keys(kind).items() if f.metadata.get("path"))


def check_spec(spec: Any, where: str = "source") -> dict[str, Any]:
    """Check a hand-written source spec (a scan YAML's ``source:``); returns a copy.

    The spec keeps its keys and values (a lone ``images`` path becomes a list), so what
    fingerprints it does not change.

    Raises:
        ConfigError: not a mapping, an unknown kind, a key the kind does not take (the
            message lists the known ones), a value of the wrong type, or a missing path.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping with a kind ({', '.join(KINDS)}), got "
                          f"{spec!r}.")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    ours = spec_keys(kind)
    known = [*ours, *passthrough_keys(kind)]
    out = dict(spec)
    if isinstance(out.get("images"), str) and "images" in ours:
        out["images"] = [out["images"]]
    hints = typing.get_type_hints(SourceOptions)
    for k, v in out.items():
        if k == "kind":
            continue
        if k not in known:
            extra = (" (the scan's periods give the date window)" if k in WINDOW_KEYS
                     else f" (replaced by {RENAMED_KEYS[k]})" if k in RENAMED_KEYS
                     else _did_you_mean(str(k), known))
            raise ConfigError(f"Unknown key {where}.{k} for a {kind} source{extra}; known "
                              f"keys: kind, {', '.join(known)}.")
        f = ours.get(k)
        if f is None:
            continue
        tp = hints[f.name]
        if not value_fits(v, tp):
            raise ConfigError(f"{where}.{k} must be {type_name(tp)}, got {v!r}.")
        choices = f.metadata.get("choices")
        if choices and v is not None and v not in choices:
            raise ConfigError(f"{where}.{k} must be one of {', '.join(choices)}, got {v!r}.")
    if kind == "synthetic" and not out.get("world"):
        raise ConfigError(f"{where}.world is required for the synthetic source: the world "
                          f"folder written by `landslides synth`.")
    if kind == "geotiff" and not (out.get("images") or out.get("dem")):
        raise ConfigError(f"{where}.images and/or {where}.dem are required for the geotiff "
                          f"source.")
    return out


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


__all__ = [
    "EE_CLOUD_MASKS",
    "EE_DEMS",
    "KINDS",
    "SourceOptions",
    "check_spec",
    "passthrough_keys",
    "path_keys",
    "spec_keys",
]

"""The options of ``landslides export``: :class:`ExportOptions`, one field per option.

The export's run configuration, :class:`pipelines.export.ExportConfig`, is structured
(patch rules, split plan, input stack); the options are the flat values a person gives
on the command line or to the Flex Template, and :meth:`ExportOptions.to_config` builds
the configuration from them. ``tests/test_options.py`` checks that the defaults they share
agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ConfigError
from pipelines.options.fields import BBOX_OR_GCS, DATE, nested, option
from pipelines.options.source import SourceOptions

#: The bands exported without ``--bands``.
DEFAULT_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12", "DEM", "slope")
#: Shard compressions (those of pipelines.shards).
COMPRESSIONS = ("gzip", "none")
STACK = ("input stack (temporal context; recorded in the manifest and the model, which "
         "predict then reads the same way)")


def _names(text: str) -> tuple[str, ...]:
    return tuple(b.strip() for b in str(text).split(",") if b.strip())


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--split needs three fractions train,val,test; got {text!r}.")
    return values  # type: ignore[return-value]


def _years(text: str) -> tuple[int, ...]:
    from pipelines.synth.config import parse_years

    return parse_years(text) if str(text).strip() else ()


def _classes(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in str(text).split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--classes {text!r}: give NAME=ID pairs, e.g. scarp=1,deposit=2.")
    return out


def _split_polygons(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in str(text).split(","):
        name, _, path = item.partition("=")
        out[name.strip()] = path.strip()
    return out


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``landslides export`` is told; :meth:`to_config` makes the run's config."""

    out: str = option(help="Output folder for shards (local or gs://).", path=True,
                      label="Output folder")
    aoi: str = option(help="Area of interest: vector file or minlon,minlat,maxlon,maxlat.",
                      regex=BBOX_OR_GCS, label="Area of interest")
    inventory: str | None = option(None, "Landslide polygons (any vector format; {year} with "
                                   "--years).", path=True)
    labels: str | None = option(None, "A label raster instead of --inventory (integer "
                                "classes, e.g. sparse labels; {year} with --years).",
                                path=True, label="Label raster")
    label_map: str = option("0=ignore,1=background,2=landslide", "Label raster values to "
                            "classes (default %(default)s); ignored pixels are never scored.")
    start: str | None = option(None, "Date window start, YYYY-MM-DD.", regex=DATE,
                               label="Start date")
    end: str | None = option(None, "Date window end, YYYY-MM-DD, exclusive: the day "
                             "itself is not read.", regex=DATE,
                             label="End date")
    bands: tuple[str, ...] = option(DEFAULT_BANDS, "Comma-separated bands (default "
                                    "%(default)s).", parse=_names,
                                    regex=r"^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$")
    reference: tuple[str, ...] = option(
        (), "A reference image of the same place: an offset from the target window "
        "(prev=-1y) or a fixed window (pre=2014-01-01/2014-12-31); repeatable. Its optical "
        "bands become channels B4@NAME ...", action="append",
        metavar="NAME=OFFSET|NAME=START/END", parse=tuple, group=STACK)
    change: tuple[str, ...] = option((), "Change bands per reference: indices and bands, e.g. "
                                     "NDVI,B4,B11 -> dNDVI@NAME, dB4@NAME, dB11@NAME.",
                                     parse=_names, group=STACK)
    reference_bands: tuple[str, ...] | None = option(
        None, "Optical bands taken from each reference (default: the target's).",
        parse=_names, group=STACK)
    years: tuple[int, ...] = option((), "Export several labelled years in one run (2014,2016 "
                                    "or 2014-2016): each replaces the year of --start/--end "
                                    "and fills {year} in --inventory.", parse=_years)
    pixel_size: float = option(10.0, "Metres (default %(default)s).", units="m")
    chunk_size: int = option(512, "Chunk side in pixels (%(default)s).", units="px")
    patch_size: int = option(128, "Patch side: 64, 128 or 256.", units="px",
                             regex=r"^(64|128|256)$")
    stride: int | None = option(None, "Step between patches (default: patch size).",
                                units="px")
    negative_fraction: float = option(0.25, "Fraction of landslide-free patches kept (0 drops "
                                      "them; default %(default)s).",
                                      regex=r"^(0(\.[0-9]+)?|1(\.0+)?)$")
    max_nodata: float = option(0.1, "Drop patches with more invalid pixels than this fraction "
                               "(%(default)s).")
    split: tuple[float, float, float] = option((0.7, 0.15, 0.15), "train,val,test fractions.",
                                               parse=_fractions,
                                               regex=r"^[0-9.]+,[0-9.]+,[0-9.]+$")
    split_block: int = option(2, "Spatial split block side in chunks (default %(default)s).")
    split_polygons: dict[str, str] | None = option(
        None, "Explicit split areas: val=a.geojson,test=b.geojson.", parse=_split_polygons)
    split_buffer: int = option(0, "Pixels cut along chunk edges shared with another split, so "
                               "splits are 2 x this apart and no patch leaks across (default "
                               "%(default)s).", units="px")
    seed: int = option(0, "Seed for splits and selection.")
    class_attribute: str | None = option(None, "Inventory attribute with each polygon's "
                                         "class (needs --classes).")
    classes: dict[str, int] | None = option(None, "Every class of --class-attribute and its "
                                            "mask id, numbered 1..K, e.g. scarp=1,deposit=2 "
                                            "(a numeric attribute holds the ids).",
                                            parse=_classes)
    num_shards: int = option(0, "Shards per split (0: auto).")
    epsg: int | None = option(None, "Use one projected CRS instead of UTM zones.",
                              label="EPSG code")
    compression: str = option("gzip", "Shard compression (gzip: ISA-L level 2, ~half the "
                              "bytes; none).", choices=COMPRESSIONS, label="Shard compression")
    source: dict[str, Any] = nested(SourceOptions, default_factory=lambda: SourceOptions()
                                    .to_spec(), convert=SourceOptions.to_spec)

    def to_config(self) -> Any:  # -> pipelines.export.ExportConfig
        """The export's run configuration.

        Raises:
            ConfigError: the values do not make a valid export (see ExportConfig).
            RegionError: a split polygon cannot be read.
        """
        from pipelines.export import ExportConfig
        from pipelines.geo.grid import load_region
        from pipelines.geo.patches import PatchRules, SplitPlan
        from pipelines.geo.stack import StackSpec, parse_references

        polygons: dict[str, bytes] = {}
        if self.split_polygons:
            import shapely

            for name, path in self.split_polygons.items():
                polygons[name] = shapely.to_wkb(load_region(path).geometry)
        stack = StackSpec(tuple(self.bands), parse_references(_list(self.reference)),
                          tuple(self.reference_bands) if self.reference_bands else None,
                          tuple(self.change))
        return ExportConfig(
            source=dict(self.source), aoi=self.aoi, out=self.out, inventory=self.inventory,
            labels=self.labels, label_map=self.label_map, start=self.start, end=self.end,
            bands=tuple(self.bands), stack=stack, years=tuple(self.years),
            pixel_size=self.pixel_size, chunk_size=self.chunk_size,
            patch=PatchRules(self.patch_size, self.stride, self.negative_fraction,
                             self.max_nodata, self.seed),
            split=SplitPlan(tuple(self.split), self.split_block,  # type: ignore[arg-type]
                            self.seed, polygons),
            split_buffer=self.split_buffer, class_attribute=self.class_attribute,
            classes=self.classes, num_shards=self.num_shards, epsg=self.epsg,
            compression=self.compression)


def _list(values: Sequence[str] | str) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


__all__ = ["COMPRESSIONS", "DEFAULT_BANDS", "ExportOptions"]

"""The options of ``landslides compare``: :class:`CompareConfig`, validated on creation.

Each field is one option: its flag, default, help and checks are defined here and nowhere
else; a scan YAML's ``compare:`` block takes the fields marked ``yaml``. Also the
``--years`` parser and the "projected in metres" test of a CRS the checks need.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from pipelines.errors import ConfigError
from pipelines.options.fields import option

#: Object match criteria (those of pipelines.geo.compare_metrics).
MATCHES = ("overlap", "iou")


#: Version of metrics.json's definitions. 2: predicted polygons on reference landslides left
#: out as unobserved are left out too (they were counted as false alarms in version 1).
METRICS_VERSION = 2


def parse_years(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"2013-2019"``, ``"2013,2015"`` or a mix (``"2013-2015,2018"``).

    Raises:
        ConfigError: a malformed list or range, or a year outside 1900..2100.
    """
    if text is None or str(text).strip() == "":
        return None
    years: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{4})\s*(?:-\s*(\d{4}))?", part)
        if not m:
            raise ConfigError(
                f"Bad year list {text!r} (at {part!r}): give a range '2013-2019', a list "
                f"'2013,2015' or both '2013-2015,2018'."
            )
        y0 = int(m.group(1))
        y1 = int(m.group(2) or y0)
        if y1 < y0:
            raise ConfigError(f"Bad year range {part!r} in {text!r}: the first year must come "
                              f"first (e.g. 2013-2019).")
        years.update(range(y0, y1 + 1))
    return tuple(sorted(years))


@dataclass(frozen=True)
class CompareConfig:
    """Configuration of one comparison, validated on creation and saved beside the outputs.

    Attributes:
        reference: Reference inventory: vector file, raster, or a glob of chunk COGs; may
            hold ``{year}``.
        out: Output folder (local or ``gs://``).
        predicted: Predicted inventory (same forms); ``None`` for statistics only.
        aoi: Area of interest (vector file or ``minlon,minlat,maxlon,maxlat``); ``None`` uses
            the union of the inputs' extents.
        years: Years to fill ``{year}`` with; required when a path holds ``{year}``.
        resolution: Pixel size in metres of the common grid of the pixel metrics.
        min_overlap: Object-matching threshold in (0, 1].
        match: ``"overlap"`` (share of each polygon's area) or ``"iou"``.
        min_area: Drop polygons (both sides, vectorised rasters too) smaller than this (m2).
        background: Raster drawn under the overlay maps (hillshade or RGB imagery).
        epsg: Projected CRS to compare in (default: chosen from the inputs).
        tile_size: Tile side in pixels for the streaming pixel metrics and the raster
            vectorisation (memory ~ 10 bytes per pixel of one tile).
        connectivity: Pixel connectivity (4 or 8) when vectorising raster inputs.
        bins_per_decade: Log bins per decade of the frequency-area distributions.
        a_min: Lower bound (m2) of the power-law tail fit (default: the rollover).
        kde_bandwidth_m: Kernel width (m) of the density maps (default: 1/25 of the extent).
        figures: Draw the PNG figures (False: metrics, tables and the report only).
        observed_only: When the predicted side of a year is a raster with nodata (a sweep's
            mask mosaic: nodata under clouds or outside the imagery), match and count only
            the reference landslides at least half inside its observed (valid) pixels, so a
            landslide no image could show is neither a miss nor a count the prediction had
            to reach; likewise, when the reference of a year is a raster (a label raster:
            unlabelled or unobserved pixels are its no data), match and count only the
            predicted landslides at least half on its labelled pixels. Pixel metrics are
            always limited to valid pixels of raster inputs.
        notes: Sentences the report shows about the comparison (e.g. which areas and
            years the model was trained on).
        explanations: Grad-CAM overlays (PNG files or globs, e.g. the output of
            ``landslides explain``) copied into the report's figures and shown in their
            own section; none: no section.
    """

    reference: str = option(help="Reference inventory: vector file, mask COG/VRT or glob of "
                            "chunk COGs; may hold {year}.", yaml=False)
    out: str = option(help="Output folder for the report (local or gs://).", yaml=False)
    predicted: str | None = option(None, "Predicted inventory (same forms); omit for "
                                   "statistics only.", yaml=False)
    aoi: str | None = option(None, "Area of interest: vector file or "
                             "minlon,minlat,maxlon,maxlat (default: the union of the inputs' "
                             "extents).", yaml=False)
    years: tuple[int, ...] | None = option(None, "Years filling {year}: 2013-2019, 2013,2015 "
                                           "or both.", parse=parse_years, yaml=False)
    resolution: float = option(5.0, "Pixel size in metres of the common grid (default "
                               "%(default)s).", units="m")
    min_overlap: float = option(0.1, "Object match threshold in (0, 1] (default "
                                "%(default)s).")
    match: str = option("overlap", "Object match criterion (default %(default)s).",
                        choices=MATCHES)
    min_area: float = option(0.0, "Ignore polygons smaller than this many m2 (default "
                             "%(default)s).", units="m2")
    background: str | None = option(None, "Raster under the overlay maps (hillshade or RGB "
                                    "COG).", path=True)
    epsg: int | None = option(None, "Projected CRS to compare in (default: from inputs).")
    tile_size: int = option(2048, "Tile side in pixels of the streaming pixel metrics "
                            "(default %(default)s).", units="px")
    connectivity: int = option(4, "Pixel connectivity when vectorising raster inputs "
                               "(default %(default)s).", choices=(4, 8))
    bins_per_decade: int = option(10, "Log bins per decade of the frequency-area "
                                  "distributions (%(default)s).")
    a_min: float | None = option(None, "Lower bound (m2) of the power-law tail fit (default: "
                                 "the rollover).", units="m2")
    kde_bandwidth_m: float | None = option(None, "Kernel width in metres of the density maps "
                                           "(default: extent / 25).", flag="--kde-bandwidth",
                                           units="m")
    figures: bool = option(True, "Draw the PNG figures (default on; --no-figures for tables "
                           "only).")
    observed_only: bool = option(
        True, "With a raster prediction (a sweep's mask mosaic), match and count only "
        "reference landslides at least half inside its valid pixels (default on: a landslide "
        "under clouds in every image is not a miss); with a raster reference, only predicted "
        "landslides at least half on its labelled pixels.")
    notes: tuple[str, ...] = option((), "Sentences the report shows about the comparison.",
                                    cli=False)
    explanations: tuple[str, ...] = option(
        (), "Grad-CAM overlay PNGs (from landslides explain), files or globs, shown in a "
        "report section; repeatable.", action="append", parse=tuple,
        metavar="PNG_OR_GLOB", path=True)

    def __post_init__(self) -> None:
        if not self.reference or not str(self.reference).strip():
            raise ConfigError("reference is required: a vector inventory or a raster mask.")
        if not self.out or not str(self.out).strip():
            raise ConfigError("out is required: the folder for metrics.json and the report.")
        if isinstance(self.years, str):
            object.__setattr__(self, "years", parse_years(self.years))
        elif self.years is not None:
            object.__setattr__(self, "years", tuple(sorted({int(y) for y in self.years})))
        if self.years is not None and not self.years:
            object.__setattr__(self, "years", None)
        for y in self.years or ():
            if not 1900 <= y <= 2100:
                raise ConfigError(f"Year {y} is outside 1900..2100.")
        for name in ("reference", "predicted"):
            path = getattr(self, name)
            if path is not None and "{year}" in path and not self.years:
                raise ConfigError(
                    f"The {name} path {path!r} holds {{year}} but no years were given: pass "
                    f"--years (e.g. 2013-2019 or 2013,2015)."
                )
        given = [n for n in ("reference", "predicted") if getattr(self, n) is not None]
        if self.static_sides and len(self.static_sides) == len(given):
            paths = " and ".join(f"the {n} path {getattr(self, n)!r}" for n in
                                 self.static_sides)
            several = len(self.static_sides) > 1
            raise ConfigError(
                f"--years {_show_years(self.years or ())} was given but {paths} "
                f"{'hold' if several else 'holds'} no {{year}}: every year would read the "
                f"same {'files' if several else 'file'}, and one result would be reported as "
                f"a multi-temporal one. Put {{year}} in the paths (e.g. "
                f"'inventories/{{year}}.gpkg'), or drop --years for a single comparison.")
        _positive("resolution", self.resolution, "metres, e.g. 5")
        if not 0.0 < float(self.min_overlap) <= 1.0:
            raise ConfigError(f"min_overlap must be in (0, 1], got {self.min_overlap!r} "
                              f"(e.g. 0.1 = a tenth of the landslide's area).")
        if self.match not in MATCHES:
            raise ConfigError(f"match must be one of {MATCHES}, got {self.match!r}.")
        if not (self.min_area >= 0 and math.isfinite(self.min_area)):
            raise ConfigError(f"min_area must be >= 0 m2, got {self.min_area!r}.")
        if int(self.tile_size) < 64:
            raise ConfigError(f"tile_size must be at least 64 pixels, got {self.tile_size!r}.")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity!r}.")
        if not 1 <= int(self.bins_per_decade) <= 100:
            raise ConfigError(f"bins_per_decade must be in 1..100, got {self.bins_per_decade!r}.")
        if self.a_min is not None:
            _positive("a_min", self.a_min, "m2")
        if self.kde_bandwidth_m is not None:
            _positive("kde_bandwidth_m", self.kde_bandwidth_m, "metres")
        if self.epsg is not None:
            from pipelines.geo.grid import metric_crs

            metric_crs(self.epsg)  # the grid's pixel areas and every m2 are in its unit

    @property
    def static_sides(self) -> tuple[str, ...]:
        """The sides given whose path holds no ``{year}`` while ``years`` are given.

        Such a side is the same inventory every year (e.g. one reference inventory against
        yearly predictions): its statistics repeat, year after year. Empty without
        ``years``.
        """
        if not self.years:
            return ()
        return tuple(n for n in ("reference", "predicted")
                     if getattr(self, n) is not None and "{year}" not in getattr(self, n))

    @property
    def mode(self) -> str:
        return "comparison" if self.predicted else "stats-only"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["years"] = list(self.years) if self.years else None
        return d


def _show_years(years: tuple[int, ...]) -> str:
    """``(2015, 2016, 2017)`` -> ``2015-2017``; ``(2013, 2015)`` -> ``2013,2015``."""
    if len(years) > 1 and list(years) == list(range(years[0], years[-1] + 1)):
        return f"{years[0]}-{years[-1]}"
    return ",".join(str(y) for y in years)


def _positive(name: str, value: float, unit: str) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number of {unit}, got {value!r}.")


__all__ = ["MATCHES", "CompareConfig", "parse_years"]

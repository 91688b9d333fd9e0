"""The export's run configuration (:class:`ExportConfig`) and its output file names.

The command-line options live in :mod:`pipelines.options.export`
(:class:`~pipelines.options.export.ExportOptions`), which builds this structured value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import ConfigError
from pipelines.geo import bands as bandreg
from pipelines.geo.patches import PatchRules, SplitPlan
from pipelines.geo.stack import StackSpec, shift_date
from pipelines.options.export import DEFAULT_BANDS
from pipelines.shards import COMPRESSIONS
from pipelines.sources.factory import check_window, images_without_year, parse_date

MANIFEST = "manifest.json"
FAILED = "failed_chunks.jsonl"
#: The run's configuration, written beside the manifest when the run ends.
CONFIG = "export_config.json"
#: Written when a run starts, deleted once its manifest is written: training refuses a
#: folder that holds it without a manifest (model.data.EXPORT_RUNNING).
RUNNING = "export_running.json"
#: How a label raster's values map to classes unless ``--label-map`` says otherwise.
DEFAULT_LABEL_MAP = "0=ignore,1=background,2=landslide"
#: Class ids ``--classes`` may give: 0 is the background, 255 the ignore value.
CLASS_IDS = range(1, 255)


@dataclass(frozen=True)
class ExportConfig:
    """Everything an export needs; saved as ``export_config.json`` beside the shards.

    It is written with the manifest when the run ends (and an earlier run's are deleted
    when a run starts), so the two always describe the same run.

    Attributes:
        source: Source spec (see :mod:`pipelines.sources.factory`).
        aoi: Area of interest: a vector file or ``minlon,minlat,maxlon,maxlat``.
        out: Output folder, local or ``gs://``.
        inventory: Landslide polygons (any vector format); ``None`` writes unlabelled
            patches (all negatives) for inference-style exports.
        labels: A label raster instead of ``inventory`` (GeoTIFF/COG of integer classes,
            e.g. sparse point labels); read with nearest resampling onto each chunk.
        label_map: How the label raster's values map to classes, e.g.
            ``0=ignore,1=background,2=landslide`` (the default); ignored pixels are 255 in
            the patch masks and never scored, and patches without a labelled pixel are
            dropped.
        start: Date window start (YYYY-MM-DD).
        end: Date window end.
        bands: The target image's bands, in this order.
        stack: The input stack (reference dates and change bands; see
            :mod:`pipelines.geo.stack`); ``None``: a single-date stack of ``bands``. Its
            channels are what the shards hold, and it is recorded in the manifest.
        years: Export several labelled years in one run: the date window's year is
            replaced by each (same month and day) and ``{year}`` in ``inventory`` is filled;
            a chunk keeps its split in every year, so no place is in two splits.
        pixel_size: Metres.
        chunk_size: Chunk side in pixels (a multiple of the patch size is best).
        patch: Patch selection rules.
        split: Spatially blocked train/val/test split.
        split_buffer: Pixels cut from each chunk along edges shared with a chunk of
            another split, so no patch of one split touches another's (0: none).
        class_attribute: Inventory attribute with the class of each polygon
            (scarp/deposit...); needs ``classes``.
        classes: Every class of ``class_attribute`` and its mask id (1..254), e.g.
            ``{"scarp": 1, "deposit": 2}``: strings of the attribute are mapped by name, a
            numeric attribute holds the ids themselves (0 burns nothing). The manifest
            records them as the classes of the masks.
        num_shards: TFRecord shards per split (0: as many as keep each under
            ``pipelines.shards.SHARD_BYTES`` of records).
        epsg: Force one projected CRS instead of per-UTM-zone chunks.
        compression: ``gzip`` (default, ISA-L; about half the bytes) or ``none``; its cost
            is in ``bench/export.py``'s output.
    """

    source: dict[str, Any]
    aoi: str
    out: str
    inventory: str | None = None
    labels: str | None = None
    label_map: str = DEFAULT_LABEL_MAP
    start: str | None = None
    end: str | None = None
    bands: tuple[str, ...] = DEFAULT_BANDS
    stack: StackSpec | None = None
    years: tuple[int, ...] = ()
    pixel_size: float = 10.0
    chunk_size: int = 512
    patch: PatchRules = field(default_factory=PatchRules)
    split: SplitPlan = field(default_factory=SplitPlan)
    split_buffer: int = 0
    class_attribute: str | None = None
    classes: dict[str, int] | None = None
    num_shards: int = 0
    epsg: int | None = None
    compression: str = "gzip"

    def __post_init__(self) -> None:
        if isinstance(self.stack, dict):
            object.__setattr__(self, "stack", StackSpec.from_dict(self.stack))
        if self.stack is None:
            object.__setattr__(self, "stack", StackSpec(tuple(self.bands)))
        elif tuple(self.bands) != DEFAULT_BANDS and \
                bandreg.resolve(self.bands) != self.stack.bands:
            raise ConfigError(f"bands {list(self.bands)} disagree with the stack's target bands "
                              f"{list(self.stack.bands)}: give the bands once, in the stack.")
        assert self.stack is not None
        object.__setattr__(self, "bands", self.stack.bands)
        check_window(self.start, self.end)
        if self.labels and self.inventory:
            raise ConfigError("Give either --inventory (polygons) or --labels (a label raster), "
                              "not both.")
        if self.labels:
            from pipelines.geo.labels import LabelMap

            object.__setattr__(self, "label_map", str(LabelMap.parse(str(self.label_map))))
        self._check_classes()
        years = tuple(int(y) for y in self.years)
        object.__setattr__(self, "years", years)
        if years:
            if not self.start:
                raise ConfigError("Several years need a date window (--start/--end) whose "
                                  "year is replaced by each.")
            if len(set(years)) != len(years):
                raise ConfigError(f"Years listed twice: {list(years)}.")
            labels = self.inventory or self.labels
            if labels and "{year}" not in labels:
                raise ConfigError(
                    f"Exporting years {list(years)} with one set of labels {labels!r}: put "
                    f"{{year}} in the path (e.g. inventory_{{year}}.gpkg) so every year is "
                    f"labelled with its own inventory.")
            self._check_images_follow_years(years)
        elif "{year}" in (self.inventory or self.labels or "") and not self.start:
            raise ConfigError("The label path holds {year}: give --start/--end.")
        if self.chunk_size < self.patch.size:
            raise ConfigError(
                f"chunk_size {self.chunk_size} is smaller than the patch size {self.patch.size}."
            )
        if self.split_buffer < 0:
            raise ConfigError(f"split_buffer must be >= 0 pixels, got {self.split_buffer}.")
        if self.num_shards < 0:
            raise ConfigError(f"num_shards must be >= 0, got {self.num_shards}.")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"compression must be one of {sorted(COMPRESSIONS)}, got {self.compression!r}."
            )

    def _check_classes(self) -> None:
        """Refuse class options that the labels would ignore or the masks would contradict.

        The manifest's classes are what training sizes its outputs from, so they must be
        the values the masks hold.
        """
        if not self.labels and str(self.label_map).replace(" ", "") != DEFAULT_LABEL_MAP:
            raise ConfigError(
                f"--label-map {self.label_map!r} maps the values of a label raster, but no "
                f"--labels raster is given, so it would be ignored. Give --labels PATH, or "
                f"drop --label-map (inventory polygons take their classes from "
                f"--class-attribute and --classes).")
        if self.labels and (self.class_attribute or self.classes):
            raise ConfigError(
                f"--class-attribute {self.class_attribute!r} / --classes {self.classes!r} "
                f"name the classes of --inventory polygons; a --labels raster takes its "
                f"classes from --label-map (e.g. 0=ignore,1=background,2=landslide,3=2). "
                f"Drop --class-attribute and --classes.")
        if self.classes is not None and not self.class_attribute:
            raise ConfigError(
                f"--classes {self.classes} without --class-attribute: every polygon would "
                f"burn 1 while the manifest declared {len(self.classes)} classes. Give "
                f"--class-attribute COLUMN (the inventory column holding each polygon's "
                f"class), or drop --classes for landslide/background masks.")
        if self.class_attribute and not self.inventory:
            raise ConfigError(
                f"--class-attribute {self.class_attribute!r} names a column of --inventory "
                f"polygons, but no --inventory is given. Give --inventory PATH or drop "
                f"--class-attribute.")
        if self.class_attribute and not self.classes:
            raise ConfigError(
                f"--class-attribute {self.class_attribute!r} needs --classes naming every "
                f"class and its mask id, e.g. --classes scarp=1,deposit=2 (for a numeric "
                f"column, its codes: the ids are the values it holds), so that the manifest "
                f"records the classes the masks hold.")
        bad = {k: v for k, v in (self.classes or {}).items()
               if isinstance(v, bool) or not isinstance(v, int) or v not in CLASS_IDS}
        if bad:
            raise ConfigError(
                f"--classes {self.classes}: class ids must be integers 1..254 (0 is the "
                f"background, 255 the ignore value), got {bad}. Number the classes from 1, "
                f"e.g. scarp=1,deposit=2.")
        if "background" in (self.classes or {}):
            raise ConfigError(
                f"--classes {self.classes}: 'background' is the manifest's name of id 0 (no "
                f"class); name the classes of --class-attribute otherwise.")
        ids = sorted((self.classes or {}).values())
        if ids and ids != list(range(1, len(ids) + 1)):
            raise ConfigError(
                f"--classes {self.classes}: give each class its own id and number them "
                f"1..{len(ids)} without gaps (training sizes its outputs from the classes and "
                f"reads the ids as output positions: a gap is an output no pixel trains, a "
                f"shared id a class no pixel holds).")

    def _check_images_follow_years(self, years: tuple[int, ...]) -> None:
        """Refuse several years that would all read the same imagery."""
        if len(years) < 2:
            return
        same = images_without_year(self.source)
        if same:
            raise ConfigError(
                f"Exporting years {list(years)} from the geotiff images {same}, which hold no "
                f"{{year}}: every year would read the same pixels. Put {{year}} in --images "
                f"(e.g. s2_{{year}}.tif) so that each year reads its own images, or export "
                f"one year per run.")
        if self.source.get("year"):
            raise ConfigError(
                f"Exporting years {list(years)} from a {self.source.get('kind')} source fixed "
                f"to the year {self.source['year']}: every year would read the same pixels. "
                f"Drop 'year' from the source so each year's date window chooses its images.")

    @property
    def channels(self) -> tuple[str, ...]:
        """What every patch holds, in order: the stack's channels."""
        assert self.stack is not None
        return self.stack.channels

    @property
    def date(self) -> str:
        return f"{self.start}/{self.end}" if self.start else ""

    def periods(self) -> list[tuple[str | None, str | None, str | None]]:
        """``(start, end, labels)`` of every exported period (one without ``years``).

        ``labels`` is the period's inventory or label raster.
        """
        labels = self.inventory or self.labels
        if not self.years:
            year = str(parse_date(self.start, "start").year) if self.start else ""
            inv = labels.replace("{year}", year) if labels else None
            return [(self.start, self.end, inv)]
        assert self.start and self.end
        s0, e0 = parse_date(self.start, "start"), parse_date(self.end, "end")
        out: list[tuple[str | None, str | None, str | None]] = []
        for y in self.years:
            s, e = shift_date(s0, y - s0.year, "y"), shift_date(e0, y - s0.year, "y")
            inv = labels.replace("{year}", str(y)) if labels else None
            out.append((s.isoformat(), e.isoformat(), inv))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["split"]["polygons"] = sorted(self.split.polygons)
        assert self.stack is not None
        d["stack"] = self.stack.to_dict()
        d["years"] = list(self.years)
        return d

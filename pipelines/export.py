"""Export: imagery + a landslide inventory -> TFRecord training shards + manifest.json.

The pipeline (Beam; DirectRunner locally, Dataflow in the cloud)::

    chunks of the AOI (planned on the launcher, split assigned by spatial blocks;
      |                reshuffled over workers)
      | CutChunk: read the chunk once from the source, rasterise the inventory, cut and
      |           select patches, encode them (model.schema), per-band stats of train
      |           patches; chunks that fail become failure records (the next chunks
      |           are read on a thread while this one is cut and encoded)
      +-> (split, record) -> WriteShards: out/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz
      +-> per-chunk summaries -> Summary (counts, stats, failures) -> manifest.json
                                                                     (+ failed_chunks.jsonl)

Everything the pipeline needs is validated on the launcher before it starts: the AOI,
the date window, the source's bands, the inventory, and that the output is writable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pipelines import fsio
from pipelines.errors import ConfigError, RegionError
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import Chunk, ChunkKey, GridSpec, Region, load_region, plan_chunks
from pipelines.geo.patches import SPLITS, PatchRules, SplitPlan
from pipelines.geo.stack import StackSpec, shift_date
from pipelines.options.export import DEFAULT_BANDS, ExportOptions
from pipelines.shards import COMPRESSIONS
from pipelines.sources.base import Source
from pipelines.sources.factory import check_window, parse_date
from pipelines.sources.stacked import make_stacked_source

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FAILED = "failed_chunks.jsonl"


@dataclass(frozen=True)
class ExportConfig:
    """Everything an export needs; saved as ``export_config.json`` beside the shards.

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
        class_attribute: Inventory attribute with class values (scarp/deposit...).
        classes: Mapping of class strings to ids when ``class_attribute`` holds strings.
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
    label_map: str = "0=ignore,1=background,2=landslide"
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


# ----------------------------------------------------------------------------- DoFn
def _make_dofns():
    import apache_beam as beam
    import numpy as np
    from apache_beam.metrics import Metrics

    from pipelines.geo import inventory as inv
    from pipelines.geo.patches import BandStats, cut_patches, kept_pixels
    from pipelines.progress import Progress
    from pipelines.shards import summary_item
    from pipelines.transforms.background import InBackground

    class CutChunk(InBackground):
        """Read chunks, label them, cut and encode patches; dead-letter failures.

        Chunks are read (pixels, valid mask, labels) on a reader thread, two ahead of the
        one being cut and encoded (GDAL decoding and numpy release the GIL). Main
        output: ``(split, record)``; ``summary``: one :func:`summary_item` per chunk.
        """

        thread_name = "chunk-read"

        def __init__(self, config: ExportConfig, sources: list[Source], total: int) -> None:
            super().__init__(max_pending=2)  # the reader never waits for the encoder
            self.config = config
            # one per period, built once on the launcher, pickled without clients
            self.sources = sources
            self.total = total

        def setup(self) -> None:
            from model import schema

            super().setup()  # one reader thread: the source is read by it, one chunk at a time
            self._schema = schema
            for source in self.sources:
                source.open()
            self.periods = self.config.periods()
            if self.config.labels:
                from pipelines.geo.labels import LabelMap, LabelRaster

                label_map = LabelMap.parse(self.config.label_map)
                self.rasters = [LabelRaster(path, label_map).open() if path else None
                                for _, _, path in self.periods]
                self.inventories = [None] * len(self.periods)
            else:
                self.rasters = [None] * len(self.periods)
                self.inventories = [inv.read_inventory(path) if path else None
                                    for _, _, path in self.periods]
            self._by_crs: dict[tuple[int, str], Any] = {}
            self.progress = Progress(self.total, "export", "chunks")
            self.counters = {n: Metrics.counter("export", n) for n in (
                "chunks_done", "chunks_failed", "patches_candidates", "patches_positive",
                "patches_negative", "dropped_nodata", "dropped_negative", "dropped_unlabelled")}

        def teardown(self) -> None:
            super().teardown()
            for source in self.sources:
                source.close()
            for raster in getattr(self, "rasters", ()):
                if raster is not None:
                    raster.close()

        def _read(self, element: tuple[str, str, bytes, dict, int]):
            """On the reader thread: the chunk's pixels, valid mask and labels."""
            key_text, _, region_wkb, spec_d, period = element
            chunk = Chunk(ChunkKey.parse(key_text), GridSpec(**spec_d), region_wkb)
            raster = self.sources[period].read(chunk.grid, self.config.channels)
            return (chunk, raster, raster.valid & chunk.region_mask(),
                    self._labels(chunk.grid, period))

        def process(self, element: tuple[str, str, bytes, dict, int],
                    timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
            yield from self._submit(element, timestamp, window, self._read, element)

        def _labels(self, grid, period: int) -> np.ndarray:
            raster = self.rasters[period]
            if raster is not None:
                return raster.read(grid)
            inventory = self.inventories[period]
            if inventory is None:
                return np.zeros(grid.shape, np.uint8)
            gdf = self._by_crs.get((period, grid.crs))
            if gdf is None:
                gdf = inventory.to_crs(grid.crs)
                self._by_crs[(period, grid.crs)] = gdf
            sub = gdf.iloc[gdf.sindex.query(_box(grid.bounds))]
            return inv.rasterize(sub, grid, attribute=self.config.class_attribute,
                                 classes=self.config.classes)

        def _outputs(self, element: tuple[str, str, bytes, dict, int], read: Future):
            """On the bundle's thread: label, cut and encode one chunk read ahead."""
            key_text, split, _, _, period = element
            key = ChunkKey.parse(key_text)
            start, end, _ = self.periods[period]
            date = f"{start}/{end}" if start else ""
            try:
                chunk, raster, valid, labels = read.result()
                patches, stats = cut_patches(key, raster.data, valid, labels, chunk.grid,
                                             self.config.patch)
                # a place exported in several years: the year keeps patch keys unique
                prefix = f"{str(start)[:4]}/" if self.config.years else ""
                records = [self._schema.encode_patch(
                    p.image, p.mask, self.config.channels, prefix + p.key, p.grid.crs,
                    p.grid.transform, date) for p in patches]
            except Exception as exc:  # dead-letter: recorded, counted, never silent
                log.warning("chunk %s failed: %s", key, exc)
                self.counters["chunks_failed"].inc()
                yield beam.pvalue.TaggedOutput("summary", summary_item(failed={
                    "chunk": key_text, "split": split, "date": date,
                    "error": f"{type(exc).__name__}: {exc}"}))
                return
            self.counters["chunks_done"].inc()
            self.counters["patches_candidates"].inc(stats.candidates)
            self.counters["patches_positive"].inc(stats.kept_positive)
            self.counters["patches_negative"].inc(stats.kept_negative)
            self.counters["dropped_nodata"].inc(stats.dropped_nodata)
            self.counters["dropped_negative"].inc(stats.dropped_negative)
            self.counters["dropped_unlabelled"].inc(stats.dropped_unlabelled)
            for record in records:
                yield split, record
            band_stats = None
            if split == "train" and patches:
                # band-major pixels of the kept patches straight from the chunk: one pass,
                # each pixel once even when patches overlap (stride < size)
                counted = kept_pixels(patches, valid)
                data = raster.data
                band_stats = BandStats(self.config.channels).add_bands(
                    data.reshape(len(data), -1) if counted.all() else data[:, counted])
            counts = dataclasses.asdict(stats)
            counts.update({"chunks": 1, f"{split}_patches": len(patches),
                           f"{split}_positive": stats.kept_positive})
            yield beam.pvalue.TaggedOutput("summary", summary_item(counts, band_stats))
            self.progress.update()

    return CutChunk


def _box(bounds):
    from shapely.geometry import box

    return box(*bounds)


# ----------------------------------------------------------------------------- launcher
@dataclass
class ExportPlan:
    """What the launcher decided: chunks and their splits, checked inputs."""

    region: Region
    chunks: list[Chunk]
    splits: dict[ChunkKey, str]
    landslides_in_aoi: int | None
    sources: list[Source]

    @property
    def source(self) -> Source:
        return self.sources[0]


def plan_export(config: ExportConfig) -> ExportPlan:
    """Validate inputs and plan chunks and splits on the launcher (no Beam).

    Every period's source (with every reference date of the stack) and inventory is
    checked here, so a missing date, band or file fails before any chunk is read.
    """
    assert config.stack is not None
    region = load_region(config.aoi)
    sources: list[Source] = []
    for start, end, _ in config.periods():
        source = make_stacked_source(config.source, config.stack, start, end)
        bandreg.require(source.bands, config.channels, f"{source.kind} source")
        covers = getattr(source, "check_covers", None)
        if covers is not None:
            covers(region)
        sources.append(source)
    n_in_aoi: int | None = None
    inventories = [path for _, _, path in config.periods() if path]
    if config.labels:
        from pipelines.geo.labels import LabelMap, check_label_raster

        for path in inventories:
            check_label_raster(path, region, LabelMap.parse(config.label_map))
    elif inventories:
        from pipelines.geo import inventory as inv

        n_in_aoi = sum(len(inv.read_inventory(path, region=region)) for path in inventories)
        if n_in_aoi == 0:
            if config.patch.negative_fraction == 0:
                raise RegionError(
                    f"No landslide of {', '.join(inventories)} lies inside the AOI "
                    f"{region.name!r}, "
                    f"and negative_fraction is 0, so there is nothing to export. Check the AOI "
                    f"and the inventory's extent, or keep negatives with --negative-fraction."
                )
            log.warning("No landslide of %s inside the AOI %s: exporting negatives only.",
                        config.inventory, region.name)
    chunks = plan_chunks(region, config.pixel_size, config.chunk_size, halo=0, epsg=config.epsg)
    splits = config.split.assign(chunks)
    if config.split_buffer:
        from pipelines.geo.patches import buffer_splits

        chunks = buffer_splits(chunks, splits, config.split_buffer)
        splits = {c.key: splits[c.key] for c in chunks}
    return ExportPlan(region, chunks, splits, n_in_aoi, sources)


def run_export(config: ExportConfig, beam_args: Sequence[str] | None = None) -> dict:
    """Run the export pipeline; returns the manifest (also written to ``out``).

    Raises:
        InputError: bad configuration or input, before anything is launched.
        OutputError: the output folder or bucket cannot be written.
    """
    import apache_beam as beam

    from pipelines.beam_util import in_process, pipeline_options, submitted_only
    from pipelines.shards import WriteShards, summarise

    plan = plan_export(config)
    fsio.check_writable(config.out)
    fsio.write_json(fsio.join(config.out, "export_config.json"), config.to_dict())
    by_split = {s: sum(1 for v in plan.splits.values() if v == s) for s in SPLITS}
    log.info("Exporting %d chunks (train %d, val %d, test %d) of %s%s to %s; input stack: %s",
             len(plan.chunks), by_split["train"], by_split["val"], by_split["test"],
             plan.region.name, f" for years {list(config.years)}" if config.years else "",
             config.out, config.stack.describe() if config.stack else "")
    CutChunk = _make_dofns()
    elements = [(str(c.key), plan.splits[c.key], c.region_wkb, c.spec.to_dict(), i)
                for i in range(len(plan.sources)) for c in plan.chunks]
    opts = pipeline_options(beam_args, "landslides-export")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write = WriteShards(config.out, config.compression, shard_totals(config, by_split,
                                                                     len(plan.sources)))
    with beam.Pipeline(options=opts) as p:
        res = (p
               # spread over workers, unless one worker in this process takes them all
               | "Chunks" >> beam.Create(elements, reshuffle=not in_process(opts))
               | "Cut" >> beam.ParDo(CutChunk(config, plan.sources, len(elements)))
               .with_outputs("summary", main="records"))
        files = res.records | "Write" >> write
        _ = (res.summary
             | "Summarise" >> summarise(config.channels)
             | "Manifest" >> beam.Map(
                 _write_manifest, config=config, plan_info={
                     "region": plan.region.name, "chunks": len(plan.chunks),
                     "chunks_per_split": by_split, "landslides_in_aoi": plan.landslides_in_aoi,
                     "source": plan.source.describe(), "started": started},
                 files=beam.pvalue.AsList(files), temp=write.temp, totals=write.totals))
    if submitted_only(opts):
        log.info("Dataflow job written to %s; it writes %s in %s when it ends.",
                 opts.get_all_options()["template_location"], MANIFEST, config.out)
        return {}
    manifest = fsio.read_json(fsio.join(config.out, MANIFEST))
    n_failed = manifest["chunks_failed"]
    if n_failed:
        log.error("%d chunk(s) failed; see %s", n_failed, fsio.join(config.out, FAILED))
    log.info("Wrote %s patches: %s", sum(manifest["patches"].values()), manifest["patches"])
    return manifest


def shard_totals(config: ExportConfig, chunks_per_split: dict[str, int], sources: int
                 ) -> dict[str, int]:
    """Shards per split: ``num_shards``, or enough that none exceeds ``SHARD_BYTES``.

    The automatic count bounds a split's patches by its chunks times the patches a chunk
    can hold at the stride, for every source (date) exported.
    """
    from pipelines.shards import shard_count

    if config.num_shards:
        return {s: config.num_shards for s in SPLITS}
    size = config.patch.size
    per_side = -(-config.chunk_size // (config.patch.stride or size))
    record = size * size * (4 * len(config.channels) + 1)
    return {s: shard_count(chunks_per_split.get(s, 0) * per_side ** 2 * sources, record)
            for s in SPLITS}


def _write_manifest(summary: dict, config: ExportConfig, plan_info: dict, files: list[str],
                    temp: str, totals: dict[str, int]) -> None:
    from pipelines.geo.patches import IGNORE
    from pipelines.shards import finish_shards

    files = finish_shards(config.out, files, temp, totals, config.compression)
    counts, stats, failed = summary["counts"], summary["stats"], summary["failed"]
    manifest = {
        "format": "lsm/v1",
        "compression": config.compression,
        "bands": list(config.channels),
        "band_units": {b: bandreg.get(b).unit for b in config.channels},
        "stack": config.stack.to_dict() if config.stack else None,
        "years": list(config.years),
        "patch_size": config.patch.size,
        "pixel_size": config.pixel_size,
        "ignore_value": IGNORE,
        "classes": _classes(config),
        "date": config.date if not config.years else ",".join(
            f"{s}/{e}" for s, e, _ in config.periods()),
        "patches": {s: int(counts.get(f"{s}_patches", 0)) for s in SPLITS},
        "positive_patches": {s: int(counts.get(f"{s}_positive", 0)) for s in SPLITS},
        "dropped": {"nodata": int(counts.get("dropped_nodata", 0)),
                    "negative": int(counts.get("dropped_negative", 0)),
                    "unlabelled": int(counts.get("dropped_unlabelled", 0))},
        "candidates": int(counts.get("candidates", 0)),
        "chunks_done": int(counts.get("chunks", 0)),
        "chunks_failed": len(failed),
        "files": {s: [f for f in files if f"/{s}/" in f.replace("\\", "/")] for s in SPLITS},
        "stats": stats,
        "config": config.to_dict(),
        **plan_info,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if failed:
        fsio.write_bytes(fsio.join(config.out, FAILED),
                         "".join(json.dumps(f) + "\n" for f in failed).encode())
    fsio.write_json(fsio.join(config.out, MANIFEST), manifest)


def _classes(config: ExportConfig) -> dict[str, int]:
    if config.labels:
        from pipelines.geo.labels import LabelMap

        ids = sorted(set(LabelMap.parse(config.label_map).classes) | {0})
        if ids == [0, 1]:
            return {"background": 0, "landslide": 1}
        return {"background": 0, **{f"class_{i}": i for i in ids if i}}
    if config.classes:
        return {"background": 0, **config.classes}
    return {"background": 0, "landslide": 1}


# ----------------------------------------------------------------------------- CLI
def export_command(options: ExportOptions, beam_args: Sequence[str] | None = None) -> int:
    """``landslides export``: run the export; 1 when some chunks failed, else 0."""
    manifest = run_export(options.to_config(), beam_args)
    return 1 if manifest.get("chunks_failed") else 0

"""Cutting a chunk into training patches: the export's one Beam step that does work.

:class:`CutChunk` reads a chunk (on a reader thread, ahead of the bundle), labels it from
an inventory or a label raster, cuts and selects patches, encodes them
(:func:`model.schema.encode_patch`) and sums band statistics; :class:`CutPatches` is the
composite transform the pipeline uses. Chunks that fail become failure records.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Future
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from shapely.geometry import box

from pipelines.export.config import ExportConfig
from pipelines.geo import inventory as inv
from pipelines.geo.grid import Chunk, ChunkKey, GridSpec
from pipelines.geo.patches import BandStats, cut_patches, kept_pixels
from pipelines.progress import Progress
from pipelines.shards import summary_item
from pipelines.sources.base import Source
from pipelines.transforms.background import InBackground
from pipelines.transforms.tagged import SplitTags

log = logging.getLogger(__name__)


class CutChunk(InBackground):
    """Read chunks, label them, cut and encode patches; dead-letter failures.

    Chunks are read (pixels, valid mask, labels) on a reader thread, two ahead of the
    one being cut and encoded (GDAL decoding and numpy release the GIL). Outputs
    ``("records", (split, record))`` and one ``("summary", summary_item)`` per chunk
    (see :mod:`pipelines.transforms.tagged`).
    """

    thread_name = "chunk-read"

    def __init__(self, config: ExportConfig, sources: list[Source], total: int,
                 overlap: bool = True) -> None:
        # the reader never waits for the encoder
        super().__init__(max_pending=2, overlap=overlap)
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
        # in file order: where polygons overlap the later feature wins (rasterize), so the
        # class of an overlap must not depend on the spatial index's tree order
        sub = gdf.iloc[gdf.sindex.query(box(*grid.bounds), sort=True)]
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
            yield "summary", summary_item(failed={
                "chunk": key_text, "split": split, "date": date,
                "error": f"{type(exc).__name__}: {exc}"})
            return
        self.counters["chunks_done"].inc()
        self.counters["patches_candidates"].inc(stats.candidates)
        self.counters["patches_positive"].inc(stats.kept_positive)
        self.counters["patches_negative"].inc(stats.kept_negative)
        self.counters["dropped_nodata"].inc(stats.dropped_nodata)
        self.counters["dropped_negative"].inc(stats.dropped_negative)
        self.counters["dropped_unlabelled"].inc(stats.dropped_unlabelled)
        for record in records:
            yield "records", (split, record)
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
        yield "summary", summary_item(counts, band_stats)
        self.progress.update()


class CutPatches(beam.PTransform):
    """Chunk elements -> ``{"records": (split, record), "summary": summary_item}``.

    Args:
        config: The export's configuration.
        sources: One source per exported period, built on the launcher.
        total: The number of chunk elements (for progress).
        overlap: Read ahead on a thread (False on runners that drop what
            ``finish_bundle`` emits, see :class:`InBackground`).
    """

    def __init__(self, config: ExportConfig, sources: list[Source], total: int,
                 overlap: bool = True) -> None:
        super().__init__()
        self.config, self.sources, self.total = config, sources, total
        self.overlap = overlap

    def expand(self, chunks) -> dict[str, beam.PCollection]:
        return (chunks
                | "Cut" >> beam.ParDo(CutChunk(self.config, self.sources, self.total,
                                               self.overlap))
                | "Split" >> SplitTags("records", "summary"))

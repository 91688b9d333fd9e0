"""Planning an export on the launcher: the region, its chunks, their splits, the sources.

Everything is checked here before a worker starts: the AOI, the date windows, the
sources' bands and the labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipelines.errors import RegionError
from pipelines.export.config import ExportConfig
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import Chunk, ChunkKey, Region, load_region, plan_chunks
from pipelines.sources.base import Source
from pipelines.sources.stacked import make_stacked_source

log = logging.getLogger(__name__)


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
        from pipelines.geo.inventory.raster import check_classes

        n_in_aoi = 0
        for path in inventories:
            polygons = inv.read_inventory(path, region=region)
            n_in_aoi += len(polygons)
            if config.class_attribute and config.classes:
                # every class a mask will hold is one the manifest declares
                check_classes(polygons, config.class_attribute, config.classes, path)
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

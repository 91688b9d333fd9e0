"""``landslides terrain``: slope, aspect, curvature and hillshade COGs from a DEM."""

from __future__ import annotations

import logging

from pipelines.geo.terrain import write_terrain
from pipelines.options.terrain import TerrainOptions

log = logging.getLogger(__name__)


def terrain_command(options: TerrainOptions) -> int:
    """Run :func:`~pipelines.geo.terrain.write_terrain`, saying where the products are."""
    paths = write_terrain(options.dem, options.out, options.products,
                          z_factor=options.z_factor, nodata=options.nodata)
    for p, path in paths.items():
        log.info("wrote %s: %s", p, path)
    log.info("Terrain products of %s are in %s", options.dem, options.out)
    return 0

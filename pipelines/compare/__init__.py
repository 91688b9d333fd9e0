"""Compare landslide inventories: pixel and object metrics, statistics, maps and a report.

``landslides compare --reference R [--predicted P] [--aoi AOI] [--years 2013-2019] --out DIR``

``R`` and ``P`` are vector inventories (anything :func:`~pipelines.geo.inventory.read_inventory`
reads) or rasters: a sweep's mask COG, a VRT mosaic, or a glob of chunk COGs
(``.../mask/*.tif``). Either may hold ``{year}``, filled from ``--years``. A raster is
landslide where its value is in 1..254; 0 is no landslide; 255 and the file's nodata are no
data, excluded from the pixel metrics.

What happens, per year:

1. Every input is read in its own CRS, then reprojected to one projected CRS (``--epsg``,
   else the reference's if it is projected in metres, else the UTM zone of the AOI or data
   centroid) and clipped to the AOI. Rasters are vectorised file by file and window by
   window; polygons cut by window or chunk edges are merged again.
2. **Pixel metrics** (both sides present): a common grid at ``resolution`` over the AOI (or
   the union of both extents) is walked in ``tile_size`` tiles; each tile rasterises /
   resamples both sides, adds its confusion counts and its share of the overview map, and
   is dropped: memory is bounded by one tile, not the region.
3. **Object metrics** and **statistics** on the polygons
   (:mod:`pipelines.geo.compare_metrics`).

Then the multi-temporal table and correlations, the figures (:mod:`pipelines.report`) and
the outputs: ``metrics.json``, ``stats.csv``, ``matches.csv``, ``compare_config.json``,
``figures/*.png`` and ``report.html``, written locally and published atomically through
:mod:`pipelines.fsio` (so ``--out`` may be ``gs://``).

Bad input does not stop the report: a missing year on one side, an empty inventory, an AOI
that misses one input are recorded in ``metrics.json`` (``problems``) and in the report,
and the rest is computed. Only when nothing at all could be computed does
:func:`compare_command` fail (after writing the report).

The package, one module per job:

- :mod:`~pipelines.compare.config`: :class:`CompareConfig` (defined with its options in
  :mod:`pipelines.options.compare`), its validation, ``--years``.
- :mod:`~pipelines.compare.inputs`: resolving paths, reading each side into one CRS.
- :mod:`~pipelines.compare.layers`: raster masks and polygons burnt onto a grid.
- :mod:`~pipelines.compare.pixel_metrics`: the streaming pixel metrics and overview map.
- :mod:`~pipelines.compare.problems`: the warnings and errors met on the way.
- :mod:`~pipelines.compare.outputs`: tables, figures, metrics.json, report.html.
- :mod:`~pipelines.compare.run`: :func:`run_compare` and :func:`compare_command`.
"""

from pipelines.compare.config import CompareConfig, parse_years
from pipelines.compare.inputs import ResolvedInput, resolve_input
from pipelines.compare.layers import RasterMask, VectorMask
from pipelines.compare.outputs import stats_rows
from pipelines.compare.pixel_metrics import (
    ConfusionOverview,
    common_grid,
    streaming_pixel_counts,
)
from pipelines.compare.run import compare_command, incomplete_reasons, run_compare

__all__ = [
    "CompareConfig",
    "ConfusionOverview",
    "RasterMask",
    "ResolvedInput",
    "VectorMask",
    "common_grid",
    "compare_command",
    "incomplete_reasons",
    "parse_years",
    "resolve_input",
    "run_compare",
    "stats_rows",
    "streaming_pixel_counts",
]

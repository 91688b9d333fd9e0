"""GeoTIFF / COG sources: imagery files, DEM-derived terrain, and stacks of sources.

* :class:`GeoTIFFSource` (:mod:`~pipelines.sources.geotiff.source`) reads one raster or a
  mosaic of many (local, ``gs://``, ``http(s)://``, glob patterns) onto any
  :class:`~pipelines.geo.grid.PixelGrid`, as float32 physical units with a valid mask.
  Its helpers: :mod:`~pipelines.sources.geotiff.band_map` (which file band is which named
  band), :mod:`~pipelines.sources.geotiff.files` (the file catalogue: globs, headers,
  footprints) and :mod:`~pipelines.sources.geotiff.warp` (one file onto one grid: windows,
  warp options, the aligned fast path).
* :class:`TerrainSource` (:mod:`~pipelines.sources.geotiff.dem`) reads a DEM with the same
  machinery on the grid grown by one pixel and derives slope/aspect/curvature/hillshade
  with :mod:`pipelines.geo.terrain`, so the edge pixels of a chunk are exact.
* :class:`StackSource` (:mod:`~pipelines.sources.geotiff.stack`) puts the bands of several
  sources side by side.

All three are picklable configuration objects: open datasets and downloaded copies live
only between ``open()`` and ``close()`` (Beam calls them in a DoFn's ``setup`` and
``teardown``) and are never pickled.
"""

from pipelines.sources.geotiff.band_map import parse_band_map
from pipelines.sources.geotiff.dem import TerrainSource
from pipelines.sources.geotiff.source import GeoTIFFSource
from pipelines.sources.geotiff.stack import StackSource

__all__ = ["GeoTIFFSource", "StackSource", "TerrainSource", "parse_band_map"]

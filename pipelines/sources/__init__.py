"""Imagery sources behind one interface: ``read(grid, bands) -> Raster``.

See :mod:`pipelines.sources.base`. Concrete sources: GeoTIFF/COG files, the synthetic
world, Earth Engine and Landslide4Sense archives.
"""

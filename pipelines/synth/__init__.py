"""The synthetic mountain-valley world: the project's embedded default data.

:func:`generate_world` builds a Rasuwa-like Himalayan valley on a UTM grid and writes:

* ``dem.tif``: a DEM with a main valley and its river, tributaries, second-order gullies
  and fractal roughness (float32 metres).
* ``landcover.tif``: forest, shrub/grass, bare rock, snow/ice, water, river gravel beds,
  roads, settlements and terraced fields (uint8; the legend is in ``world.json``).
* ``s2_<year>.tif``: 12 Sentinel-2 L2A bands per year (uint16 DN = reflectance * 10000,
  nodata 0) with class spectra, within-class texture, terrain illumination for that
  year's sun, phenology, haze, the native 20/60 m resolution of the red-edge/SWIR/aerosol
  bands, sensor noise and, optionally, clouds with their displaced shadows.
* ``clouds_<year>.tif``: the cloud mask of that image (uint8: 0 clear, 1 cloud, 2 cloud
  shadow, 3 thin cloud or faint shadow).
* ``inventory_<year>.gpkg``: the landslides visible (not yet revegetated) that year.
* ``aoi.geojson``, ``train_area.geojson``, ``study_area.geojson`` (WGS 84) and
  ``world.json`` (configuration, georeferencing, per-year counts, legend, file names, a
  fingerprint of the landslides and the numpy kernels that generated them).

Landslides start on steep slopes, run downslope, have heavy-tailed areas, occur at a
background rate every year, massively in the event year (an earthquake) and at a decaying
elevated rate after it; some reactivate and all revegetate (:mod:`.landslides`).
Look-alikes that are not landslides: river gravel beds and debris fans, dirt roads, bare
ridges and cliffs, fallow fields and snow.

Everything is vectorised numpy/scipy (per-landslide Python only for the polygon
outlines). Every random component draws from its own stream derived from the seed
(:mod:`.noise`), so switching clouds off changes nothing but the cloudy pixels.
A seed gives the same world wherever numpy runs its transcendental functions with the
same kernels (:func:`model.cpu.numpy_kernels`): its AVX512 and AVX2 kernels differ in the
last bit, which moves the terrain by as much and, through a few landslide traces that
then step across a pixel edge, the landslides of the later years.

Modules, in the order a world is built: :mod:`.config` (what to generate), :mod:`.frame`
(the grid), :mod:`.terrain` (valleys and DEM), :mod:`.landcover`, :mod:`.landslides`,
:mod:`.spectra` (surface reflectance), :mod:`.clouds`, :mod:`.imagery` (one image a
year), :mod:`.layout` (file names) and :mod:`.world` (writing it all). The imagery source
that reads a world is :class:`pipelines.sources.synthetic.SyntheticSource`; this package
never imports :mod:`pipelines.sources`.
"""

from pipelines.synth.clouds import CLOUD_LEGEND
from pipelines.synth.config import WorldConfig, parse_years
from pipelines.synth.frame import world_grid
from pipelines.synth.imagery import DN_SCALE, sun_position
from pipelines.synth.landcover import (
    FIELDS,
    FOREST,
    GRAVEL,
    LANDCOVER,
    ROAD,
    ROCK,
    SETTLEMENT,
    SHRUB,
    SNOW,
    WATER,
)
from pipelines.synth.landslides import STATUSES
from pipelines.synth.layout import FILES, clouds_name, inventory_name, s2_name
from pipelines.synth.spectra import SPECTRA
from pipelines.synth.world import (
    DEM_NODATA,
    GENERATOR_VERSION,
    generate_world,
    synth_command,
    world_landslides,
)

__all__ = [
    "CLOUD_LEGEND",
    "DEM_NODATA",
    "DN_SCALE",
    "FIELDS",
    "FILES",
    "FOREST",
    "GENERATOR_VERSION",
    "GRAVEL",
    "LANDCOVER",
    "ROAD",
    "ROCK",
    "SETTLEMENT",
    "SHRUB",
    "SNOW",
    "SPECTRA",
    "STATUSES",
    "WATER",
    "WorldConfig",
    "clouds_name",
    "generate_world",
    "inventory_name",
    "parse_years",
    "s2_name",
    "sun_position",
    "synth_command",
    "world_grid",
    "world_landslides",
]

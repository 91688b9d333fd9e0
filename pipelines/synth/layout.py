"""The file names of a world folder, shared by the world's writer and its reader.

:func:`~pipelines.synth.generate_world` writes them (and lists them in ``world.json``);
:class:`~pipelines.sources.synthetic.SyntheticSource` reads them.
"""

from __future__ import annotations

FILES = {
    "dem": "dem.tif",
    "landcover": "landcover.tif",
    "aoi": "aoi.geojson",
    "train_area": "train_area.geojson",
    "study_area": "study_area.geojson",
    "world": "world.json",
}


def s2_name(year: int) -> str:
    return f"s2_{year}.tif"


def clouds_name(year: int) -> str:
    return f"clouds_{year}.tif"


def inventory_name(year: int) -> str:
    return f"inventory_{year}.gpkg"

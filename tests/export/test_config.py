"""The export's configuration refuses what it would export wrongly or ignore."""

from __future__ import annotations

import pytest

from pipelines import cli
from pipelines.errors import ConfigError
from pipelines.export import ExportConfig

WINDOW = {"start": "2016-06-01", "end": "2016-09-30"}


def _config(**kw) -> ExportConfig:
    base = {"source": {"kind": "geotiff", "images": ["s2_{year}.tif"]}, "aoi": "aoi.geojson",
            "out": "out", "inventory": "inv_{year}.gpkg", "bands": ("B2", "B3", "B4", "B8"),
            **WINDOW}
    return ExportConfig(**{**base, **kw})


def test_several_years_refuse_images_without_a_year(small_scene, tmp_path):
    """Every year would read the same image: refused, naming the images and the fix."""
    with pytest.raises(ConfigError, match=r"years \[2016, 2017\].*s2\.tif.*hold no \{year\}"
                                          r".*Put \{year\} in --images"):
        _config(source={"kind": "geotiff", "images": ["s2.tif"], "dem": "dem.tif"},
                years=(2016, 2017))
    with pytest.raises(ConfigError, match="fixed to the year 2016"):
        _config(source={"kind": "synthetic", "world": "w", "year": 2016}, years=(2016, 2017))
    # each year its own images; terrain only (the same every year); one year
    assert len(_config(years=(2016, 2017)).periods()) == 2
    _config(source={"kind": "geotiff", "dem": "dem.tif"}, bands=("DEM",), years=(2016, 2017))
    _config(source={"kind": "geotiff", "images": ["s2.tif"]}, years=(2016,))
    # through the CLI: refused before anything is read or written
    d, out = small_scene["dir"], tmp_path / "out"
    assert cli.main(["export", "--out", str(out), "--aoi", str(d / "aoi.geojson"),
                     "--inventory", str(tmp_path / "inv_{year}.gpkg"), "--source", "geotiff",
                     "--images", str(d / "s2.tif"), "--dem", str(d / "dem.tif"),
                     "--bands", "B2,B3,B4,B8,DEM", "--years", "2016,2017",
                     "--start", "2016-06-01", "--end", "2016-09-30"]) == 2
    assert not out.exists()


@pytest.mark.parametrize(("kw", "needle"), [
    ({"classes": {"scarp": 1, "deposit": 2}}, "without --class-attribute"),
    ({"class_attribute": "code"}, "--class-attribute 'code' needs --classes"),
    ({"class_attribute": "kind", "classes": {"scarp": 1, "ignored": 255}},
     r"1\.\.254.*\{'ignored': 255\}"),
    ({"class_attribute": "kind", "classes": {"background": 0, "scarp": 1}},
     r"1\.\.254.*\{'background': 0\}"),
    ({"class_attribute": "kind", "classes": {"scarp": 1, "deposit": 3}},
     r"1\.\.2 without gaps"),  # training would give id 3 an output of its own: none
    ({"class_attribute": "kind", "classes": {"scarp": 1, "slide": 1}}, "its own id"),
    ({"class_attribute": "kind", "classes": {"background": 1, "scarp": 2}},
     "'background' is the manifest's name of id 0"),
    ({"class_attribute": "kind", "inventory": None, "classes": {"scarp": 1}},
     "no --inventory is given"),
    ({"label_map": "0=ignore,1=landslide"}, "no --labels raster"),
    ({"inventory": None, "labels": "labels.tif", "class_attribute": "kind",
      "classes": {"scarp": 1}}, "--label-map"),
])
def test_class_options_that_masks_would_contradict_or_ignore_are_refused(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        _config(**kw)


def test_class_options_that_fit_are_accepted():
    cfg = _config(class_attribute="kind", classes={"scarp": 1, "deposit": 2})
    assert cfg.classes == {"scarp": 1, "deposit": 2}
    assert _config(inventory=None, labels="labels.tif", label_map="0=ignore,1=2,2=1",
                   ).label_map == "0=ignore,1=2,2=landslide"
    _config(label_map=" 0=ignore, 1=background,2=landslide")  # the default, spaced

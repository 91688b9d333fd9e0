"""The one STAC writer (pipelines.geo.stac): layout, relative hrefs, dates, links, the
projection and raster extensions, items written one by one."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pystac
import pytest
import shapely

from pipelines.errors import InputError
from pipelines.geo.grid import PixelGrid
from pipelines.geo.stac import (
    RasterBandInfo,
    StacAsset,
    StacItem,
    StacLink,
    link_href,
    write_stac_catalog,
    write_stac_item,
    write_stac_root,
)
from tests.stac_checks import PROJ_V2, RASTER_V11, catalog_problems, item_problems

# 640 m x 480 m at 10 m in UTM 45N (Nepal)
GRID = PixelGrid("EPSG:32645", (10.0, 0.0, 300000.0, 0.0, -10.0, 3050000.0), 64, 48)
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _files(out: Path) -> list[Path]:
    for sub, name in (("prob", "c1.tif"), ("mask", "c1.tif"), (".", "run.json")):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / name).write_bytes(b"x")
    return [out / "prob" / "c1.tif", out / "mask" / "c1.tif", out / "run.json"]


def test_items_assets_and_dates(tmp_path):
    prob, mask, run = _files(tmp_path)
    region = shapely.box(85.0, 27.5, 85.2, 27.6)
    items = [
        StacItem("c1", GRID, {"probability": StacAsset(str(prob), "Probability", COG),
                              "mask": StacAsset(str(mask), "Mask", COG, extra={"x:k": 1})},
                 {"landslides:chunk": "c1"}),
        StacItem("all", None, {"run": StacAsset(str(run), "Run", "application/json",
                                                ("metadata",))}, geometry=region),
        StacItem("monsoon", None, {}, geometry=region, start="2016-06-01", end="2016-10-01"),
    ]
    href = write_stac_catalog(str(tmp_path / "stac"), "cat", "A catalog", items,
                              "2016-01-01", "2017-01-01", title="Title")
    assert href == str(tmp_path / "stac" / "catalog.json")
    cat = pystac.Catalog.from_file(href)
    assert (cat.id, cat.description, cat.title) == ("cat", "A catalog", "Title")
    got = {i.id: i for i in cat.get_items()}
    assert set(got) == {"c1", "all", "monsoon"}
    for item_id in got:
        assert (tmp_path / "stac" / item_id / f"{item_id}.json").is_file()

    c1 = got["c1"]
    assert c1.properties["proj:code"] == "EPSG:32645"
    assert c1.properties["proj:shape"] == [48, 64]
    assert c1.properties["proj:transform"][:6] == list(GRID.transform)
    assert c1.properties["landslides:chunk"] == "c1"
    # the footprint is the grid's, in WGS 84 (UTM 45N at 300 km easting: about 85.0 E)
    west, south, east, north = c1.bbox
    assert 84.9 < west < east < 85.1 and 27.5 < south < north < 27.6
    assert c1.assets["mask"].href == "../../mask/c1.tif"
    assert c1.assets["mask"].extra_fields == {"x:k": 1}
    assert c1.assets["mask"].roles == ["data"] and c1.assets["mask"].media_type == COG
    for item in got.values():
        for asset in item.assets.values():
            assert not Path(asset.href).is_absolute()
            assert Path(asset.get_absolute_href()).is_file(), asset.href

    assert got["all"].bbox == pytest.approx([85.0, 27.5, 85.2, 27.6])
    assert got["all"].assets["run"].roles == ["metadata"]
    # the catalog's window, unless an item has its own
    assert got["all"].datetime is None
    assert got["all"].common_metadata.start_datetime == dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    assert got["all"].common_metadata.end_datetime == dt.datetime(2017, 1, 1, tzinfo=dt.UTC)
    assert got["monsoon"].common_metadata.start_datetime == dt.datetime(2016, 6, 1,
                                                                        tzinfo=dt.UTC)
    assert got["monsoon"].common_metadata.end_datetime == dt.datetime(2016, 10, 1,
                                                                      tzinfo=dt.UTC)


def test_without_a_window_items_are_dated_today(tmp_path):
    item = StacItem("all", None, {}, geometry=shapely.box(85.0, 27.5, 85.2, 27.6))
    href = write_stac_catalog(str(tmp_path / "stac"), "cat", "d", [item], None, None)
    (got,) = pystac.Catalog.from_file(href).get_items()
    assert got.datetime is not None and got.datetime.date() == dt.date.today()
    assert "start_datetime" not in got.properties


def test_links_are_added_without_reading_their_targets(tmp_path):
    child = tmp_path / "periods" / "2016" / "sweep" / "stac" / "catalog.json"
    child.parent.mkdir(parents=True)
    child.write_text("not json: the writer must not read it")
    href = write_stac_catalog(str(tmp_path / "stac"), "cat", "d", [], None, None,
                              links=[StacLink(str(child), "Sweep 2016")])
    doc = json.loads(Path(href).read_text())
    (link,) = [x for x in doc["links"] if x["rel"] == "child"]
    assert link == {"rel": "child", "href": "../periods/2016/sweep/stac/catalog.json",
                    "type": "application/json", "title": "Sweep 2016"}
    assert sorted(p.name for p in (tmp_path / "stac").iterdir()) == ["catalog.json"]


def test_an_item_needs_a_grid_or_a_geometry(tmp_path):
    with pytest.raises(InputError, match="'x' has neither a grid nor a geometry"):
        write_stac_catalog(str(tmp_path / "stac"), "cat", "d", [StacItem("x", None, {})],
                           None, None)
    assert not (tmp_path / "stac" / "catalog.json").exists()


def test_link_href(tmp_path):
    assert link_href("gs://b/out/periods/a.json", "gs://b/out/stac") == "../periods/a.json"
    assert link_href(str(tmp_path / "out" / "a.json"), str(tmp_path / "stac")) == \
        "../out/a.json"
    # a bucket and a local folder: no relative path between them
    assert link_href("gs://b/out/a.json", str(tmp_path)) == "gs://b/out/a.json"
    assert link_href(str(tmp_path / "a.json"), "gs://b/stac") == str(tmp_path / "a.json")


def test_items_carry_the_projection_and_raster_extensions(tmp_path):
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    prob, mask, _ = _files(tmp_path)
    mosaic_grid = PixelGrid(GRID.crs, GRID.transform, 128, 96)
    items = [
        StacItem("c1", GRID, {
            "probability": StacAsset(str(prob), "P", COG, bands=(
                RasterBandInfo("uint8", 255.0, 1 / 250, 0.0, "1", 10.0),)),
            "mask": StacAsset(str(mask), "M", COG, bands=(RasterBandInfo("uint8", 255.0),))}),
        StacItem("all", None, {"vrt": StacAsset(str(prob), "V", "application/xml", bands=(
            RasterBandInfo("float32", float("nan"), unit="1"),), grid=mosaic_grid)},
            geometry=shapely.box(85.0, 27.5, 85.2, 27.6)),
    ]
    href = write_stac_catalog(str(tmp_path / "stac"), "cat", "d", items, "2016-01-01",
                              "2017-01-01")
    docs = {i: json.loads((tmp_path / "stac" / i / f"{i}.json").read_text())
            for i in ("c1", "all")}
    for doc in docs.values():
        assert item_problems(doc) == []
    assert catalog_problems(json.loads(Path(href).read_text())) == []
    c1 = docs["c1"]
    assert {PROJ_V2, RASTER_V11} <= set(c1["stac_extensions"])
    assert c1["properties"]["proj:bbox"] == list(GRID.bounds)
    assert c1["assets"]["probability"]["raster:bands"] == [
        {"nodata": 255.0, "data_type": "uint8", "spatial_resolution": 10.0, "unit": "1",
         "scale": 0.004, "offset": 0.0}]
    assert docs["all"]["assets"]["vrt"]["raster:bands"][0]["nodata"] == "nan"  # not NaN
    assert docs["all"]["assets"]["vrt"]["proj:shape"] == [96, 128]
    assert "proj:code" not in docs["all"]["properties"]  # no grid: on the asset only
    # pystac's own extension classes read them back
    got = {i.id: i for i in pystac.Catalog.from_file(href).get_items()}
    proj = ProjectionExtension.ext(got["c1"])
    assert (proj.code, proj.shape, proj.bbox) == ("EPSG:32645", [48, 64], list(GRID.bounds))
    band = RasterExtension.ext(got["c1"].assets["probability"]).bands[0]
    assert (band.data_type, band.scale, band.offset, band.nodata) == ("uint8", 0.004, 0.0,
                                                                     255.0)
    vrt = got["all"].assets["vrt"]
    assert ProjectionExtension.ext(vrt).transform == list(GRID.transform)


def test_items_are_written_one_by_one_and_the_root_lists_them(tmp_path):
    folder = str(tmp_path / "stac")
    region = shapely.box(85.0, 27.5, 85.2, 27.6)
    for name in ("b", "a"):  # in any order, e.g. by parallel workers
        path = write_stac_item(folder, StacItem(name, None, {}, geometry=region),
                               "2016-01-01", "2017-01-01")
        assert path == str(tmp_path / "stac" / name / f"{name}.json")
    assert not (tmp_path / "stac" / "catalog.json").exists()  # the root comes last
    href = write_stac_root(folder, "cat", "d", ["a", "b"], title="T")
    cat = pystac.Catalog.from_file(href)
    assert [i.id for i in cat.get_items()] == ["a", "b"]
    assert all(i.get_root().id == "cat" for i in cat.get_items())


def test_the_structural_checks_catch_broken_items():
    """The checks used on every item the tests write can fail."""
    good = {"type": "Feature", "stac_version": "1.1.0", "id": "x",
            "stac_extensions": [PROJ_V2, RASTER_V11],
            "geometry": {"type": "Polygon", "coordinates": [[[85, 27], [86, 27], [86, 28],
                                                             [85, 27]]]},
            "bbox": [85, 27, 86, 28], "links": [],
            "properties": {"datetime": "2020-01-01T00:00:00Z", "proj:code": "EPSG:32645",
                           "proj:shape": [2, 3]},
            "assets": {"a": {"href": "a.tif", "raster:bands": [{"data_type": "uint8"}]}}}
    assert item_problems(good) == []
    broken = [
        ("proj:shape", {"proj:shape": [2.5, 3]}),
        ("proj:code", {"proj:code": "32645"}),
        ("datetime", {"datetime": "yesterday"}),
    ]
    for word, change in broken:
        doc = json.loads(json.dumps(good))
        doc["properties"].update(change)
        assert any(word in p for p in item_problems(doc)), word
    doc = json.loads(json.dumps(good))
    doc["assets"]["a"]["raster:bands"][0]["nodata"] = float("nan")
    assert any("nodata" in p for p in item_problems(doc))
    doc = json.loads(json.dumps(good))
    doc["stac_extensions"] = [PROJ_V2]
    assert any("raster" in p for p in item_problems(doc))
    assert catalog_problems({"type": "Catalog", "id": "c", "stac_version": "1.1.0",
                             "links": []}) == ["description missing"]

"""Grid math: UTM zones, deterministic chunk keys, exact transforms, halos, patch windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import box

from pipelines.errors import ConfigError, CRSError, DataNotFoundError, RegionError
from pipelines.geo import grid as G


@pytest.mark.parametrize(
    "lon,lat,epsg",
    [(85.3, 28.2, 32645), (-0.1, 51.5, 32630), (-180.0, 10.0, 32601), (180.0, 10.0, 32660),
     (174.8, -41.3, 32760), (6.0, 0.0, 32632), (5.999, -0.001, 32731)],
)
def test_utm_epsg(lon, lat, epsg):
    assert G.utm_epsg(lon, lat) == epsg


def test_chunk_transform_is_exact_and_anchored():
    spec = G.GridSpec(32645, pixel_size=10.0, chunk_size=512, halo=32)
    g = spec.chunk_grid(G.ChunkKey(32645, 1342, 63))
    assert g.transform == (10.0, 0.0, 63 * 5120.0, 0.0, -10.0, 10_000_000.0 - 1342 * 5120.0)
    # neighbours share edges exactly: no gap, no overlap
    right = spec.chunk_grid(G.ChunkKey(32645, 1342, 64))
    below = spec.chunk_grid(G.ChunkKey(32645, 1343, 63))
    assert g.bounds[2] == right.bounds[0]
    assert g.bounds[1] == below.bounds[3]
    halo = spec.chunk_grid(G.ChunkKey(32645, 1342, 63), halo=True)
    assert halo.shape == (576, 576)
    left, bottom, right, top = g.bounds
    assert halo.bounds == (left - 320, bottom - 320, right + 320, top + 320)
    # the chunk is the centre window of its halo grid, pixel for pixel
    assert halo.subgrid(Window(32, 32, 512, 512)) == g


def test_chunk_keys_do_not_depend_on_the_aoi():
    big = G.plan_chunks(G.parse_bbox("85.20,28.10,85.40,28.30"), 10, 256, 16)
    small = G.plan_chunks(G.parse_bbox("85.25,28.15,85.30,28.20"), 10, 256, 16)
    big_keys = {c.key for c in big}
    assert {c.key for c in small} <= big_keys
    for c in small:
        twin = next(b for b in big if b.key == c.key)
        assert twin.grid == c.grid


def test_plan_covers_region_and_nothing_more():
    region = G.parse_bbox("85.30,28.10,85.36,28.16")
    chunks = G.plan_chunks(region, 10, 128, 8)
    part = G.to_crs(region.geometry, G.WGS84, "EPSG:32645")
    union = shapely.union_all([box(*c.grid.bounds) for c in chunks])
    assert union.contains(part.buffer(-0.01))
    # every chunk intersects the region with area
    for c in chunks:
        assert c.region.area > 0
        assert box(*c.grid.bounds).intersection(part).area > 0
    # keys unique and sorted
    keys = [c.key for c in chunks]
    assert keys == sorted(set(keys))


def test_region_across_zones_is_split_per_zone():
    region = G.parse_bbox("83.9,28.0,84.1,28.1")  # zone 44/45 boundary at 84E
    chunks = G.plan_chunks(region, 10, 512, 0)
    zones = {c.key.epsg for c in chunks}
    assert zones == {32644, 32645}
    # the areas of the two parts add up to the whole (equal-area check in a common CRS)
    parts = G.split_by_utm_zone(region.geometry)
    back = [G.to_crs(p, f"EPSG:{e}", "EPSG:6933") for e, p in parts.items()]
    whole = G.to_crs(region.geometry, G.WGS84, "EPSG:6933")
    assert sum(b.area for b in back) == pytest.approx(whole.area, rel=1e-4)


def test_region_across_equator_uses_south_zone():
    chunks = G.plan_chunks(G.parse_bbox("36.80,-0.05,36.85,0.05"), 20, 256, 0)
    assert {c.key.epsg for c in chunks} == {32637, 32737}


def test_region_mask_marks_pixels_inside_polygon():
    lon, lat = 85.33, 28.13
    region = G.point_region(lat, lon, 1000)
    chunks = G.plan_chunks(region, 10, 512, 0)
    inside = sum(int(c.region_mask().sum()) for c in chunks)
    assert inside * 100 == pytest.approx(2000 * 2000, rel=0.01)


def test_region_mask_of_a_chunk_inside_the_region_is_all_true():
    # a 6 km box: its middle chunk lies wholly inside (the fast path without rasterising)
    big = G.point_region(28.13, 85.33, 3000)
    chunks = G.plan_chunks(big, 10, 128, 0)
    from rasterio.features import geometry_mask

    n_full = 0
    for c in chunks:
        slow = geometry_mask([c.region], out_shape=c.grid.shape, transform=c.grid.affine,
                             invert=True)
        assert np.array_equal(c.region_mask(), slow)
        n_full += bool(slow.all())
    assert 0 < n_full < len(chunks)


def test_point_region_is_centred():
    r = G.point_region(28.2, 85.3, 500)
    tr = Transformer.from_crs(G.WGS84, "EPSG:32645", always_xy=True)
    cx, cy = tr.transform(85.3, 28.2)
    c = G.to_crs(r.geometry, G.WGS84, "EPSG:32645").centroid
    assert abs(c.x - cx) < 0.5 and abs(c.y - cy) < 0.5


def test_chunk_key_roundtrip_and_errors():
    k = G.ChunkKey(32645, 12, -3)
    assert G.ChunkKey.parse(str(k)) == k
    with pytest.raises(ConfigError, match="Not a chunk key"):
        G.ChunkKey.parse("banana")


@pytest.mark.parametrize("epsg, unit", [(2263, "US survey foot"), (2222, "foot")])
def test_a_crs_not_in_metres_is_refused_for_chunks(epsg, unit):
    """Pixel sizes and areas are in CRS units: a CRS in feet would count ft2 as m2."""
    match = rf"EPSG:{epsg} \(.*\) measures in {unit}, not metres.*UTM zone.*leave --epsg unset"
    with pytest.raises(CRSError, match=match):
        G.plan_chunks(G.parse_bbox("-74.0,40.70,-73.99,40.71"), 10.0, 64, halo=0, epsg=epsg)
    with pytest.raises(CRSError, match=match):
        G.GridSpec(epsg)
    with pytest.raises(CRSError, match=match):
        G.metric_crs(epsg)
    assert not G.is_metric_crs(epsg) and not G.is_metric_crs(f"EPSG:{epsg}")


def test_projected_crs_in_metres_are_accepted_for_chunks():
    for epsg in (32618, 27700):
        assert G.is_metric_crs(epsg) and G.metric_crs(epsg).to_epsg() == epsg
        assert G.GridSpec(epsg).epsg == epsg
    assert not G.is_metric_crs(4326)
    with pytest.raises(CRSError, match="EPSG:4326 .* is not a projected CRS"):
        G.metric_crs(4326)
    with pytest.raises(CRSError, match="Unknown EPSG code 999999 for --epsg"):
        G.metric_crs(999999)


def test_bad_specs_and_regions(tmp_path):
    with pytest.raises(CRSError, match="not a projected CRS"):
        G.GridSpec(4326)
    with pytest.raises(ConfigError, match="pixel_size"):
        G.GridSpec(32645, pixel_size=0)
    with pytest.raises(RegionError, match="min must be below max"):
        G.parse_bbox("85.4,28.1,85.3,28.2")
    with pytest.raises(RegionError, match="expected"):
        G.parse_bbox("1,2,3")
    with pytest.raises(DataNotFoundError, match="missing.geojson"):
        G.load_region(tmp_path / "missing.geojson")
    point = {"type": "Point", "coordinates": [85, 28]}
    pts = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": {}, "geometry": point}]}
    (tmp_path / "p.geojson").write_text(json.dumps(pts))
    with pytest.raises(RegionError, match="no area"):
        G.load_region(tmp_path / "p.geojson")
    with pytest.raises(RegionError, match="outside longitude/latitude"):
        ring = [[300000, 3100000], [310000, 3100000], [310000, 3110000], [300000, 3100000]]
        G.region_from_geojson({"type": "Polygon", "coordinates": [ring]})


def test_load_region_from_file_reprojects_and_unions(tmp_path):
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(geometry=[box(320000, 3110000, 321000, 3111000),
                                     box(321000, 3110000, 322000, 3111000)], crs="EPSG:32645")
    path = tmp_path / "aoi.gpkg"
    gdf.to_file(path)
    r = G.load_region(path)
    assert r.name == "aoi"
    back = G.to_crs(r.geometry, G.WGS84, "EPSG:32645")
    assert back.area == pytest.approx(2e6, rel=1e-3)


def test_patch_windows_training_and_inference():
    train = list(G.patch_windows(300, 260, 128))
    assert [(w.row_off, w.col_off) for w in train] == [(0, 0), (0, 128), (128, 0), (128, 128)]
    inf = list(G.patch_windows(300, 260, 128, stride=96, cover_edges=True))
    cover = np.zeros((300, 260), int)
    for w in inf:
        assert w.height == w.width == 128
        cover[w.row_off:w.row_off + 128, w.col_off:w.col_off + 128] += 1
    assert cover.min() >= 1
    assert max(w.row_off for w in inf) == 300 - 128 and max(w.col_off for w in inf) == 260 - 128
    assert list(G.patch_windows(100, 100, 128)) == []
    with pytest.raises(ConfigError):
        list(G.patch_windows(100, 100, 128, cover_edges=True))


def test_mercator_is_refused_for_chunks_and_areas():
    """Web Mercator is projected and in metres, but its metres stretch by 1/cos(latitude):
    10 'm' pixels are 5 m on the ground at 60 N and every pixel area is off by 4x there."""
    assert G.distorts_areas(3857) and G.distorts_areas(4326)
    assert not G.distorts_areas(32645) and not G.distorts_areas(27700)  # transverse Mercator
    assert not G.is_metric_crs(3857)
    with pytest.raises(CRSError, match=r"EPSG:3857 \(.*\) is a Mercator projection"):
        G.metric_crs(3857)
    with pytest.raises(CRSError, match="Mercator"):
        G.GridSpec(3857)

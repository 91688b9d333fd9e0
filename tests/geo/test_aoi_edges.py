"""AOI inputs at the edges: the antimeridian, the poles, buffers in degrees, layers, dates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from pipelines.errors import InputError, RegionError
from pipelines.geo import grid as G
from pipelines.geo.aoi_inputs import read_events


def _square(x0: float, y0: float, x1: float, y1: float) -> list:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _geojson(path: Path, geometry: dict) -> str:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": geometry}]}))
    return str(path)


@pytest.mark.parametrize("lat, lon", [(-16.8, 179.99), (-16.8, -179.99), (51.9, -179.995)])
def test_a_square_across_the_antimeridian_is_split_there(lat, lon):
    """The square came back as a 360-degree band round the world (15118 chunks)."""
    region = G.point_region(lat, lon, 2000)
    geom = region.geometry
    assert geom.geom_type == "MultiPolygon"
    assert all(p.bounds[2] - p.bounds[0] < 0.1 for p in geom.geoms)
    south = lat < 0
    assert set(G.split_by_utm_zone(geom)) == ({32701, 32760} if south else {32601, 32660})
    km2 = sum(part.area for _, part in G.chunk_keys(region, 10.0, 512).values()) / 1e6
    assert km2 == pytest.approx(16.0, rel=0.02)


def test_a_square_away_from_the_antimeridian_stays_one_polygon():
    geom = G.point_region(28.2, 85.4, 2000).geometry
    assert geom.geom_type == "Polygon"
    assert geom.bounds[2] - geom.bounds[0] < 0.1


@pytest.mark.parametrize("lat", [89.99, -84.5, 85.4])
def test_latitudes_beyond_the_utm_limits_are_refused(lat):
    with pytest.raises(RegionError, match=r"beyond the UTM limits.*swapped"):
        G.point_region(lat, 10.0, 2000)


@pytest.mark.parametrize("buffer_m", [0.01, 0.5, 9.9])
def test_a_buffer_under_one_pixel_is_refused_as_not_metres(buffer_m):
    """0.01 (degrees by mistake) gave a square holding no 10 m pixel: an empty sweep."""
    with pytest.raises(RegionError, match=r"in metres, not degrees"):
        G.point_region(28.2, 85.4, buffer_m)


def test_an_event_buffer_under_one_pixel_names_the_row(tmp_path):
    csv = tmp_path / "e.csv"
    csv.write_text("event_id,event_date,latitude,longitude\nA,2015-04-25,28.2,85.4\n")
    with pytest.raises(InputError, match=r"row 2: .*in metres"):
        read_events(str(csv), 0.01)


def test_an_unsplit_ring_across_the_antimeridian_is_refused(tmp_path):
    """179.9 -> -179.9 was read as a 359.8-degree strip over all 60 zones."""
    path = _geojson(tmp_path / "am.geojson",
                    {"type": "Polygon", "coordinates": _square(179.9, -17, -179.9, -16.9)})
    with pytest.raises(RegionError, match=r"359\.8 degrees.*Split it at the antimeridian"):
        G.load_region(path)


def test_a_split_multipolygon_across_the_antimeridian_is_read(tmp_path):
    path = _geojson(tmp_path / "am.geojson", {"type": "MultiPolygon", "coordinates": [
        _square(179.9, -17, 180, -16.9), _square(-180, -17, -179.9, -16.9)]})
    geom = G.load_region(path).geometry
    assert geom.area == pytest.approx(0.02)
    assert set(G.split_by_utm_zone(geom)) == {32701, 32760}


def test_a_geopackage_with_several_layers_is_refused_naming_them(tmp_path):
    """Only the first layer was swept (with a pyogrio warning nobody sees)."""
    path = tmp_path / "two.gpkg"
    for name, b in (("west", box(85.0, 27.0, 85.1, 27.1)), ("east", box(86.0, 28.0, 86.1, 28.1))):
        gpd.GeoDataFrame({"n": [name]}, geometry=[b], crs=4326).to_file(path, layer=name)
    with pytest.raises(RegionError, match=r"2 layers \(west, east\)"):
        G.load_region(str(path))


def test_a_geopackage_with_one_layer_is_read(tmp_path):
    path = tmp_path / "one.gpkg"
    gpd.GeoDataFrame({"n": ["a"]}, geometry=[box(85.0, 27.0, 85.1, 27.1)],
                     crs=4326).to_file(path, layer="a")
    assert G.load_region(str(path)).geometry.area == pytest.approx(0.01)


def _days(tmp_path, dates: list[str]) -> list[str | None]:
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,event_date,latitude,longitude\n"
                   + "".join(f"e{i},{d},28.2,85.4\n" for i, d in enumerate(dates)))
    return [a.event_date for a in read_events(str(csv), 1000.0, 0, 1)]


def test_one_date_format_reads_the_whole_column(tmp_path):
    """05/04/2015 was read month-first and 25/04/2015 day-first in the same file."""
    assert _days(tmp_path, ["05/04/2015", "25/04/2015"]) == ["2015-04-05", "2015-04-25"]


def test_a_row_in_another_day_order_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"row 3: .*'25/04/2015'.*reads only as %d/%m/%Y"):
        _days(tmp_path, ["05/13/2015", "25/04/2015"])
    # ISO rows are unambiguous beside the others (NASA's catalogue mixes both); the other
    # rows must still agree on one day/month order
    assert _days(tmp_path, ["2015-04-25", "25/04/2015"]) == ["2015-04-25", "2015-04-25"]
    assert _days(tmp_path, ["2015/04/25 06:11:00", "04/26/2015 12:00:00 AM"]) == [
        "2015-04-25", "2015-04-26"]
    with pytest.raises(InputError, match=r"row 4: .*'25/04/2015'.*reads only as %d/%m/%Y"):
        _days(tmp_path, ["2015-04-25", "05/13/2015", "25/04/2015"])


def test_zoned_times_take_their_utc_day(tmp_path):
    assert _days(tmp_path, ["2015-04-25T23:30:00-05:00", "2015-04-25T02:00:00+09:00",
                            "2015/04/25 06:11:00"]) == ["2015-04-26", "2015-04-24", "2015-04-25"]


@pytest.mark.parametrize("partial", ["2015", "2015-04", "04/2015", "06:11:00"])
def test_partial_dates_are_refused_naming_the_row(tmp_path, partial):
    """A year became 1 January, a year-month the 1st, a time alone today's date."""
    with pytest.raises(InputError, match=rf"row 3: the date '{partial}' is not a full date"):
        _days(tmp_path, ["2015-04-25", partial])


def test_the_event_window_ends_before_date_plus_days_after(tmp_path):
    """The window is [date - days_before, date + days_after): end exclusive, as --end."""
    csv = tmp_path / "e.csv"
    csv.write_text("event_id,event_date,latitude,longitude\nA,2015-04-25,28.2,85.4\n")
    a = read_events(str(csv), 1000.0, 7, 1)[0]
    assert (a.start, a.end) == ("2015-04-18", "2015-04-26")
    assert dt.date.fromisoformat(a.end) - dt.date.fromisoformat(a.start) == dt.timedelta(8)
    assert "date + days_after)" in (read_events.__doc__ or "")


def test_the_help_says_the_window_ends_are_exclusive(capsys):
    from pipelines import cli

    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "YYYY-MM-DD, exclusive: the day itself is not read." in out
    assert "[date - days_before, date + days_after)" in out
    assert "At least 10: metres, not degrees." in out

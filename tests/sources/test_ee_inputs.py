"""What the Earth Engine source reads: collections, the SCL mask, the bbox, curvature.

Run with the real earthengine-api against the loopback endpoint (tests/ee_server.py),
which answers computePixels without evaluating the expression. So the expression's
arithmetic is checked here by evaluating the serialised expression that Earth Engine
would be sent, with NumPy, on a small geographic DEM grid (:func:`evaluate`).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from shapely.geometry import box

from pipelines.errors import ConfigError, RegionError
from pipelines.export.config import ExportConfig
from pipelines.export.plan import plan_export
from pipelines.geo.grid import Region
from pipelines.geo.terrain import M_PER_DEG_LAT, M_PER_DEG_LON
from pipelines.sources import earthengine as eem
from pipelines.sources.factory import make_source as source_from_spec
from tests.ee_server import EEServer, Faults
from tests.sources.test_source_earthengine import END, START, make_source

NEPAL = (85.0, 27.5, 86.0, 28.5)  # minlon, minlat, maxlon, maxlat
TOKEN_VAR = "LANDSLIDES_TEST_EE_TOKEN"


@pytest.fixture(scope="module")
def server():
    with EEServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server: EEServer, monkeypatch):
    server.configure(faults=Faults(), latency_s=0.0, known_bands=None, masked=None, nodata=0.0)
    server.reset()
    monkeypatch.setenv(TOKEN_VAR, "test-token")
    yield


def ee_spec(server: EEServer, **kw) -> dict:
    """A source spec as a scan file or the CLI gives it, reaching the loopback endpoint."""
    return {"kind": "earthengine", "endpoint": server.url, "project": "test-project",
            "token_env": TOKEN_VAR, **kw}


# --------------------------------------------------------------------------- collections
@pytest.mark.parametrize(("collection", "replacement"), [
    ("COPERNICUS/S2_SR", "COPERNICUS/S2_SR_HARMONIZED"),
    ("COPERNICUS/S2", "COPERNICUS/S2_HARMONIZED"),
    ("projects/earthengine-public/assets/COPERNICUS/S2_SR", "COPERNICUS/S2_SR_HARMONIZED"),
])
def test_non_harmonized_collections_are_refused_naming_the_replacement(
        server, collection, replacement):
    """From 25 Jan 2022 their DN carry +1000: DN / 10000 would be 0.1 too bright."""
    with pytest.raises(ConfigError, match=rf"{collection!r} is not harmonized.*\+1000.*"
                                          rf"collection='{replacement}'"):
        eem.EEConfig("2022-03-01", "2022-06-01", collection=collection,
                     cloud_mask="cloud_prob")
    with pytest.raises(ConfigError, match=replacement):  # as a scan file spells it
        source_from_spec(ee_spec(server, collection=collection), "2022-03-01", "2022-06-01")
    assert server.requests == []  # refused before Earth Engine is even initialised


def test_harmonized_collections_are_read_and_l1c_needs_a_mask_it_has(server):
    text = make_source(server, collection=eem.L2A_COLLECTION).expression_json
    assert '"COPERNICUS/S2_SR_HARMONIZED"' in text
    text = make_source(server, collection=eem.L1C_COLLECTION, cloud_mask="cloud_prob",
                       bands=("B4", "B8")).expression_json
    assert '"COPERNICUS/S2_HARMONIZED"' in text and "Image.remap" not in text
    # Level-1C has no SCL band: every request would fail (HTTP 400) after launch
    with pytest.raises(ConfigError, match="no SCL band.*COPERNICUS/S2_SR_HARMONIZED"):
        eem.EEConfig(START, END, collection=eem.L1C_COLLECTION, cloud_mask="scl")


# --------------------------------------------------------------------------- SCL mask
def every_call(expression_json: str, name: str) -> list[dict]:
    """The arguments of every call of ``name`` anywhere in a serialised expression.

    Unlike ``calls_in`` this also looks inside mapped functions (whose bodies are values
    of their own).
    """
    found: list[dict] = []

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            call = node.get("functionInvocationValue")
            if call is not None and call["functionName"] == name:
                found.append(call.get("arguments", {}))
            walk(list(node.values()))

    walk(list(json.loads(expression_json)["values"].values()))
    return found


def test_scl_mask_drops_nodata_and_defective_pixels_but_keeps_dark_areas(server):
    """SCL 0 (no data) and 1 (saturated/defective) are not imagery; 2 (shadow) is kept."""
    text = make_source(server, bands=("B4", "B8")).expression_json
    (update,) = every_call(text, "Image.updateMask")
    remap = update["mask"]["functionInvocationValue"]
    assert remap["functionName"] == "Image.remap"  # the remapped SCL masks each scene
    args = remap["arguments"]
    masked = args["from"]["constantValue"]
    assert args["to"]["constantValue"] == [0] * len(masked)  # 0: masked ...
    assert args["defaultValue"]["constantValue"] == 1        # ... every other class kept
    assert args["image"]["functionInvocationValue"]["arguments"]["bandSelectors"] == {
        "constantValue": ["SCL"]}
    assert sorted(masked) == [0, 1, 3, 8, 9, 10, 11]
    assert 2 not in masked and 7 not in masked
    assert tuple(masked) == eem.SCL_MASKED_CLASSES


# --------------------------------------------------------------------------- bbox
def test_region_outside_the_bbox_is_refused_before_any_read(server, tmp_path):
    src = make_source(server, bbox=NEPAL)
    far = Region.from_geometry("alps", box(10.0, 46.0, 10.1, 46.1))
    with pytest.raises(RegionError, match=r"'alps'.*outside the Earth Engine source's bbox "
                                          r"\(85, 27\.5, 86, 28\.5\).*bbox"):
        src.check_covers(far)
    # touching the bbox along an edge is not overlapping it: no scene there either
    with pytest.raises(RegionError, match="touching"):
        src.check_covers(Region.from_geometry("touching", box(86.0, 28.0, 86.1, 28.1)))
    src.check_covers(Region.from_geometry("inside", box(85.3, 28.0, 85.4, 28.1)))
    assert src.footprint() == ("EPSG:4326", NEPAL)
    # without a bbox the source covers the world
    make_source(server).check_covers(far)

    # An export plans no chunk: the refusal comes before any work.
    cfg = ExportConfig(source=ee_spec(server, bbox=list(NEPAL)), aoi="10.0,46.0,10.1,46.1",
                       out=str(tmp_path / "out"), start=START, end=END, chunk_size=128)
    with pytest.raises(RegionError, match="'bbox\\(10.0,46.0,10.1,46.1\\)'.*bbox"):
        plan_export(cfg)
    assert server.pixel_requests() == []


def test_region_in_another_crs_is_compared_in_lon_lat(server, tmp_path):
    """A region file in UTM metres loads as WGS 84, where the bbox is: both are checked."""
    import geopandas as gpd

    inside = tmp_path / "rasuwa_utm.geojson"
    gpd.GeoDataFrame(geometry=[box(300_000, 3_100_000, 305_000, 3_105_000)],  # ~85.0E 28.0N
                     crs="EPSG:32645").to_file(inside)
    outside = tmp_path / "far_utm.geojson"
    gpd.GeoDataFrame(geometry=[box(700_000, 3_100_000, 705_000, 3_105_000)],  # ~89.1E
                     crs="EPSG:32645").to_file(outside)
    spec = ee_spec(server, bbox=list(NEPAL))
    common = {"out": str(tmp_path / "out"), "start": START, "end": END, "chunk_size": 128}
    plan = plan_export(ExportConfig(source=spec, aoi=str(inside), **common))
    assert plan.chunks
    with pytest.raises(RegionError, match="far_utm"):
        plan_export(ExportConfig(source=spec, aoi=str(outside), **common))
    assert server.pixel_requests() == []


def test_region_partly_outside_the_bbox_is_read_with_a_warning(server, caplog):
    src = make_source(server, bbox=NEPAL)
    straddling = Region.from_geometry("edge", box(85.9, 28.0, 86.2, 28.1))  # 2/3 outside
    with caplog.at_level(logging.WARNING, logger="pipelines.sources.earthengine.source"):
        src.check_covers(straddling)
    assert "67% of the area of interest 'edge'" in caplog.text


def test_bbox_must_be_lon_lat_degrees():
    with pytest.raises(ConfigError, match=r"degrees \(WGS 84\), not projected"):
        eem.EEConfig(START, END, bbox=(300_000, 3_100_000, 305_000, 3_105_000))
    with pytest.raises(ConfigError, match="longitude first"):
        eem.EEConfig(START, END, bbox=(27.5, 85.0, 28.5, 95.0))  # lat, lon swapped


# --------------------------------------------------------------------------- curvature
class GeoGrid:
    """A north-up geographic grid of ``n x n`` pixels centred on ``(lon0, lat0)``."""

    def __init__(self, lon0: float, lat0: float, step_lon: float, step_lat: float,
                 n: int = 7) -> None:
        c = n // 2
        rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
        self.lon = lon0 + (cols - c) * step_lon
        self.lat = lat0 - (rows - c) * step_lat
        self.step_lon, self.step_lat = step_lon, step_lat
        self.centre = (c, c)
        # metres east and north of the centre, and the pixel size in metres
        self.dx = step_lon * M_PER_DEG_LON * np.cos(np.radians(self.lat))
        self.dy = step_lat * M_PER_DEG_LAT
        self.x = (self.lon - lon0) * M_PER_DEG_LON * np.cos(np.radians(self.lat))
        self.y = (self.lat - lat0) * M_PER_DEG_LAT


def _correlate(image: np.ndarray, weights: list[list[float]]) -> np.ndarray:
    """Sum of ``weights`` x the neighbourhood (centred); NaN where it leaves the image."""
    w = np.asarray(weights, dtype=np.float64)
    kh, kw = w.shape
    cy, cx = kh // 2, kw // 2
    out = np.full(image.shape, np.nan)
    h, wd = image.shape
    acc = np.zeros((h - kh + 1, wd - kw + 1))
    for r in range(kh):
        for c in range(kw):
            acc += w[r, c] * image[r:r + h - kh + 1, c:c + wd - kw + 1]
    out[cy:cy + acc.shape[0], cx:cx + acc.shape[1]] = acc
    return out


def evaluate(expression_json: str, grid: GeoGrid, dem: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluate a serialised terrain expression on ``grid`` (its DEM's own pixels).

    Only the calls a terrain expression makes are known; projections are all ``grid``
    (``reproject``/``resample`` onto it are identities), any DEM asset is ``dem``.
    Images are ``{band: array}``.
    """
    doc = json.loads(expression_json)
    lap4 = [[0, 1, 0], [1, -4, 1], [0, 1, 0]]

    def one(img: dict) -> np.ndarray:
        assert len(img) == 1, f"expected one band, got {list(img)}"
        return next(iter(img.values()))

    def binary(args: dict, op) -> dict:
        a, b = ev(args["image1"]), ev(args["image2"])
        return {next(iter(a)): op(one(a), one(b))}

    bands = {asset: band for asset, band, _ in eem.DEMS.values()}
    funcs = {
        "Image.load": lambda a: {bands[ev(a["id"])]: dem},
        "ImageCollection.load": lambda a: {bands[ev(a["id"])]: dem},
        "Collection.map": lambda a: ev(a["collection"]),  # select(band): one band already
        "ImageCollection.mosaic": lambda a: ev(a["collection"]),
        "Collection.first": lambda a: ev(a["collection"]),
        "Image.select": lambda a: {b: ev(a["input"])[b]
                                   for b in ev(a["bandSelectors"])},
        "Image.rename": lambda a: dict(zip(ev(a["names"]), ev(a["input"]).values())),
        "Image.toFloat": lambda a: {k: v.astype(np.float32).astype(np.float64)
                                    for k, v in ev(a["value"]).items()},
        "Image.projection": lambda a: "grid",
        "Image.setDefaultProjection": lambda a: ev(a["image"]),
        "Image.reproject": lambda a: ev(a["image"]),
        "Image.resample": lambda a: ev(a["image"]),
        "Image.constant": lambda a: {"constant": np.float64(ev(a["value"]))},
        "Image.pixelLonLat": lambda a: {"longitude": grid.lon, "latitude": grid.lat},
        "Image.pixelArea": lambda a: {"area": grid.dx * grid.dy},
        "Image.add": lambda a: binary(a, np.add),
        "Image.subtract": lambda a: binary(a, np.subtract),
        "Image.multiply": lambda a: binary(a, np.multiply),
        "Image.divide": lambda a: binary(a, np.divide),
        "Image.mod": lambda a: binary(a, np.fmod),
        "Image.hypot": lambda a: binary(a, np.hypot),
        "Image.cos": lambda a: {k: np.cos(v) for k, v in ev(a["value"]).items()},
        "Kernel.fixed": lambda a: ev(a["weights"]),
        "Kernel.laplacian4": lambda a: lap4,
        "Image.convolve": lambda a: {k: _correlate(v, ev(a["kernel"]))
                                     for k, v in ev(a["image"]).items()},
        "Image.addBands": lambda a: {**ev(a["dstImg"]), **ev(a["srcImg"])},  # Image.cat
        "Image.unmask": lambda a: ev(a["input"]),
    }
    cache: dict[str, object] = {}

    def ev(node):
        if isinstance(node, list):
            return [ev(n) for n in node]
        if "valueReference" in node:
            ref = node["valueReference"]
            if ref not in cache:
                cache[ref] = ev(doc["values"][ref])
            return cache[ref]
        if "constantValue" in node:
            return node["constantValue"]
        if "arrayValue" in node:
            return [ev(v) for v in node["arrayValue"]["values"]]
        call = node["functionInvocationValue"]
        name = call["functionName"]
        assert name in funcs, f"evaluate() does not know {name}"
        return funcs[name](call.get("arguments", {}))

    return ev(doc["values"][doc["result"]])


@pytest.mark.parametrize("dem", ["glo30", "srtm", "aw3d30", "3dep10"])
@pytest.mark.parametrize(("lat0", "step_lon", "step_lat"), [
    (28.1, 1 / 3600, 1 / 3600),     # Himalaya, 1" x 1": 27.3 m x 30.9 m pixels
    (55.0, 1.5 / 3600, 1 / 3600),   # GLO-30's 1.5" longitude spacing above 50 N
    (0.0, 1 / 3600, M_PER_DEG_LON / M_PER_DEG_LAT / 3600),  # the equator, square pixels
])
def test_curvature_is_exact_on_non_square_dem_pixels(server, dem, lat0, step_lon, step_lat):
    """z = a x^2 + b y^2 has curvature -100 (2a + 2b) everywhere, whatever the pixels.

    Every DEM offered is geographic, so its pixels are not square in metres; the
    4-neighbour Laplacian over the cell area is off by dx/dy on one axis and dy/dx on the
    other where the surface bends differently along x and y.
    """
    grid = GeoGrid(85.3, lat0, step_lon, step_lat)
    a, b = 0.01, -0.004  # 1/m: a valley along y on a ridge along x
    z = a * grid.x ** 2 + b * grid.y ** 2 + 3000.0
    src = make_source(server, dem=dem, bands=("curvature", "DEM"))
    out = evaluate(src.expression_json, grid, z)
    r, c = grid.centre
    assert out["DEM"][r, c] == pytest.approx(3000.0)  # the evaluator reads the DEM asset
    interior = out["curvature"][1:-1, 1:-1]
    np.testing.assert_allclose(interior, -100 * (2 * a + 2 * b), rtol=1e-4)
    if not math.isclose(grid.dx[r, c], grid.dy, rel_tol=1e-3):
        return
    # square pixels: the same as a Laplacian over the cell area
    lap = _correlate(z, [[0, 1, 0], [1, -4, 1], [0, 1, 0]]) / (grid.dx * grid.dy)
    np.testing.assert_allclose(interior, (-100 * lap)[1:-1, 1:-1], rtol=1e-3)

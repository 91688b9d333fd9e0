"""The Earth Engine source, run with the real earthengine-api against a loopback endpoint.

The endpoint (tests/ee_server.py) serves the discovery document and algorithm list
shipped in the earthengine-api wheel and answers computePixels from the requested grid:
band values encode the pixel centres, so these tests check georeferencing to the metre
fraction, request splitting, retries, the concurrency bound and error handling.
"""

from __future__ import annotations

import json
import pickle
import socket
import threading
import time

import numpy as np
import pytest
import rasterio
from google.oauth2.credentials import Credentials
from rasterio.io import MemoryFile
from rasterio.transform import xy
from rasterio.windows import Window

from pipelines.errors import BandError, ConfigError, SourceError
from pipelines.geo.grid import ChunkKey, GridSpec, PixelGrid, utm_epsg
from pipelines.sources import earthengine as eem
from pipelines.sources.earthengine import source as eem_source
from tests.ee_server import EEServer, Faults, band_values, decode_xy

START, END = "2021-03-01", "2021-06-01"
XY_BANDS = ("B1", "B2", "B3", "B4")  # x mod 1 km, y mod 1 km, x km, y km (see ee_server)


def loopback_credentials() -> Credentials:
    """A bearer token that needs no Google account (module level: picklable)."""
    return Credentials("test-token")


@pytest.fixture(scope="module")
def server():
    with EEServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server: EEServer):
    server.configure(faults=Faults(), latency_s=0.0, known_bands=None, masked=None, nodata=0.0)
    server.reset()
    yield


def config(server: EEServer, **kw) -> eem.EEConfig:
    kw.setdefault("backoff_initial_s", 0.001)
    kw.setdefault("backoff_max_s", 0.004)
    return eem.EEConfig(START, END, endpoint=server.url, project="test-project", **kw)


def make_source(server: EEServer, bands=eem.DEFAULT_BANDS, **kw) -> eem.EarthEngineSource:
    return eem.EarthEngineSource(config(server, **kw), bands=bands,
                                 credentials_factory=loopback_credentials)


def chunk_read_grid(lon: float, lat: float, pixel_size: float = 10.0, chunk_size: int = 96,
                    halo: int = 8) -> PixelGrid:
    """The halo'd read grid of the chunk holding (lon, lat) in its UTM zone."""
    from pyproj import Transformer

    epsg = utm_epsg(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    spec = GridSpec(epsg, pixel_size, chunk_size, halo)
    key = ChunkKey(epsg, int((10_000_000 - y) // spec.chunk_m), int(x // spec.chunk_m))
    return spec.chunk_grid(key, halo=True)


def pixel_centres(grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates from rasterio (independent of the server's arithmetic)."""
    rows, cols = np.mgrid[0:grid.height, 0:grid.width]
    xs, ys = xy(grid.affine, rows.ravel(), cols.ravel(), offset="center")
    return (np.asarray(xs, dtype=np.float64).reshape(grid.shape),
            np.asarray(ys, dtype=np.float64).reshape(grid.shape))


def expected(grid: PixelGrid, bands) -> np.ndarray:
    x, y = pixel_centres(grid)
    return np.stack([band_values(b, x, y) for b in bands])


def request_window(grid: PixelGrid, body: dict) -> tuple[Window, tuple[str, ...]]:
    """The window of ``grid`` and the bands that one recorded computePixels body asked for."""
    g = body["grid"]
    at = g["affineTransform"]
    assert g["crsCode"] == grid.crs
    assert (at["scaleX"], at["shearX"], at["shearY"], at["scaleY"]) == (
        grid.transform[0], grid.transform[1], grid.transform[3], grid.transform[4])
    col = (at["translateX"] - grid.transform[2]) / grid.transform[0]
    row = (at["translateY"] - grid.transform[5]) / grid.transform[4]
    assert col == int(col) and row == int(row), "request not aligned on the grid"
    dims = g["dimensions"]
    return Window(int(col), int(row), dims["width"], dims["height"]), tuple(body["bandIds"])


# --------------------------------------------------------------------------- georeferencing
@pytest.mark.parametrize(
    ("lon", "lat", "pixel_size"),
    [(85.3, 28.1, 10.0),      # Rasuwa, Nepal: EPSG:32645
     (-71.6, -33.4, 2.5)],    # central Chile: EPSG:32719, southern hemisphere, 2.5 m
)
def test_georeferencing_is_exact(server, lon, lat, pixel_size):
    grid = chunk_read_grid(lon, lat, pixel_size)
    src = make_source(server)
    bands = (*XY_BANDS, "B8A", "DEM", "slope")
    raster = src.read(grid, bands)

    assert raster.grid == grid and raster.bands == bands
    assert raster.data.dtype == np.float32 and raster.valid.all()
    x, y = decode_xy(*raster.data[:4])
    cx, cy = pixel_centres(grid)
    np.testing.assert_array_equal(x, cx)
    np.testing.assert_array_equal(y, cy)
    # Every other band landed in its own slot, unmixed.
    np.testing.assert_array_equal(raster.data, expected(grid, bands))
    (req,) = server.pixel_requests()
    assert req.body["grid"]["crsCode"] == f"EPSG:{utm_epsg(lon, lat)}"
    assert req.body["fileFormat"] == "NPY"
    assert req.headers["authorization"] == "Bearer test-token"


def test_loopback_geotiff_matches_rasterio(server):
    """The endpoint's GeoTIFF answer carries the requested georeferencing (checks the harness)."""
    import ee

    grid = chunk_read_grid(85.3, 28.1)
    src = make_source(server, bands=XY_BANDS)
    src.open()
    tif = ee.data.computePixels({"expression": ee.Image(1), "fileFormat": "GEO_TIFF",
                                 "bandIds": list(XY_BANDS), "grid": eem.grid_request(grid)})
    with MemoryFile(tif) as mem, mem.open() as ds:
        assert ds.crs == rasterio.crs.CRS.from_string(grid.crs)
        assert ds.transform == grid.affine
        x, y = decode_xy(*ds.read())
    cx, cy = pixel_centres(grid)
    np.testing.assert_array_equal(x, cx)
    np.testing.assert_array_equal(y, cy)


# --------------------------------------------------------------------------- splitting
def test_request_splitting_tiles_the_grid_exactly(server):
    grid = chunk_read_grid(85.3, 28.1, chunk_size=48, halo=4)  # 56 x 56
    bands = eem.DEFAULT_BANDS  # 16 bands: one row of all = 3584 bytes
    whole = make_source(server).read(grid, bands)
    assert len(server.pixel_requests()) == 1
    server.reset()

    budget = 3000  # < one row of all bands: band groups of 13 bands max, rows of 1
    split = make_source(server, max_request_bytes=budget).read(grid, bands)
    np.testing.assert_array_equal(split.data, whole.data)
    np.testing.assert_array_equal(split.valid, whole.valid)

    coverage = np.zeros((len(bands), *grid.shape), dtype=int)
    reqs = server.pixel_requests()
    for req in reqs:
        win, names = request_window(grid, req.body)
        assert 4 * len(names) * win.width * win.height <= budget
        idx = [bands.index(n) for n in names]
        coverage[idx, win.row_off:win.row_off + win.height,
                 win.col_off:win.col_off + win.width] += 1
    assert len(reqs) == len(eem.plan_blocks(grid.width, grid.height, len(bands), budget)) > 2
    assert len({tuple(r.body["bandIds"]) for r in reqs}) == 2  # two band groups
    np.testing.assert_array_equal(coverage, 1)  # every value asked for exactly once


@pytest.mark.parametrize(("w", "h", "nb", "budget"),
                         [(56, 56, 16, 3000), (1000, 7, 3, 1000), (50, 50, 4, 4 * 50 * 50 * 4),
                          (40000, 2, 1, 48 * 2**20)])
def test_plan_blocks_covers_once_within_budget(w, h, nb, budget):
    blocks = eem.plan_blocks(w, h, nb, budget)
    cover = np.zeros((nb, h, w), dtype=np.uint8)
    for b in blocks:
        win = b.window
        assert 4 * (b.bands[1] - b.bands[0]) * win.width * win.height <= budget
        assert win.width <= eem.EE_MAX_DIMENSION and win.height <= eem.EE_MAX_DIMENSION
        cover[b.bands[0]:b.bands[1], win.row_off:win.row_off + win.height,
              win.col_off:win.col_off + win.width] += 1
    np.testing.assert_array_equal(cover, 1)
    if 4 * nb * w * h <= budget and max(w, h) <= eem.EE_MAX_DIMENSION:
        assert len(blocks) == 1


# --------------------------------------------------------------------------- retries
def test_retries_429_and_503_then_succeeds(server):
    grid = chunk_read_grid(85.3, 28.1, chunk_size=32, halo=0)
    bands = (*XY_BANDS, "DEM")
    budget = 4 * len(bands) * 32 * 6  # 6 rows per request -> 6 blocks
    n_blocks = len(eem.plan_blocks(32, 32, len(bands), budget))
    assert n_blocks == 6

    server.configure(faults=Faults(status=429, every=3))
    raster = make_source(server, max_request_bytes=budget, max_retries=3).read(grid, bands)
    np.testing.assert_array_equal(raster.data, expected(grid, bands))
    statuses = [r.status for r in server.pixel_requests()]
    assert statuses.count(200) == n_blocks
    assert statuses.count(429) >= 2 and len(statuses) == n_blocks + statuses.count(429)

    server.reset()
    server.configure(faults=Faults(status=503, first_per_request=2))
    raster = make_source(server, max_request_bytes=budget, max_retries=2).read(grid, bands)
    np.testing.assert_array_equal(raster.data, expected(grid, bands))
    statuses = [r.status for r in server.pixel_requests()]
    assert statuses.count(503) == 2 * n_blocks and statuses.count(200) == n_blocks


def test_429_forever_raises_source_error_naming_the_grid(server):
    grid = chunk_read_grid(85.3, 28.1, chunk_size=16, halo=0)
    server.configure(faults=Faults(status=429, every=1))
    src = make_source(server, bands=XY_BANDS, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        src.read(grid, XY_BANDS)
    assert time.monotonic() - t0 < 5
    assert len(server.pixel_requests()) == 3  # first attempt + max_retries
    msg = str(err.value)
    assert grid.crs in msg and f"({grid.transform[2]:.2f}, {grid.transform[5]:.2f})" in msg
    assert "429" in msg and "3 time(s)" in msg


def test_bad_request_is_not_retried(server):
    grid = chunk_read_grid(85.3, 28.1, chunk_size=16, halo=0)
    server.configure(known_bands=("B1", "B2", "B3", "B4"))  # the server lacks DEM
    src = make_source(server, bands=(*XY_BANDS, "DEM"), max_retries=5)
    with pytest.raises(SourceError, match=r"HTTP 400.*Pattern 'DEM' did not match") as err:
        src.read(grid, ["B1", "DEM"])
    assert "not retried" in str(err.value)
    assert len(server.pixel_requests()) == 1


@pytest.mark.parametrize("status", [429, 403])
def test_a_chunk_read_spends_one_retry_budget(server, status):
    """The sweep's chunk retries never multiply the source's own: a persistent 429 costs
    1 + max_retries requests (not (1 + retries) x (1 + max_retries)), a 403 costs one."""
    from pipelines.errors import PERMANENT, TRANSIENT, failure_class
    from pipelines.predict.chunk import read_chunk

    grid = chunk_read_grid(85.3, 28.1, chunk_size=16, halo=0)
    server.configure(faults=Faults(status=status, every=1))
    src = make_source(server, bands=XY_BANDS, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        read_chunk(src, grid, XY_BANDS, retries=3, retry_delay_s=0.01)
    assert time.monotonic() - t0 < 5
    assert len(server.pixel_requests()) == (3 if status == 429 else 1)
    assert failure_class(err.value) == (TRANSIENT if status == 429 else PERMANENT)


# --------------------------------------------------------------------------- concurrency
def test_concurrency_bounded_in_one_process(server):
    server.configure(latency_s=0.05)
    src = make_source(server, bands=XY_BANDS, max_concurrent_requests=2)
    grids = [chunk_read_grid(85.3 + 0.05 * i, 28.1, chunk_size=16, halo=0) for i in range(6)]
    errors: list[BaseException] = []
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        try:
            copy = pickle.loads(pickle.dumps(src))  # as Beam gives each thread its own DoFn
            for _ in range(3):
                results[i] = copy.read(grids[i], XY_BANDS).data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(server.pixel_requests(ok_only=True)) == 18
    assert server.max_in_flight == 2  # reached (threads overlapped) but never exceeded
    for i, g in enumerate(grids):
        np.testing.assert_array_equal(results[i], expected(g, XY_BANDS))


# --------------------------------------------------------------------------- expression
def test_expression_built_once_and_carried_as_json(server, monkeypatch):
    calls = []
    real_build = eem.build_image

    def counting_build(cfg, bands):
        calls.append(tuple(bands))
        return real_build(cfg, bands)

    monkeypatch.setattr(eem_source, "build_image", counting_build)  # where the source calls it
    src = make_source(server, bands=eem.AVAILABLE_BANDS)
    assert len(calls) == 1

    state = pickle.dumps(src)
    assert b"ee.image" not in state and b"ee.computedobject" not in state
    grid = chunk_read_grid(85.3, 28.1, chunk_size=16, halo=0)
    for _ in range(2):
        worker = pickle.loads(state)
        worker.open()
        worker.read(grid, ["B4", "hillshade"])
        pickle.dumps(worker)  # still picklable once opened
    assert len(calls) == 1  # never rebuilt on the "workers"
    sent = [r.body["expression"] for r in server.pixel_requests()]
    assert sent == [json.loads(src.expression_json)] * 2

    text = src.expression_json
    for needle in ("COPERNICUS/S2_SR_HARMONIZED", START, END, "COPERNICUS/DEM/GLO30",
                   "Image.remap", "Terrain.slope", "Terrain.aspect", "Terrain.hillshade",
                   "Kernel.fixed", "Image.pixelLonLat", "reduce.median", "Image.unmask"):
        assert needle in text, needle
    assert "S2_CLOUD_PROBABILITY" not in text


@pytest.mark.parametrize(("options", "present", "absent"), [
    ({"dem": "aw3d30", "cloud_mask": "cloud_prob", "max_cloud_prob": 25},
     ("JAXA/ALOS/AW3D30/V3_2", '"DSM"', "COPERNICUS/S2_CLOUD_PROBABILITY", "Join.saveFirst",
      "system:index", "Image.lt", '{"constantValue": 25}'),
     ("Image.remap", "COPERNICUS/DEM/GLO30")),
    ({"dem": "srtm", "cloud_mask": "none", "composite": "mosaic", "bbox": (85, 27.5, 86, 28.5)},
     ("USGS/SRTMGL1_003", "ImageCollection.mosaic", "Filter.intersects", "[86.0, 28.5]"),
     ("Image.remap", "S2_CLOUD_PROBABILITY", "reduce.median")),
    ({"dem": "3dep10", "composite": "mean"}, ("USGS/3DEP/10m", "reduce.mean", "Image.remap"),
     ("reduce.median", "Filter.intersects")),
])
def test_expression_options(server, options, present, absent):
    text = make_source(server, **options).expression_json
    for needle in present:
        assert needle in text, needle
    for needle in absent:
        assert needle not in text, needle


def test_greenest_and_barest_pick_scenes_by_plus_or_minus_ndvi(server):
    green = make_source(server, composite="greenest").expression_json
    bare = make_source(server, composite="barest").expression_json
    for text in (green, bare):
        for needle in ("ImageCollection.qualityMosaic", "Image.normalizedDifference"):
            assert needle in text, needle
        assert "reduce.median" not in text
    # the same expression but for the sign of the quality band
    assert green != bare
    assert green.count('{"constantValue": -1}') + 1 == bare.count('{"constantValue": -1}')
    assert bare.replace('{"constantValue": -1}', '{"constantValue": 1}') == \
        green.replace('{"constantValue": -1}', '{"constantValue": 1}')


def calls_in(expression_json: str) -> dict[str, list[tuple[dict, tuple[str, ...]]]]:
    """Every function call of a serialised expression: ``{name: [(arguments, callers)]}``.

    ``arguments`` are the call's argument nodes with every value reference followed;
    ``callers`` are the functions the call's result flows into, innermost last.
    """
    doc = json.loads(expression_json)

    def expand(node):
        if isinstance(node, list):
            return [expand(item) for item in node]
        if isinstance(node, dict):
            if "valueReference" in node:
                return expand(doc["values"][node["valueReference"]])
            return {k: expand(v) for k, v in node.items()}
        return node

    found: dict[str, list[tuple[dict, tuple[str, ...]]]] = {}

    def walk(node, callers: tuple[str, ...]) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, callers)
        elif isinstance(node, dict):
            call = node.get("functionInvocationValue")
            if call is None:
                walk(list(node.values()), callers)
                return
            args = call.get("arguments", {})
            found.setdefault(call["functionName"], []).append((args, callers))
            walk(list(args.values()), (*callers, call["functionName"]))

    walk(expand(doc["values"][doc["result"]]), ())
    return found


def test_terrain_angles_come_from_the_resampled_dem_and_are_never_interpolated(server):
    """Aspect interpolated between 350 and 10 degrees (both north) would face south (180).

    Slope, aspect and hillshade are derived from the DEM resampled bilinearly, as the
    GeoTIFF TerrainSource derives them from the DEM read onto the target grid, and are not
    resampled afterwards. (The loopback server does not evaluate expressions: this checks
    the expression Earth Engine is sent.)
    """
    calls = calls_in(make_source(server, bands=("aspect", "slope", "hillshade", "DEM",
                                                "curvature")).expression_json)
    for name in ("Terrain.aspect", "Terrain.slope", "Terrain.hillshade"):
        assert calls.get(name), name
        for args, callers in calls[name]:
            assert "Image.resample" not in callers, f"{name} is resampled: {callers}"
            dem = args["input"]["functionInvocationValue"]
            assert dem["functionName"] == "Image.resample", name
            assert dem["arguments"]["mode"] == {"constantValue": "bilinear"}, name
    # the DEM band itself (and curvature) are still resampled bilinearly
    modes = {args["mode"]["constantValue"] for args, _ in calls["Image.resample"]}
    assert modes == {"bilinear"}


# --------------------------------------------------------------------------- masks
def test_masked_pixels_become_nan_and_invalid(server):
    grid = chunk_read_grid(85.3, 28.1, chunk_size=32, halo=0)
    server.configure(nodata=eem.NODATA,
                     masked=lambda name, x, y: (name == "DEM") & (np.mod(x, 1000.0) < 100.0))
    raster = make_source(server).read(grid, (*XY_BANDS, "DEM"))
    x, _ = pixel_centres(grid)
    hole = np.mod(x, 1000.0) < 100.0
    assert hole.any() and not hole.all()
    np.testing.assert_array_equal(raster.valid, ~hole)
    assert np.isnan(raster.band("DEM")[hole]).all()
    assert np.isfinite(raster.band("DEM")[~hole]).all()
    assert np.isfinite(raster.data[:4]).all()


# --------------------------------------------------------------------------- errors
def test_band_and_config_errors(server):
    with pytest.raises(BandError, match="B13"):
        eem.EarthEngineSource(eem.EEConfig(START, END), bands=["B4", "B13"])
    src = make_source(server, bands=("B4", "DEM"))
    with pytest.raises(BandError, match="slope"):
        src.read(chunk_read_grid(85.3, 28.1, chunk_size=16, halo=0), ["B4", "slope"])
    assert server.pixel_requests() == []
    with pytest.raises(ConfigError, match="Empty Earth Engine date window"):
        eem.EEConfig("2021-06-01", "2021-06-01")
    with pytest.raises(ConfigError, match="end '2021-01-01' is not after"):
        eem.EEConfig("2021-06-01", "2021-01-01")
    with pytest.raises(ConfigError, match="not an ISO date"):
        eem.EEConfig("June", "2021-01-01")
    with pytest.raises(ConfigError, match="48 MiB"):
        eem.EEConfig(START, END, max_request_bytes=64 * 2**20)
    with pytest.raises(ConfigError, match="dem"):
        eem.EEConfig(START, END, dem="gtopo30")  # type: ignore[arg-type]


def test_endpoint_choice():
    assert eem.EEConfig(START, END).url == eem.DEFAULT_ENDPOINT
    assert eem.EEConfig(START, END, high_volume=True).url == eem.HIGH_VOLUME_ENDPOINT
    assert eem.EEConfig(START, END, high_volume=True,
                        endpoint="http://127.0.0.1:9/").url == "http://127.0.0.1:9"


def test_unreachable_endpoint_fails_fast(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = eem.EEConfig(START, END, endpoint=f"http://127.0.0.1:{port}", project="test-project",
                       connect_timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}.*endpoint URL"):
        eem.EarthEngineSource(cfg, credentials_factory=loopback_credentials)
    assert time.monotonic() - t0 < 5
    # The good endpoint still works afterwards (the client re-initialises).
    raster = make_source(server, bands=XY_BANDS).read(
        chunk_read_grid(85.3, 28.1, chunk_size=8, halo=0), XY_BANDS)
    assert raster.valid.all()


def test_missing_credentials_is_a_source_error(server, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/earthengine/credentials
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    cfg = config(server)
    with pytest.raises(SourceError, match="earthengine authenticate"):
        eem.EarthEngineSource(cfg)
    assert server.pixel_requests() == []

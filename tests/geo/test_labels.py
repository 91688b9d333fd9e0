"""Label rasters: value maps, warping onto chunk grids, ignore pixels through cut and scoring."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from pipelines.errors import ConfigError, CRSError, DataNotFoundError, InputError, RegionError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.grid import ChunkKey, GridSpec, PixelGrid, parse_bbox, utm_epsg
from pipelines.geo.labels import (
    LabelMap,
    LabelRaster,
    check_label_raster,
    read_label_raster,
)
from pipelines.geo.patches import IGNORE, PatchRules, cut_patches

UTM = "EPSG:32645"  # Rasuwa, Nepal
X0, Y0 = 330_000.0, 3_110_000.0
LON0, LAT0 = 85.30, 28.15
DEG = 1e-4  # ~10 m
NODATA = 9
MAP = "0=ignore,1=background,2=landslide"


def from_origin(x: float, y: float, xres: float, yres: float) -> Affine:
    """North-up transform with its top-left corner at ``(x, y)``."""
    return Affine(xres, 0.0, x, 0.0, -yres, y)


def write_tif(path, data, crs, transform, nodata=None, dtype=None) -> str:
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=dtype or data.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data.astype(dtype or data.dtype), 1)
    return str(path)


def codes(rng, shape, with_nodata=True) -> np.ndarray:
    """Raw codes 0 (unlabelled), 1 (not landslide), 2 (landslide) and some nodata."""
    a = rng.choice(np.array([0, 1, 2], np.uint16), size=shape, p=[0.5, 0.3, 0.2])
    if with_nodata:
        a[rng.random(shape) < 0.1] = NODATA
    return a


def expected_on(grid: PixelGrid, raw: np.ndarray, src_crs: str, src_t: Affine,
                nodata: int | None, lut: dict[int, int]) -> np.ndarray:
    """Independent oracle: each grid pixel centre looked up in the source (nearest)."""
    cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    xs, ys = grid.affine @ (cols.ravel(), rows.ravel())
    if src_crs != grid.crs:
        xs, ys = Transformer.from_crs(grid.crs, src_crs, always_xy=True).transform(xs, ys)
    c, r = ~src_t @ (np.asarray(xs), np.asarray(ys))
    c, r = np.floor(c).astype(int), np.floor(r).astype(int)
    inside = (r >= 0) & (r < raw.shape[0]) & (c >= 0) & (c < raw.shape[1])
    out = np.full(r.shape, IGNORE, np.uint8)
    vals = raw[r[inside], c[inside]]
    mapped = np.array([lut.get(int(v), IGNORE) for v in vals], np.uint8)
    if nodata is not None:
        mapped[vals == nodata] = IGNORE
    out[inside] = mapped
    return out.reshape(grid.shape)


# --------------------------------------------------------------------------- LabelMap
def test_label_map_parse_round_trip_and_multiclass():
    m = LabelMap.parse(" 2=landslide, 0=ignore ,1=not_landslide")
    assert m.values == ((0, IGNORE), (1, 0), (2, 1))
    assert m.classes == (0, 1)
    assert m.to_dict() == {"0": "ignore", "1": "background", "2": "landslide"}
    assert LabelMap.from_dict(m.to_dict()) == m
    assert LabelMap.parse(str(m)) == m
    multi = LabelMap.parse("1=background,2=landslide,3=2,-1=ignore,4=Non-Landslide")
    assert multi.values == ((-1, IGNORE), (1, 0), (2, 1), (3, 2), (4, 0))
    assert multi.classes == (0, 1, 2)
    assert LabelMap.from_dict({3: 2, "1": "background"}).values == ((1, 0), (3, 2))
    assert pickle.loads(pickle.dumps(multi)) == multi


@pytest.mark.parametrize(("text", "needle"), [
    ("", "Empty label map"),
    ("1=landslide,,0=ignore", "extra comma"),
    ("1:landslide", "'1:landslide'"),
    ("1=landslide=2", "'1=landslide=2'"),
    ("a=landslide", "'a=landslide'"),
    ("1.5=landslide", "not an integer"),
    ("1=rock", "unknown class 'rock'"),
    ("1=256", "outside 0..255"),
    ("1=-1", "class id -1 is outside"),
    ("1=landslide,1=background", "Raw value 1 is mapped twice"),
    ("0=ignore,7=ignore", "gives no raster value a class"),
])
def test_label_map_errors_name_the_item_and_the_fix(text, needle):
    with pytest.raises(ConfigError, match="e.g.") as err:
        LabelMap.parse(text)
    assert needle in str(err.value)


def test_label_map_from_dict_errors():
    with pytest.raises(ConfigError, match="non-empty mapping"):
        LabelMap.from_dict({})
    with pytest.raises(ConfigError, match="'x=landslide'"):
        LabelMap.from_dict({"x": "landslide"})


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "uint32",
                                   "int64"])
def test_apply_maps_every_integer_type_unmapped_to_ignore(dtype):
    m = LabelMap.parse("0=ignore,1=background,2=landslide,5=3,-3=landslide,100000=2")
    raw = np.array([[0, 1, 2, 3], [5, 7, 2, 1]], dtype=dtype)
    valid = np.ones(raw.shape, bool)
    valid[1, 3] = False
    out = m.apply(raw, valid)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[IGNORE, 0, 1, IGNORE], [3, IGNORE, 1, IGNORE]])
    if np.iinfo(dtype).min < 0:
        assert m.apply(np.array([-3, -4], dtype))[0] == 1
        assert m.apply(np.array([-3, -4], dtype))[1] == IGNORE
    if np.iinfo(dtype).max >= 100000:
        assert m.apply(np.array([100000], dtype))[0] == 2


def test_apply_refuses_floats():
    with pytest.raises(InputError, match="integers"):
        LabelMap.parse(MAP).apply(np.zeros((2, 2), np.float32))


# --------------------------------------------------------------------------- reading rasters
def test_label_raster_in_wgs84_onto_a_utm_grid_matches_pixel_centres(tmp_path, rng):
    raw = codes(rng, (60, 80))
    t = from_origin(LON0, LAT0, DEG, DEG)
    path = write_tif(tmp_path / "labels.tif", raw, "EPSG:4326", t, nodata=NODATA)
    # a 10 m UTM grid that overhangs the raster's east and south edges
    tr = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    x, y = tr.transform(LON0 + 40 * DEG, LAT0 - 30 * DEG)
    x0, y0 = round(x / 10) * 10, round(y / 10) * 10
    grid = PixelGrid(UTM, (10.0, 0.0, x0, 0.0, -10.0, y0), 64, 64)
    got = read_label_raster(path, grid, MAP)
    assert got.dtype == np.uint8 and got.shape == (64, 64)
    expected = expected_on(grid, raw, "EPSG:4326", t, NODATA, {0: IGNORE, 1: 0, 2: 1})
    # nearest neighbour: only pixel centres within float noise of a source edge may differ
    assert np.mean(got != expected) < 0.002
    assert set(np.unique(got)) == {0, 1, IGNORE}
    assert (got[-5:, :] == IGNORE).all() and (got[:, -5:] == IGNORE).all()  # outside


@pytest.mark.parametrize("nodata", [NODATA, None])
def test_label_raster_offset_grid_same_crs_is_exact(tmp_path, rng, nodata):
    raw = codes(rng, (40, 50), with_nodata=nodata is not None)
    t = from_origin(X0, Y0, 10.0, 10.0)
    path = write_tif(tmp_path / "labels.tif", raw, UTM, t, nodata=nodata)
    # 3 columns west of and 2 rows north of the raster: those pixels lie outside it
    grid = PixelGrid(UTM, (10.0, 0.0, X0 - 30, 0.0, -10.0, Y0 + 20), 32, 32)
    got = read_label_raster(path, grid, MAP)
    expected = np.full((32, 32), IGNORE, np.uint8)
    inner = LabelMap.parse(MAP).apply(raw[:30, :29])
    if nodata is not None:
        inner[raw[:30, :29] == nodata] = IGNORE
    expected[2:, 3:] = inner
    np.testing.assert_array_equal(got, expected)
    assert (got[:2] == IGNORE).all() and (got[:, :3] == IGNORE).all()


def test_label_raster_is_picklable_and_reusable(tmp_path, rng):
    raw = codes(rng, (40, 40))
    path = write_tif(tmp_path / "labels.tif", raw, UTM, from_origin(X0, Y0, 10, 10),
                     nodata=NODATA)
    grid = PixelGrid(UTM, (10.0, 0.0, X0 + 50, 0.0, -10.0, Y0 - 50), 16, 16)
    lr = LabelRaster(path, MAP).open()
    first = lr.read(grid)
    clone = pickle.loads(pickle.dumps(lr))
    assert clone._ds is None and clone == lr
    np.testing.assert_array_equal(clone.read(grid), first)
    np.testing.assert_array_equal(lr.read(grid), first)  # the same open dataset again
    lr.close()
    clone.close()
    lr.close()  # idempotent
    assert lr.to_dict() == {"path": path, "band": 1, "map": LabelMap.parse(MAP).to_dict()}


def test_label_raster_errors_name_the_file_and_the_fix(tmp_path):
    grid = PixelGrid(UTM, (10.0, 0.0, X0, 0.0, -10.0, Y0), 8, 8)
    missing = str(tmp_path / "nope.tif")
    with pytest.raises(DataNotFoundError, match="nope.tif.*check the path"):
        read_label_raster(missing, grid, MAP)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(InputError, match="corrupt.tif.*gdal_translate"):
        read_label_raster(str(corrupt), grid, MAP)
    floats = write_tif(tmp_path / "float.tif", np.ones((8, 8), np.float32), UTM,
                       from_origin(X0, Y0, 10, 10))
    with pytest.raises(InputError, match=r"float\.tif.*float32.*integer class codes.*-ot"):
        read_label_raster(floats, grid, MAP)
    no_crs = write_tif(tmp_path / "nocrs.tif", np.ones((8, 8), np.uint8), None,
                       from_origin(X0, Y0, 10, 10))
    with pytest.raises(CRSError, match="nocrs.tif.*a_srs"):
        read_label_raster(no_crs, grid, MAP)
    ok = write_tif(tmp_path / "ok.tif", np.ones((8, 8), np.uint8), UTM,
                   from_origin(X0, Y0, 10, 10))
    with pytest.raises(InputError, match="has 1 band.*band 2"):
        read_label_raster(ok, grid, MAP, band=2)
    with pytest.raises(ConfigError, match="1-based"):
        LabelRaster(ok, MAP, band=0)


def test_check_label_raster_footprint_against_the_region(tmp_path, rng):
    path = write_tif(tmp_path / "labels.tif", codes(rng, (60, 80)), "EPSG:4326",
                     from_origin(LON0, LAT0, DEG, DEG), nodata=NODATA)
    info = check_label_raster(path, parse_bbox("85.301,28.146,85.31,28.16"), MAP)
    assert info.crs == "EPSG:4326" and info.dtype == "uint16" and info.nodata == NODATA
    assert (info.width, info.height) == (80, 60)
    assert info.bounds_wgs84 == pytest.approx((LON0, LAT0 - 60 * DEG, LON0 + 80 * DEG, LAT0))
    assert info.to_dict()["path"] == path
    with pytest.raises(RegionError, match="labels.tif.*does not cover.*bbox"):
        check_label_raster(path, parse_bbox("86.0,28.0,86.1,28.1"))
    with pytest.raises(ConfigError, match="rock"):
        check_label_raster(path, None, "1=rock")


def test_label_raster_from_gcs(gcs_bucket, tmp_path, rng):
    from pipelines import fsio

    raw = codes(rng, (20, 20))
    local = write_tif(tmp_path / "labels.tif", raw, UTM, from_origin(X0, Y0, 10, 10),
                      nodata=NODATA)
    url = f"{gcs_bucket}/labels/labels.tif"
    fsio.put_file(local, url)
    grid = PixelGrid(UTM, (10.0, 0.0, X0, 0.0, -10.0, Y0), 20, 20)
    np.testing.assert_array_equal(read_label_raster(url, grid, MAP),
                                  read_label_raster(local, grid, MAP))
    with pytest.raises(DataNotFoundError, match="bucket"):
        read_label_raster(f"{gcs_bucket}/labels/missing.tif", grid, MAP)


# --------------------------------------------------------------------------- patches
SPEC = GridSpec(32645, 10.0, 256, 0)
KEY = ChunkKey(32645, 1340, 60)


def _raster_labels():
    """A 256 x 256 chunk of 64 px patches, labels as a label raster gives them.

    Row 0 of patches: (0,0) landslide + background + ignore; (0,1) all ignore; (0,2)
    background + ignore; (0,3) landslide only on invalid pixels, ignore elsewhere.
    Everything else is background.
    """
    mask = np.zeros((256, 256), np.uint8)
    valid = np.ones((256, 256), bool)
    mask[0:64, 0:32] = IGNORE
    mask[40:50, 40:50] = 1
    mask[0:64, 64:128] = IGNORE
    mask[0:64, 128:160] = IGNORE
    mask[0:64, 192:256] = IGNORE
    mask[0:4, 192:256] = 1
    valid[0:4, 192:256] = False
    return mask, valid


def test_cut_patches_keeps_ignore_and_drops_unlabelled_patches(rng):
    data = rng.random((2, 256, 256), dtype=np.float32)
    mask, valid = _raster_labels()
    grid = SPEC.chunk_grid(KEY)
    patches, stats = cut_patches(KEY, data, valid, mask, grid,
                                 PatchRules(size=64, negative_fraction=1.0))
    assert stats.candidates == 16
    assert stats.dropped_unlabelled == 2  # (0,1) all ignore; (0,3) labelled only where invalid
    assert stats.kept_positive == 1 and stats.kept_negative == 13
    assert stats.dropped_nodata == stats.dropped_negative == 0
    by = {p.key.rsplit("/", 1)[1]: p for p in patches}
    assert "00000_00064" not in by and "00000_00192" not in by
    p00 = by["00000_00000"]
    assert p00.positive
    np.testing.assert_array_equal(p00.mask, mask[:64, :64])  # 255 kept, labels unchanged
    p02 = by["00000_00128"]
    assert not p02.positive and (p02.mask[:, :32] == IGNORE).all()
    assert (p02.mask[:, 32:] == 0).all()
    # only the landslide class and the ignore value are counted per kept patch
    assert sum(int((p.mask == 1).sum()) for p in patches) == 100


def test_cut_patches_ignore_does_not_count_as_positive_and_nodata_rule_is_unchanged(rng):
    data = rng.random((1, 256, 256), dtype=np.float32)
    mask = np.full((256, 256), IGNORE, np.uint8)
    mask[100:110, 100:110] = 0
    valid = np.ones((256, 256), bool)
    valid[192:, 192:] = False  # patch (3,3) has no valid pixel at all
    grid = SPEC.chunk_grid(KEY)
    patches, stats = cut_patches(KEY, data, valid, mask, grid,
                                 PatchRules(size=64, negative_fraction=1.0,
                                            max_nodata_fraction=1.0))
    # 255 > 0, yet never positive; the all-invalid patch is left to the nodata rule (kept
    # here, as for vector labels); the 14 other all-ignore patches are dropped
    assert stats.kept_positive == 0 and stats.kept_negative == 2
    assert stats.dropped_unlabelled == 14
    assert all(not p.positive for p in patches)
    # vector labels (no 255): same selection as before, nothing dropped as unlabelled
    vec = np.zeros((256, 256), np.uint8)
    vec[10:20, 10:20] = 1
    _, st = cut_patches(KEY, data, valid, vec, grid, PatchRules(size=64, negative_fraction=1.0,
                                                               max_nodata_fraction=1.0))
    assert st.dropped_unlabelled == 0 and st.kept_positive == 1 and st.kept_negative == 15


# --------------------------------------------------------------------------- scoring
def test_ignored_pixels_from_a_label_raster_are_never_scored(rng):
    import tensorflow as tf

    from model import losses, metrics
    from model.train import BestThresholdF1

    mask, valid = _raster_labels()
    patches, _ = cut_patches(KEY, rng.random((1, 256, 256), dtype=np.float32), valid, mask,
                             SPEC.chunk_grid(KEY), PatchRules(size=64, negative_fraction=1.0))
    y_true = np.stack([p.mask for p in patches])[..., None].astype(np.float32)
    assert (y_true == IGNORE).any() and (y_true == 1).any()
    prob = rng.random(y_true.shape).astype(np.float32)
    other = prob.copy()
    ignored = y_true == IGNORE
    other[ignored] = 1.0 - prob[ignored]  # very different predictions where ignored

    def values(p: np.ndarray) -> list[float]:
        out = [float(losses.get_loss(n)(tf.constant(y_true), tf.constant(p)))
               for n in losses.LOSSES]
        for metric in [*metrics.landslide_metrics(0.5), BestThresholdF1(bins=50)]:
            metric.update_state(tf.constant(y_true), tf.constant(p))
            out.append(float(metric.result()))
        out.extend(metrics.confusion_counts(y_true, p, 0.5).values())
        out.append(metrics.best_threshold(y_true, p)[1])
        return out

    np.testing.assert_allclose(values(prob), values(other), rtol=1e-6)
    # and the pixel metrics of the comparison: 255 in an integer mask counts nowhere
    ref = mask.copy()
    pred = (rng.random(mask.shape) < 0.5).astype(np.uint8)
    keep = mask != IGNORE
    a = cm.pixel_counts(ref, pred, pixel_area_m2=100.0)
    b = cm.pixel_counts(np.where(keep, ref, 0), pred, keep, 100.0)
    assert a == b and a.n_valid == int(keep.sum())
    assert cm.pixel_counts(ref, pred, valid).n_valid == int((keep & valid).sum())


# --------------------------------------------------------------------------- real data
def test_chittagong_label_tile_onto_a_10m_utm_grid(chittagong_dir):
    path = chittagong_dir / "labels" / "000000000001.tif"
    if not path.exists():
        pytest.skip(f"{path} is not in this copy of chittagong-s2")
    info = check_label_raster(str(path), parse_bbox("91.76,22.47,91.80,22.50"), MAP)
    assert info.crs == "EPSG:4326" and info.dtype == "uint16"
    with rasterio.open(path) as src:
        raw = src.read(1)
    w, s, e, n = info.bounds_wgs84
    epsg = utm_epsg((w + e) / 2, (s + n) / 2)
    tr = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    x0, y1 = tr.transform(w, n)
    x1, y0 = tr.transform(e, s)
    x0, y1 = np.floor(x0 / 10) * 10, np.ceil(y1 / 10) * 10
    grid = PixelGrid(f"EPSG:{epsg}", (10.0, 0.0, x0, 0.0, -10.0, y1),
                     int(np.ceil((x1 - x0) / 10)), int(np.ceil((y1 - y0) / 10)))
    got = read_label_raster(str(path), grid, MAP)
    counts = {v: int((got == v).sum()) for v in (0, 1, IGNORE)}
    assert set(np.unique(got)) == {0, 1, IGNORE}
    assert counts[IGNORE] > counts[0] + counts[1]  # sparse labels: most pixels unlabelled
    # ~10 m both ways: class areas are close to the source's pixel counts
    for cls, code in ((0, 1), (1, 2)):
        n_src = int((raw == code).sum())
        assert abs(counts[cls] - n_src) < 0.35 * n_src

"""Patch cutting, selection, spatially blocked splits and mergeable band statistics."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from pipelines.errors import ConfigError
from pipelines.geo.grid import WGS84, ChunkKey, GridSpec, Region, parse_bbox, plan_chunks, to_crs
from pipelines.geo.patches import (
    IGNORE,
    SPLITS,
    BandStats,
    PatchRules,
    SplitPlan,
    channels_last,
    cut_patches,
    kept_pixels,
)

SPEC = GridSpec(32645, 10.0, 256, 0)
SPEC64 = GridSpec(32645, 10.0, 64, 0)
KEY = ChunkKey(32645, 1340, 60)


def _chunks():
    return plan_chunks(parse_bbox("85.20,28.10,85.40,28.30"), 10, 256, 0)


def test_split_is_deterministic_blocked_and_near_target():
    chunks = _chunks()
    plan = SplitPlan((0.6, 0.2, 0.2), block=2, seed=7)
    a = plan.assign(chunks)
    assert a == plan.assign(list(reversed(chunks)))
    assert a != SplitPlan((0.6, 0.2, 0.2), block=2, seed=8).assign(chunks)
    # every chunk of a 2x2 block shares the split
    for c in chunks:
        mates = [d for d in chunks if plan.block_of(d.key) == plan.block_of(c.key)]
        assert {a[d.key] for d in mates} == {a[c.key]}
    n = len(chunks)
    for split, frac in zip(SPLITS, plan.fractions):
        share = sum(1 for v in a.values() if v == split) / n
        assert share == pytest.approx(frac, abs=4 / n + 0.02)


def test_split_patches_never_overlap_across_splits():
    chunks = _chunks()
    a = SplitPlan((0.5, 0.25, 0.25), block=1, seed=1).assign(chunks)
    boxes = {s: shapely.union_all([box(*c.grid.bounds) for c in chunks if a[c.key] == s])
             for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert boxes[s].intersection(boxes[t]).area == 0


def test_split_polygons_assign_by_chunk_centre():
    chunks = _chunks()
    first = chunks[0]
    centre = to_crs(box(*first.grid.bounds).centroid, first.grid.crs, WGS84, 0)
    val = Region.from_geometry("v", centre.buffer(1e-4))
    a = SplitPlan(polygons={"val": shapely.to_wkb(val.geometry)}).assign(chunks)
    assert a[first.key] == "val"
    assert sum(v == "val" for v in a.values()) == 1
    assert set(a.values()) == {"train", "val"}


def test_bad_split_and_rules():
    with pytest.raises(ConfigError, match="sum to 1"):
        SplitPlan((0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="Unknown split"):
        SplitPlan(polygons={"holdout": b""})
    with pytest.raises(ConfigError, match="Patch size"):
        PatchRules(size=100)
    with pytest.raises(ConfigError, match="negative_fraction"):
        PatchRules(negative_fraction=1.5)


def _arrays(rng):
    data = rng.random((3, 256, 256), dtype=np.float32)
    valid = np.ones((256, 256), bool)
    mask = np.zeros((256, 256), np.uint8)
    mask[10:20, 10:20] = 1  # landslide in patch (0, 0) of 64 px
    valid[128:, 128:] = False  # patch (2,2),(2,3),(3,2),(3,3) are all nodata
    valid[64:70, 64:128] = False  # 6/64 rows invalid in patch (1,1): ~9% nodata
    return data, valid, mask


def test_cut_patches_selection_counts_and_georeferencing(rng):
    data, valid, mask = _arrays(rng)
    grid = SPEC.chunk_grid(KEY)
    rules = PatchRules(size=64, negative_fraction=0.0, max_nodata_fraction=0.1)
    patches, stats = cut_patches(KEY, data, valid, mask, grid, rules)
    assert stats.candidates == 16
    assert stats.dropped_nodata == 4
    assert [p.key for p in patches] == [f"{KEY}/00000_00000"]
    assert stats.kept_positive == 1 and stats.kept_negative == 0 and stats.dropped_negative == 11
    p = patches[0]
    assert p.positive and p.image.shape == (64, 64, 3) and p.mask.sum() == 100
    np.testing.assert_array_equal(p.image[..., 1], data[1, :64, :64])
    assert p.grid.transform == grid.transform
    # keep every negative: invalid pixels become IGNORE in the mask and 0 in the image
    all_p, st = cut_patches(KEY, data, valid, mask, grid, PatchRules(size=64, negative_fraction=1))
    assert st.kept_negative == 11 and len(all_p) == 12
    p11 = next(q for q in all_p if q.key.endswith("00064_00064"))
    assert (p11.mask[:6] == IGNORE).all() and (p11.image[:6] == 0).all()
    assert p11.grid.transform[2] == grid.transform[2] + 640
    assert p11.grid.transform[5] == grid.transform[5] - 640


def test_negative_selection_is_seeded_fraction(rng):
    data = rng.random((1, 256, 256), dtype=np.float32)
    valid = np.ones((256, 256), bool)
    mask = np.zeros((256, 256), np.uint8)
    grid = SPEC.chunk_grid(KEY)
    kept = []
    for seed in range(40):
        rules = PatchRules(size=32, negative_fraction=0.3, seed=seed)
        ps, st = cut_patches(KEY, data, valid, mask, grid, rules)
        kept.append(st.kept_negative / st.candidates)
        again, _ = cut_patches(KEY, data, valid, mask, grid, rules)
        assert [p.key for p in ps] == [p.key for p in again]
    assert np.mean(kept) == pytest.approx(0.3, abs=0.03)


def test_band_stats_merge_equals_whole(rng):
    bands = ("B4", "DEM")
    imgs = [np.stack([rng.random((32, 32)) * 0.3, 2000 + rng.random((32, 32)) * 900], -1)
            for _ in range(5)]
    valids = [rng.random((32, 32)) > 0.1 for _ in range(5)]
    a = BandStats(bands)
    for im, v in zip(imgs[:2], valids[:2]):
        a.add(im, v)
    b = BandStats(bands)
    for im, v in zip(imgs[2:], valids[2:]):
        b.add(im, v)
    merged = a.merge(b).summary()
    px = np.concatenate([im[v] for im, v in zip(imgs, valids)])
    for i, band in enumerate(bands):
        assert merged[band]["count"] == px.shape[0]
        assert merged[band]["mean"] == pytest.approx(px[:, i].mean(), rel=1e-9)
        assert merged[band]["std"] == pytest.approx(px[:, i].std(), rel=1e-6)
        assert merged[band]["min"] == pytest.approx(px[:, i].min())
        assert merged[band]["max"] == pytest.approx(px[:, i].max())
        lo, hi = (-0.2, 2.0) if band == "B4" else (-500.0, 9000.0)
        tol = (hi - lo) / 1024 * 1.01
        assert merged[band]["p50"] == pytest.approx(np.percentile(px[:, i], 50), abs=tol)
        assert merged[band]["p99"] == pytest.approx(np.percentile(px[:, i], 99), abs=tol)


def test_channels_last_zeroes_invalid_and_non_finite_and_patches_are_views(rng):
    data = rng.random((3, 64, 64), dtype=np.float32)
    data[1, 5, 7] = np.inf  # a stray non-finite value in a "valid" pixel
    valid = np.ones((64, 64), bool)
    valid[10:12] = False
    hwc = channels_last(data, valid)
    assert hwc.shape == (64, 64, 3) and hwc.flags.c_contiguous
    assert (hwc[10:12] == 0).all() and hwc[5, 7, 1] == 0
    np.testing.assert_array_equal(hwc[20, :, 2], data[2, 20])
    patches, _ = cut_patches(KEY, data, valid, np.zeros((64, 64), np.uint8), SPEC64.chunk_grid(KEY),
                             PatchRules(size=32, negative_fraction=1.0, max_nodata_fraction=1.0))
    assert [(p.row, p.col) for p in patches] == [(0, 0), (0, 32), (32, 0), (32, 32)]
    np.testing.assert_array_equal(patches[3].image, hwc[32:, 32:])
    assert data[1, 5, 7] == np.inf  # the source array is left alone
    one = data[:1].copy()  # one band: its channels-last view is already contiguous
    single = channels_last(one, valid)
    assert (single[10:12] == 0).all() and not np.shares_memory(single, one)
    assert (one[0, 10:12] != 0).all()


def test_kept_pixels_counts_overlapping_patches_once(rng):
    data = rng.random((2, 64, 64), dtype=np.float32)
    valid = np.ones((64, 64), bool)
    valid[0, 0] = False
    mask = np.zeros((64, 64), np.uint8)
    mask[40, 40] = 1
    patches, _ = cut_patches(KEY, data, valid, mask, SPEC64.chunk_grid(KEY),
                             PatchRules(size=32, stride=16, negative_fraction=0.0))
    kept = kept_pixels(patches, valid)
    expect = np.zeros((64, 64), bool)
    for p in patches:
        expect[p.row:p.row + 32, p.col:p.col + 32] = True
    assert len(patches) > 1 and np.array_equal(kept, expect & valid)


def test_band_major_stats_equal_channel_last_stats(rng):
    bands = ("B4", "DEM", "slope")
    img = np.stack([rng.random((40, 50)) * 0.3, 3000 + rng.random((40, 50)) * 10,
                    rng.random((40, 50)) * 60], -1).astype(np.float32)
    valid = rng.random((40, 50)) > 0.2
    a = BandStats(bands).add(img, valid).summary()
    b = BandStats(bands).add_bands(np.moveaxis(img, -1, 0)[:, valid]).summary()
    assert a == b
    px = img[valid].astype(np.float64)
    # float64 sums: a DEM 3000 m high with a 3 m spread keeps its variance
    assert a["DEM"]["std"] == pytest.approx(px[:, 1].std(), rel=1e-6)
    with pytest.raises(ValueError, match="expected"):
        BandStats(bands).add_bands(np.zeros((2, 5), np.float32))


def _labelled_boxes(patches) -> list:
    """Map boxes of the labelled (not ignored) pixels of each patch."""
    out = []
    for p in patches:
        a, _, c, _, e, f = p.transform
        rows, cols = np.nonzero(p.mask != 255)
        if len(rows):
            out.append(box(c + a * cols.min(), f + e * (rows.max() + 1),
                           c + a * (cols.max() + 1), f + e * rows.min()))
    return out


@pytest.mark.parametrize("buffer_px", [0, 16])
def test_split_buffer_keeps_splits_apart(tiny_world, tmp_path, buffer_px):
    """With --split-buffer no labelled pixel of one split comes near another split's."""
    import shapely

    from pipelines import cli
    from tests.conftest import read_shards

    out = tmp_path / "shards"
    assert cli.main([
        "export", "--source", "synthetic", "--world", str(tiny_world["dir"]),
        "--aoi", tiny_world["aoi"], "--inventory", str(tiny_world["dir"] / "inventory_2016.gpkg"),
        "--start", "2016-01-01", "--end", "2016-12-31", "--bands", "B4,B8",
        "--chunk-size", "64", "--patch-size", "32", "--stride", "16",
        "--negative-fraction", "1", "--max-nodata", "1", "--split", "0.5,0.5,0",
        "--split-block", "1", "--split-buffer", str(buffer_px), "--compression", "none",
        "--out", str(out)]) == 0
    shards = read_shards(out)
    train, val = _labelled_boxes(shards["train"]), _labelled_boxes(shards["val"])
    assert train and val
    gap = min(shapely.distance(t, v) for t in train for v in val)
    if buffer_px:  # pixels whose centres lie outside the buffers: half a pixel of slack
        assert gap >= 2 * buffer_px * 10.0 - 10.0, gap
    else:
        assert gap == 0.0  # without a buffer, blocks of different splits touch


def test_buffer_splits_leaves_chunks_among_their_own_split_alone():
    from pipelines.geo.grid import load_region, plan_chunks
    from pipelines.geo.patches import buffer_splits

    region = load_region("85.30,28.10,85.33,28.13")
    chunks = plan_chunks(region, 10.0, 64, halo=0)
    rows = sorted({c.key.row for c in chunks})
    # the top row is "val", everything else "train"
    splits = {c.key: ("val" if c.key.row == rows[0] else "train") for c in chunks}
    kept = {c.key: c for c in buffer_splits(chunks, splits, 8)}
    for c in chunks:
        near_val = any(splits.get(k) == "val" for k in splits
                       if abs(k.row - c.key.row) <= 1 and abs(k.col - c.key.col) <= 1)
        if splits[c.key] == "train" and not near_val:
            assert kept[c.key].region.equals(c.region)  # untouched
        elif c.key in kept:
            assert kept[c.key].region.area < c.region.area  # shrunk towards the other split


def test_buffer_splits_keeps_splits_apart_across_utm_zones():
    """Chunks of two UTM zones meet at 90 E: a split buffer holds across the zone edge too
    (measured in one CRS), and removes no more than the buffer there."""
    from pipelines.geo.patches import buffer_splits

    chunks = plan_chunks(parse_bbox("89.95,28.0,90.05,28.05"), 10.0, 128, halo=0)
    assert {c.key.epsg for c in chunks} == {32645, 32646}
    splits = SplitPlan((0.5, 0.25, 0.25), block=1, seed=3).assign(chunks)
    kept = buffer_splits(chunks, splits, 16)
    before = {c.key: to_crs(c.region, c.spec.crs, "EPSG:32645") for c in chunks}
    after = {c.key: to_crs(c.region, c.spec.crs, "EPSG:32645") for c in kept}

    def across(regions):  # pairs of different splits in different zones, and their gaps
        keys = sorted(regions)
        return {(a, b): regions[a].distance(regions[b]) for i, a in enumerate(keys)
                for b in keys[i + 1:] if a.epsg != b.epsg and splits[a] != splits[b]}

    assert min(across(before).values()) == pytest.approx(0.0, abs=1e-6)  # they touched
    gaps = across(after)
    assert gaps and min(gaps.values()) >= 2 * 16 * 10.0 - 0.5, min(gaps.values())
    # across the edge a chunk loses only what lies within the buffer of the other zone's
    # chunks of another split (their parts of the region, not their overlapping boxes)
    by_zone = {c.key: c for z in (32645, 32646)
               for c in buffer_splits([c for c in chunks if c.key.epsg == z], splits, 16)}
    kept_by_key = {c.key: c for c in kept}
    assert len(kept_by_key) <= len(by_zone)
    for key, c in by_zone.items():
        lost = c.region.difference(kept_by_key[key].region) if key in kept_by_key else c.region
        if lost.area < 1e-6:
            continue
        near = shapely.union_all([to_crs(n.region, n.spec.crs, c.spec.crs) for n in chunks
                                  if n.key.epsg != key.epsg and splits[n.key] != splits[key]])
        assert near.buffer(16 * 10.0 + 1.0).contains(lost), key

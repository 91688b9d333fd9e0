"""bench/chittagong.py: its folds, baselines and the skip without the dataset."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return load_script("bench/chittagong.py")


def test_strips_tile_the_area_north_to_south_without_overlap(tmp_path: Path) -> None:
    b = _bench()
    bounds = (91.7, 22.3, 91.9, 22.5)
    paths = b.strip_files(bounds, 5, str(tmp_path))
    strips = [gpd.read_file(p) for p in paths]
    assert all(s.crs.to_epsg() == 4326 and len(s) == 1 for s in strips)
    geoms = [s.geometry.iloc[0] for s in strips]
    union = shapely.union_all(geoms)
    assert union.bounds == pytest.approx(bounds)
    assert union.area == pytest.approx(shapely.box(*bounds).area, rel=1e-9)
    assert all(shapely.intersection(a, c).area < 1e-12
               for i, a in enumerate(geoms) for c in geoms[i + 1:])
    tops = [g.bounds[3] for g in geoms]
    assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(22.5)


def test_baseline_threshold_is_the_best_f1_on_its_pixels() -> None:
    b = _bench()
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.4).astype(np.int64)
    score = np.where(y == 1, rng.uniform(0.5, 1.0, 400), rng.uniform(0.0, 0.6, 400))
    t = b.best_threshold(score, y)
    best = b.scores(score >= t, y)["f1"]
    for other in np.linspace(0.0, 1.0, 41):  # no threshold does better
        assert b.scores(score >= other, y)["f1"] <= best + 1e-12
    assert 0.5 <= t <= 0.6 and best > 0.9
    s = b.scores(np.ones(len(y), bool), y)  # every pixel a landslide: recall 1
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(y.mean())


def test_ndvi_uses_the_red_and_nir_bands() -> None:
    b = _bench()
    x = np.zeros((2, len(b.BANDS)), np.float32)
    x[:, b.BANDS.index("B4")] = [0.1, 0.3]
    x[:, b.BANDS.index("B8")] = [0.3, 0.1]
    assert np.allclose(b.ndvi(x), [0.5, -0.5])


def test_skips_cleanly_without_the_dataset(tmp_path: Path, capsys) -> None:
    code = _bench().main(["--data", str(tmp_path / "absent"),
                          "--json", str(tmp_path / "out.json")])
    assert code == 0 and "skipped" in capsys.readouterr().out
    assert not (tmp_path / "out.json").exists()


class _ColumnModel:
    """A stand-in for the U-Net: the probability of a pixel is 0.1 + 0.1 x its column in
    the patch (so the same map pixel gets another value in each patch that holds it)."""

    def predict(self, x, **kwargs):
        h, w = np.asarray(x).shape[1:3]
        p = 0.1 + 0.1 * np.arange(w, dtype=np.float32)
        return np.broadcast_to(p[None, None, :, None], (len(x), h, w, 1)).copy()


def _write_overlapping_patches(root: Path, bands: tuple[str, ...]) -> None:
    """Two 4 x 4 patches of one 10 m grid, the second 2 px east of the first (they share
    map columns 2 and 3); map row 3 unlabelled (255), label 1 from map column 3 on."""
    import tensorflow as tf

    from model.schema import encode_patch

    (root / "test").mkdir(parents=True)
    path = str(root / "test" / "test-00000-of-00001.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as out:
        for name, col0 in (("a", 0), ("b", 2)):
            rows, cols = np.mgrid[0:4, 0:4]
            cols = cols + col0  # map columns
            image = np.zeros((4, 4, len(bands)), np.float32)
            image[..., bands.index("B4")] = 0.01 * cols  # the map column, read back below
            image[..., bands.index("B8")] = 0.5 + 0.01 * rows
            mask = np.where(cols >= 3, 1, 0).astype(np.uint8)
            mask[3] = 255
            out.write(encode_patch(image, mask, bands, f"chunk/{name}", "EPSG:32646",
                                   (10.0, 0.0, 500_000.0 + 10 * col0, 0.0, -10.0, 2_500_000.0),
                                   "2020-01-01"))


def test_overlapping_patches_score_each_map_pixel_once_with_the_mean_probability(
        tmp_path: Path) -> None:
    b = _bench()
    _write_overlapping_patches(tmp_path, b.BANDS)
    x, y, p = b.labelled_pixels(str(tmp_path), "test", _ColumnModel())
    assert p is not None
    assert len(y) == len(p) == len(x) == 3 * 6  # 3 labelled rows x 6 map columns, not 3 x 8
    cols = np.rint(x[:, b.BANDS.index("B4")] * 100).astype(int)
    rows = np.rint((x[:, b.BANDS.index("B8")] - 0.5) * 100).astype(int)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(r, c) for r in range(3)
                                                         for c in range(6)]
    assert np.array_equal(y, (cols >= 3).astype(np.int64))
    # column c is column c of patch a (c < 4) and column c - 2 of patch b (c >= 2)
    expected = {0: 0.1, 1: 0.2, 2: (0.3 + 0.1) / 2, 3: (0.4 + 0.2) / 2, 4: 0.3, 5: 0.4}
    assert np.allclose(p, [expected[c] for c in cols.tolist()])
    x2, y2, none = b.labelled_pixels(str(tmp_path), "test")  # the baselines' pixels: the same
    assert none is None and np.array_equal(x2, x) and np.array_equal(y2, y)

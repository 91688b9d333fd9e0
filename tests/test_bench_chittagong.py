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

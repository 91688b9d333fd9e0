"""Window lattice and blending: chunk-independent by construction, checked by brute force."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import ConfigError
from pipelines.geo.blend import (
    Lattice,
    blend,
    chunk_windows,
    cut_windows,
    global_offset,
    window_weight,
)
from pipelines.geo.grid import ORIGIN_X, ORIGIN_Y, PixelGrid

PS = 10.0


def _grid(row0: int, col0: int, h: int, w: int) -> PixelGrid:
    """A grid whose top-left pixel has global coordinates (row0, col0)."""
    return PixelGrid("EPSG:32645", (PS, 0.0, ORIGIN_X + col0 * PS, 0.0, -PS,
                                    ORIGIN_Y - row0 * PS), w, h)


def _model(windows: np.ndarray) -> np.ndarray:
    """A context-dependent stand-in for a network: each pixel depends on its whole window."""
    x = windows[..., 0] - 0.5 * windows[..., 1]
    ctx = windows.mean(axis=(1, 2, 3))[:, None, None]
    edge = windows[:, :1, :, 0].mean(axis=(1, 2))[:, None, None]
    return 1.0 / (1.0 + np.exp(-(3.0 * x + 2.0 * ctx - edge)))


def _brute_force(image: np.ndarray, row0: int, col0: int, lat: Lattice,
                 out: tuple[int, int, int, int]) -> np.ndarray:
    """Blend of every lattice window covering each pixel of ``out`` = (r0, c0, h, w), with
    ``image`` holding global pixels from (row0, col0); written without the module's helpers.
    """
    r0, c0, h, w = out
    weight = window_weight(lat.window, lat.floor).astype(np.float64)
    acc = np.zeros((h, w))
    wsum = np.zeros((h, w))
    s, W = lat.stride, lat.window
    for gr in range(((r0 - W + 1) // s - 1) * s, r0 + h, s):
        for gc in range(((c0 - W + 1) // s - 1) * s, c0 + w, s):
            if gr + W <= r0 or gc + W <= c0:
                continue
            win = image[gr - row0:gr - row0 + W, gc - col0:gc - col0 + W]
            p = _model(win[None])[0]
            for i in range(W):
                for j in range(W):
                    rr, cc = gr + i - r0, gc + j - c0
                    if 0 <= rr < h and 0 <= cc < w:
                        acc[rr, cc] += weight[i, j] * p[i, j]
                        wsum[rr, cc] += weight[i, j]
    return acc / wsum


def _sweep(image: np.ndarray, row0: int, col0: int, lat: Lattice, chunk: int,
           area: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``area`` into chunks on the global chunk grid and blend each independently."""
    r0, c0, h, w = area
    halo = lat.halo(chunk)
    out = np.full((h, w), np.nan, dtype=np.float32)
    weight = window_weight(lat.window, lat.floor)
    for cr in range(r0 // chunk, (r0 + h - 1) // chunk + 1):
        for cc in range(c0 // chunk, (c0 + w - 1) // chunk + 1):
            gr, gc = cr * chunk - halo, cc * chunk - halo
            read = _grid(gr, gc, chunk + 2 * halo, chunk + 2 * halo)
            sub = image[gr - row0:gr - row0 + chunk + 2 * halo,
                        gc - col0:gc - col0 + chunk + 2 * halo]
            assert sub.shape[:2] == read.shape
            origins = chunk_windows(lat, read, halo)
            probs = _model(cut_windows(sub, origins, lat.window))
            part = blend(probs, origins, weight, halo, (chunk, chunk))
            # paste the part of the chunk inside the area
            ys, xs = cr * chunk - r0, cc * chunk - c0
            y0, x0 = max(ys, 0), max(xs, 0)
            y1, x1 = min(ys + chunk, h), min(xs + chunk, w)
            out[y0:y1, x0:x1] = part[y0 - ys:y1 - ys, x0 - xs:x1 - xs]
    return out


def test_weight_is_smooth_positive_and_partitions_with_half_overlap():
    w = window_weight(16, floor=0.01)
    assert w.shape == (16, 16) and w.dtype == np.float32
    assert (w > 0).all() and w.min() == pytest.approx(w[0, 0])
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w[7, 7] == w.max() and w[0, 0] < 0.02 * w.max()
    # Hann windows shifted by half their width sum to a constant (no seams in weight)
    one = np.sqrt(np.diag(window_weight(16, floor=1e-9)).astype(np.float64))
    total = one[8:] + one[:8]
    np.testing.assert_allclose(total, total[0], rtol=1e-5)


def test_lattice_from_overlap_and_halo():
    lat = Lattice.from_overlap(32, 0.5)
    assert (lat.window, lat.stride) == (32, 16)
    assert lat.halo(64) == 16  # chunk edges on the lattice: window - stride
    assert Lattice.from_overlap(32, 0.0).halo(64) == 0
    assert Lattice.from_overlap(128, 0.25).halo(480) == 96  # stride 96: one window before
    assert Lattice.from_overlap(32, 0.5).halo(40) == 32  # off-lattice chunks: whole window
    with pytest.raises(ConfigError, match="overlap"):
        Lattice.from_overlap(32, 1.0)
    with pytest.raises(ConfigError, match="stride"):
        Lattice(32, 40)
    np.testing.assert_array_equal(Lattice(8, 4).origins(10, 14), [4, 8, 12])


@pytest.mark.parametrize("window,overlap,chunks", [(16, 0.5, (16, 24, 40)),
                                                   (16, 0.25, (24, 36)),
                                                   (12, 0.0, (12, 24))])
def test_chunked_blend_equals_brute_force_whole_raster(rng, window, overlap, chunks):
    lat = Lattice.from_overlap(window, overlap)
    row0, col0 = 6800, 3200  # global pixel coordinates of the image's top-left
    image = rng.random((160, 160, 2)).astype(np.float32)
    area = (row0 + 40, col0 + 40, 70, 62)  # not aligned with any chunking
    ref = _brute_force(image, row0, col0, lat, area)
    for chunk in chunks:
        got = _sweep(image, row0, col0, lat, chunk, area)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=f"chunk {chunk}")


def test_needed_mask_drops_only_windows_that_change_nothing(rng):
    lat = Lattice.from_overlap(16, 0.5)
    halo = lat.halo(32)
    read = _grid(6400 - halo, 6400 - halo, 32 + 2 * halo, 32 + 2 * halo)
    every = chunk_windows(lat, read, halo)
    assert halo == 8 and len(every) == 25  # origins -8, 0, 8, 16, 24 on each axis
    needed = np.zeros((32, 32), dtype=bool)
    needed[3, 29] = True
    some = chunk_windows(lat, read, halo, needed=needed)
    assert 0 < len(some) < len(every)
    image = rng.random((*read.shape, 2)).astype(np.float32)
    weight = window_weight(16)
    full = blend(_model(cut_windows(image, every, 16)), every, weight, halo, (32, 32))
    part = blend(_model(cut_windows(image, some, 16)), some, weight, halo, (32, 32))
    assert part[3, 29] == pytest.approx(full[3, 29], abs=1e-6)
    assert np.isnan(part).any()  # pixels no kept window covers stay NaN
    assert len(chunk_windows(lat, read, halo, needed=np.zeros((32, 32), bool))) == 0


def test_bad_grids_and_halos_are_refused():
    lat = Lattice.from_overlap(16, 0.5)
    with pytest.raises(ConfigError, match="halo 2 is too small"):
        chunk_windows(lat, _grid(6400 - 2, 6400 - 2, 36, 36), 2)
    shifted = PixelGrid("EPSG:32645", (PS, 0.0, ORIGIN_X + 3.0, 0.0, -PS, ORIGIN_Y), 8, 8)
    with pytest.raises(ConfigError, match="not on the 10.0 m pixel lattice"):
        global_offset(shifted)
    assert global_offset(_grid(12, -7, 4, 4)) == (12, -7)
    with pytest.raises(ConfigError, match="predictions for"):
        blend(np.zeros((2, 16, 16)), np.zeros((3, 2), int), window_weight(16), 0, (16, 16))

"""Augmentation: image/mask alignment, exact permutations, determinism, tf.data graph mode."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.augment import AugmentConfig, augment
from model.errors import ConfigError
from model.schema import IGNORE_VALUE

SIZE = 24
ROWS, COLS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
GEOMETRIC = AugmentConfig(flip_h=True, flip_v=True, rot90=True, rot45=True, shear=0.3)
DIHEDRAL_ONLY = AugmentConfig(flip_h=True, flip_v=True, rot90=True)


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of an (H, W, ...) array."""
    out = []
    for k in range(4):
        r = np.rot90(a, k, axes=(0, 1))
        out += [r, r[:, ::-1]]
    return out


def _blobs(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(4):
        r, c = rng.integers(0, SIZE - 6, 2)
        mask[r:r + rng.integers(2, 7), c:c + rng.integers(2, 7)] = rng.integers(1, 3)
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_geometry_keeps_image_and_mask_aligned(seed):
    # Image channels hold each pixel's own row and column; two masks hold the same values.
    # Bilinear sampling of these ramps gives the exact source coordinate, nearest sampling
    # the nearest pixel, so they differ by at most half a pixel wherever mask != 255.
    image = np.stack([ROWS, COLS], axis=-1)
    seed_t = tf.constant([42, seed])
    out, rows = augment(image, ROWS[..., None], GEOMETRIC, seed_t)
    out_again, cols = augment(image, COLS[..., None], GEOMETRIC, seed_t)
    out, rows, cols = out.numpy(), rows.numpy()[..., 0], cols.numpy()[..., 0]
    np.testing.assert_array_equal(out, out_again.numpy())  # same seed, same transform
    valid = rows != IGNORE_VALUE
    np.testing.assert_array_equal(valid, cols != IGNORE_VALUE)
    assert valid.mean() > 0.5  # (all valid when rotation and shear make a slight zoom)
    assert np.abs(out[..., 0] - rows)[valid].max() <= 0.5 + 1e-3
    assert np.abs(out[..., 1] - cols)[valid].max() <= 0.5 + 1e-3
    assert (out[~valid] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_image_copy_of_mask_agrees_after_every_op(rng, seed):
    mask = _blobs(rng)
    image = np.stack([mask, np.ones_like(mask)], axis=-1)
    config = AugmentConfig(rot45=True, shear=0.2)
    out_image, out_mask = augment(image, mask[..., None], config, tf.constant([7, seed]))
    out_image, out_mask = out_image.numpy(), out_mask.numpy()[..., 0]
    valid = out_mask != IGNORE_VALUE
    agree = np.abs(out_image[..., 0] - out_mask) < 0.5
    assert agree[valid].mean() > 0.9  # bilinear edges of blobs may round either way
    # the label set is preserved (nearest sampling invents no class ids)
    assert set(np.unique(out_mask[valid])) <= set(np.unique(mask))
    np.testing.assert_allclose(out_image[..., 1][valid], 1.0, atol=1e-5)


def test_flips_and_rot90_are_exact_permutations(rng):
    image = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    mask = _blobs(rng)[..., None]
    seen = set()
    for seed in range(24):
        out_image, out_mask = augment(image, mask, DIHEDRAL_ONLY, tf.constant([1, seed]))
        matches = [i for i, v in enumerate(_dihedral(image)) if np.array_equal(v, out_image)]
        assert len(matches) == 1
        np.testing.assert_array_equal(out_mask.numpy(), _dihedral(mask)[matches[0]])
        seen.add(matches[0])
    assert len(seen) >= 6  # the seeds reach (nearly) all 8 orientations
    flips = {bool(np.array_equal(augment(image, mask, AugmentConfig(flip_v=False, rot90=False),
                                         tf.constant([2, s]))[0], image[:, ::-1]))
             for s in range(8)}
    assert flips == {True, False}


def test_non_square_patches_keep_their_shape(rng):
    image = rng.random((8, 16, 2), dtype=np.float32)
    for seed in range(6):
        out, mask = augment(image, np.zeros((8, 16), np.uint8), DIHEDRAL_ONLY,
                            tf.constant([0, seed]))
        assert out.shape == (8, 16, 2) and mask.shape == (8, 16)


def test_determinism_by_seed(rng):
    image = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    mask = _blobs(rng)[..., None]
    config = AugmentConfig(rot45=True, shear=0.2, blur=0.5, sharpen=0.5)
    a = augment(image, mask, config, tf.constant([5, 6]))
    b = augment(image, mask, config, tf.constant([5, 6]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    others = [augment(image, mask, config, tf.constant([5, s]))[0].numpy() for s in range(7, 10)]
    assert any(not np.array_equal(a[0].numpy(), o) for o in others)


def test_blur_and_sharpen_touch_the_image_only(rng):
    image = rng.random((SIZE, SIZE, 2), dtype=np.float32)
    mask = _blobs(rng)[..., None]
    blur = AugmentConfig(flip_h=False, flip_v=False, rot90=False, blur=1.0)
    blurred, blur_mask = augment(image, mask, blur, tf.constant([0, 0]))
    np.testing.assert_array_equal(blur_mask.numpy(), mask)
    assert blurred.numpy().std() < 0.8 * image.std()
    assert blurred.numpy().mean() == pytest.approx(image.mean(), abs=0.02)
    sharpen = AugmentConfig(flip_h=False, flip_v=False, rot90=False, sharpen=1.0)
    sharpened, sharp_mask = augment(image, mask, sharpen, tf.constant([0, 0]))
    np.testing.assert_array_equal(sharp_mask.numpy(), mask)
    assert sharpened.numpy().std() > 1.2 * image.std()
    flat = np.full((SIZE, SIZE, 2), 0.3, np.float32)  # constant stays constant at the edges
    for config in (blur, sharpen):
        np.testing.assert_allclose(augment(flat, mask, config, tf.constant([0, 0]))[0], flat,
                                   rtol=1e-6)


def test_disabled_is_identity(rng):
    image = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    mask = _blobs(rng)[..., None]
    config = AugmentConfig(rot45=True, shear=0.3, blur=1.0, enabled=False)
    out_image, out_mask = augment(image, mask, config, tf.constant([0, 0]))
    np.testing.assert_array_equal(out_image.numpy(), image)
    np.testing.assert_array_equal(out_mask.numpy(), mask)


def test_graph_mode_in_tf_data_keeps_shapes_and_dtypes(rng):
    images = rng.random((4, SIZE, SIZE, 3), dtype=np.float32)
    masks = np.stack([_blobs(rng) for _ in range(4)]).astype(np.uint8)[..., None]
    config = AugmentConfig(rot45=True, shear=0.2, blur=0.5, sharpen=0.5)

    def pipeline():
        ds = tf.data.Dataset.from_tensor_slices((images, masks)).enumerate()
        return ds.map(lambda i, xy: augment(xy[0], xy[1], config, tf.stack([i, 99])))

    ds = pipeline()
    assert ds.element_spec == (tf.TensorSpec((SIZE, SIZE, 3), tf.float32),
                               tf.TensorSpec((SIZE, SIZE, 1), tf.uint8))
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    second = [(x.numpy(), y.numpy()) for x, y in pipeline()]
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any((y == IGNORE_VALUE).any() for _, y in first)
    # eager and graph agree for the same seed
    eager = augment(images[2], masks[2], config, tf.constant([2, 99], tf.int64))
    np.testing.assert_array_equal(eager[0].numpy(), first[2][0])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shear": 1.0}, "shear"), ({"blur": 1.5}, "blur"), ({"sharpen": -0.1}, "sharpen")])
def test_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**kwargs)

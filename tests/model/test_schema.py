"""The lsm/v1 TFRecord schema: round trips, tf.data parsing, Earth Engine records, errors."""

from __future__ import annotations

import affine
import numpy as np
import pytest
import tensorflow as tf

from model import parsing, schema
from model.errors import SchemaError

BANDS = ("B2", "B3", "B4", "B8", "DEM")
# A 10 m UTM patch in zone 45N (Rasuwa) whose origin is not representable in float32.
TRANSFORM = (10.0, 0.0, 612345.6789012345, 0.0, -10.0, 3123456.7890123456)
KEY = "32645_r1342_c63/00128_00256"


def _patch(rng: np.random.Generator, size: int = 16, bands: tuple[str, ...] = BANDS):
    image = rng.normal(0.2, 0.1, size=(size, size, len(bands))).astype(np.float32)
    mask = (rng.random((size, size)) < 0.3).astype(np.uint8)
    mask[0, :3] = schema.IGNORE_VALUE
    return image, mask


def _encode(image, mask, bands=BANDS, **kw) -> bytes:
    args = {"key": KEY, "crs": "EPSG:32645", "transform": TRANSFORM, "date": "2015-05-12"}
    args.update(kw)
    return schema.encode_patch(image, mask, bands, **args)


def _ee_record(image: np.ndarray, mask: np.ndarray, bands, label: str = "landslide") -> bytes:
    """A record laid out as Earth Engine's TFRecord patch export writes it."""
    feature = {
        name: tf.train.Feature(float_list=tf.train.FloatList(value=image[..., i].ravel()))
        for i, name in enumerate(bands)
    }
    feature[label] = tf.train.Feature(
        float_list=tf.train.FloatList(value=mask.astype(np.float32).ravel()))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _replace_feature(record: bytes, name: str, value: bytes | None) -> bytes:
    example = tf.train.Example.FromString(record)
    if value is None:
        del example.features.feature[name]
    else:
        example.features.feature[name].bytes_list.value[:] = [value]
    return example.SerializeToString()


def test_round_trip_is_exact(rng):
    image, mask = _patch(rng)
    record = _encode(image, mask)
    patch = schema.decode_patch(record)
    assert patch.image.dtype == np.float32 and patch.image.tobytes() == image.tobytes()
    assert patch.mask.dtype == np.uint8 and np.array_equal(patch.mask, mask)
    assert patch.bands == BANDS
    assert (patch.key, patch.crs, patch.date) == (KEY, "EPSG:32645", "2015-05-12")
    # float64 to the bit; float32 would have moved the origin by decimetres.
    assert np.array(patch.transform).tobytes() == np.array(TRANSFORM).tobytes()
    assert float(np.float32(TRANSFORM[2])) != TRANSFORM[2]
    assert schema.detect_format(record) == "lsm"
    assert schema.read_stored_bands(record) == BANDS


def test_encode_accepts_affine_and_date_window(rng):
    image, mask = _patch(rng, size=4, bands=("B4",))
    record = _encode(image, mask, bands=("B4",), transform=affine.Affine(*TRANSFORM),
                     date="2016-01-01/2016-12-31")
    patch = schema.decode_patch(record)
    assert patch.transform == TRANSFORM
    assert patch.date == "2016-01-01/2016-12-31"


def test_parser_selects_and_reorders_bands_in_tf_data(rng, tmp_path):
    patches = [_patch(rng) for _ in range(3)]
    path = str(tmp_path / "shard-00000.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, mask in patches:
            writer.write(_encode(image, mask))
    wanted = ["DEM", "B4", "B2"]
    parse = parsing.make_parser(wanted, stored_bands=BANDS, patch_size=16)
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP").map(parse).batch(3)
    assert ds.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    assert ds.element_spec[1].shape.as_list() == [None, 16, 16, 1]
    images, masks = next(iter(ds))
    order = [BANDS.index(b) for b in wanted]
    for i, (image, mask) in enumerate(patches):
        np.testing.assert_array_equal(images[i].numpy(), image[..., order])
        np.testing.assert_array_equal(masks[i, ..., 0].numpy(), mask.astype(np.float32))
    # Without the manifest's band order, each record's own band list is used.
    dynamic = parsing.make_parser(wanted)
    image, _ = next(iter(tf.data.TFRecordDataset(path, compression_type="GZIP").map(dynamic)))
    np.testing.assert_array_equal(image.numpy(), patches[0][0][..., order])


def test_parser_rejects_records_whose_bands_differ_from_manifest(rng):
    image, mask = _patch(rng)
    record = _encode(image, mask, bands=("B3", "B2", "B4", "B8", "DEM"))
    parse = parsing.make_parser(["B2"], stored_bands=BANDS)
    ds = tf.data.Dataset.from_tensors(record).map(parse)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differ from the manifest"):
        next(iter(ds))


def test_earth_engine_records_parse_to_the_same_arrays(rng):
    image, mask = _patch(rng)
    lsm = parsing.make_parser(["B8", "B3"], stored_bands=BANDS)(tf.constant(_encode(image, mask)))
    ee_record = _ee_record(image, mask, BANDS)
    assert schema.detect_format(ee_record) == "ee"
    assert schema.read_stored_bands(ee_record) == tuple(sorted((*BANDS, "landslide")))
    for size in (16, None):
        parse = parsing.make_parser(["B8", "B3"], patch_size=size, fmt="ee", label="landslide")
        ee = next(iter(tf.data.Dataset.from_tensors(ee_record).map(parse)))
        for a, b in zip(lsm, ee):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the library's EE-layout encoder writes the same thing
    ours = schema.encode_ee_patch(image, mask, BANDS)
    parse = parsing.make_parser(["B8", "B3"], fmt="ee", label="landslide", patch_size=16)
    np.testing.assert_array_equal(parse(tf.constant(ours))[0], lsm[0])


def test_earth_engine_non_finite_pixels_become_ignore(rng):
    image, mask = _patch(rng, size=8, bands=("B4", "B8"))
    image[2, 3, 1] = np.nan
    parse = parsing.make_parser(["B4", "B8"], patch_size=8, fmt="ee", label="landslide")
    out_image, out_mask = parse(tf.constant(_ee_record(image, mask, ("B4", "B8"))))
    assert out_mask[2, 3, 0] == schema.IGNORE_VALUE
    assert np.all(out_image[2, 3].numpy() == 0)
    np.testing.assert_array_equal(out_image.numpy()[3:], image[3:])


def test_earth_engine_non_square_needs_patch_size(rng):
    image = rng.random((4, 8, 1), dtype=np.float32)
    record = _ee_record(image, np.zeros((4, 8)), ("B4",))
    parse = parsing.make_parser(["B4"], fmt="ee", label="landslide")
    with pytest.raises(SchemaError, match="not square"):
        parse(tf.constant(record))


def test_unknown_band_names_the_stored_ones(rng):
    with pytest.raises(SchemaError, match=r"\['B11'\].*stored bands: \['B2', 'B3'"):
        parsing.make_parser(["B4", "B11"], stored_bands=BANDS)
    image, mask = _patch(rng)
    with pytest.raises(SchemaError, match="B11"):
        parsing.make_parser(["B11"])(tf.constant(_encode(image, mask)))
    with pytest.raises(SchemaError, match="unknown record format"):
        parsing.make_parser(["B4"], fmt="geotiff")


def test_truncated_pixels_are_reported(rng):
    image, mask = _patch(rng)
    record = _replace_feature(_encode(image, mask), "image", image.tobytes()[:-4])
    with pytest.raises(SchemaError, match="'image' holds 5116 bytes.*truncated"):
        schema.decode_patch(record)
    parse = parsing.make_parser(["B2"], stored_bands=BANDS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated"):
        next(iter(tf.data.Dataset.from_tensors(record).map(parse)))
    with pytest.raises(SchemaError, match="truncated"):
        parse(tf.constant(record))
    short_mask = _replace_feature(_encode(image, mask), "mask", mask.tobytes()[:10])
    with pytest.raises(SchemaError, match="'mask' holds 10 bytes"):
        schema.decode_patch(short_mask)


def test_missing_feature_is_named(rng):
    image, mask = _patch(rng)
    record = _replace_feature(_encode(image, mask), "mask", None)
    with pytest.raises(SchemaError, match=r"lacks the feature\(s\) \['mask'\]"):
        schema.decode_patch(record)
    with pytest.raises(SchemaError, match="mask"):
        parsing.make_parser(["B2"])(tf.constant(record))


def test_detect_format_rejects_foreign_bytes(rng):
    with pytest.raises(SchemaError, match="not a serialized tf.train.Example"):
        schema.detect_format(b"\xff\xfe not a protobuf")
    other = tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}))
    with pytest.raises(SchemaError, match="neither"):
        schema.detect_format(other.SerializeToString())
    image, mask = _patch(rng, size=2)
    future = _replace_feature(_encode(image, mask), "format", b"lsm/v9")
    with pytest.raises(SchemaError, match="lsm/v9"):
        schema.detect_format(future)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": np.full((4, 4, 5), np.nan, np.float32)}, "non-finite"),
        ({"image": np.zeros((4, 4), np.float32)}, r"\(H, W, C\)"),
        ({"bands": ("B2", "B3")}, "2 band names"),
        ({"bands": ("B2", "B2", "B4", "B8", "DEM")}, "unique"),
        ({"mask": np.full((4, 4), 300)}, "0..255"),
        ({"mask": np.zeros((4, 5), np.uint8)}, "mask shape"),
        ({"transform": (10.0, 0.0, 1.0)}, "6 finite"),
        ({"crs": None}, "crs"),
        ({"key": ""}, "key"),
    ],
)
def test_encode_rejects_bad_input(rng, change, message):
    args = {"image": np.zeros((4, 4, 5), np.float32), "mask": np.zeros((4, 4), np.uint8),
            "bands": BANDS, "key": KEY, "crs": "EPSG:32645", "transform": TRANSFORM,
            "date": "2015-05-12"}
    args.update(change)
    with pytest.raises(SchemaError, match=message):
        schema.encode_patch(**args)


def test_raw_bytes_encode_cheaper_than_float_lists():
    ratio = schema.encoding_cost_ratio(patch_size=64, n_bands=6, repeats=5)
    assert ratio > 2.0


def test_records_are_tensorflows_own_examples_byte_for_byte(rng):
    """model.schema writes with protobuf alone; TensorFlow reads and writes the same bytes."""
    image, mask = _patch(rng)
    record = _encode(image, mask)
    example = tf.train.Example.FromString(record)  # TensorFlow's own message class
    assert example.SerializeToString(deterministic=True) == record
    feats = example.features.feature
    assert list(feats["shape"].int64_list.value) == [16, 16, len(BANDS)]
    assert feats["image"].bytes_list.value[0] == image.tobytes()
    assert [b.decode() for b in feats["bands"].bytes_list.value] == list(BANDS)
    # and the other way: an Example built by TensorFlow decodes without it
    assert schema.decode_patch(example.SerializeToString()).key == KEY
    ee = schema.encode_ee_patch(image, mask, BANDS)
    # Earth Engine's layout, as TensorFlow builds it (map order aside)
    assert tf.train.Example.FromString(ee) == tf.train.Example.FromString(
        _ee_record(image, mask, BANDS))
    assert schema.detect_format(ee) == "ee"

"""tf.data input: finding shards (folders, globs, Earth Engine exports), parsing, augmenting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model import data
from model.augment import AugmentConfig
from model.errors import ConfigError, SchemaError
from model.schema import decode_patch, encode_ee_patch, encode_patch

BANDS = ("B4", "B8", "slope")
TRANSFORM = (10.0, 0.0, 600000.0, 0.0, -10.0, 3100000.0)
SPLIT_COUNTS = {"train": 48, "val": 16, "test": 16}


def make_patch(rng: np.random.Generator, size: int, n_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable patch: a bright disc in band 0 is the landslide; two rows are unlabelled."""
    image = rng.normal(0.2, 0.05, (size, size, n_bands)).astype(np.float32)
    image[..., -1] = rng.normal(25.0, 8.0, (size, size))  # a slope-like band in degrees
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(6, size - 6, 2)
    radius = rng.uniform(3, 8)
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).astype(np.uint8)
    image[..., 0] += 0.3 * mask
    mask[:2, :] = 255
    return image, mask


def write_shards(
    root: Path,
    counts: dict[str, int] | None = None,
    size: int = 32,
    bands: tuple[str, ...] = BANDS,
    seed: int = 0,
    manifest: bool = True,
    fmt: str = "lsm",
    label: str = "landslide",
    shards_per_split: int = 2,
    compression: str = "GZIP",
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Write ``<root>/<split>/<split>-SSSSS-of-NNNNN.tfrecord[.gz]`` (+ manifest.json).

    Returns the patches written per split, in file order.
    """
    counts = SPLIT_COUNTS if counts is None else counts
    rng = np.random.default_rng(seed)
    written: dict[str, list] = {}
    files: dict[str, list[str]] = {}
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        patches = [make_patch(rng, size, len(bands)) for _ in range(count)]
        written[split] = patches
        files[split] = []
        per = -(-count // shards_per_split)
        for s in range(shards_per_split):
            path = root / split / f"{split}-{s:05d}-of-{shards_per_split:05d}{suffix}"
            files[split].append(str(path))
            with tf.io.TFRecordWriter(str(path), options=compression or None) as w:
                for i, (image, mask) in enumerate(patches[s * per:(s + 1) * per]):
                    if fmt == "ee":
                        w.write(encode_ee_patch(image, mask, bands, label=label))
                    else:
                        w.write(encode_patch(image, mask, bands, f"32645_r0_c{s}/{i:05d}",
                                             "EPSG:32645", TRANSFORM, "2020-01-01/2020-12-31"))
    if manifest:
        train = np.concatenate([im[m != 255] for im, m in written.get("train", [])] or
                               [np.zeros((1, len(bands)))])
        (root / "manifest.json").write_text(json.dumps({
            "format": "lsm/v1", "bands": list(bands), "patch_size": size, "pixel_size": 10.0,
            "ignore_value": 255, "classes": {"background": 0, "landslide": 1},
            "patches": dict(counts), "files": files,
            "stats": {b: {"mean": float(train[:, i].mean()), "std": float(train[:, i].std())}
                      for i, b in enumerate(bands)},
        }))
    return written


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shards")
    return root, write_shards(root, {"train": 12, "val": 6})


def records(files) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(list(files), compression_type="GZIP")]


def test_find_shards_in_an_export_folder(shards):
    root, _ = shards
    found = data.find_shards(str(root))
    assert found.fmt == "lsm" and found.compression == "GZIP" and found.patch_size == 32
    assert found.stored_bands == BANDS and found.available == BANDS and found.label == "mask"
    assert [Path(f).name for f in found.files["train"]] == [
        "train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz"]
    assert len(found.files["val"]) == 2 and not found.files["test"]
    assert found.manifest["patches"]["train"] == 12 and found.patches("val") == 6
    assert found.resolve_bands(None) == BANDS
    assert found.resolve_bands("slope,B4") == ("slope", "B4")
    with pytest.raises(ConfigError, match=r"no shards for split 'test'.*'train': 2"):
        found.split_files("test")
    with pytest.raises(ConfigError, match=r"band\(s\) \['B12'\] are not in the shards"):
        found.resolve_bands(["B4", "B12"])


def test_globs_assign_splits_and_find_the_manifest(shards):
    root, _ = shards
    val = data.find_shards(str(root / "val" / "*.tfrecord.gz"))
    assert len(val.files["val"]) == 2 and not val.files["train"] and not val.files["other"]
    assert val.manifest is not None and val.manifest["bands"] == list(BANDS)  # parent folder
    both = data.find_shards(str(root / "*" / "*-00000-of-*"))
    assert len(both.files["train"]) == 1 and len(both.files["val"]) == 1
    with pytest.raises(ConfigError, match="matches no file"):
        data.find_shards(str(root / "nothing-*.tfrecord.gz"))


def test_folders_above_a_glob_do_not_decide_the_split(tmp_path):
    counts = {"train": 2, "val": 2, "test": 2}
    for parent in ("train", "val", "test"):  # e.g. ~/val/export1: where the export lives
        root = tmp_path / parent / "export1"
        write_shards(root, counts, size=16, shards_per_split=1)
        found = data.find_shards(str(root / "*" / "*.tfrecord.gz"))
        assert {s: [Path(f).parent.name for f in found.files[s]] for s in counts} == {
            s: [s] for s in counts}, parent
        assert not found.files["other"]
        # the folder the glob names decides, not the one above it
        val = data.find_shards(str(root / "val" / "*.tfrecord.gz"))
        assert {s: len(v) for s, v in val.files.items() if v} == {"val": 1}, parent
    # an export folder that is itself named like a split: its sub-folders decide
    write_shards(tmp_path / "nested" / "train", counts, size=16, shards_per_split=1)
    found = data.find_shards(str(tmp_path / "nested" / "train" / "*" / "*.tfrecord.gz"))
    assert {s: len(found.files[s]) for s in counts} == {"train": 1, "val": 1, "test": 1}


def test_an_export_folder_reads_only_the_shards_its_manifest_lists(tmp_path, caplog):
    # an earlier export into the same folder, other bands and 3 shards a split ...
    root = tmp_path / "train"  # a folder named like a split, as the demo's shards/train
    write_shards(root, {"train": 9, "val": 3}, bands=("B8", "B4", "B2"), shards_per_split=3)
    # ... then this one, 2 shards a split: the old -of-00003 files stay beside the new ones
    written = write_shards(root, {"train": 8, "val": 4}, shards_per_split=2)
    assert len(list((root / "train").glob("*.tfrecord.gz"))) == 5
    with caplog.at_level("WARNING", logger="model.data"):
        found = data.find_shards(str(root))
    assert [os.path.basename(f) for f in found.files["train"]] == [
        "train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz"]
    assert len(found.files["val"]) == 2 and found.stored_bands == BANDS
    assert len(list(records(found.files["train"]))) == len(written["train"]) == 8
    warned = [r.getMessage() for r in caplog.records if "not in its manifest" in r.getMessage()]
    assert warned and warned[0].startswith("6 shard file(s)"), warned
    # a shard the manifest lists but the folder lacks: the export is incomplete
    (root / "val" / "val-00001-of-00002.tfrecord.gz").unlink()
    with pytest.raises(ConfigError, match="val/val-00001-of-00002.tfrecord.gz"):
        data.find_shards(str(root))
    # a glob is taken as given (no manifest to go by)
    assert len(data.find_shards(str(root / "train" / "*.tfrecord.gz")).files["train"]) == 5


def test_dataset_selects_bands_in_the_requested_order(shards):
    root, written = shards
    found = data.find_shards(str(root))
    ds = data.shard_dataset(found, found.files["train"], ("slope", "B4"), batch_size=5)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(5, 32, 32, 2), (5, 32, 32, 2), (2, 32, 32, 2)]
    images = np.concatenate([b[0] for b in batches])
    masks = np.concatenate([b[1] for b in batches])
    # the two shards are read interleaved: match patches by their (unique) first pixel
    expected = {float(p.image[0, 0, 2]): p for p in map(decode_patch,
                                                       records(found.files["train"]))}
    assert len(expected) == 12 == len(images)
    for image, mask in zip(images, masks):
        patch = expected.pop(float(image[0, 0, 0]))
        np.testing.assert_array_equal(image, patch.image[..., [2, 0]])
        np.testing.assert_array_equal(mask[..., 0], patch.mask)
    assert not expected
    assert any(np.array_equal(m[..., 0], written["train"][0][1]) for m in masks)


def test_epoch_datasets_run_without_the_autotuning_thread(shards):
    # Keras drops the iterator every epoch; joining the autotuning thread stalled epochs
    root, _ = shards
    found = data.find_shards(str(root))
    for training in (False, True):
        ds = data.shard_dataset(found, found.files["train"], ("B4",), batch_size=4,
                                training=training, seed=1)
        assert ds.options().autotune.enabled is False
        # the AUTOTUNE parallelism still yields every patch once per pass
        assert sum(len(b[0]) for b in ds.as_numpy_iterator()) == 12


def test_training_augments_image_and_mask_together(tmp_path):
    # The label is exactly "band 0 is bright", so any geometric transform that treats image
    # and mask alike keeps that relation pixel for pixel.
    write_shards(tmp_path, {"train": 8}, shards_per_split=1)
    found = data.find_shards(str(tmp_path))
    plain = data.shard_dataset(found, found.files["train"], BANDS, batch_size=8)
    aug = data.shard_dataset(found, found.files["train"], BANDS, batch_size=8, training=True,
                             augment_config=AugmentConfig(), seed=3, shuffle_buffer=0)
    (x0, y0), = plain.as_numpy_iterator()
    (x1, y1), = aug.as_numpy_iterator()
    (x2, _), = aug.as_numpy_iterator()  # a new epoch draws new augmentations
    assert not np.array_equal(x0, x1) and not np.array_equal(x1, x2)
    for x, y in ((x0, y0), (x1, y1)):
        labelled = y[..., 0] != 255
        assert ((x[..., 0] > 0.35) == (y[..., 0] == 1))[labelled].mean() > 0.98
    # flips and 90 degree rotations only permute pixels: same multiset per patch
    # (tf.data may hand patches over in another order under load: match them by content)
    # (masks follow their own patch's order, so they are matched the same way)
    def by_content(x, y):
        flat = np.sort(x.reshape(8, -1), 1)
        order = np.lexsort(flat.T[::-1])
        return flat[order], np.sort(y.reshape(8, -1), 1)[order]

    (a0, m0), (a1, m1) = by_content(x0, y0), by_content(x1, y1)
    np.testing.assert_allclose(a0, a1)
    assert np.array_equal(m0, m1)


def test_stats_from_the_manifest_or_computed(tmp_path, shards):
    root, _ = shards
    mean, std, origin = data.normalisation_stats(data.find_shards(str(root)), ["B8", "B4"])
    manifest = json.loads((root / "manifest.json").read_text())
    assert origin == "manifest"
    assert mean == [manifest["stats"]["B8"]["mean"], manifest["stats"]["B4"]["mean"]]
    bare = tmp_path / "bare"
    patches = write_shards(bare, {"train": 10, "val": 2}, manifest=False, seed=5)
    found = data.find_shards(str(bare))
    assert found.manifest is None and found.resolve_bands(None) == BANDS  # from the records
    mean, std, origin = data.normalisation_stats(found, ["slope", "B4"], max_patches=100)
    pixels = np.concatenate([im[m != 255] for im, m in patches["train"]]).astype(np.float64)
    assert origin == "computed"
    np.testing.assert_allclose(mean, pixels[:, [2, 0]].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels[:, [2, 0]].std(0), rtol=1e-4)


def test_earth_engine_exports_without_manifest(tmp_path):
    patches = write_shards(tmp_path, {"train": 6, "val": 2}, manifest=False, fmt="ee",
                           shards_per_split=1)
    found = data.find_shards(str(tmp_path))
    assert found.fmt == "ee" and found.label == "landslide" and found.patch_size == 32
    assert found.available == ("B4", "B8", "slope") and found.stored_bands is None
    with pytest.raises(ConfigError, match=r"Earth Engine records without a manifest.json.*--bands"):
        found.resolve_bands(None)
    bands = found.resolve_bands(["B8", "slope"])
    (x, y), = data.shard_dataset(found, found.files["train"], bands, 6).as_numpy_iterator()
    np.testing.assert_array_equal(x, np.stack([im[..., 1:] for im, _ in patches["train"]]))
    np.testing.assert_array_equal(y[..., 0], np.stack([m for _, m in patches["train"]]))
    with pytest.raises(ConfigError, match=r"label band 'mask' is not among the features"):
        data.find_shards(str(tmp_path), label="mask")


def test_earth_engine_label_must_be_identifiable(tmp_path):
    write_shards(tmp_path, {"train": 2}, manifest=False, fmt="ee", label="target",
                 shards_per_split=1)
    with pytest.raises(ConfigError, match=r"cannot tell the label band.*--label"):
        data.find_shards(str(tmp_path))
    assert data.find_shards(str(tmp_path), label="target").available == BANDS


def test_uncompressed_shards_are_detected(tmp_path):
    write_shards(tmp_path, {"train": 3}, compression="", shards_per_split=1)
    found = data.find_shards(str(tmp_path))
    assert found.compression == ""
    (x, _), = data.shard_dataset(found, found.files["train"], BANDS, 3).as_numpy_iterator()
    assert x.shape == (3, 32, 32, 3)


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        data.find_shards(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no TFRecord shards under"):
        data.find_shards(str(tmp_path / "empty"))
    (tmp_path / "junk" / "train").mkdir(parents=True)
    (tmp_path / "junk" / "train" / "train-0.tfrecord.gz").write_bytes(b"not a tfrecord at all")
    with pytest.raises(SchemaError, match="cannot read TFRecords"):
        data.find_shards(str(tmp_path / "junk"))
    with pytest.raises(ConfigError, match="at least one shard"):
        data.make_dataset([], BANDS)

"""Landslide4Sense import on h5 files written in the published layout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pipelines import cli
from pipelines.errors import ConfigError, DataNotFoundError, InputError
from pipelines.sources.landslide4sense import L4S_BANDS
from tests.conftest import read_shards


@pytest.fixture(scope="module")
def l4s_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("l4s")
    (d / "img").mkdir()
    (d / "mask").mkdir()
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        img = rng.normal(0, 1, (128, 128, 14)).astype(np.float32)
        mask = np.zeros((128, 128), np.uint8)
        if n % 3 == 0:
            mask[40:60, 50:90] = 1
        img[..., 3] += mask * 2.0  # landslides brighter in B4
        if n == 5:
            img[0, 0, 7] = np.nan  # a NaN pixel: becomes ignore
        with h5py.File(d / "img" / f"image_{n}.h5", "w") as f:
            f["img"] = img
        if n <= 10:  # the last two are unlabelled (like the L4S test split)
            with h5py.File(d / "mask" / f"mask_{n}.h5", "w") as f:
                f["mask"] = mask
    return d


def test_import_roundtrip_bands_masks_and_manifest(l4s_dir, tmp_path):
    out = tmp_path / "shards"
    assert cli.main(["import-l4s", "--data-dir", str(l4s_dir), "--out", str(out),
                     "--bands", "B2,B3,B4,B8,slope,DEM", "--split", "0.5,0.5,0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    recs = read_shards(out)
    assert sum(len(v) for v in recs.values()) == 12
    assert manifest["patches"] == {s: len(recs[s]) for s in recs}
    assert manifest["bands"] == ["B2", "B3", "B4", "B8", "slope", "DEM"]
    assert manifest["labelled_patches"] == 10 and manifest["georeferenced"] is False
    idx = [L4S_BANDS.index(b) for b in manifest["bands"]]
    for p in (p for ps in recs.values() for p in ps):
        n = int(p.key.split("_")[-1])
        with h5py.File(l4s_dir / "img" / f"image_{n}.h5") as f:
            src = np.asarray(f["img"])[..., idx]
        ok = np.isfinite(src).all(-1)
        np.testing.assert_array_equal(p.image[ok], src[ok])
        assert p.crs == "" and p.date == ""
        if n > 10:
            assert (p.mask == 255).all()
        else:
            assert ((p.mask == 1).sum() > 0) == (n % 3 == 0)
        if n == 5:
            assert p.mask[0, 0] == 255 and p.image[0, 0, 3] == 0
    # statistics cover labelled pixels that are not ignored, and the finite pixels of unlabelled
    # patches (all of them here)
    px = np.concatenate([p.image[(p.mask != 255) | (int(p.key.split("_")[-1]) > 10)]
                         for p in recs["train"]])
    assert manifest["stats"]["B4"]["mean"] == pytest.approx(px[:, 2].mean(), rel=1e-5)


def test_bad_l4s_inputs(l4s_dir, tmp_path):
    from pipelines.import_l4s import import_l4s

    with pytest.raises(DataNotFoundError, match="img/"):
        import_l4s(str(tmp_path), str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="B8A"):
        import_l4s(str(l4s_dir), str(tmp_path / "o"), bands=("B8A",))
    bad = tmp_path / "bad"
    (bad / "img").mkdir(parents=True)
    with h5py.File(bad / "img" / "image_1.h5", "w") as f:
        f["img"] = np.zeros((128, 128, 3), np.float32)
    with pytest.raises(InputError, match=r"\(h, w, 14\)"):
        import_l4s(str(bad), str(tmp_path / "o2"))


def test_nan_pixels_of_an_unlabelled_patch_stay_out_of_the_statistics(tmp_path):
    from pipelines.import_l4s import import_l4s

    src = tmp_path / "l4s"
    (src / "img").mkdir(parents=True)
    img = np.full((128, 128, 14), 5.0, np.float32)
    img[:64, :, 3] = np.nan  # half of B4 missing; no mask file: an unlabelled patch
    with h5py.File(src / "img" / "image_1.h5", "w") as f:
        f["img"] = img
    manifest = import_l4s(str(src), str(tmp_path / "out"), bands=("B4", "B8"),
                          fractions=(1.0, 0.0, 0.0))
    for band in ("B4", "B8"):  # the whole pixel goes, as for a labelled patch
        assert manifest["stats"][band]["mean"] == pytest.approx(5.0)
        assert manifest["stats"][band]["std"] == pytest.approx(0.0, abs=1e-6)


def test_a_model_trained_on_l4s_values_is_refused_by_predict(l4s_dir, tmp_path):
    """L4S numbers are the dataset's own normalisation under Sentinel-2 band names: a model
    trained on them took a sweep's reflectance for them without a word."""
    from pipelines.errors import InputError
    from pipelines.predict.plan import load_meta
    from pipelines.sources.landslide4sense import L4S_UNITS

    out = tmp_path / "shards"
    assert cli.main(["import-l4s", "--data-dir", str(l4s_dir), "--out", str(out),
                     "--bands", "B2,B3,B4,B8", "--split", "0.5,0.5,0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["band_units"] == {b: L4S_UNITS for b in ("B2", "B3", "B4", "B8")}
    model = tmp_path / "model"
    assert cli.main(["train", "--data", str(out), "--out", str(model), "--base-filters", "4",
                     "--depth", "2", "--epochs", "1", "--batch-size", "4",
                     "--no-saved-model"]) == 0
    with pytest.raises(InputError, match=r"trained on B2 in 'landslide4sense-normalised' "
                                         r"\(a sweep reads 'reflectance'\).*--init-from"):
        load_meta(str(model))
    # the same model with physical units recorded passes the check
    meta = json.loads((model / "artifact.json").read_text())
    meta["manifest"]["band_units"] = {b: "reflectance" for b in meta["bands"]}
    (model / "artifact.json").write_text(json.dumps(meta))
    assert load_meta(str(model))["bands"] == ["B2", "B3", "B4", "B8"]

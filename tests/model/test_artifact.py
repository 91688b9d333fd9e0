"""The model artifact round-trips and refuses corrupt or inconsistent folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.artifact import FORMAT, load_artifact, read_meta, save_artifact
from model.errors import ArtifactError
from model.unet import build_unet

BANDS = ("B4", "B8", "slope")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "model"
    m = build_unet(BANDS, base_filters=4, depth=3, mean=[0.1, 0.3, 20], std=[0.05, 0.1, 10])
    meta = save_artifact(m, str(out), BANDS, patch_size=32, mean=[0.1, 0.3, 20],
                         std=[0.05, 0.1, 10], threshold=0.37, training={"lr": 1e-3},
                         metrics={"val_f1": 0.5}, manifest={"bands": list(BANDS)},
                         size_multiple=4)
    return out, m, meta


def test_roundtrip_predictions_and_meta(saved):
    out, m, meta = saved
    art = load_artifact(str(out))
    assert art.bands == BANDS and art.patch_size == 32 and art.threshold == 0.37
    assert art.model_id == meta["model_id"] and art.model_id.startswith("lsm-")
    assert (out / "saved_model").is_dir() and (out / "model.keras").is_file()
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(art.predict(x), m.predict(x, verbose=0)[..., 0], atol=1e-6)
    assert read_meta(str(out))["format"] == FORMAT
    with pytest.raises(ArtifactError, match=r"\(n, h, w, 3\)"):
        art.predict(x[..., :2])


def test_missing_and_corrupt_artifacts(saved, tmp_path):
    with pytest.raises(ArtifactError, match="artifact.json is missing"):
        load_artifact(str(tmp_path))
    out, _, meta = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifact(str(bad))
    (bad / "artifact.json").write_text(json.dumps(dict(meta, format="other/v9")))
    with pytest.raises(ArtifactError, match="other/v9"):
        load_artifact(str(bad))
    (bad / "artifact.json").write_text(json.dumps(meta))
    (bad / "model.keras").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ArtifactError, match="Cannot load the Keras model"):
        load_artifact(str(bad))
    (bad / "artifact.json").write_text(json.dumps(dict(meta, bands=["B4"])))
    (bad / "model.keras").write_bytes((out / "model.keras").read_bytes())
    with pytest.raises(ArtifactError, match="takes 3 bands"):
        load_artifact(str(bad))


def test_predict_in_any_batch_size_matches_keras_and_pickles(saved):
    import pickle

    out, m, _ = saved
    art = load_artifact(str(out))
    x = np.random.default_rng(1).random((7, 32, 32, 3), dtype=np.float32)
    want = m.predict(x, verbose=0)[..., 0]
    for batch in (1, 3, 16):  # last batches of 1, 1 and 7 windows: one traced graph
        np.testing.assert_allclose(art.predict(x, batch_size=batch), want, atol=1e-6)
    np.testing.assert_allclose(art.predict(x[:2, :16, :16]), m.predict(x[:2, :16, :16],
                                                                        verbose=0)[..., 0],
                               atol=1e-6)  # another window size
    assert art.predict(x[:0]).shape == (0, 32, 32)
    again = pickle.loads(pickle.dumps(art))  # Beam pickles what closures hold
    np.testing.assert_allclose(again.predict(x[:2]), want[:2], atol=1e-6)


def test_warm_up_in_the_background_traces_once_and_predicts_the_same(saved):
    import pickle

    from model.artifact import _load_artifact

    out, m, _ = saved
    art = _load_artifact(str(out))  # not the cached, shared one
    art.warm_up(background=True)
    thread = art._warming
    assert thread is not None
    x = np.random.default_rng(2).random((5, 32, 32, 3), dtype=np.float32)
    got = art.predict(x, batch_size=2)  # waits for the warm-up
    assert not thread.is_alive()
    np.testing.assert_allclose(got, m.predict(x, verbose=0)[..., 0], atol=1e-6)
    fn = art._fn
    art.warm_up()
    art.warm_up(background=True)  # idempotent: no second thread, no second trace
    assert art._fn is fn and art._warming is thread
    assert fn.experimental_get_tracing_count() == 1
    again = pickle.loads(pickle.dumps(art))  # lock and thread are rebuilt, not pickled
    again.warm_up()
    assert again._fn is not None and again._fn.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(again.predict(x), got, atol=1e-6)


def test_an_unchanged_local_artifact_is_loaded_once_and_a_changed_one_again(saved, tmp_path):
    import shutil

    out, _, meta = saved
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = load_artifact(str(copy))
    assert load_artifact(str(copy)) is first
    (copy / "artifact.json").write_text(json.dumps(dict(meta, threshold=0.61)))
    changed = load_artifact(str(copy))
    assert changed is not first and changed.threshold == 0.61
    (copy / "model.keras").write_bytes(b"PK\x03\x04garbage")  # corrupt after a load
    with pytest.raises(ArtifactError, match="Cannot load the Keras model"):
        load_artifact(str(copy))

"""`train` refuses inputs made otherwise than the model's or the training shards', though
their names match: ``--init-from`` artifacts (references, pixel size, classes) and
``--val-data`` shards (references, pixel size, classes). Each was trained on without a word.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from model.artifact import save_artifact
from model.errors import ConfigError
from model.train import TrainConfig, train
from model.unet import build_unet
from tests.model.test_data import write_shards

BANDS = ("B4", "B4@prev")
BINARY = {"background": 0, "landslide": 1}
THREE = {"background": 0, "scarp": 1, "deposit": 2}
CONFIG = TrainConfig(base_filters=4, depth=3, batch_size=4, epochs=1, patience=0,
                     saved_model=False, lr=0.01)


def _stack(offset: str) -> dict:
    return {"bands": ["B4"], "references": [{"name": "prev", "offset": offset}],
            "change": [], "channels": list(BANDS)}


def _shards(root: Path, offset: str = "-1y", pixel_size: float = 10.0,
            classes: dict | None = None) -> str:
    write_shards(root, {"train": 4, "val": 4}, bands=BANDS, shards_per_split=1)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(stack=_stack(offset), pixel_size=pixel_size, classes=classes or BINARY)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def _artifact(out: Path, classes: dict | None = None, pixel_size: float = 10.0) -> str:
    """A U-Net artifact as `train` writes one (without training it)."""
    classes = classes or BINARY
    n_classes = 1 if len(classes) <= 2 else len(classes)
    model = build_unet(BANDS, 4, 3, 0.0, True, n_classes, [0.2, 0.2], [0.05, 0.05], 32)
    save_artifact(model, str(out), BANDS, 32, mean=[0.2, 0.2], std=[0.05, 0.05],
                  classes=classes, pixel_size=pixel_size, size_multiple=4, saved_model=False,
                  extra={"stack": _stack("-1y")})
    return str(out)


class _StartedError(Exception):
    """Raised when the first epoch begins: every check let the run through."""


class _StopAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        raise _StartedError


def _trains(data: str, out: Path, config: TrainConfig, val_data: str | None = None) -> bool:
    with pytest.raises(_StartedError):
        train(data, str(out), config, val_data=val_data, callbacks=[_StopAtStart()])
    return True


def test_init_from_refuses_shards_whose_references_differ_under_the_same_names(tmp_path):
    art = _artifact(tmp_path / "art")
    other = _shards(tmp_path / "30d", offset="-30d")
    with pytest.raises(ConfigError, match=r"takes the reference .*'-1y'.* hold .*'-30d'.* "
                                          r"Export with the model's stack .* fine-tune"):
        train(other, str(tmp_path / "out"), CONFIG.replace(init_from=art))
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written
    assert _trains(_shards(tmp_path / "1y"), tmp_path / "ok", CONFIG.replace(init_from=art))


def test_init_from_fine_tunes_on_another_pixel_size_with_a_warning(tmp_path, caplog):
    """Transfer learning across resolutions can be meant: not refused, but said."""
    art = _artifact(tmp_path / "art", pixel_size=10.0)
    with caplog.at_level("WARNING", logger="model.train"):
        assert _trains(_shards(tmp_path / "3m", pixel_size=3.0), tmp_path / "out",
                       CONFIG.replace(init_from=art))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("trained on 10.0 m pixels, the shards" in m and "hold 3.0 m pixels" in m
               and "--pixel-size 10.0" in m for m in warned), warned


def test_init_from_fine_tunes_on_other_units_with_a_warning(tmp_path, caplog):
    """A model pretrained on Landslide4Sense's normalised numbers fine-tuned on reflectance
    is transfer learning: not refused, but said (evaluate refuses other units)."""
    art = _artifact(tmp_path / "art")
    meta = json.loads(Path(art, "artifact.json").read_text())
    meta["manifest"] = {"band_units": {b: "landslide4sense-normalised" for b in BANDS}}
    Path(art, "artifact.json").write_text(json.dumps(meta))
    data = _shards(tmp_path / "refl")
    manifest = json.loads(Path(data, "manifest.json").read_text())
    manifest["band_units"] = {b: "reflectance" for b in BANDS}
    Path(data, "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="model.train"):
        assert _trains(data, tmp_path / "out", CONFIG.replace(init_from=art))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("trained on B4 in 'landslide4sense-normalised', the shards" in m
               and "hold it in 'reflectance'" in m for m in warned), warned


@pytest.mark.parametrize(("model_classes", "shard_classes", "n_classes", "needle", "fine"), [
    # a binary model fine-tuned on multi-class shards trained every class as landslide
    # (asked for with n_classes 1, as from scratch, it is fine)
    (BINARY, THREE, None, r"is a binary model.*scarp.*Pass --n-classes 1 if that is meant",
     (THREE, 1)),
    # the artifact's names were kept for the shards' other ids (labels swapped); the same
    # classes listed in another order are fine
    (THREE, {"background": 0, "deposit": 1, "scarp": 2}, None,
     r"predicts the classes .*'scarp': 1.*have .*'deposit': 1.*"
     r"\(--classes scarp=1,deposit=2\)", (dict(reversed(list(THREE.items()))), None)),
    # a 3-class softmax fine-tuned on binary labels named "landslide" its scarp output
    (THREE, BINARY, None, r"predicts the classes .*'landslide': 1", None),
    # n_classes was replaced by the artifact's without a word
    (BINARY, BINARY, 3, r"has 1 output\(s\).*n_classes 3 was asked for", (BINARY, None)),
])
def test_init_from_refuses_shards_of_other_classes(tmp_path, model_classes, shard_classes,
                                                   n_classes, needle, fine):
    art = _artifact(tmp_path / "art", classes=model_classes)
    data = _shards(tmp_path / "shards", classes=shard_classes)
    with pytest.raises(ConfigError, match=needle):
        train(data, str(tmp_path / "out"), CONFIG.replace(init_from=art, n_classes=n_classes))
    assert not (tmp_path / "out").exists()
    if fine is not None:
        assert _trains(_shards(tmp_path / "fine", classes=fine[0]), tmp_path / "ok",
                       CONFIG.replace(init_from=art, n_classes=fine[1]))


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"offset": "-30d"}, r"training shards of .* hold the reference .*'-1y'.* validation "
                         r"shards of .* hold .*'-30d'.*Export the validation shards"),
    ({"pixel_size": 30.0}, r"training shards of .* hold 10.0 m pixels, the validation shards "
                           r"of .* hold 30.0 m pixels: export the validation shards at "
                           r"--pixel-size 10.0"),
    ({"classes": {"background": 0, "debris": 1}},
     r"training shards .* classes .*'landslide': 1.* validation shards .*'debris': 1"),
])
def test_val_data_made_otherwise_than_the_training_shards_is_refused(tmp_path, kwargs,
                                                                     needle):
    """Validation on other inputs picked the epoch and the threshold of another task."""
    data = _shards(tmp_path / "train")
    with pytest.raises(ConfigError, match=needle):
        train(data, str(tmp_path / "out"), CONFIG, val_data=_shards(tmp_path / "val", **kwargs))
    assert not (tmp_path / "out").exists()
    assert _trains(data, tmp_path / "ok", CONFIG, val_data=_shards(tmp_path / "same"))

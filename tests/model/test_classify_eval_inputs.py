"""classify-eval refuses export shards made otherwise than the classifier's training shards.

Only the band names were compared: shards with another reference under the same channel
name, another pixel size or other band units were scored (``landslides evaluate`` refuses
the same shards for a U-Net).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from model.artifact import save_artifact
from model.classify.evaluation import evaluate_classifiers
from model.errors import ConfigError
from tests.model.test_data import write_shards

BANDS = ("B4", "B4@prev")
CLASSES = {"non_landslide": 0, "landslide": 1}


def _stack(offset: str, channels=BANDS) -> dict:
    return {"bands": ["B4"], "references": [{"name": "prev", "offset": offset}],
            "change": [], "channels": list(channels)}


def _shards(root: Path, offset: str = "-1y", pixel_size: float = 10.0,
            unit: str = "reflectance") -> str:
    write_shards(root, {"test": 4}, bands=BANDS)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(stack=_stack(offset), pixel_size=pixel_size,
                    band_units=dict.fromkeys(BANDS, unit))
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def _classifier(path: Path, bands=BANDS) -> str:
    """A classifier as classify-train writes one: the training manifest (with its stack,
    pixel size and units) recorded in the artifact."""
    inp = keras.Input((32, 32, len(bands)))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inp))
    manifest = {"bands": list(BANDS), "stack": _stack("-1y"), "pixel_size": 10.0,
                "band_units": dict.fromkeys(BANDS, "reflectance")}
    save_artifact(keras.Model(inp, out), str(path), bands, patch_size=32, size_multiple=1,
                  saved_model=False, pixel_size=10.0, classes=CLASSES, manifest=manifest,
                  extra={"task": "classification", "backbone": "baseline",
                         "input": {"kind": "shards", "min_landslide_share": 0.005}})
    return str(path)


@pytest.mark.parametrize(("made", "needle"), [
    ({"offset": "-30d"}, r"takes the reference .*'-1y'.* hold .*'-30d'.* to evaluate it"),
    ({"pixel_size": 30.0}, r"trained on 10.0 m pixels, the shards .* hold 30.0 m"),
    ({"unit": "l4s-normalised"}, r"in 'reflectance', the shards .* in 'l4s-normalised'"),
])
def test_shards_made_otherwise_are_refused(tmp_path, made, needle):
    clf = _classifier(tmp_path / "clf")
    with pytest.raises(ConfigError, match=needle):
        evaluate_classifiers(clf, _shards(tmp_path / "other", **made), split="test")
    assert not (tmp_path / "clf" / "classification_eval.json").exists()
    # shards made as the classifier's are scored
    res = evaluate_classifiers(clf, _shards(tmp_path / "same"), split="test")
    assert res[0]["examples"] == 4


def test_references_the_classifier_does_not_take_are_not_compared(tmp_path):
    """A classifier of the target band only takes no reference: another one is no matter."""
    clf = _classifier(tmp_path / "clf", bands=("B4",))
    res = evaluate_classifiers(clf, _shards(tmp_path / "shards", offset="-30d"), split="test")
    assert res[0]["examples"] == 4
    with pytest.raises(ConfigError, match="30.0 m"):  # the pixel size still counts
        evaluate_classifiers(clf, _shards(tmp_path / "other", pixel_size=30.0), split="test")

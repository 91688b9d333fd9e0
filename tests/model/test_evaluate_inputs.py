"""`evaluate` refuses shards whose inputs differ from the model's under the same names."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from model.artifact import save_artifact
from model.errors import ConfigError
from model.train import evaluate
from tests.model.test_data import write_shards

BANDS = ("B4", "B4@prev")


def _case(tmp_path: Path, export_offset: str, export_px: float, model_px: float) -> tuple:
    write_shards(tmp_path / "shards", {"test": 2}, bands=BANDS)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    manifest["stack"] = {"bands": ["B4"], "references": [{"name": "prev",
                                                         "offset": export_offset}],
                         "change": [], "channels": list(BANDS)}
    manifest["pixel_size"] = export_px
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    inp = keras.Input((None, None, 2))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    stack = {"bands": ["B4"], "references": [{"name": "prev", "offset": "-1y"}],
             "change": [], "channels": list(BANDS)}
    save_artifact(model, str(tmp_path / "art"), BANDS, patch_size=32, size_multiple=1,
                  saved_model=False, pixel_size=model_px, extra={"stack": stack})
    return str(tmp_path / "art"), str(tmp_path / "shards")


def test_the_same_stack_and_pixel_size_are_scored(tmp_path):
    art, shards = _case(tmp_path, "-1y", 10.0, 10.0)
    assert evaluate(art, shards, split="test", out=str(tmp_path / "e.json"))["patches"] == 2


@pytest.mark.parametrize(("offset", "export_px", "needle"), [
    ("-30d", 10.0, "takes the reference .*'-1y'.* hold .*'-30d'"),
    ("-1y", 30.0, "trained on 10.0 m pixels, the shards .* hold 30.0 m"),
])
def test_other_inputs_under_the_same_names_are_refused(tmp_path, offset, export_px, needle):
    """Channel names (B4@prev) say neither how the reference was made nor the pixel size:
    such shards were scored without a word."""
    art, shards = _case(tmp_path, offset, export_px, 10.0)
    with pytest.raises(ConfigError, match=needle):
        evaluate(art, shards, split="test", out=str(tmp_path / "e.json"))
    assert not (tmp_path / "e.json").exists()


def test_an_artifact_whose_bands_were_edited_is_refused(tmp_path):
    """Swapping the bands in artifact.json made evaluate read the channels in that order
    (predict already refused it)."""
    art, shards = _case(tmp_path, "-1y", 10.0, 10.0)
    meta = json.loads(Path(art, "artifact.json").read_text())
    meta["bands"] = list(reversed(BANDS))
    Path(art, "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="inconsistent"):
        evaluate(art, shards, split="test", out=str(tmp_path / "e.json"))


def test_shards_in_other_units_are_refused(tmp_path):
    """Landslide4Sense shards hold the dataset's normalised numbers under Sentinel-2 band
    names: a model trained on reflectance was scored on them without a word."""
    art, shards = _case(tmp_path, "-1y", 10.0, 10.0)
    meta = json.loads(Path(art, "artifact.json").read_text())
    meta["manifest"] = {"band_units": {b: "reflectance" for b in BANDS}}
    Path(art, "artifact.json").write_text(json.dumps(meta))
    manifest = json.loads(Path(shards, "manifest.json").read_text())
    manifest["band_units"] = {b: "landslide4sense-normalised" for b in BANDS}
    Path(shards, "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="trained on B4 in 'reflectance', the shards .* hold "
                                          "it in 'landslide4sense-normalised'"):
        evaluate(art, shards, split="test", out=str(tmp_path / "e.json"))
    assert not (tmp_path / "e.json").exists()
    manifest["band_units"] = {b: "reflectance" for b in BANDS}
    Path(shards, "manifest.json").write_text(json.dumps(manifest))
    assert evaluate(art, shards, split="test", out=str(tmp_path / "e.json"))["patches"] == 2

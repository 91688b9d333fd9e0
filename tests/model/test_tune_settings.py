"""tune keeps a finished trial only when it trained with the settings the trial would resolve.

Settings left to the data (None: bands, lr, n_classes, steps_per_epoch, ...) were not
compared, so a trial of another search was kept; a grid over an architecture setting with
init_from labelled trials with values training replaced by the artifact's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model import train as trainer
from model.errors import ArtifactError, ConfigError
from model.train.transfer import ARCHITECTURE, architecture_of
from model.unet import build_unet
from tests.model.test_data import write_shards

TINY = {"depth": 2, "epochs": 1, "patience": 0, "saved_model": False, "batch_size": 4,
        "augment": "none"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune_settings")
    write_shards(root, {"train": 8, "val": 4}, size=16, shards_per_split=1)
    return root


def _mtime(row: dict) -> int:
    return (Path(row["path"]) / "artifact.json").stat().st_mtime_ns


def test_a_trial_resolved_otherwise_is_trained_again(shards, tmp_path):
    out = tmp_path / "tune"
    grid = {"base_filters": [2]}
    first = trainer.TrainConfig(**TINY, bands=("B4",), lr=0.05, steps_per_epoch=1,
                                validation_steps=1)
    rows1 = trainer.tune(str(shards), str(out), first, grid=grid)
    second = trainer.TrainConfig(**TINY)  # every band, the default lr, every batch
    rows2 = trainer.tune(str(shards), str(out), second, grid=grid)
    assert rows2[0]["model_id"] != rows1[0]["model_id"]
    training = json.loads((out / "best" / "artifact.json").read_text())["training"]
    assert training["bands"] == ["B4", "B8", "slope"] and training["lr"] == 1e-3
    assert training["steps_per_epoch"] is None and training["validation_steps"] is None
    assert training["n_classes"] == 1
    # the same search again: resolved alike (bands, lr, n_classes), so kept
    before = _mtime(rows2[0])
    rows3 = trainer.tune(str(shards), str(out), second, grid=grid)
    assert rows3[0]["model_id"] == rows2[0]["model_id"] and _mtime(rows3[0]) == before
    # the settings given explicitly as they resolved: the same run, kept
    explicit = second.replace(bands=("B4", "B8", "slope"), lr=1e-3, n_classes=1)
    assert trainer.tune(str(shards), str(out), explicit, grid=grid)[0]["model_id"] == \
        rows2[0]["model_id"]
    # a setting that stays None (steps_per_epoch) against one that was set: trained again
    capped = second.replace(steps_per_epoch=1)
    assert trainer.tune(str(shards), str(out), capped, grid=grid)[0]["model_id"] != \
        rows2[0]["model_id"]


def test_a_fine_tuning_trial_is_compared_on_the_artifacts_architecture(shards, tmp_path):
    """With init_from, training replaces the architecture settings by the artifact's: a
    finished trial records those, and is kept (it was trained again on every run)."""
    init = tmp_path / "init"
    trainer.train(str(shards), str(init), trainer.TrainConfig(**TINY, base_filters=2))
    config = trainer.TrainConfig(**TINY, init_from=str(init))  # base_filters 16 as given
    out = tmp_path / "tune"
    rows = trainer.tune(str(shards), str(out), config, grid={"lr": [1e-3]})
    training = json.loads((Path(rows[0]["path"]) / "artifact.json").read_text())["training"]
    assert training["base_filters"] == 2 and config.base_filters == 16
    before = _mtime(rows[0])
    again = trainer.tune(str(shards), str(out), config, grid={"lr": [1e-3]})
    assert again[0]["model_id"] == rows[0]["model_id"] and _mtime(again[0]) == before


def test_a_grid_over_the_architecture_with_init_from_is_refused(tmp_path):
    config = trainer.TrainConfig(**TINY, init_from=str(tmp_path / "init"))
    out = tmp_path / "tune"
    grids = {"base_filters": [4, 8], "depth": [2, 3], "dropout": [0.0, 0.1],
             "stem": [(), (8,)]}
    for key, values in grids.items():
        with pytest.raises(ConfigError) as refused:
            trainer.tune(str(tmp_path / "no-shards"), str(out), config,
                         grid={"lr": [1e-3, 1e-4], key: values})
        message = str(refused.value)
        assert f"cannot tune ['{key}'] with init_from" in message
        assert "architecture of its --init-from artifact" in message
        assert "without --init-from" in message
        assert not out.exists()  # before any trial
        # the init artifact may also come from the grid
        with pytest.raises(ConfigError, match=rf"cannot tune \['{key}'\]"):
            trainer.tune(str(tmp_path / "no-shards"), str(out), config.replace(init_from=None),
                         grid={"init_from": [str(tmp_path / "init")], key: values})
    # other settings may be tuned with init_from (here it then fails on the missing data)
    with pytest.raises((ConfigError, ArtifactError)) as other:
        trainer.tune(str(tmp_path / "no-shards"), str(out), config, grid={"lr": [1e-3]})
    assert "cannot tune" not in str(other.value)
    # the settings refused are those a fine-tuned run takes from the artifact
    net = build_unet(("B4", "B8"), base_filters=2, depth=2, dropout=0.0, batch_norm=True,
                     n_classes=1, mean=[0.0, 0.0], std=[1.0, 1.0])
    assert set(architecture_of(net)) == set(ARCHITECTURE) >= set(grids)

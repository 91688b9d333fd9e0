"""What a run reads: resume and tuning on other shards, class ids, the learning-rate floor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import pytest

from model import data
from model import train as trainer
from model.errors import ConfigError
from model.train.inputs import resolve_classes
from tests.model.test_data import write_shards

# tiny and fast: 16 px patches, a 2-level U-Net with 2 base filters
TINY = {"base_filters": 2, "depth": 2, "batch_size": 8, "patience": 0, "saved_model": False}


class _Interrupt(keras.callbacks.Callback):
    """A preemption right after the checkpoint of epoch ``at`` (0-based)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt(f"simulated preemption after epoch {epoch + 1}")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path]:
    """Two exports of the same layout and file names, with other patches."""
    root = tmp_path_factory.mktemp("exports")
    write_shards(root / "A", {"train": 8, "val": 8}, size=16, seed=0)
    write_shards(root / "B", {"train": 8, "val": 8}, size=16, seed=1)
    return root / "A", root / "B"


def _history_epochs(out: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in
            (out / "history.csv").read_text().splitlines()[1:] if line]


def test_a_run_interrupted_on_other_shards_is_not_resumed(exports, tmp_path):
    a, b = exports
    config = trainer.TrainConfig(epochs=3, lr=0.01, **TINY)
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        trainer.train(str(a), str(out), config, callbacks=[_Interrupt(0)])
    # other shards at another path, and other shards at the same path: refused
    with pytest.raises(ConfigError) as refused:
        trainer.train(str(b), str(out), config)
    message = str(refused.value)
    assert str(a) in message and str(b) in message and "another --out" in message
    assert "training shards and the validation shards differ" in message
    state_path = out / "_backup" / "state.json"
    recorded = json.loads(state_path.read_text())["inputs"]
    assert recorded["data"] == str(a) and recorded["val_data"] is None
    with pytest.raises(ConfigError, match="the validation shards differ"):
        trainer.train(str(a), str(out), config, val_data=str(b / "val"))
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)
    shutil.copy(b / "train" / "train-00001-of-00002.tfrecord.gz", moved / "train")
    with pytest.raises(ConfigError, match="the training shards differ"):
        trainer.train(str(moved), str(out), config)
    assert json.loads(state_path.read_text())["epoch"] == 1  # nothing trained meanwhile
    # the same shards copied elsewhere are the same inputs: the run resumes from them
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(str(copy), str(out), config, callbacks=[_Interrupt(1)])
    assert json.loads(state_path.read_text())["epoch"] == 2
    # a state written before the inputs were recorded resumes as before
    state = json.loads(state_path.read_text())
    del state["inputs"]
    state_path.write_text(json.dumps(state))
    meta = trainer.train(str(a), str(out), config)
    assert _history_epochs(out) == [0, 1, 2] and meta["metrics"]["epochs_run"] == 3
    assert meta["training"]["inputs"]["train"] == recorded["train"]


def test_a_run_interrupted_while_fine_tuning_another_artifact_is_not_resumed(exports,
                                                                            tmp_path):
    a, _ = exports
    base = tmp_path / "base"
    trainer.train(str(a), str(base), trainer.TrainConfig(epochs=1, lr=0.01, **TINY))
    tuned = tmp_path / "tuned"
    config = trainer.TrainConfig(epochs=2, lr=0.01, init_from=str(base), **TINY)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(str(a), str(tuned), config, callbacks=[_Interrupt(0)])
    # another artifact at the same path (trained again, with another seed)
    trainer.train(str(a), str(base), trainer.TrainConfig(epochs=1, lr=0.01, seed=1, **TINY))
    with pytest.raises(ConfigError, match=r"the --init-from artifact \(model id\) differ"):
        trainer.train(str(a), str(tuned), config)


def test_tune_trains_again_a_trial_trained_on_other_shards(exports, tmp_path):
    a, b = exports
    config = trainer.TrainConfig(epochs=1, **TINY)
    out = tmp_path / "tune"
    rows_a = trainer.tune(str(a), str(out), config, grid={"lr": [0.01]})
    trial = Path(rows_a[0]["path"])
    rows_b = trainer.tune(str(b), str(out), config, grid={"lr": [0.01]})
    assert rows_b[0]["model_id"] != rows_a[0]["model_id"]
    best = json.loads((out / "best" / "artifact.json").read_text())
    assert best["training"]["data"] == str(b) and best["model_id"] == rows_b[0]["model_id"]
    # the same shards again: the trial is kept, not trained again
    before = (trial / "artifact.json").stat().st_mtime_ns
    rows = trainer.tune(str(b), str(out), config, grid={"lr": [0.01]})
    assert rows[0]["model_id"] == rows_b[0]["model_id"]
    assert (trial / "artifact.json").stat().st_mtime_ns == before
    # an artifact written before the inputs were recorded is compared by its paths
    meta = json.loads((trial / "artifact.json").read_text())
    del meta["training"]["inputs"]
    (trial / "artifact.json").write_text(json.dumps(meta))
    assert trainer.tune(str(b), str(out), config, grid={"lr": [0.01]})[0]["model_id"] == \
        rows_b[0]["model_id"]
    assert trainer.tune(str(a), str(out), config, grid={"lr": [0.01]})[0]["model_id"] != \
        rows_b[0]["model_id"]


def _with_classes(root: Path, classes: dict[str, int]) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["classes"] = classes
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_class_ids_a_softmax_cannot_learn_are_refused(tmp_path):
    root = tmp_path / "shards"
    write_shards(root, {"train": 2, "val": 2}, size=16, shards_per_split=1)
    _with_classes(root, {"background": 0, "scarp": 1, "deposit": 3})
    with pytest.raises(ConfigError) as refused:
        resolve_classes(data.find_shards(str(root)), None)
    message = str(refused.value)
    assert "'deposit': 3" in message and "ids 0..2" in message
    assert "--classes scarp=1,deposit=2" in message
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="contiguous ids"):
        trainer.train(str(root), str(out), trainer.TrainConfig(epochs=1, **TINY))
    assert not out.exists()  # refused before anything was written
    for bad in ({"background": 0, "scarp": 1, "deposit": 1},  # two names, one id
                {"scarp": 1, "deposit": 2, "debris": 3}):  # no 0: id 3 is out of range
        _with_classes(root, bad)
        with pytest.raises(ConfigError, match="contiguous ids"):
            resolve_classes(data.find_shards(str(root)), None)
    _with_classes(root, {"background": 0, "scarp": 1, "deposit": 2})
    assert resolve_classes(data.find_shards(str(root)), None) == (
        3, {"background": 0, "scarp": 1, "deposit": 2})


def test_min_lr_must_be_below_the_learning_rate(exports, tmp_path):
    with pytest.raises(ConfigError, match=r"min_lr 0.001 is not below lr 0.0001"):
        trainer.TrainConfig(lr=1e-4, min_lr=1e-3, lr_schedule="cosine")
    with pytest.raises(ConfigError, match="min_lr 0.01 is not below lr 0.01"):
        trainer.TrainConfig(lr=0.01, min_lr=0.01)
    # the default learning rate of fine-tuning (1e-4) is known before anything is read
    config = trainer.TrainConfig(min_lr=5e-4, init_from=str(tmp_path / "no-artifact"))
    with pytest.raises(ConfigError, match=r"min_lr 0.0005 is not below the learning rate "
                                          r"0.0001 \(the default with --init-from\)"):
        trainer.train(str(tmp_path / "no-data"), str(tmp_path / "never"), config)
    a, _ = exports
    with pytest.raises(ConfigError, match="min_lr 0.002 is not below the learning rate 0.001"):
        trainer.tune(str(a), str(tmp_path / "tune"), trainer.TrainConfig(min_lr=2e-3),
                     grid={"base_filters": [2]})
    assert not (tmp_path / "never").exists() and not (tmp_path / "tune").exists()

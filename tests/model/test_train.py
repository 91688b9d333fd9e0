"""Training, evaluation, tuning, resume and fine-tuning through the real CLI on tiny shards."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from model import cpu, distribute
from model import train as trainer
from model.artifact import load_artifact
from model.errors import ConfigError
from model.metrics import best_threshold, confusion_counts, scores
from model.schema import decode_patch
from model.train import architecture_of
from model.unet import encoder_layers
from pipelines.cli import main
from tests.model.test_data import BANDS, write_shards

# tiny and fast: 32 px patches, 3 bands, a 3-level U-Net with 4 base filters
# Results must not depend on how loaded the machine is (CI runs two workers on two cores):
# deterministic kernels and tf.data ordering for every training in this process.
tf.config.experimental.enable_op_determinism()

TINY = ["--base-filters", "4", "--depth", "3", "--batch-size", "8", "--lr", "0.01",
        "--patience", "0", "--no-saved-model"]


def history(out: Path) -> list[dict]:
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root)
    return root


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "artifact"
    code = main(["train", "--data", str(shards), "--out", str(out), "--epochs", "4",
                 *TINY[:-1]])  # this one exports the SavedModel too
    assert code == 0
    return out


def test_train_writes_a_calibrated_artifact(trained, shards):
    art = load_artifact(str(trained))
    meta = art.meta
    assert art.bands == BANDS and art.patch_size == 32 and art.size_multiple == 4
    assert (trained / "saved_model" / "saved_model.pb").is_file()
    assert not (trained / "_backup").exists()
    assert [int(r["epoch"]) for r in history(trained)] == [0, 1, 2, 3]
    assert (trained / "logs" / "validation").is_dir()
    manifest = json.loads((shards / "manifest.json").read_text())
    assert meta["normalization"]["mean"] == [manifest["stats"][b]["mean"] for b in BANDS]
    assert meta["training"]["base_filters"] == 4 and meta["training"]["lr"] == 0.01
    assert meta["training"]["normalization_from"] == "manifest"
    val = meta["metrics"]["val"]
    assert 0 < art.threshold < 1 and val["threshold"] == art.threshold
    # the stored metrics are those of the artifact's model at its threshold on val
    images, masks = zip(*[(p.image, p.mask) for p in map(decode_patch, _records(shards, "val"))])
    counts = confusion_counts(np.stack(masks), art.predict(np.stack(images)), art.threshold)
    assert counts == {k: val[k] for k in ("tp", "fp", "fn", "tn")}
    # clearly better than the trivial "everything is a landslide" baseline
    truth = np.stack(masks)
    positive = np.count_nonzero(truth == 1) / np.count_nonzero(truth != 255)
    trivial_f1 = 2 * positive / (1 + positive)
    assert val["f1"] > max(0.7, trivial_f1 + 0.4), (val, trivial_f1)


def _records(root: Path, split: str) -> list[bytes]:
    files = sorted(str(p) for p in (root / split).glob("*.tfrecord.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_evaluate_matches_numpy_metrics(trained, shards, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trained), "--data", str(shards), "--split", "test",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "evaluation.json").read_text())
    art = load_artifact(str(trained))
    patches = [decode_patch(r) for r in _records(shards, "test")]
    masks = np.stack([p.mask for p in patches])
    prob = art.predict(np.stack([p.image for p in patches]))
    counts = confusion_counts(masks, prob, art.threshold)
    assert {k: result[k] for k in counts} == counts
    for key, value in scores(counts).items():
        assert result[key] == pytest.approx(value)
    assert result["confusion_matrix"]["matrix"] == [[counts["tn"], counts["fp"]],
                                                    [counts["fn"], counts["tp"]]]
    assert result["patches"] == 16 and result["threshold"] == art.threshold
    assert result["ignored_pixels"] == np.count_nonzero(masks == 255) == 16 * 2 * 32
    assert f"F1 {result['f1']:.4f}" in printed and str(counts["tp"]) in printed
    # another threshold, on a glob of files, written to a named file
    assert main(["evaluate", "--model", str(trained), "--data", str(shards / "test" / "*.gz"),
                 "--threshold", "0.5", "--out", str(tmp_path / "half.json")]) == 0
    half = json.loads((tmp_path / "half.json").read_text())
    assert {k: half[k] for k in counts} == confusion_counts(masks, prob, 0.5)


def test_tune_ranks_trials_by_validation_f1(shards, tmp_path, capsys):
    out = tmp_path / "tune"
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({"base_filters": 4, "depth": 3, "epochs": 1,
                                      "patience": 0, "saved_model": False,
                                      "augment": {"rot90": False}}))
    args = ["tune", "--data", str(shards), "--out", str(out), "--config", str(config),
            "--lr", "0.01,0.0001", "--filters", "4", "--batch-size", "8"]
    assert main(args) == 0
    with open(out / "tuning.csv") as f:
        rows = list(csv.DictReader(f))
    f1s = [float(r["val_f1"]) for r in rows]
    assert len(rows) == 2 and f1s == sorted(f1s, reverse=True) and [r["rank"] for r in rows] == [
        "1", "2"]
    assert {r["lr"] for r in rows} == {"0.01", "0.0001"}
    for row in rows:
        meta = json.loads((Path(row["path"]) / "artifact.json").read_text())
        assert meta["metrics"]["val"]["f1"] == pytest.approx(float(row["val_f1"]), abs=1e-6)
        assert meta["training"]["lr"] == float(row["lr"]) and meta["training"]["epochs"] == 1
    best = load_artifact(str(out / "best"))
    assert best.model_id == rows[0]["model_id"]
    # a second run keeps the finished trials instead of training them again
    capsys.readouterr()
    before = (Path(rows[0]["path"]) / "artifact.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (Path(rows[0]["path"]) / "artifact.json").stat().st_mtime_ns == before


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated preemption after the second epoch")


def test_interrupted_training_resumes_from_its_last_epoch(shards, tmp_path, caplog):
    out = tmp_path / "resumed"
    settings = {"base_filters": 4, "depth": 3, "batch_size": 8, "lr": 0.01, "epochs": 4,
                "patience": 0, "saved_model": False}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(settings))
    config, _ = trainer.load_config(str(tmp_path / "train.yaml"))
    with pytest.raises(KeyboardInterrupt):
        trainer.train(str(shards), str(out), config, callbacks=[_Interrupt()])
    state = json.loads((out / "_backup" / "state.json").read_text())
    assert state["epoch"] == 2 and (out / "_backup" / "last.weights.h5").is_file()
    first = history(out)
    assert [int(r["epoch"]) for r in first] == [0, 1]
    assert not (out / "artifact.json").exists()
    # a different setting must not silently continue this run
    code = main(["train", "--data", str(shards), "--out", str(out), "--config",
                 str(tmp_path / "train.yaml"), "--base-filters", "8"])
    assert code == 2
    caplog.clear()
    with caplog.at_level("INFO", logger="model.train"):
        assert main(["train", "--data", str(shards), "--out", str(out), "--config",
                     str(tmp_path / "train.yaml")]) == 0
    # the resume is logged readably (the arguments were once in the wrong order)
    assert any(r.getMessage().startswith(f"resuming {out} from epoch 3 (best val_f1_best")
               for r in caplog.records), [r.getMessage() for r in caplog.records][:5]
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == first  # epochs 0 and 1 were not trained again
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["metrics"]["epochs_run"] == 4 and not (out / "_backup").exists()


def test_a_run_interrupted_before_a_setting_existed_resumes_with_its_default(shards,
                                                                             tmp_path):
    config = trainer.TrainConfig(base_filters=4, depth=3, batch_size=8, lr=0.01, epochs=3,
                                 patience=0, saved_model=False)
    out = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        trainer.train(str(shards), str(out), config, callbacks=[_Interrupt()])
    state_path = out / "_backup" / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["ema"]  # as written before the setting existed
    state_path.write_text(json.dumps(state))
    trainer.train(str(shards), str(out), config)
    assert [int(r["epoch"]) for r in history(out)] == [0, 1, 2]
    # at another value it is a changed setting, refused
    with pytest.raises(KeyboardInterrupt):
        trainer.train(str(shards), str(tmp_path / "new"), config, callbacks=[_Interrupt()])
    with pytest.raises(ConfigError, match="ema"):
        trainer.train(str(shards), str(tmp_path / "new"), config.replace(ema=0.9))


def test_monitor_val_loss_keeps_the_epoch_with_the_lowest_validation_loss(shards, tmp_path):
    out = tmp_path / "by-loss"
    # a high learning rate makes the validation loss go up and down between epochs
    args = ["train", "--data", str(shards), "--out", str(out), "--epochs", "6",
            "--monitor", "val_loss", *[a if a != "0.01" else "0.05" for a in TINY]]
    assert main(args) == 0
    rows = history(out)
    losses = [float(r["val_loss"]) for r in rows]
    f1s = [float(r["val_f1_best"]) for r in rows]
    meta = json.loads((out / "artifact.json").read_text())
    best = int(np.argmin(losses))
    assert meta["metrics"]["best_epoch"] == best + 1
    assert meta["metrics"]["best_epoch_val_loss"] == pytest.approx(losses[best], rel=1e-5)
    assert meta["training"]["monitor"] == "val_loss"
    # not what following F1 would have kept (else the test could not tell them apart)
    assert best != int(np.argmax(f1s)) or best != len(rows) - 1, (losses, f1s)
    # an unknown monitor is refused, naming the choices (a YAML file is not argparse)
    with pytest.raises(ConfigError, match="val_f1_best.*val_loss"):
        trainer.TrainConfig(monitor="val_f1")


def test_cosine_schedule_decays_the_learning_rate_over_the_epochs_and_resumes_on_it(
        shards, tmp_path):
    out = tmp_path / "cosine"
    args = ["train", "--data", str(shards), "--out", str(out), "--epochs", "4",
            "--lr-schedule", "cosine", *TINY]
    with pytest.raises(KeyboardInterrupt):  # stopped after its second epoch
        trainer.train(str(shards), str(out), trainer.TrainConfig(
            base_filters=4, depth=3, batch_size=8, lr=0.01, epochs=4, patience=0,
            saved_model=False, lr_schedule="cosine"), callbacks=[_Interrupt()])
    assert main(args) == 0  # resumes at the third epoch
    rates = [float(r["learning_rate"]) for r in history(out)]
    # 0.01 at the start, then down a half cosine to min_lr (1e-6): 0.01, 0.0085, 0.005, 0.0015
    expected = [1e-6 + (0.01 - 1e-6) * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["training"]["lr_schedule"] == "cosine"
    with pytest.raises(ConfigError, match="plateau.*cosine"):
        trainer.TrainConfig(lr_schedule="step")


def test_init_from_fine_tunes_with_a_frozen_encoder(trained, shards, tmp_path):
    out = tmp_path / "tuned"
    assert main(["train", "--data", str(shards), "--out", str(out), "--init-from", str(trained),
                 "--freeze-encoder", "--epochs", "2", "--batch-size", "8", "--patience", "0",
                 "--no-saved-model", "--lr", "0.01"]) == 0
    base, tuned = load_artifact(str(trained)), load_artifact(str(out))
    assert tuned.meta["training"]["init_from"] == str(trained)
    assert tuned.meta["training"]["base_filters"] == 4  # the artifact's architecture
    assert tuned.meta["normalization"] == base.meta["normalization"]
    frozen = [layer.name for layer in encoder_layers(base.model) if layer.weights]
    assert "enc0_conv1" in frozen and "enc2_bn2" in frozen
    for name in frozen:  # encoder weights (and batch-norm statistics) are unchanged
        for a, b in zip(base.model.get_layer(name).get_weights(),
                        tuned.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(
        base.model.get_layer("dec0_conv1").get_weights(),
        tuned.model.get_layer("dec0_conv1").get_weights())]
    assert any(changed)
    assert tuned.meta["metrics"]["val"]["f1"] > 0.7  # starts from a trained model


def test_earth_engine_shards_train(tmp_path):
    patches = write_shards(tmp_path / "ee", {"train": 24, "val": 8}, manifest=False, fmt="ee")
    out = tmp_path / "model"
    assert main(["train", "--data", str(tmp_path / "ee"), "--out", str(out), "--bands",
                 "slope,B4", "--epochs", "1", *TINY]) == 0
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["bands"] == ["slope", "B4"]
    assert meta["training"]["normalization_from"] == "computed"
    pixels = np.concatenate([im[m != 255] for im, m in patches["train"]]).astype(np.float64)
    np.testing.assert_allclose(meta["normalization"]["mean"], pixels[:, [2, 0]].mean(0),
                               rtol=1e-5)


def test_bad_inputs_give_clear_errors(shards, tmp_path, capsys):
    def error(*args: str) -> str:
        capsys.readouterr()
        assert main(["train", *args, "--out", str(tmp_path / "never"), *TINY]) == 2
        return capsys.readouterr().err

    write_shards(tmp_path / "ee", {"train": 2, "val": 1}, manifest=False, fmt="ee",
                 shards_per_split=1)
    assert "--bands" in error("--data", str(tmp_path / "ee"))
    assert "band(s) ['B12'] are not in the shards" in error("--data", str(shards), "--bands",
                                                           "B4,B12")
    write_shards(tmp_path / "noval", {"train": 2}, shards_per_split=1)
    assert "no shards for split 'val'" in error("--data", str(tmp_path / "noval"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "artifact.json").write_text("{broken")
    message = error("--data", str(shards), "--init-from", str(tmp_path / "corrupt"))
    assert "--init-from" in message and "corrupt" in message
    message = error("--data", str(shards), "--augment", "flip_h,twirl")
    assert "unknown augmentation 'twirl'" in message
    (tmp_path / "bad.yaml").write_text("epochs: -3\n")
    assert "epochs must be a positive integer" in error("--data", str(shards), "--config",
                                                        str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("learning_rate: 0.1\n")
    assert "unknown training setting(s) ['learning_rate']" in error(
        "--data", str(shards), "--config", str(tmp_path / "typo.yaml"))
    assert not (tmp_path / "never").exists()


def test_init_from_refuses_other_bands(trained, shards):
    config = trainer.TrainConfig(init_from=str(trained), bands=("B4", "B8"), epochs=1)
    with pytest.raises(ConfigError, match=r"lack \['slope'\] and add \[\]"):
        trainer.train(str(shards), "/nonexistent/never", config)


def test_best_threshold_f1_metric_matches_numpy(rng):
    truth = (rng.random((3, 16, 16, 1)) < 0.2).astype(np.float32)
    truth[0, :2] = 255
    prob = np.clip(0.6 * truth + rng.random(truth.shape) * 0.6, 0, 1).astype(np.float32)
    metric = trainer.BestThresholdF1(bins=200)
    metric.update_state(truth[:2], prob[:2])
    metric.update_state(truth[2:], prob[2:])
    _, expected = best_threshold(truth, prob, bins=200)
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


_MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from model.train import TrainConfig, train
meta = train(sys.argv[1], sys.argv[2], TrainConfig(
    base_filters=4, depth=3, batch_size=8, lr=0.01, epochs=2, patience=0, saved_model=False,
    strategy="mirrored", mixed_precision="mixed_bfloat16"))
print(json.dumps(meta["training"]))
"""


@pytest.mark.slow
def test_mirrored_strategy_with_mixed_precision_writes_a_float32_artifact(shards, tmp_path):
    # Two logical CPUs stand in for two GPUs: the MirroredStrategy + mixed precision path.
    out = tmp_path / "mirrored"
    done = subprocess.run([sys.executable, "-c", _MIRRORED, str(shards), str(out)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    training = json.loads(done.stdout.strip().splitlines()[-1])
    assert training["replicas"] == 2 and training["strategy_used"] == "MirroredStrategy"
    assert training["precision_policy"] == "mixed_bfloat16"
    art = load_artifact(str(out))
    assert {layer.dtype_policy.name for layer in art.model.layers} == {"float32"}
    assert art.meta["metrics"]["val"]["f1"] > 0.5


def test_cpu_bf16_flags_are_read_from_cpuinfo():
    amx = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"
    avx = "processor : 0\nflags : fpu avx512f avx512_bf16 avx512_vnni\n"
    plain = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    assert cpu.cpu_has_bf16(amx) and cpu.cpu_has_bf16(avx)
    assert not cpu.cpu_has_bf16(plain)
    assert not cpu.cpu_has_bf16("")  # no flags line (other systems)
    # a flag named like a bf16 flag inside another line does not count
    assert not cpu.cpu_has_bf16("model name : avx512_bf16 edition\nflags : fpu\n")


def test_the_cpu_is_described_by_name_vector_extensions_and_bf16():
    info = ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n"
            "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n")
    line = cpu.describe_cpu(info)
    assert line.startswith("AMD EPYC 7B13, ") and ", avx2 fma, native bfloat16: no" in line
    spr = "model name : Intel Xeon\nflags : avx2 fma avx512f avx512_vnni amx_bf16\n"
    assert cpu.describe_cpu(spr).endswith(
        "avx2 fma avx512f avx512_vnni amx_bf16, native bfloat16: yes, numpy kernels: "
        + cpu.describe_numpy_kernels())
    assert "unknown CPU" in cpu.describe_cpu("")


def test_numpy_kernels_name_the_targets_numpy_dispatches_to():
    kernels = cpu.numpy_kernels()
    assert set(kernels) == set(cpu.NUMPY_TRANSCENDENTALS)
    assert cpu.describe_numpy_kernels({"exp": "X86_V4", "sin": "X86_V4"}) == "X86_V4"
    assert cpu.describe_numpy_kernels({"exp": "X86_V3", "power": "baseline(X86_V2)",
                                       "sin": "X86_V3"}) == (
        "X86_V3 (exp sin); baseline(X86_V2) (power)")
    # what numpy reports follows what it runs: with this machine's widest target switched
    # off (before numpy loads), exp runs with another kernel, and numpy_kernels says so
    exp = kernels["exp"]
    if exp.startswith("baseline") or exp == "unknown":
        pytest.skip(f"numpy runs exp with its baseline kernel here ({exp}): nothing to switch")
    probe = ("import json; from model.cpu import numpy_kernels; "
             "print(json.dumps(numpy_kernels()))")
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": exp}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert json.loads(done.stdout)["exp"] not in (exp, "unknown")


def test_mixed_policy_warns_only_where_the_cpu_emulates_it(caplog):
    default = distribute.choose_strategy("auto")
    with caplog.at_level("WARNING", logger="model.distribute"):
        distribute.precision_policy("mixed_bfloat16", default, cpu_bf16=True)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="model.distribute"):
        distribute.precision_policy("mixed_bfloat16", default, cpu_bf16=False)
        distribute.precision_policy("mixed_float16", default, cpu_bf16=True)
    assert len(caplog.records) == 2
    assert all("slower than float32" in r.getMessage() for r in caplog.records)


def test_strategy_and_precision_choice():
    default = distribute.choose_strategy("auto")
    assert default.num_replicas_in_sync == 1 and distribute.is_chief(default)
    # CPUs train in float32 unless asked, even where bfloat16 is native
    assert distribute.precision_policy("auto", default, cpu_bf16=True) == "float32"
    assert distribute.precision_policy("off", default, cpu_bf16=True) == "float32"
    assert distribute.precision_policy("mixed_bfloat16", default) == "mixed_bfloat16"
    cluster = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
               "task": {"type": "worker", "index": 0}}
    assert distribute.tf_config_workers({"TF_CONFIG": json.dumps(cluster)}) == 3
    assert distribute.tf_config_workers({}) == 0
    with pytest.raises(ConfigError, match="TF_CONFIG is not a JSON cluster spec"):
        distribute.tf_config_workers({"TF_CONFIG": "{oops"})
    with pytest.raises(ConfigError, match="needs the TF_CONFIG"):
        distribute.choose_strategy("multiworker")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        distribute.choose_strategy("horovod")


def test_example_config_is_valid():
    path = Path(__file__).resolve().parents[2] / "model" / "configs" / "train.yaml"
    config, grid = trainer.load_config(str(path), {"epochs": 3})
    assert config.epochs == 3 and config.lr == 1e-3 and config.beta == 0.7
    assert config.depth == 5 and config.batch_size == 32 and config.augment.rot90
    assert grid == {"lr": [1e-3, 1e-4], "base_filters": [8, 16], "batch_size": [16, 32]}


def test_config_yaml_and_flags():
    config, grid = trainer.load_config(None, {"lr": 0.01, "augment": trainer.parse_augment(
        "flip_h,rot45,shear=0.1,blur")})
    assert config.lr == 0.01 and config.batch_size == 32 and config.depth == 5 and not grid
    assert config.augment.flip_h and not config.augment.flip_v and config.augment.rot45
    assert config.augment.shear == 0.1 and config.augment.blur == 0.5
    assert not trainer.parse_augment("none").enabled
    assert trainer.TrainConfig.from_dict({"lr": "1e-3", "augment": {"rot45": True}}).lr == 1e-3
    with pytest.raises(ConfigError, match="dropout must be a number"):
        trainer.TrainConfig(dropout="lots")
    with pytest.raises(ConfigError, match="freeze_encoder needs init_from"):
        trainer.TrainConfig(freeze_encoder=True)
    with pytest.raises(ConfigError, match="loss must be one of"):
        trainer.TrainConfig(loss="l2")


def test_stem_widths_from_yaml_flags_and_tuples():
    assert trainer.TrainConfig().stem == ()
    assert trainer.TrainConfig(stem="64, 32").stem == (64, 32)  # a flag
    assert trainer.TrainConfig.from_dict({"stem": [48]}).stem == (48,)  # YAML
    assert trainer.TrainConfig(stem=None).stem == ()
    for bad in ("64,x", (0,), [32, -1], [2.5], "64;32"):
        with pytest.raises(ConfigError, match="stem must be positive integer widths"):
            trainer.TrainConfig(stem=bad)


def test_init_from_keeps_the_artifacts_stem(shards, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert main(["train", "--data", str(shards), "--out", str(base), "--epochs", "1",
                 "--stem", "6,5", *TINY]) == 0
    assert architecture_of(load_artifact(str(base)).model)["stem"] == (6, 5)
    # fine-tuning names no stem: the artifact's is built, and its weights start it
    assert main(["train", "--data", str(shards), "--out", str(tuned), "--init-from",
                 str(base), "--freeze-encoder", "--epochs", "1", *TINY]) == 0
    a, b = load_artifact(str(base)), load_artifact(str(tuned))
    assert b.meta["training"]["stem"] == [6, 5]
    for name in ("enc_stem0_conv", "enc_stem1_bn"):  # frozen with the encoder
        for x, y in zip(a.model.get_layer(name).get_weights(),
                        b.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(x, y)


def test_a_corrupt_shard_is_named_with_its_record(trained, tmp_path, capsys):
    """Issue 17: a truncated shard was reported as a bare 'Graph execution error:'."""
    root = tmp_path / "shards"
    write_shards(root, {"train": 12, "val": 6}, compression="")
    bad = root / "train" / "train-00001-of-00002.tfrecord"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - len(data) // 4])  # cut inside its 5th record
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "m"), "--epochs", "1",
                 *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert f"shard {str(bad)!r} is corrupt at record 4" in err, err
    assert "re-run the export" in err
    assert main(["evaluate", "--model", str(trained), "--data", str(root),
                 "--split", "train"]) == 2
    assert f"shard {str(bad)!r} is corrupt" in capsys.readouterr().err


class _RawWeights(keras.callbacks.Callback):
    """The trained (not averaged) weights after every step, and the steps per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[np.ndarray]] = []
        self.epoch_ends: list[int] = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([np.array(v) for v in self.model.trainable_weights])

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(len(self.steps))


def _trainable(out: Path) -> list[np.ndarray]:
    return [np.array(v) for v in load_artifact(str(out)).model.trainable_weights]


def test_ema_validates_and_saves_the_moving_average_of_the_weights(shards, tmp_path):
    config = trainer.TrainConfig(base_filters=4, depth=3, batch_size=8, lr=0.01, epochs=3,
                                 patience=0, saved_model=False, ema=0.8, monitor="val_loss")
    raw = _RawWeights()
    trainer.train(str(shards), str(tmp_path / "ema"), config, callbacks=[raw])
    meta = json.loads((tmp_path / "ema" / "artifact.json").read_text())
    assert meta["training"]["ema"] == 0.8
    best = meta["metrics"]["best_epoch"]  # 1-based
    # Keras' average: the first step's weights, then 0.8 * average + 0.2 * weights
    average = _moving_average(raw.steps[:raw.epoch_ends[best - 1]], 0.8)
    saved = _trainable(tmp_path / "ema")
    assert len(saved) == len(average)
    for s, a in zip(saved, average):
        np.testing.assert_allclose(s, a, rtol=1e-4, atol=1e-5)
    # the average is not the last step's weights (else this test could not tell them apart)
    assert max(float(np.abs(a - w).max()) for a, w in
               zip(average, raw.steps[raw.epoch_ends[best - 1] - 1])) > 1e-3
    # validation ran on the averaged weights: the artifact's loss on it is the logged one
    rows = history(tmp_path / "ema")
    assert meta["metrics"]["best_epoch_val_loss"] == pytest.approx(
        float(rows[best - 1]["val_loss"]), rel=1e-6)
    with pytest.raises(ConfigError, match="ema must be in"):
        trainer.TrainConfig(ema=1.0)


class _FirstStep(keras.callbacks.Callback):
    """The weights the first training step of a run starts from."""

    weights: list[np.ndarray] | None = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.weights is None:
            self.weights = [np.array(v) for v in self.model.trainable_weights]


def _moving_average(steps: list[list[np.ndarray]], momentum: float) -> list[np.ndarray]:
    average = steps[0]
    for weights in steps[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
    return average


@pytest.mark.parametrize(("ema", "first_epochs"), [(0.0, 4), (0.8, 4), (0.8, 2)])
def test_a_resumed_run_trains_on_from_the_trained_weights_and_averages_on(shards, tmp_path,
                                                                           ema, first_epochs):
    """The checkpoint holds the average; a resumed run must not train on from it.

    ``first_epochs`` 2: the run was stopped after its last epoch's checkpoint and resumed
    with more epochs (Keras puts the average in place of the trained weights there).
    """
    config = trainer.TrainConfig(base_filters=4, depth=3, batch_size=8, lr=0.01, epochs=4,
                                 patience=0, saved_model=False, ema=ema, monitor="val_loss")
    out = tmp_path / "run"
    before, after, first = _RawWeights(), _RawWeights(), _FirstStep()
    with pytest.raises(KeyboardInterrupt):  # after the second epoch
        trainer.train(str(shards), str(out), config.replace(epochs=first_epochs),
                      callbacks=[before, _Interrupt()])
    trainer.train(str(shards), str(out), config, callbacks=[first, after])
    assert first.weights is not None
    for a, b in zip(first.weights, before.steps[-1]):  # Keras swaps by adding, subtracting
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = before.steps + after.steps
    ends = before.epoch_ends + [len(before.steps) + e for e in after.epoch_ends]
    assert len(ends) == 4
    best = json.loads((out / "artifact.json").read_text())["metrics"]["best_epoch"]
    kept = steps[:ends[best - 1]]
    expected = _moving_average(kept, ema) if ema else kept[-1]
    for s, e in zip(_trainable(out), expected):
        np.testing.assert_allclose(s, e, rtol=1e-4, atol=1e-5)

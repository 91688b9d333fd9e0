"""Sweeps at bf16 and int8: close to fp32, and refused unless the artifact validated them.

A tiny U-Net is fitted on patches like the predict scene's (bright B8 discs are
landslides), validated through the real CLI, then swept over the scene at each precision.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model import artifact as artifact_mod
from model.artifact import save_artifact
from model.schema import encode_patch
from pipelines import cli
from pipelines.predict import plan_predict, run_predict
from tests.model.test_precision import fit_tiny_unet
from tests.predict.test_predict import (  # noqa: F401  (scene is a fixture)
    _cli_args,
    _config,
    _read,
    scene,
)

BANDS = ("B4", "B8")
TRANSFORM = (10.0, 0.0, 600000.0, 0.0, -10.0, 3100000.0)


def _patch(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Reflectances like the scene's: B8 0.15-0.23, with a 0.5 disc that is the landslide.

    Every other patch has a strip without imagery, zero-filled and labelled 255, as export
    writes nodata (it keeps patches up to half nodata): int8 is calibrated on these.
    """
    b4 = rng.uniform(0.09, 0.15, (size, size))
    b8 = rng.uniform(0.15, 0.23, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(6, size - 6, 2)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(3, 8) ** 2
    b8[disc] = 0.5
    mask = disc.astype(np.uint8)
    if rng.random() < 0.5:
        strip = slice(int(rng.integers(0, size - 8)), None)
        b4[strip], b8[strip], mask[strip] = 0.0, 0.0, 255
    return np.stack([b4, b8], -1).astype(np.float32), mask


def _write_export(root: Path, counts: dict[str, int]) -> dict[str, list]:
    """An export folder as `landslides export` writes it (shards per split + manifest)."""
    rng = np.random.default_rng(11)
    written, files = {}, {}
    for split, n in counts.items():
        (root / split).mkdir(parents=True)
        written[split] = [_patch(rng) for _ in range(n)]
        path = root / split / f"{split}-00000-of-00001.tfrecord.gz"
        files[split] = [str(path)]
        with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
            for i, (image, mask) in enumerate(written[split]):
                w.write(encode_patch(image, mask, BANDS, f"32645_r0_c0/{i:05d}", "EPSG:32645",
                                     TRANSFORM, "2020-01-01/2020-12-31"))
    (root / "manifest.json").write_text(json.dumps({
        "format": "lsm/v1", "bands": list(BANDS), "patch_size": 32, "pixel_size": 10.0,
        "ignore_value": 255, "classes": {"background": 0, "landslide": 1},
        "patches": counts, "files": files}))
    return written


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A tiny trained artifact that records its training data; not validated."""
    root = tmp_path_factory.mktemp("precision_export")
    patches = _write_export(root, {"train": 48, "test": 16})
    net = fit_tiny_unet(patches["train"], bands=BANDS)
    out = tmp_path_factory.mktemp("precision_fitted") / "model"
    save_artifact(net, str(out), BANDS, patch_size=32, size_multiple=4, threshold=0.5,
                  saved_model=False, training={"data": str(root)})
    return out


@pytest.fixture(scope="module")
def validated(fitted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("precision_validated") / "model"
    shutil.copytree(fitted, out)
    assert cli.main(["validate-precision", "--model", str(out),
                     "--calibration-patches", "32"]) == 0
    return out


@pytest.fixture(scope="module")
def fp32_sweep(scene, validated, tmp_path_factory) -> tuple[Path, np.ndarray]:  # noqa: F811
    out = tmp_path_factory.mktemp("sweep_fp32")
    run_predict(_config(scene, out, model=str(validated), chunk_size=128,
                        prob_dtype="float32"))
    return out, _read(out / "mosaic" / "prob.tif")


def test_validate_precision_prints_and_records_each_precision(validated, tmp_path, capsys):
    copy = tmp_path / "model"
    shutil.copytree(validated, copy)
    capsys.readouterr()
    assert cli.main(["validate-precision", "--model", str(copy), "--precisions", "int8",
                     "--calibration-patches", "16", "--max-drift", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "on 16 patches of" in out and "(allowed drift 0.02)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:4]}
    record = json.loads((copy / "artifact.json").read_text())["precisions"]
    assert record["max_drift"] == 0.02 and record["validated"]["int8"]["calibration"][
        "patches"] == 16
    assert set(record["validated"]) == {"fp32", "bf16", "int8"}  # bf16 kept: same patches
    assert float(rows["fp32"][1]) == pytest.approx(record["validated"]["fp32"]["f1"], abs=1e-4)
    assert record["validated"]["fp32"]["f1"] > 0.6  # a model that finds the discs
    assert rows["int8"][-1] == ("yes" if record["validated"]["int8"]["ok"] else "drifted")
    # --max-changed reaches the record; a precision over it is refused, saying why
    assert cli.main(["validate-precision", "--model", str(copy), "--precisions", "int8",
                     "--calibration-patches", "16", "--max-changed", "0"]) == 0
    out = capsys.readouterr().out
    int8 = json.loads((copy / "artifact.json").read_text())["precisions"]["validated"]["int8"]
    assert json.loads((copy / "artifact.json").read_text())["precisions"]["max_changed"] == 0
    line = next(x for x in out.splitlines() if x.split() and x.split()[0] == "int8")
    if int8["changed"]:
        assert not int8["ok"] and line.endswith("decisions changed"), line
    else:
        assert int8["ok"] and line.endswith("yes"), line


@pytest.mark.parametrize("precision,atol,mean_tol", [("bf16", 0.05, 0.005),
                                                      ("int8", 0.15, 0.02)])
def test_a_sweep_at_lower_precision_is_close_to_fp32(scene, validated, fp32_sweep,  # noqa: F811
                                                     precision, atol, mean_tol):
    ref_out, ref = fp32_sweep
    out = ref_out.parent / f"{ref_out.name}-{precision}"
    shutil.copytree(ref_out, out)  # the fp32 sweep's folder: its chunks are not reused
    run = run_predict(_config(scene, out, model=str(validated), chunk_size=128,
                              prob_dtype="float32", precision=precision))[0]
    assert (run["counts"]["chunks_computed"], run["counts"]["chunks_skipped"]) == (4, 0)
    assert run["config"]["precision"] == precision
    got = _read(out / "mosaic" / "prob.tif")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))  # the same nodata
    valid = ~np.isnan(ref)
    diff = np.abs(got[valid] - ref[valid])
    assert diff.max() <= atol and diff.mean() <= mean_tol
    assert ((got[valid] >= 0.5) == (ref[valid] >= 0.5)).mean() > 0.995
    assert ((ref[valid] >= 0.5) == scene["expected"][valid]).mean() > 0.95  # it finds them


def test_predict_refuses_a_precision_never_validated_or_drifted(scene, fitted,  # noqa: F811
                                                               validated, tmp_path, capsys):
    out = tmp_path / "out"
    args = _cli_args(scene, out, "--aoi", scene["aoi"], "--chunk-size", "128")
    capsys.readouterr()
    assert cli.main([*args, "--model", str(fitted), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert f"Model artifact {str(fitted)!r} was never validated at precision 'bf16'" in err
    assert "landslides validate-precision --model" in err and "--precision fp32" in err
    drifted = tmp_path / "drifted"
    shutil.copytree(validated, drifted)
    meta = json.loads((drifted / "artifact.json").read_text())
    meta["precisions"]["validated"]["int8"]["drift"] = 0.03  # as a coarser model would
    (drifted / "artifact.json").write_text(json.dumps(meta))
    assert cli.main([*args, "--model", str(drifted), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "at precision 'int8' has held-out F1" in err and "a drift of 0.0300" in err
    assert f"more than the {meta['precisions']['max_drift']:.4f} the artifact allows" in err
    assert not out.exists()  # refused before anything was written or any chunk ran
    assert cli.main([*args, "--model", str(drifted), "--precision", "fp32"]) == 0


def test_the_launcher_reads_the_artifact_without_loading_the_model(scene, validated,  # noqa: F811
                                                                   tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(validated, copy)
    plan, elements = plan_predict(_config(scene, tmp_path / "out", model=str(copy),
                                          precision="int8"))
    assert plan.meta["precision"]["name"] == "int8" and len(elements) == 16
    assert not [k for k in artifact_mod._LOADED if str(copy) in str(k[0])]


@pytest.mark.parametrize("extra", [["--precision", "bf16"], ["--large-model"]])
def test_explain_is_refused_where_the_worker_has_no_gradients(scene, validated,  # noqa: F811
                                                             tmp_path, capsys, extra):
    out = tmp_path / "out"
    args = _cli_args(scene, out, "--aoi", scene["aoi"], "--chunk-size", "128")
    capsys.readouterr()
    assert cli.main([*args, "--model", str(validated), "--explain", *extra]) == 2
    err = capsys.readouterr().err
    assert "--explain needs the Keras model's gradients" in err
    assert "--precision fp32 and without --large-model" in err
    assert not out.exists()

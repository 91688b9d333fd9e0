"""``landslides train|tune|evaluate``: run :mod:`model.train` and print what a person reads.

Model errors reach :func:`pipelines.cli.main` (one line, exit code 2); records TensorFlow
cannot read are turned into the same one-line message here.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from model.train import TUNING, evaluate, load_config, train, tune, validate_precisions
from model.train.files import join
from pipelines import fsio
from pipelines.options.train import (
    EvaluateOptions,
    TrainOptions,
    TuneOptions,
    ValidatePrecisionOptions,
)

_DATA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                tf.errors.NotFoundError, tf.errors.PermissionDeniedError)


def reads_data(command: str, out_is_folder: bool = True
                ) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Turn a TensorFlow error on the records or the output into one line and exit code 2.

    The output folder is checked for writing first, so an unwritable ``--out`` is named as
    such before any data is read; a later error whose text names the output folder is
    reported as a write failure, any other as a read failure.
    """

    def decorate(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(options: Any) -> int:
            out = getattr(options, "out", None)
            if out and out_is_folder:
                fsio.check_creatable(str(out))
            try:
                return fn(options)
            except _DATA_ERRORS as exc:
                first = (exc.message or str(exc)).strip().splitlines()[0]
                what = "writing the output" if out and str(out) in first else "reading the data"
                print(f"landslides {command}: error {what}: {first}", file=sys.stderr)
                return 2

        return wrapper

    return decorate


@reads_data("train")
def train_command(options: TrainOptions) -> int:
    """``landslides train``: YAML config + flags -> :func:`model.train.train`; a summary."""
    cfg, _ = load_config(options.config, options.settings)
    meta = train(options.data, options.out, cfg, val_data=options.val_data)
    val = meta["metrics"]["val"]
    print(f"model {meta['model_id']} -> {options.out}\n"
          f"validation at threshold {meta['threshold']:.3f}: precision {val['precision']:.4f} "
          f"recall {val['recall']:.4f} F1 {val['f1']:.4f} IoU {val['iou']:.4f}")
    return 0


@reads_data("evaluate", out_is_folder=False)
def evaluate_command(options: EvaluateOptions) -> int:
    """``landslides evaluate``: the scores and the confusion matrix."""
    result = evaluate(options.model, options.data, split=options.split, out=options.out,
                      threshold=options.threshold, batch_size=options.batch_size,
                      label=options.label, allow_partial=options.allow_partial)
    (tn, fp), (fn, tp) = result["confusion_matrix"]["matrix"]
    width = max(len(str(v)) for v in (tn, fp, fn, tp, "background"))
    corner = "truth \\ predicted"
    print(f"{result['model_id']} on {result['patches']} patches ({result['pixels']} pixels, "
          f"threshold {result['threshold']:.3f})\n"
          f"precision {result['precision']:.4f}  recall {result['recall']:.4f}  "
          f"F1 {result['f1']:.4f}  IoU {result['iou']:.4f}\n"
          f"{corner:>18} {'background':>{width}} {'landslide':>{width}}\n"
          f"{'background':>18} {tn:>{width}} {fp:>{width}}\n"
          f"{'landslide':>18} {fn:>{width}} {tp:>{width}}\n"
          f"written to {result['path']}")
    return 0


@reads_data("tune")
def tune_command(options: TuneOptions) -> int:
    """``landslides tune``: the grid from flags (or the YAML's ``tune``); the ranking."""
    cfg, grid = load_config(options.config, options.settings)
    grid.update(options.grid())
    rows = tune(options.data, options.out, cfg, grid or None, val_data=options.val_data)
    keys = [k for k in rows[0] if k not in ("rank", "trial", "val_f1", "val_precision",
                                             "val_recall", "val_iou", "threshold",
                                             "best_epoch", "epochs_run", "seconds",
                                             "model_id", "path")]
    print("rank  trial" + "".join(f"  {k}" for k in keys) + "  val_f1  precision  recall")
    for row in rows:
        print(f"{row['rank']:>4}  {row['trial']}" + "".join(f"  {row[k]}" for k in keys)
              + f"  {row['val_f1']:.4f}  {row['val_precision']:.4f}  {row['val_recall']:.4f}")
    print(f"table {join(options.out, TUNING)}; best artifact {join(options.out, 'best')}")
    return 0


@reads_data("validate-precision", out_is_folder=False)
def validate_precision_command(options: ValidatePrecisionOptions) -> int:
    """``landslides validate-precision``: held-out F1 per precision, as a table.

    Returns:
        0, also when a precision drifted too far (it is recorded as refused: predict will
        not use it); the table says which.
    """
    record = validate_precisions(
        options.model, options.precisions, data=options.data, split=options.split,
        max_drift=options.max_drift, calibration_data=options.calibration_data,
        calibration_patches=options.calibration_patches, batch_size=options.batch_size,
        max_changed=options.max_changed, allow_partial=options.allow_partial)
    held = record["held_out"]
    lines = [f"held-out F1 at threshold {record['threshold']:.3f} on {held['patches']} patches "
             f"of {held['data']} (allowed drift {record['max_drift']}):",
             f"{'precision':>9}  {'F1':>6}  {'drift':>6}  {'changed':>7}  predict may use it"]
    for name in ("fp32", *options.precisions):
        v = record["validated"][name]
        drift, changed = v.get("drift", 0.0), v.get("changed_share", 0.0)
        if name == "fp32":
            ok = "yes (reference)"
        elif v["ok"]:
            ok = "yes"
        else:
            why = [w for w, bad in (("F1 drifted", drift > record["max_drift"]),
                                    ("decisions changed", changed > record.get(
                                        "max_changed", float("inf")))) if bad]
            ok = "no: " + (" and ".join(why) or "refused")
        lines.append(f"{name:>9}  {v['f1']:.4f}  {drift:.4f}  {changed:>7.2%}  {ok}")
    print("\n".join(lines) + f"\nrecorded in {options.model}")
    return 0


__all__ = ["evaluate_command", "reads_data", "train_command", "tune_command",
           "validate_precision_command"]

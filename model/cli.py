"""Command-line handlers of ``landslides train|evaluate|tune``.

``pipelines.cli`` parses the arguments and calls these with them; they print the short
summaries a person reads at the end of a command (library code only logs).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from model.errors import ConfigError, ModelError
from model.train import (
    TUNING,
    evaluate,
    load_config,
    parse_augment,
    train,
    tune,
)
from model.train.files import join


def _cli(command: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Turn model errors and bad-record errors into a one-line message and exit code 2."""

    def decorate(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            try:
                return fn(*args, **kwargs)
            except ModelError as exc:
                print(f"landslides {command}: error: {exc}", file=sys.stderr)
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                    tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as exc:
                first = (exc.message or str(exc)).strip().splitlines()[0]
                print(f"landslides {command}: error reading the data: {first}",
                      file=sys.stderr)
            return 2

        return wrapper

    return decorate


_FLAG_FIELDS = ("bands", "base_filters", "depth", "dropout", "batch_norm", "bn_momentum",
                "n_classes", "loss", "alpha", "beta", "gamma", "lr", "batch_size", "epochs",
                "steps_per_epoch", "patience", "seed", "init_from", "freeze_encoder",
                "mixed_precision", "strategy", "tpu", "cache", "label", "saved_model",
                "allow_partial", "deterministic")


def _overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in flags.items() if k in _FLAG_FIELDS and v is not None}
    if flags.get("augment") is not None:
        values["augment"] = parse_augment(flags["augment"])
    return values


@_cli("train")
def train_cli(data: str, out: str, config: str | None = None, val_data: str | None = None,
              augment: str | None = None, **flags: Any) -> int:
    """``landslides train``: YAML config + flags -> :func:`train`; prints a summary."""
    unknown = sorted(set(flags) - set(_FLAG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown train option(s) {unknown}")
    cfg, _ = load_config(config, _overrides({**flags, "augment": augment}))
    meta = train(data, out, cfg, val_data=val_data)
    val = meta["metrics"]["val"]
    print(f"model {meta['model_id']} -> {out}\n"
          f"validation at threshold {meta['threshold']:.3f}: precision {val['precision']:.4f} "
          f"recall {val['recall']:.4f} F1 {val['f1']:.4f} IoU {val['iou']:.4f}")
    return 0


@_cli("evaluate")
def evaluate_cli(model: str, data: str, split: str = "test", out: str | None = None,
                 threshold: float | None = None, batch_size: int = 16,
                 label: str | None = None, allow_partial: bool = False) -> int:
    """``landslides evaluate``: :func:`evaluate`, printing the scores and confusion matrix."""
    result = evaluate(model, data, split=split, out=out, threshold=threshold,
                      batch_size=batch_size, label=label, allow_partial=allow_partial)
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


def _grid_values(text: str | None, kind: type, name: str) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--{name} needs comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


@_cli("tune")
def tune_cli(data: str, out: str, config: str | None = None, val_data: str | None = None,
             lr: str | None = None, filters: str | None = None, batch_size: str | None = None,
             augment: str | None = None, **flags: Any) -> int:
    """``landslides tune``: grid from flags (or the YAML's ``tune``) -> :func:`tune`."""
    unknown = sorted(set(flags) - set(_FLAG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown tune option(s) {unknown}")
    cfg, grid = load_config(config, _overrides({**flags, "augment": augment}))
    for key, values in (("lr", _grid_values(lr, float, "lr")),
                        ("base_filters", _grid_values(filters, int, "filters")),
                        ("batch_size", _grid_values(batch_size, int, "batch-size"))):
        if values is not None:
            grid[key] = values
    rows = tune(data, out, cfg, grid or None, val_data=val_data)
    keys = [k for k in rows[0] if k not in ("rank", "trial", "val_f1", "val_precision",
                                             "val_recall", "val_iou", "threshold",
                                             "best_epoch", "epochs_run", "seconds",
                                             "model_id", "path")]
    print("rank  trial" + "".join(f"  {k}" for k in keys) + "  val_f1  precision  recall")
    for row in rows:
        print(f"{row['rank']:>4}  {row['trial']}" + "".join(f"  {row[k]}" for k in keys)
              + f"  {row['val_f1']:.4f}  {row['val_precision']:.4f}  {row['val_recall']:.4f}")
    print(f"table {join(out, TUNING)}; best artifact {join(out, 'best')}")
    return 0

"""``landslides tune``: a grid search, one trained artifact per trial, ranked by val F1.

Trials whose artifact already exists with the same settings, trained on the same inputs,
are kept, so an interrupted search resumes. The settings compared are those the trial
would train with, once :func:`~model.train.fit.train` has resolved what the config leaves
to the data or to ``init_from`` (bands, classes, learning rate, architecture).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from model import data as data_mod
from model.artifact import Artifact, read_meta
from model.errors import ArtifactError, ConfigError
from model.train.config import TrainConfig
from model.train.files import copy_tree, join, write_text
from model.train.fit import resolved_config, resolved_lr, train
from model.train.inputs import changed_inputs, describe_inputs, read_inputs_record
from model.train.transfer import ARCHITECTURE, load_init

logger = logging.getLogger(__name__)

#: The ranked table of trials in the output folder.
TUNING = "tuning.csv"

_SHORT = {"lr": "lr", "base_filters": "f", "batch_size": "b"}


def _trial_id(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{_SHORT.get(key, key)}{text}")
    return "-".join(parts).replace("/", "_")


def tune(
    data: str,
    out: str,
    config: TrainConfig | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    val_data: str | None = None,
) -> list[dict]:
    """Grid search: train one artifact per combination and rank them by validation F1.

    Args:
        data: Shards (see :func:`train`).
        out: Output folder: ``trials/<id>/`` per trial, ``tuning.csv`` (best first) and
            ``best/`` (a copy of the best trial's artifact).
        config: Settings shared by all trials (keep ``epochs`` small).
        grid: Setting name -> values (default: lr 1e-3, 1e-4 x base_filters 8, 16 x
            batch_size 16, 32, as in the multi-temporal U-Net study).
        val_data: Validation shards.

    Returns:
        The table rows, best first. Trials whose artifact exists already (same settings,
        same inputs: see :func:`~model.train.inputs.inputs_record`) are not trained
        again, so an interrupted search resumes; one trained on other shards is.

    Raises:
        ConfigError: an unknown or empty grid entry, a trial with bad settings (every
            trial is checked before the first one trains), or a grid over an architecture
            setting (:data:`~model.train.transfer.ARCHITECTURE`) of a search with
            ``init_from``: fine-tuning takes the artifact's architecture, so those trials
            would all train it under other labels.
    """
    config = config or TrainConfig()
    grid = dict(grid or {"lr": [1e-3, 1e-4], "base_filters": [8, 16], "batch_size": [16, 32]})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, values in grid.items():
        if key not in known:
            raise ConfigError(f"cannot tune {key!r}: not a training setting ({sorted(known)})")
        if not values:
            raise ConfigError(f"the grid of {key!r} is empty")
    combos = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    trials = [(combo, config.replace(**combo)) for combo in combos]  # validates them all
    for _, trial_config in trials:
        resolved_lr(trial_config)
    _check_architecture_grid(grid, [c for _, c in trials])
    logger.info("grid search of %d trials over %s", len(trials), grid)
    # what the trials read: found and fingerprinted once per label and init artifact (the
    # settings it depends on), not once per finished trial
    records: dict[tuple, dict] = {}
    sources: dict[tuple, tuple[data_mod.ShardSet, Artifact | None]] = {}

    def inputs_of(c: TrainConfig) -> dict:
        key = (c.label, c.init_from)
        if key not in records:
            records[key] = read_inputs_record(data, val_data, c)
        return records[key]

    def settings_of(c: TrainConfig) -> dict:
        key = (c.label, c.init_from)
        if key not in sources:
            sources[key] = (data_mod.find_shards(data, label=c.label),
                            load_init(c.init_from) if c.init_from else None)
        return resolved_settings(c, *sources[key])

    rows = []
    for i, (setting, trial_config) in enumerate(trials, 1):
        tid = _trial_id(setting)
        trial_out = join(out, "trials", tid)
        meta = _finished_trial(trial_out, trial_config, data, val_data, inputs_of,
                               settings_of)
        if meta is None:
            logger.info("trial %d/%d %s", i, len(trials), tid)
            meta = train(data, trial_out, trial_config, val_data=val_data)
        else:
            logger.info("trial %d/%d %s: done before, kept", i, len(trials), tid)
        val = meta["metrics"]["val"]
        rows.append({
            "trial": tid, **setting,
            "val_f1": round(val["f1"], 6), "val_precision": round(val["precision"], 6),
            "val_recall": round(val["recall"], 6), "val_iou": round(val["iou"], 6),
            "threshold": meta["threshold"], "best_epoch": meta["metrics"]["best_epoch"],
            "epochs_run": meta["metrics"]["epochs_run"],
            "seconds": meta["metrics"]["train_seconds"], "model_id": meta["model_id"],
            "path": trial_out,
        })
    rows.sort(key=lambda r: -r["val_f1"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    columns = ["rank", "trial", *grid, "val_f1", "val_precision", "val_recall", "val_iou",
               "threshold", "best_epoch", "epochs_run", "seconds", "model_id", "path"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tf.io.gfile.makedirs(out)
    write_text(join(out, TUNING), buf.getvalue())
    copy_tree(rows[0]["path"], join(out, "best"))
    logger.info("best trial %s: val F1 %.4f; table %s", rows[0]["trial"], rows[0]["val_f1"],
                join(out, TUNING))
    return rows


def _check_architecture_grid(grid: Mapping[str, Sequence[Any]],
                             configs: Sequence[TrainConfig]) -> None:
    """Refuse a grid over architecture settings when a trial fine-tunes (``init_from``).

    Raises:
        ConfigError: naming the settings, the artifact and why.
    """
    keys = [k for k in grid if k in ARCHITECTURE]
    init = next((c.init_from for c in configs if c.init_from), None)
    if keys and init:
        raise ConfigError(
            f"cannot tune {keys} with init_from {init!r}: a fine-tuned model keeps the "
            f"architecture of its --init-from artifact ({', '.join(ARCHITECTURE)}), and "
            f"training replaces these settings with the artifact's, so the trials would all "
            f"train that one architecture under other labels. Drop {keys} from the grid, or "
            f"tune them without --init-from")


def resolved_settings(config: TrainConfig, shards: data_mod.ShardSet,
                      init: Artifact | None) -> dict[str, Any]:
    """The settings a run of ``config`` on ``shards`` records (its ``training`` settings).

    Resolved as training resolves them (:func:`~model.train.fit.resolved_config`).

    Raises:
        ConfigError: settings the shards or the artifact refuse (as training would).
    """
    return resolved_config(config, shards, init)[0].to_dict()


def _finished_trial(path: str, config: TrainConfig, data: str, val_data: str | None,
                    inputs_of: Callable[[TrainConfig], dict],
                    settings_of: Callable[[TrainConfig], dict]) -> dict | None:
    """The artifact of a trial trained before with ``config`` on the same inputs, or None.

    Its recorded settings must be those the trial would train with now
    (:func:`resolved_settings`), every one of them: a setting the config leaves to the data
    (None: bands, lr, n_classes, ...) is compared as resolved, and a setting that stays
    None (steps_per_epoch, validation_steps, tpu, label) must have been None. A setting
    added since the artifact was written had its default then. An artifact written before
    the inputs were recorded is kept when it names the same ``data`` and ``val_data``.
    """
    try:
        meta = read_meta(path)
    except ArtifactError:
        return None
    training = meta.get("training", {})
    if "val" not in meta.get("metrics", {}):
        return None
    wanted = settings_of(config)
    saved = {**TrainConfig().to_dict(), **{k: v for k, v in training.items() if k in wanted}}
    differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if differ:
        logger.info("trial %s was trained with other settings (%s: %s then, %s now): "
                    "training it again", path, differ, [saved.get(k) for k in differ],
                    [wanted[k] for k in differ])
        return None
    current = inputs_of(config)
    recorded = training.get("inputs")
    if not isinstance(recorded, dict):
        recorded = {"data": training.get("data"), "val_data": training.get("val_data")}
        same_paths = (recorded["data"], recorded["val_data"]) == (data, val_data)
        changed = [] if same_paths else ["--data and --val-data paths"]
    else:
        changed = changed_inputs(recorded, current)
    if changed:
        logger.warning("trial %s was trained on %s; this search reads %s (the %s differ): "
                       "training it again", path, describe_inputs(recorded),
                       describe_inputs(current), " and the ".join(changed))
        return None
    return meta

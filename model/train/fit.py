""":func:`train`: one training run, from export shards to the written model artifact.

It checks the shards and the settings, resolves what the config leaves to the data (bands,
classes, normalisation, learning rate) or to ``init_from``, builds the datasets and the
U-Net under the distribution strategy, resumes from ``_backup/`` when a run was
interrupted, fits with early stopping, a learning-rate schedule (reduce-on-plateau or a
cosine decay) and checkpoints, calibrates the decision threshold and writes the artifact.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Iterable

import keras
import tensorflow as tf

from model import data as data_mod
from model.artifact import Artifact, save_artifact
from model.distribute import choose_strategy, dtype_policy, is_chief, precision_policy
from model.errors import ArtifactError, ConfigError
from model.losses import get_loss
from model.metrics import landslide_metrics
from model.train.callbacks import AveragedWeights, EpochSummaries, ProgressLog
from model.train.config import TrainConfig
from model.train.files import join, remove_tree
from model.train.inputs import (
    cache_for,
    check_complete,
    check_inputs_match,
    check_val_matches,
    inputs_record,
    resolve_classes,
    run_files,
    stack_of,
)
from model.train.resume import Checkpointer, epochs_in_history, read_state, trim_history
from model.train.selection import MONITORS, BestThresholdF1, calibrate
from model.train.transfer import (
    ARCHITECTURE,
    architecture_of,
    copy_weights,
    init_bands,
    init_classes,
    load_init,
    set_frozen,
)
from model.unet import build_unet, size_multiple

logger = logging.getLogger(__name__)

#: Folders and files of a run beside the artifact (see :mod:`model.train`).
BACKUP = "_backup"
HISTORY = "history.csv"
LOGS = "logs"
#: Learning rate when the config sets none: from scratch, and with ``init_from``.
DEFAULT_LR = 1e-3
FINE_TUNE_LR = 1e-4


def cosine_lr(epoch: int, current: float = 0.0, *, lr: float, min_lr: float,
              epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) on a half cosine from ``lr`` to ``min_lr``.

    Epoch 0 trains at ``lr``; the rate falls slowly, then fast, then slowly again, and the
    last of ``epochs`` trains just above ``min_lr``. ``current`` (Keras passes the rate in
    use) is ignored: the rate depends on the epoch only, so a resumed run continues where
    it stopped.
    """
    frac = min(max(epoch, 0), epochs) / max(epochs, 1)
    return float(min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def resolved_lr(config: TrainConfig) -> float:
    """The learning rate of a run: ``config.lr``, else the default (1e-4 with init_from).

    Raises:
        ConfigError: ``min_lr`` is not below it (the schedules would raise the rate).
    """
    if config.lr is not None:
        return config.lr  # TrainConfig refuses a min_lr that is not below it
    lr = FINE_TUNE_LR if config.init_from else DEFAULT_LR
    if config.min_lr >= lr:
        default = "the default with --init-from" if config.init_from else "the default"
        raise ConfigError(f"min_lr {config.min_lr:g} is not below the learning rate {lr:g} "
                          f"({default}): the learning-rate schedules would raise the rate "
                          "instead of lowering it; lower min_lr or set --lr above it")
    return lr


def resolved_config(config: TrainConfig, shards: data_mod.ShardSet,
                    init: Artifact | None) -> tuple[TrainConfig, dict[str, int]]:
    """The settings a run of ``config`` on ``shards`` trains with (and records), its classes.

    What the config leaves open is resolved: the learning rate (:func:`resolved_lr`), the
    bands (the shards' own, or the ``init`` artifact's, which the shards must hold), the
    number of classes (from the shards' classes, or the artifact's outputs) and, with
    ``init``, the artifact's architecture, which replaces the config's.

    Args:
        config: The run's settings.
        shards: Its training shards.
        init: Its loaded ``init_from`` artifact, or None.

    Returns:
        ``(resolved config, class names -> ids)``.

    Raises:
        ConfigError: settings the shards or the artifact refuse.
    """
    lr = resolved_lr(config)
    if init is not None:
        bands = init_bands(init, config.bands)
        shards.resolve_bands(bands)  # the shards must hold the artifact's bands
        arch = architecture_of(init.model)
        classes = init_classes(init, arch["n_classes"], shards, config.n_classes)
        return config.replace(bands=bands, lr=lr, **arch), classes
    bands = shards.resolve_bands(config.bands)
    n_classes, classes = resolve_classes(shards, config.n_classes)
    return config.replace(bands=bands, lr=lr, n_classes=n_classes), classes


def train(
    data: str,
    out: str,
    config: TrainConfig | None = None,
    val_data: str | None = None,
    callbacks: Iterable[keras.callbacks.Callback] = (),
) -> dict:
    """Train the U-Net on export shards and write the model artifact to ``out``.

    Args:
        data: Export folder (``manifest.json`` + split folders) or glob of shards.
        out: Artifact folder, local or ``gs://``; also holds ``history.csv``, ``logs/`` and,
            while running, ``_backup/`` (from which an interrupted run resumes).
        config: Hyper-parameters (default :class:`TrainConfig`).
        val_data: Validation shards (folder or glob); default: the ``val`` split of ``data``.
        callbacks: Extra Keras callbacks, run after the built-in ones.

    Returns:
        The ``artifact.json`` content (``{}`` on the non-chief workers of a multi-worker
        run: only the chief writes the backup, the history, the logs and the artifact).

    Raises:
        ConfigError: bad settings, bands the shards lack, missing splits, class ids a
            softmax cannot learn, shards made otherwise than the ``init_from`` artifact's
            inputs (references, classes), validation shards made otherwise than the
            training shards (references, pixel size, classes), or an interrupted run in
            ``out`` with other settings or other inputs.
        ArtifactError: a corrupt or incompatible ``init_from`` artifact.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    resolved_lr(config)  # a min_lr at or above the default rate fails before any read
    shards = data_mod.find_shards(data, label=config.label)
    val_shards = data_mod.find_shards(val_data, label=config.label) if val_data else shards
    for s in {id(shards): shards, id(val_shards): val_shards}.values():
        check_complete(s, config.allow_partial, "train on")
    if shards.patches("train") == 0:
        raise ConfigError(f"the manifest of {shards.source!r} counts 0 training patches: "
                          f"export with a train fraction (and check its dropped counts)")
    init = load_init(config.init_from) if config.init_from else None
    resolved, classes = resolved_config(config, shards, init)
    assert resolved.bands is not None and resolved.n_classes is not None
    bands, n_classes = resolved.bands, resolved.n_classes
    val_shards.resolve_bands(bands)
    # the input stack the artifact will record; a selection of bands that is not a stack
    # fails here, before any epoch runs or any file is written
    stack = stack_of(shards.manifest or {}, bands)
    if init is not None:  # the same names may be other inputs
        check_inputs_match(init.meta, shards.manifest, init.path, data,
                           use="fine-tune it (--init-from)", other_pixel_size="warn",
                           other_units="warn")
    if val_shards is not shards:
        check_val_matches(shards, val_shards, stack)
    train_files, val_files = run_files(shards, val_shards, val_data is not None)
    if val_shards.patches("val") == 0:
        raise ConfigError(f"the manifest of {val_shards.source!r} counts 0 validation patches: "
                          "export with a val fraction, or pass --val-data")

    if init is not None:
        norm = init.meta.get("normalization") or {}
        mean, std, norm_origin = norm.get("mean"), norm.get("std"), f"artifact {init.path}"
        if mean is None or std is None:
            raise ArtifactError(f"--init-from {init.path!r}: artifact.json has no normalization")
        changed = {k: getattr(resolved, k) for k in ARCHITECTURE
                   if k != "n_classes" and getattr(config, k) != getattr(resolved, k)}
        if changed:
            logger.info("architecture from %s: %s (config values replaced)", init.path,
                        changed)
    else:
        mean, std, norm_origin = data_mod.normalisation_stats(shards, bands,
                                                              config.stats_patches)
    patch_size = shards.patch_size
    multiple = size_multiple(resolved.depth)
    if patch_size % multiple:
        raise ConfigError(f"patches of {patch_size} px do not fit a U-Net of depth "
                          f"{resolved.depth} (sides must be multiples of {multiple}): "
                          "lower depth or re-export with another patch size")
    assert resolved.lr is not None

    strategy = choose_strategy(resolved.strategy, resolved.tpu)
    policy = precision_policy(resolved.mixed_precision, strategy)
    replicas = strategy.num_replicas_in_sync
    if resolved.batch_size % replicas:
        raise ConfigError(f"batch_size {resolved.batch_size} must be a multiple of the "
                          f"{replicas} replicas")
    static = isinstance(strategy, tf.distribute.TPUStrategy)
    keras.utils.set_random_seed(resolved.seed)
    if resolved.deterministic and (static or tf.config.list_physical_devices("GPU")):
        # accelerators have non-deterministic kernels; the CPU kernels a U-Net uses are
        # deterministic once the data order is (tests/test_demo.py checks two demos), and
        # TensorFlow's op determinism would cost a third of the CPU training time
        tf.config.experimental.enable_op_determinism()
    train_ds = data_mod.shard_dataset(
        shards, train_files, bands, resolved.batch_size, training=True,
        deterministic=resolved.deterministic, augment_config=resolved.augment,
        seed=resolved.seed,
        shuffle_buffer=resolved.shuffle_buffer,
        cache=cache_for(resolved, shards, "train", len(bands)),
        repeat=resolved.steps_per_epoch is not None, drop_remainder=static,
    )
    val_ds = data_mod.shard_dataset(
        val_shards, val_files, bands, resolved.batch_size, training=False,
        cache=cache_for(resolved, val_shards, "val", len(bands)), drop_remainder=static,
    )

    chief = is_chief(strategy)
    if chief:
        tf.io.gfile.makedirs(out)
    backup = join(out, BACKUP)
    history_path = join(out, HISTORY)
    config_dict = resolved.to_dict()
    inputs = inputs_record(data, val_data, shards, train_files, val_shards, val_files,
                           init.model_id if init is not None else None)
    # every worker resumes from the chief's backup
    state = read_state(backup, config_dict, inputs)

    # the model trained and the float32 artifact are built alike (copy_weights pairs them)
    def unet() -> keras.Model:
        return build_unet(bands, resolved.base_filters, resolved.depth, resolved.dropout,
                          resolved.batch_norm, n_classes, mean, std, patch_size,
                          bn_momentum=resolved.bn_momentum, stem=resolved.stem)

    with dtype_policy(policy), strategy.scope():
        model = unet()
        if init is not None:
            copy_weights(init.model, model, f"--init-from {init.path!r}")
        if resolved.freeze_encoder:
            logger.info("froze %d encoder layers", set_frozen(model))
        model.compile(
            optimizer=keras.optimizers.Adam(resolved.lr, use_ema=resolved.ema > 0,
                                            ema_momentum=resolved.ema),
            loss=get_loss(resolved.loss, **resolved.loss_params),
            metrics=[*landslide_metrics(0.5), BestThresholdF1()],
        )
        initial_epoch = 0
        if state is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(join(backup, "last.weights.h5"))
            model.optimizer.learning_rate.assign(state["lr"])
            initial_epoch = int(state["epoch"])
            logger.info("resuming %s from epoch %d (best %s %.4f at epoch %d)", out,
                        initial_epoch + 1, resolved.monitor, state["best"],
                        state["best_epoch"] + 1)
            if chief:
                trim_history(history_path, initial_epoch)
        elif chief and tf.io.gfile.exists(history_path):
            tf.io.gfile.remove(history_path)

        mode = MONITORS[resolved.monitor]
        early = (keras.callbacks.EarlyStopping(monitor=resolved.monitor, mode=mode,
                                               patience=resolved.patience)
                 if resolved.patience > 0 else None)
        plateau = (keras.callbacks.ReduceLROnPlateau(
            monitor=resolved.monitor, mode=mode, factor=resolved.reduce_lr_factor,
            patience=resolved.reduce_lr_patience, min_lr=resolved.min_lr)
            if resolved.reduce_lr and resolved.lr_schedule == "plateau" else None)
        schedule = (keras.callbacks.LearningRateScheduler(
            functools.partial(cosine_lr, lr=resolved.lr, min_lr=resolved.min_lr,
                              epochs=resolved.epochs))
            if resolved.lr_schedule == "cosine" else None)
        checkpointer = Checkpointer(backup, config_dict, early, plateau, state, started,
                                    write=chief, monitor=resolved.monitor, inputs=inputs)
        # the averaged weights go into the model before the other callbacks see the epoch
        average = AveragedWeights(resumed=state is not None) if resolved.ema else None
        cbs: list[keras.callbacks.Callback] = [cb for cb in (average, early, plateau, schedule)
                                               if cb is not None]
        cbs.append(checkpointer)
        if chief:
            cbs += [keras.callbacks.CSVLogger(history_path, append=True),
                    EpochSummaries(join(out, LOGS))]
        cbs += [ProgressLog(resolved.epochs, resolved.batch_size), *callbacks]
        if initial_epoch < resolved.epochs:
            with warnings.catch_warnings():
                # Keras warns when a finite dataset of unknown length ends an epoch: expected.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                with data_mod.named_data_errors([*train_files, *val_files],
                                                shards.compression):
                    model.fit(train_ds, validation_data=val_ds, epochs=resolved.epochs,
                              shuffle=False, initial_epoch=initial_epoch,
                              steps_per_epoch=resolved.steps_per_epoch,
                              validation_steps=resolved.validation_steps, callbacks=cbs,
                              verbose=0)
        if not chief:
            logger.info("worker done; the chief writes the artifact to %s", out)
            return {}
        # the best checkpoint, else the last: both hold the averaged weights with --ema
        # (Keras' end of fit puts the trained ones in the model)
        for kept in ("best.weights.h5", "last.weights.h5"):
            if tf.io.gfile.exists(join(backup, kept)):
                model.load_weights(join(backup, kept))
                break

    # The artifact is a plain float32 single-device model, whatever trained it.
    final = unet()
    copy_weights(model, final, "the trained model")
    calibrated = calibrate(final, val_ds)
    epochs_run = epochs_in_history(history_path)
    metrics = {
        **calibrated,
        "best_epoch": checkpointer.best_epoch + 1,
        f"best_epoch_{resolved.monitor}": checkpointer.best,
        "epochs_run": epochs_run,
        "train_seconds": round(checkpointer.seconds + time.perf_counter() - started, 1),
    }
    manifest = shards.manifest or {"bands": list(shards.available),
                                   "patch_size": patch_size, "source": shards.source}
    training = {**config_dict, "data": data, "val_data": val_data, "inputs": inputs,
                "normalization_from": norm_origin, "strategy_used": type(strategy).__name__,
                "replicas": replicas, "precision_policy": policy}
    meta = save_artifact(
        final, out, bands, patch_size, mean=mean, std=std, classes=classes,
        threshold=calibrated["threshold"], training=training, metrics=metrics,
        manifest=manifest, pixel_size=(shards.manifest or {}).get("pixel_size"),
        size_multiple=multiple, saved_model=resolved.saved_model,
        extra={"stack": stack},
    )
    remove_tree(backup)
    val = calibrated["val"]
    logger.info("trained %s: val F1 %.3f (precision %.3f, recall %.3f, IoU %.3f) at threshold "
                "%.3f; artifact %s", meta["model_id"], val["f1"], val["precision"],
                val["recall"], val["iou"], calibrated["threshold"], out)
    return meta

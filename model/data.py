"""The ``tf.data`` input of training and evaluation: find shards, read, parse, augment, batch.

Shards are what ``landslides export`` (or ``import-l4s``) writes::

    <dir>/manifest.json
    <dir>/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz      split = train | val | test

or Earth Engine's own TFRecord patch exports (one float feature per band name, detected
from the first record), with or without a manifest. ``--data`` is such a folder, or a glob
of shard files (``gs://bucket/shards/train/*.tfrecord.gz``): a glob's files belong to the
split their folder or file name says (``train/``, ``val-``, ...), files that say none are
training files. Only the folders the glob names from its last fixed one down count (``train``
above; ``val`` in ``~/train/run3/val/*.gz``, whose ``train`` only says where the export
lives), and of those the deepest that names a split decides. The manifest is looked up in
the folder of the glob and its parent.

Without a manifest the band names come from the records (``lsm/v1`` records carry them;
Earth Engine records are an unordered map of features, so their image bands must be named
with ``bands`` and their label found by ``label`` or the conventional names
:data:`EE_LABELS`), and the normalisation statistics are computed by one pass over (at
most ``stats_patches``) training patches: mean and standard deviation of the labelled
pixels of each band.

Files are listed with ``tf.io.gfile``, so every path may be local or ``gs://`` (with real
credentials; ``tf.io.gfile`` cannot be pointed at the Cloud Storage emulator).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from model.augment import AugmentConfig, augment
from model.errors import ConfigError, SchemaError
from model.parsing import make_parser
from model.schema import IGNORE_VALUE, detect_format, read_stored_bands

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Written by ``landslides export`` when it starts and deleted once its manifest is written:
#: found without a manifest, the export died while rewriting the folder.
EXPORT_RUNNING = "export_running.json"
SPLITS = ("train", "val", "test")
#: Label feature names tried, in order, in Earth Engine records when none is given.
EE_LABELS = ("landslide", "label", "mask", "class")
#: File name endings taken for TFRecord shards when a folder is listed.
SHARD_SUFFIXES = (".tfrecord.gz", ".tfrecord", ".tfrecords", ".tfrecords.gz", ".tfrec",
                  ".tfrecord.gzip")
AUTOTUNE = tf.data.AUTOTUNE
#: Below this many shard files, multi-worker training shards records, not files.
MIN_FILES_TO_SHARD = 32


@dataclass(frozen=True)
class ShardSet:
    """Shards found under one ``--data`` argument.

    Attributes:
        source: The folder or glob that was given.
        root: The folder the manifest is (or would be) in.
        files: Split name -> sorted shard paths; ``"other"`` holds files of no known split.
        manifest: ``manifest.json`` content, or ``None``.
        fmt: ``"lsm"`` (``lsm/v1`` records) or ``"ee"`` (Earth Engine patch export).
        compression: ``"GZIP"`` or ``""``.
        stored_bands: Channel order of ``lsm`` records (``None`` for Earth Engine records).
        available: Band names that may be requested.
        label: Label feature (``"mask"`` for ``lsm``; a band name for Earth Engine).
        patch_size: Side of the square patches.
    """

    source: str
    root: str
    files: dict[str, tuple[str, ...]]
    manifest: dict | None
    fmt: str
    compression: str
    stored_bands: tuple[str, ...] | None
    available: tuple[str, ...]
    label: str
    patch_size: int
    default_bands: tuple[str, ...] | None = field(default=None)

    def split_files(self, split: str, include_other: bool = False) -> tuple[str, ...]:
        """The shards of ``split`` (plus the split-less ones with ``include_other``).

        Raises:
            ConfigError: when there are none, naming what was found and what to do.
        """
        files = self.files.get(split, ())
        if include_other:
            files = files + self.files.get("other", ())
        if not files:
            found = {k: len(v) for k, v in self.files.items() if v}
            raise ConfigError(
                f"no shards for split {split!r} in {self.source!r} (found: {found or 'none'}): "
                f"lay them out as <dir>/{split}/*.tfrecord.gz as `landslides export` does, "
                f"or point at them with a glob (for validation: --val-data)"
            )
        return files

    def all_files(self) -> tuple[str, ...]:
        return tuple(f for split in (*SPLITS, "other") for f in self.files.get(split, ()))

    def patches(self, split: str) -> int | None:
        """Patch count of ``split`` from the manifest, if it has one."""
        counts = (self.manifest or {}).get("patches")
        if isinstance(counts, dict) and split in counts:
            return int(counts[split])
        return None

    def resolve_bands(self, requested: Sequence[str] | None) -> tuple[str, ...]:
        """The band list to read: ``requested``, or the shards' own (manifest order).

        Raises:
            ConfigError: for bands the shards lack, or Earth Engine shards without a
                manifest and without ``requested``.
        """
        if requested is None:
            if self.default_bands is None:
                raise ConfigError(
                    f"{self.source!r} holds Earth Engine records without a {MANIFEST}: their "
                    f"features {sorted([*self.available, self.label])} are an unordered map, "
                    "so name the image bands with --bands B2,B3,... (and the label band with "
                    f"--label if it is not {self.label!r})"
                )
            return self.default_bands
        if isinstance(requested, str):
            requested = [b.strip() for b in requested.split(",") if b.strip()]
        bands = tuple(requested)
        if not bands:
            raise ConfigError("bands is empty: name at least one band, or omit it")
        unknown = [b for b in bands if b not in self.available]
        if unknown:
            raise ConfigError(
                f"band(s) {unknown} are not in the shards of {self.source!r} (they hold "
                f"{list(self.available)}): request only those, or re-export with them"
            )
        duplicated = sorted({b for b in bands if bands.count(b) > 1})
        if duplicated:
            raise ConfigError(f"bands {duplicated} are requested more than once")
        return bands


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in rest)])


def _dirname(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."


def _is_shard(name: str) -> bool:
    return name.endswith(SHARD_SUFFIXES)


def _split_of(path: str) -> str:
    """The split a shard path names (folder ``train/`` or file ``train-...``), else other.

    ``path`` is the part of the shard's path that may name a split (below the data folder,
    or what a glob names, see :func:`_glob_part`); the deepest folder that names a split
    decides, else the file name.
    """
    parts = path.replace("\\", "/").split("/")
    for folder in reversed(parts[:-1]):
        if folder in SPLITS:
            return folder
    base = parts[-1]
    for split in SPLITS:
        if base.startswith((f"{split}-", f"{split}_", f"{split}.")):
            return split
    return "other"


def _glob_part(root: str, path: str) -> str:
    """The part of a file matched by a glob that may name its split.

    The folders from the glob's last fixed one (``root``'s own name) down to the file:
    ``export1/val/val-0.tfrecord.gz`` for ``/data/train/export1/*/*.tfrecord.gz``, whose
    ``train`` only says where the export lives.
    """
    root = root.rstrip("/")
    if not path.startswith(root + "/"):
        return path.replace("\\", "/").rsplit("/", 1)[-1]  # the file name alone
    return f"{root.rsplit('/', 1)[-1]}/{path[len(root) + 1:]}"


def read_json(path: str) -> dict:
    """Read a JSON object with ``tf.io.gfile`` (local or ``gs://``)."""
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path!r} is not valid JSON ({exc}); re-export it") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path!r} does not hold a JSON object")
    return data


def _list_files(data: str) -> tuple[str, list[str]]:
    """``(root, files)``: the manifest folder candidate and every shard file found."""
    if _is_glob(data):
        files = sorted(f for f in tf.io.gfile.glob(data) if not tf.io.gfile.isdir(f))
        if not files:
            raise ConfigError(f"the glob {data!r} matches no file: check the path")
        static = data[:min(data.index(ch) for ch in "*?[" if ch in data)]
        return _dirname(static + "x"), files
    root = data.rstrip("/")
    if not tf.io.gfile.exists(root):
        raise ConfigError(f"data folder {data!r} does not exist: pass the folder of an export "
                          "(with manifest.json) or a glob of TFRecord shards")
    if not tf.io.gfile.isdir(root):
        return _dirname(root), [root]
    files = []
    for sub in ("", *SPLITS):
        folder = _join(root, sub) if sub else root
        if sub and not tf.io.gfile.isdir(folder):
            continue
        files += [_join(folder, n) for n in tf.io.gfile.listdir(folder)
                  if _is_shard(n.rstrip("/"))]
    return root, sorted(files)


def _find_manifest(root: str, explicit: bool) -> dict | None:
    candidates = [root] if explicit else [root, _dirname(root)]
    for folder in candidates:
        path = _join(folder, MANIFEST)
        if tf.io.gfile.exists(path):
            logger.info("manifest %s", path)
            return read_json(path)
    return None


def locate_corrupt(files: Sequence[str], compression: str) -> tuple[str, int, str] | None:
    """``(file, record index, message)`` of the first unreadable record, if any.

    Reads every shard to its end (only called after a read already failed).
    """
    for path in files:
        n = 0
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type=compression):
                n += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            return path, n, (exc.message or str(exc)).strip().splitlines()[0]
    return None


@contextlib.contextmanager
def named_data_errors(files: Sequence[str], compression: str) -> Iterator[None]:
    """Turn TensorFlow's bare data errors into one naming the shard and the record.

    Raises:
        SchemaError: a shard of ``files`` is corrupt (truncated, bad compression); the
            message names the file, the record and what to do.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
        found = locate_corrupt(files, compression)
        if found is None:
            raise
        path, index, message = found
        raise SchemaError(
            f"shard {path!r} is corrupt at record {index} ({message}): re-run the export that "
            f"wrote it, or move that file out of the data folder") from exc


def _first_record(files: Sequence[str]) -> tuple[bytes, str, str]:
    """``(record, compression, file)`` of the first non-empty shard, detecting GZIP."""
    errors = []
    for path in files:
        guesses = ("GZIP", "") if path.endswith((".gz", ".gzip")) else ("", "GZIP")
        for compression in guesses:
            try:
                for record in tf.data.TFRecordDataset(path, compression_type=compression).take(1):
                    return bytes(record.numpy()), compression, path
                break  # an empty (but readable) shard: try the next file
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
                errors.append(f"{path} ({compression or 'uncompressed'}): {exc.message}")
        if len(errors) >= 6:
            break
    if errors:
        raise SchemaError(
            f"cannot read TFRecords from {files[0]!r}: {errors[0]}; are they TFRecord shards "
            "(GZIP or uncompressed)?"
        )
    raise ConfigError(f"every shard of {list(files)[:3]}... is empty: nothing to train on")


def _listed_files(root: str, files: list[str], listed: dict[str, list[str]]) -> list[str]:
    """The shards of an export folder that its manifest lists (by split and file name).

    An export into a folder that held an earlier export leaves that export's shards
    beside its own when their counts differ (``train-00000-of-00003`` beside
    ``-of-00004``): they are not read, with a warning. A listed shard that is missing is
    an error: the export is incomplete.

    Raises:
        ConfigError: a shard the manifest lists is not in the folder.
    """
    names = {s: {f.replace("\\", "/").rsplit("/", 1)[-1] for f in fs}
             for s, fs in listed.items() if isinstance(fs, list)}
    keep, stale, seen = [], [], set()
    for f in files:
        split = _split_of(f[len(root):])
        name = f.rsplit("/", 1)[-1]
        if name in names.get(split, ()):
            keep.append(f)
            seen.add((split, name))
        else:
            stale.append(f)
    missing = sorted(f"{s}/{n}" for s, ns in names.items() for n in ns
                     if (s, n) not in seen and n.startswith(f"{s}-"))
    if missing:
        raise ConfigError(
            f"the manifest of {root!r} lists {len(missing)} shard(s) that are not there, e.g. "
            f"{missing[:3]}: the export is incomplete or was moved in part; re-run it")
    if stale:
        logger.warning(
            "%d shard file(s) in %r are not in its manifest.json, e.g. %s (left by an earlier "
            "export into the same folder?); reading only the %d it lists", len(stale), root,
            stale[:2], len(keep))
    return keep


def find_shards(data: str, label: str | None = None) -> ShardSet:
    """List the shards of ``data`` (a folder or a glob) and learn their layout.

    Args:
        data: Export folder (with ``manifest.json`` and split folders) or a glob of shards.
        label: Label feature of Earth Engine records (default: the manifest's ``label``, or
            the first of :data:`EE_LABELS` present). Ignored for ``lsm/v1`` records.

    Returns:
        The :class:`ShardSet`.

    Raises:
        ConfigError: for a missing path, no shard files, or an unknown label.
        SchemaError: for files that are not TFRecords of a known layout.
    """
    if not isinstance(data, str) or not data:
        raise ConfigError(f"data must be a folder or glob of shards, got {data!r}")
    root, files = _list_files(data)
    if not files:
        raise ConfigError(
            f"no TFRecord shards under {data!r} (looked for {', '.join(SHARD_SUFFIXES)} in the "
            f"folder and its {'/'.join(SPLITS)} sub-folders): export some with "
            "`landslides export`, or pass a glob"
        )
    manifest = _find_manifest(root, explicit=not _is_glob(data))
    if manifest is None and tf.io.gfile.exists(_join(root, EXPORT_RUNNING)):
        raise ConfigError(
            f"an export into {root!r} started and did not finish ({EXPORT_RUNNING} is there, "
            f"{MANIFEST} is not): its shards may mix that run's with an earlier one's. Run "
            f"`landslides export` into it again, or train on another export")
    if manifest and isinstance(manifest.get("files"), dict) and not _is_glob(data):
        files = _listed_files(root, files, manifest["files"])
    by_split: dict[str, list[str]] = {s: [] for s in (*SPLITS, "other")}
    for f in files:
        by_split[_split_of(_glob_part(root, f) if _is_glob(data) else f[len(root):])].append(f)
    ordered = by_split["train"] + by_split["other"] + by_split["val"] + by_split["test"]
    record, compression, first = _first_record(ordered)
    fmt = detect_format(record)
    example = tf.train.Example.FromString(record).features.feature
    if fmt == "lsm":
        record_bands = read_stored_bands(record)
        stored = tuple(manifest["bands"]) if manifest and manifest.get("bands") else record_bands
        if stored != record_bands:
            raise SchemaError(
                f"{first!r} holds bands {list(record_bands)} but the manifest says "
                f"{list(stored)}: the manifest belongs to another export"
            )
        shape = list(example["shape"].int64_list.value)
        patch_size, label_name, available = int(shape[0]), "mask", stored
        default: tuple[str, ...] | None = stored
        stored_bands: tuple[str, ...] | None = stored
    else:
        names = sorted(example)
        found: str | None = label or (manifest or {}).get("label") or next(
            (n for n in EE_LABELS if n in example), None)
        if found is None:
            raise ConfigError(
                f"cannot tell the label band among the features {names} of the Earth Engine "
                f"records in {data!r}: name it with --label (and the image bands with --bands)"
            )
        label_name = found
        if label_name not in example:
            raise ConfigError(
                f"the label band {label_name!r} is not among the features {names} of the "
                f"Earth Engine records in {data!r}: name the right one with --label"
            )
        available = tuple(n for n in names if n != label_name)
        stored_bands = None
        default = tuple(manifest["bands"]) if manifest and manifest.get("bands") else None
        kind = example[label_name].WhichOneof("kind")
        n_values = len(getattr(example[label_name], kind).value)
        patch_size = math.isqrt(n_values)
        if patch_size * patch_size != n_values:
            raise SchemaError(
                f"Earth Engine records in {data!r} hold {n_values} values per band, not a "
                "square patch: export with patchDimensions [N, N]"
            )
    if manifest and manifest.get("patch_size") and int(manifest["patch_size"]) != patch_size:
        raise SchemaError(f"records in {first!r} are {patch_size} px patches, the manifest "
                          f"says {manifest['patch_size']}")
    shards = ShardSet(
        source=data, root=root, files={k: tuple(v) for k, v in by_split.items()},
        manifest=manifest, fmt=fmt, compression=compression, stored_bands=stored_bands,
        available=tuple(available), label=label_name, patch_size=patch_size,
        default_bands=default,
    )
    logger.info("%s: %s shards (%s), %s px patches, bands %s%s", data, fmt,
                {k: len(v) for k, v in shards.files.items() if v}, patch_size,
                list(shards.available), "" if manifest else ", no manifest")
    return shards


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------


def epoch_options() -> tf.data.Options:
    """Options for a dataset that Keras iterates once per epoch (training or validation).

    Keras drops the iterator at the end of every epoch (and of every validation pass).
    Destroying it joins tf.data's autotuning thread, which is often in the middle of an
    optimisation pass on a busy CPU: in the demo that wait stalled about one epoch in two
    by several seconds (a demo study's ``stages/train.json`` records the time). With
    autotuning off, the ``AUTOTUNE`` settings fall back to fixed defaults (parallel calls
    about one per core); the demo's steady epochs kept their speed and stopped stalling.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def make_dataset(
    files: Sequence[str],
    bands: Sequence[str],
    stored_bands: Sequence[str] | None = None,
    patch_size: int | None = None,
    batch_size: int = 32,
    training: bool = False,
    augment_config: AugmentConfig | None = None,
    seed: int = 0,
    fmt: str = "lsm",
    compression: str = "GZIP",
    label: str = "mask",
    shuffle_buffer: int = 512,
    cache: bool = False,
    deterministic: bool = False,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched ``(image, mask)`` dataset over TFRecord shards.

    Files are read in parallel (``interleave``), records parsed in parallel
    (:func:`model.parsing.make_parser`), optionally cached (parsed, before augmentation),
    and for training shuffled (files and records) and augmented with per-element stateless
    seeds drawn from ``seed`` (a new draw every epoch), then batched and prefetched, with
    :func:`epoch_options`.

    Args:
        files: Shard paths (local or ``gs://``).
        bands: Bands to return, in this order.
        stored_bands: Channel order of ``lsm`` records (resolves band selection up front).
        patch_size: Square patch side (fixes static shapes; checked per record).
        batch_size: Batch size.
        training: Shuffle and augment (and read non-deterministically, which is faster).
        augment_config: Augmentations for training (``None``: none).
        seed: Seed of the shuffles and augmentations.
        fmt: ``"lsm"`` or ``"ee"``.
        compression: ``"GZIP"`` or ``""``.
        label: Label feature name.
        shuffle_buffer: Records in the shuffle buffer.
        cache: Keep the parsed records in memory after the first pass.
        deterministic: Also when training, read, shuffle and augment in a fixed order
            (same files and seed, same batches).
        repeat: Repeat forever (for ``steps_per_epoch``).
        drop_remainder: Drop a last partial batch (static batch size, e.g. for TPUs).

    Returns:
        Batches of float32 ``image (B, H, W, len(bands))`` in physical units and float32
        ``mask (B, H, W, 1)`` class ids (255 = ignore).
    """
    files = list(files)
    if not files:
        raise ConfigError("make_dataset needs at least one shard file")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    parse = make_parser(bands, stored_bands, patch_size, fmt=fmt, label=label)
    ordered = deterministic or not training
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 16), block_length=1, num_parallel_calls=AUTOTUNE,
        deterministic=ordered,
    )
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    if cache:
        ds = ds.cache()
    if training:
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        if augment_config is not None and augment_config.enabled:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, s: augment(pair[0], pair[1], augment_config, s),
                num_parallel_calls=AUTOTUNE, deterministic=ordered,
            )
    elif repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                  num_parallel_calls=AUTOTUNE, deterministic=ordered)
    options = epoch_options()
    options.deterministic = ordered
    if len(files) < MIN_FILES_TO_SHARD:
        # Under multi-worker training, sharding by file needs files for every worker;
        # with few files, every worker reads them all and keeps its share of the records.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options).prefetch(AUTOTUNE)


def shard_dataset(
    shards: ShardSet, files: Sequence[str], bands: Sequence[str], batch_size: int,
    **kwargs: Any,
) -> tf.data.Dataset:
    """:func:`make_dataset` with the layout (format, bands, size, label) of ``shards``."""
    return make_dataset(
        files, bands, stored_bands=shards.stored_bands, patch_size=shards.patch_size,
        batch_size=batch_size, fmt=shards.fmt, compression=shards.compression,
        label=shards.label, **kwargs,
    )


def estimated_bytes(shards: ShardSet, split: str, n_bands: int) -> int | None:
    """Bytes the parsed patches of ``split`` take in memory (from the manifest's count)."""
    n = shards.patches(split)
    if n is None:
        return None
    return n * shards.patch_size**2 * (n_bands + 1) * 4


def normalisation_stats(
    shards: ShardSet, bands: Sequence[str], max_patches: int = 256
) -> tuple[list[float], list[float], str]:
    """Per-band mean and standard deviation for the in-model normalisation.

    From the manifest's ``stats`` when it has them for every band; otherwise one pass over
    at most ``max_patches`` training patches (labelled pixels only: mask != 255).

    Returns:
        ``(mean, std, origin)``; ``origin`` is ``"manifest"`` or ``"computed"``.

    Raises:
        ConfigError: for a band without variation (std 0), which carries no information.
    """
    stats = (shards.manifest or {}).get("stats") or {}
    if all(isinstance(stats.get(b), dict) and "mean" in stats[b] and "std" in stats[b]
           for b in bands):
        mean = [float(stats[b]["mean"]) for b in bands]
        std = [float(stats[b]["std"]) for b in bands]
        origin = "manifest"
    else:
        files = shards.split_files("train", include_other=True)
        ds = shard_dataset(shards, files, bands, batch_size=32).unbatch().take(max_patches)
        total = np.zeros(len(bands))
        total_sq = np.zeros(len(bands))
        count = 0
        for image, mask in ds.batch(32).as_numpy_iterator():
            valid = mask[..., 0] != IGNORE_VALUE
            px = image[valid].astype(np.float64)
            total += px.sum(0)
            total_sq += (px * px).sum(0)
            count += px.shape[0]
        if count == 0:
            raise ConfigError(f"no labelled pixel in the training shards of {shards.source!r}")
        mean_arr = total / count
        std_arr = np.sqrt(np.maximum(total_sq / count - mean_arr**2, 0.0))
        mean, std = mean_arr.tolist(), std_arr.tolist()
        origin = "computed"
        logger.info("normalisation computed from %d training pixels: mean %s, std %s",
                    count, np.round(mean_arr, 4).tolist(), np.round(std_arr, 4).tolist())
    flat = [b for b, s in zip(bands, std) if not s > 0]
    if flat:
        raise ConfigError(
            f"band(s) {flat} have no variation (std 0) in the training data of "
            f"{shards.source!r}: they carry no information, drop them with --bands"
        )
    return mean, std, origin

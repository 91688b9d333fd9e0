"""What a run takes from its shards besides the patches.

Whether the export is complete enough to use, the classes to predict, the input stack the
artifact records, whether shards were made as a model's inputs or as the training shards
(same references under the same channel names, pixel size, classes), whether the parsed
data are cached in memory, and the fingerprint of what a run read (:func:`inputs_record`),
by which a resumed run or a kept tuning trial is told from one on other shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tensorflow as tf

from model import data as data_mod
from model.artifact import read_meta
from model.errors import ConfigError
from model.train.config import TrainConfig
from model.train.files import join

logger = logging.getLogger(__name__)

#: Parsed training data up to this size is cached in memory with ``cache: auto``.
CACHE_LIMIT_BYTES = 1 << 30


def check_complete(shards: data_mod.ShardSet, allow_partial: bool, what: str) -> None:
    """Refuse an export whose manifest records failed chunks, unless told otherwise.

    Raises:
        ConfigError: ``chunks_failed`` > 0 and not ``allow_partial``; names the count, the
            list of failures and the two ways out.
    """
    manifest = shards.manifest or {}
    failed = int(manifest.get("chunks_failed") or 0)
    if not failed:
        return
    total = manifest.get("chunks")
    where = join(shards.root, "failed_chunks.jsonl")
    if not allow_partial:
        raise ConfigError(
            f"the export {shards.source!r} is incomplete: {failed} of {total} chunk(s) "
            f"failed (listed in {where}). Rerun the export to redo them, or pass "
            f"--allow-partial to {what} it anyway")
    logger.warning("%s: %d of %s chunk(s) of the export failed (%s); going on as asked "
                   "(--allow-partial)", shards.source, failed, total, where)


def stack_of(manifest: Mapping[str, Any], bands: Sequence[str]) -> dict[str, Any]:
    """The input stack the model takes: the manifest's, cut to the bands trained on.

    The stack is a plain record here (model/ does not import pipelines/): its ``channels``
    are the bands in order; predict rebuilds it with ``pipelines.geo.stack``.
    """
    stack = manifest.get("stack")
    if not stack or list(stack.get("channels", ())) == list(bands):
        return dict(stack) if stack else {"bands": list(bands), "references": [],
                                          "change": [], "channels": list(bands)}
    if any("@" in b for b in bands):
        raise ConfigError(
            f"Training on channels {list(bands)} of the stack {stack.get('channels')}: a "
            f"model that takes reference channels must take the manifest's whole stack "
            f"(drop --bands), or only target bands (no '@').")
    return {"bands": list(bands), "references": [], "change": [], "channels": list(bands)}


def reference_mismatch(ours: Mapping[str, Any] | None, theirs: Mapping[str, Any] | None
                       ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first reference of ``ours`` that ``theirs`` records otherwise under its name.

    A channel name (``B4@prev``) does not say how its reference was made (``prev=-1y`` or
    ``prev=-30d``, which composite): two stacks with the same channel names may be other
    inputs.

    Args:
        ours: A record with a ``stack`` (``artifact.json``, ``manifest.json``).
        theirs: Another such record (references it lacks are not compared).

    Returns:
        ``(our reference, theirs)`` of the first name whose records differ, else None.
    """
    theirs_by_name = {r.get("name"): r for r in ((theirs or {}).get("stack") or {})
                      .get("references") or ()}
    for ref in ((ours or {}).get("stack") or {}).get("references") or ():
        other = theirs_by_name.get(ref.get("name"))
        if other is not None and dict(other) != dict(ref):
            return dict(ref), dict(other)
    return None


def pixel_size_mismatch(ours: Mapping[str, Any] | None, theirs: Mapping[str, Any] | None
                        ) -> tuple[float, float] | None:
    """``(ours, theirs)`` when both records give a ``pixel_size`` and they differ."""
    a, b = (ours or {}).get("pixel_size"), (theirs or {}).get("pixel_size")
    if a and b and abs(float(a) - float(b)) > 1e-6 * float(a):
        return float(a), float(b)
    return None


def check_inputs_match(meta: Mapping[str, Any], manifest: Mapping[str, Any] | None,
                       model: str, data: str, use: str = "evaluate it",
                       other_pixel_size: str = "refuse", other_units: str = "refuse") -> None:
    """Refuse shards made otherwise than a model's inputs, though their names match.

    A band name does not say how a reference was made, the pixel size nor the units: the
    artifact's stack record, pixel size and band units are compared with the manifest's.
    The stack record's channels must also be the artifact's bands (an edited
    ``artifact.json`` is refused, as predict refuses it).

    Args:
        meta: The artifact's ``artifact.json``.
        manifest: The shards' ``manifest.json`` (None: nothing to compare).
        model: How messages name the artifact.
        data: How messages name the shards.
        use: What the shards are for, as the fix ends (``"evaluate it"``).
        other_pixel_size: ``"refuse"`` another pixel size, or ``"warn"`` (fine-tuning on
            other pixels can be transfer learning on purpose).
        other_units: ``"refuse"`` bands in other units (``band_units`` of the manifests),
            or ``"warn"`` (fine-tuning a model pretrained on, e.g., Landslide4Sense's
            normalised numbers on reflectance is transfer learning).

    Raises:
        ConfigError: naming what differs and the fix.
    """
    stack = meta.get("stack") or {}
    if stack.get("channels") and list(stack["channels"]) != list(meta.get("bands") or ()):
        raise ConfigError(
            f"the artifact {model!r} is inconsistent: its stack's channels "
            f"{list(stack['channels'])} are not its bands {list(meta.get('bands') or ())} "
            f"(artifact.json edited?): use the artifact as training wrote it")
    refs = reference_mismatch(meta, manifest)
    if refs is not None:
        raise ConfigError(
            f"the model {model!r} takes the reference {refs[0]}, the shards of {data!r} "
            f"hold {refs[1]} under the same name: same channel names, other inputs. "
            f"Export with the model's stack (its artifact.json 'stack') to {use}")
    units = units_mismatch(meta, manifest)
    if units is not None:
        text = (f"the model {model!r} was trained on {units[0]} in {units[1]!r}, the shards "
                f"of {data!r} hold it in {units[2]!r}")
        if other_units == "refuse":
            raise ConfigError(f"{text}: other numbers under the same band name. Use shards "
                              f"made like the model's training shards to {use}")
        logger.warning("%s: going on (fine-tuning adapts a model to other inputs); use shards "
                       "in the model's units if that was not meant", text)
    sizes = pixel_size_mismatch(meta, manifest)
    if sizes is None:
        return
    text = (f"the model {model!r} was trained on {sizes[0]} m pixels, the shards of {data!r} "
            f"hold {sizes[1]} m pixels")
    if other_pixel_size == "refuse":
        raise ConfigError(f"{text}: export them at --pixel-size {sizes[0]}")
    logger.warning("%s: going on (a model trained at one resolution can be fine-tuned at "
                   "another); export them at --pixel-size %s if that was not meant",
                   text, sizes[0])


def units_mismatch(meta: Mapping[str, Any], manifest: Mapping[str, Any] | None
                   ) -> tuple[str, str, str] | None:
    """``(band, the model's unit, the shards' unit)`` of the first band whose units differ.

    The units are those of the manifests (``band_units``): the one the artifact was trained
    on (its ``manifest``) and ``manifest``; a band either does not record is not compared.
    Landslide4Sense shards, for example, hold the dataset's normalised numbers under
    Sentinel-2 band names.
    """
    ours = (meta.get("manifest") or {}).get("band_units") or {}
    theirs = (manifest or {}).get("band_units") or {}
    for band in meta.get("bands") or ():
        if band in ours and band in theirs and ours[band] != theirs[band]:
            return str(band), str(ours[band]), str(theirs[band])
    return None


def check_val_matches(shards: data_mod.ShardSet, val_shards: data_mod.ShardSet,
                      stack: Mapping[str, Any]) -> None:
    """Refuse validation shards (``--val-data``) made otherwise than the training shards.

    Their bands are checked by name elsewhere; here the references of the stack trained
    on, the pixel size and the classes of the two manifests are compared. Validation on
    other inputs picks the epoch and the decision threshold of another task.

    Args:
        shards: The training shards.
        val_shards: The validation shards.
        stack: The stack the model takes (:func:`stack_of` of the training manifest).

    Raises:
        ConfigError: naming what differs, both shard sets and the fix.
    """
    train, val = shards.manifest or {}, val_shards.manifest or {}
    names = (f"the training shards of {shards.source!r}",
             f"the validation shards of {val_shards.source!r}")
    refs = reference_mismatch({"stack": stack}, val)
    if refs is not None:
        raise ConfigError(
            f"{names[0]} hold the reference {refs[0]}, {names[1]} hold {refs[1]} under the "
            f"same name: same channel names, other inputs. Export the validation shards "
            f"with the training shards' stack (their manifest.json 'stack')")
    sizes = pixel_size_mismatch(train, val)
    if sizes is not None:
        raise ConfigError(f"{names[0]} hold {sizes[0]} m pixels, {names[1]} hold {sizes[1]} m "
                          f"pixels: export the validation shards at --pixel-size {sizes[0]}")
    if train.get("classes") and val.get("classes") and (
            dict(train["classes"]) != dict(val["classes"])):
        raise ConfigError(
            f"{names[0]} have the classes {by_id(train['classes'])}, {names[1]} "
            f"{by_id(val['classes'])}: the same ids would be scored as other classes. Export "
            f"the validation shards with the training shards' classes")


#: The classes of a binary (sigmoid) model.
BINARY = {"background": 0, "landslide": 1}


def by_id(classes: Mapping[str, Any]) -> dict[str, Any]:
    """``classes`` (name -> id) in the order of their ids, as messages show them."""
    def key(item: tuple[str, Any]) -> tuple[bool, int, str]:
        number = isinstance(item[1], int)
        return not number, item[1] if number else 0, item[0]

    return dict(sorted(classes.items(), key=key))


def classes_of(shards: data_mod.ShardSet) -> dict[str, Any]:
    """The manifest's class names -> ids (binary when it names none)."""
    return dict((shards.manifest or {}).get("classes") or BINARY)


def resolve_classes(shards: data_mod.ShardSet, n_classes: int | None
                    ) -> tuple[int, dict[str, int]]:
    """The number of outputs and the class names of the model.

    ``n_classes`` None: 1 (sigmoid) for a binary manifest, else one softmax output per class
    of the manifest.

    Raises:
        ConfigError: n_classes 2, more classes than ``n_classes``, or class ids a softmax
            cannot learn (see :func:`check_class_ids`).
    """
    manifest_classes = classes_of(shards)
    if n_classes is None:
        n_classes = 1 if len(manifest_classes) <= 2 else len(manifest_classes)
    if n_classes == 1:
        return 1, dict(BINARY)
    if n_classes == 2:
        raise ConfigError("n_classes 2 is a binary task: use n_classes 1 (sigmoid)")
    if len(manifest_classes) > n_classes:
        raise ConfigError(f"the shards have classes {manifest_classes}, more than n_classes "
                          f"{n_classes}")
    check_class_ids(manifest_classes, n_classes, shards.source)
    classes = manifest_classes if len(manifest_classes) == n_classes else {
        "background": 0, **{f"class_{i}": i for i in range(1, n_classes)}}
    return n_classes, classes


def check_class_ids(classes: Mapping[str, Any], n_classes: int, source: str) -> None:
    """Refuse class ids that a softmax of ``n_classes`` outputs cannot learn.

    The loss one-hot encodes a pixel's id into ``n_classes`` outputs, so an id outside
    ``0..n_classes-1`` (``{background: 0, scarp: 1, deposit: 3}`` for 3 outputs) becomes
    an all-zero target and its pixels give no signal; two names on one id cannot be told
    apart. A sigmoid model (``n_classes`` 1) takes every non-zero id as landslide.

    Raises:
        ConfigError: naming the classes, the ids a softmax of that size takes, and the fix.
    """
    if n_classes == 1:
        return
    ids = list(classes.values())
    if (all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_classes for i in ids)
            and len(set(ids)) == len(ids)):
        return
    contiguous = ",".join(f"{name}={i}" for i, name in
                          enumerate((n for n in classes if classes[n] != 0), 1))
    raise ConfigError(
        f"the shards of {source!r} have classes {dict(classes)}: a softmax of {n_classes} "
        f"outputs takes distinct ids 0..{n_classes - 1} (0 background), and pixels of any "
        f"other id would train with no signal. Re-export them with contiguous ids "
        f"(--classes {contiguous}, or a label map onto 1..{n_classes - 1})")


def cache_for(config: TrainConfig, shards: data_mod.ShardSet, split: str, n_bands: int) -> bool:
    """Whether to cache the parsed ``split`` in memory (``cache: auto``: when it fits)."""
    if config.cache != "auto":
        return config.cache == "memory"
    size = data_mod.estimated_bytes(shards, split, n_bands)
    return size is not None and size <= CACHE_LIMIT_BYTES


#: The fingerprints of :func:`inputs_record`, and how a message names each.
_FINGERPRINTS = {"train": "training shards", "val": "validation shards",
                 "init_from": "--init-from artifact (model id)"}


def run_files(shards: data_mod.ShardSet, val_shards: data_mod.ShardSet,
              separate_val: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train_files, val_files)`` of a run.

    Training reads the ``train`` split and the split-less files of ``shards``; validation
    the ``val`` split of ``val_shards``, with its split-less files when ``separate_val``
    (``--val-data`` names shards of their own).

    Raises:
        ConfigError: a split without shards (see :meth:`~model.data.ShardSet.split_files`).
    """
    return (shards.split_files("train", include_other=True),
            validation_files(val_shards, separate_val))


def validation_files(val_shards: data_mod.ShardSet, separate_val: bool) -> tuple[str, ...]:
    """The files a run validates on: the val split of ``val_shards`` (see :func:`run_files`).

    With ``separate_val`` (``--val-data`` names shards of their own) their split-less files
    too.

    Raises:
        ConfigError: no such files (see :meth:`~model.data.ShardSet.split_files`).
    """
    return val_shards.split_files("val", include_other=separate_val)


def _size(path: str) -> int:
    return int(tf.io.gfile.stat(path).length)


def _files_digest(shards: data_mod.ShardSet, files: Sequence[str]) -> str:
    """A digest of the manifest and each file's name (below the root) and size.

    Sizes, not modification times: shards copied elsewhere (a fresh disk after a
    preemption) are still the same inputs.
    """
    root = shards.root.rstrip("/") + "/"
    with ThreadPoolExecutor(max_workers=16) as pool:  # one request per file on gs://
        sizes = list(pool.map(_size, files))
    names = [f[len(root):] if f.startswith(root) else f for f in files]
    content = {"manifest": shards.manifest, "files": [list(pair) for pair in zip(names, sizes)]}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inputs_record(data: str, val_data: str | None, shards: data_mod.ShardSet,
                  train_files: Sequence[str], val_shards: data_mod.ShardSet,
                  val_files: Sequence[str], init_model_id: str | None) -> dict[str, Any]:
    """What a run reads: the paths given and a fingerprint of each input.

    Saved in the ``_backup/`` state and the artifact's ``training``; :func:`changed_inputs`
    compares two of them. ``train`` and ``val`` digest the manifest and the name and size
    of every shard read (so the same shards moved elsewhere compare equal, and other shards
    at the same path do not); ``init_from`` is the model id of the ``init_from`` artifact.
    """
    return {"data": data, "val_data": val_data,
            "train": _files_digest(shards, train_files),
            "val": _files_digest(val_shards, val_files),
            "init_from": init_model_id}


def read_inputs_record(data: str, val_data: str | None, config: TrainConfig) -> dict[str, Any]:
    """:func:`inputs_record` of a run of ``config`` on ``data`` that has not started.

    Raises:
        ConfigError: ``data`` or ``val_data`` hold no usable shards.
        ArtifactError: the ``init_from`` artifact cannot be read.
    """
    shards = data_mod.find_shards(data, label=config.label)
    val_shards = data_mod.find_shards(val_data, label=config.label) if val_data else shards
    train_files, val_files = run_files(shards, val_shards, val_data is not None)
    init_id = str(read_meta(config.init_from)["model_id"]) if config.init_from else None
    return inputs_record(data, val_data, shards, train_files, val_shards, val_files, init_id)


def changed_inputs(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The inputs (as a message names them) whose fingerprints differ.

    Only the fingerprints that ``recorded`` names are compared: a record written before
    one was added does not refuse what it cannot tell.
    """
    return [what for key, what in _FINGERPRINTS.items()
            if key in recorded and recorded[key] != current.get(key)]


def describe_inputs(record: Mapping[str, Any]) -> str:
    """``--data X`` (``--val-data Y``) as a message shows the inputs of a record."""
    text = f"--data {record.get('data')!r}"
    return text + (f" --val-data {record['val_data']!r}" if record.get("val_data") else "")

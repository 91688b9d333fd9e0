"""What a run takes from its shards besides the patches.

Whether the export is complete enough to use, the classes to predict, the input stack the
artifact records, and whether the parsed data are cached in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from model import data as data_mod
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


def resolve_classes(shards: data_mod.ShardSet, n_classes: int | None
                    ) -> tuple[int, dict[str, int]]:
    """The number of outputs and the class names of the model.

    ``n_classes`` None: 1 (sigmoid) for a binary manifest, else one softmax output per class
    of the manifest.
    """
    manifest_classes = dict((shards.manifest or {}).get("classes")
                            or {"background": 0, "landslide": 1})
    if n_classes is None:
        n_classes = 1 if len(manifest_classes) <= 2 else len(manifest_classes)
    if n_classes == 1:
        return 1, {"background": 0, "landslide": 1}
    if n_classes == 2:
        raise ConfigError("n_classes 2 is a binary task: use n_classes 1 (sigmoid)")
    if len(manifest_classes) > n_classes:
        raise ConfigError(f"the shards have classes {manifest_classes}, more than n_classes "
                          f"{n_classes}")
    classes = manifest_classes if len(manifest_classes) == n_classes else {
        "background": 0, **{f"class_{i}": i for i in range(1, n_classes)}}
    return n_classes, classes


def cache_for(config: TrainConfig, shards: data_mod.ShardSet, split: str, n_bands: int) -> bool:
    """Whether to cache the parsed ``split`` in memory (``cache: auto``: when it fits)."""
    if config.cache != "auto":
        return config.cache == "memory"
    size = data_mod.estimated_bytes(shards, split, n_bands)
    return size is not None and size <= CACHE_LIMIT_BYTES

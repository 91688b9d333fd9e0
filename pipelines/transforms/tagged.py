"""Several outputs of one step without Beam's multi-output ``ParDo``.

A step that has more than one kind of output (records and a summary; tiles, skipped
chunks and failures) emits ``(tag, value)`` pairs on its one main output, and
:class:`SplitTags` turns them into one PCollection per tag with plain ``FlatMap``s.

Why not ``ParDo(...).with_outputs(...)``: Beam 2.77's Dask runner puts every output of
a multi-output ``ParDo`` (main and tagged alike) into one Dask bag and hands that whole
bag to the consumer of each tag, so a consumer of ``failed`` also receives the main
outputs. Single-output steps behave the same on every runner; on Dataflow and the
DirectRunner the filters fuse with the step, at the cost of a tuple per element.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam


def _only(item: tuple[str, Any], tag: str) -> Iterable[Any]:
    if item[0] == tag:
        yield item[1]


class SplitTags(beam.PTransform):
    """``(tag, value)`` pairs -> ``{tag: PCollection of value}`` for each tag named.

    A pair whose tag is not named is an error in the step that made it, so it fails.

    Args:
        *tags: The tags, distinct.
        types: The element type of some tags' PCollections (Beam picks a PCollection's
            coder from its type); the others are untyped (``Any``).
    """

    def __init__(self, *tags: str, types: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not tags or len(set(tags)) != len(tags):
            raise ValueError(f"SplitTags needs distinct tags, got {tags!r}")
        unknown = sorted(set(types or {}) - set(tags))
        if unknown:
            raise ValueError(f"SplitTags got types for {unknown}, which are not among its "
                             f"tags {tags!r}")
        self.tags = tags
        self.types = dict(types or {})

    def expand(self, pairs: beam.PCollection) -> dict[str, beam.PCollection]:
        checked = pairs | "CheckTags" >> beam.Map(_check, tags=frozenset(self.tags))
        out = {}
        for t in self.tags:
            only = beam.FlatMap(_only, tag=t)
            if t in self.types:
                only = only.with_output_types(self.types[t])
            out[t] = checked | f"Only_{t}" >> only
        return out


def _check(item: tuple[str, Any], tags: frozenset[str]) -> tuple[str, Any]:
    if not (isinstance(item, tuple) and len(item) == 2 and item[0] in tags):
        raise ValueError(f"expected a (tag, value) pair with a tag in {sorted(tags)}, got "
                         f"{type(item).__name__} {str(item)[:80]}")
    return item


__all__ = ["SplitTags"]

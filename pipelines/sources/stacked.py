"""A temporal input stack read from any source: the target date plus reference dates.

:func:`make_stacked_source` builds one plain source per date window (the target's and
each reference's, through :func:`pipelines.sources.factory.make_source`, so Earth Engine
makes one request per date, a GeoTIFF source reads the files of that date and the
synthetic world the image of that year) and a :class:`StackedSource` that reads them all
for a chunk and composes the channels with :func:`pipelines.geo.stack.compose`.

A source or date range that cannot supply a reference fails here, on the launcher,
naming the reference and its window, before any chunk is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import ConfigError, InputError, LandslideError
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import PixelGrid
from pipelines.geo.stack import StackSpec, compose
from pipelines.sources.base import Raster, Source

if TYPE_CHECKING:
    from pipelines.workers import WorkerLayout


class StackedSource(Source):
    """Reads the channels of a :class:`StackSpec` from one source per date.

    Args:
        spec: The stack.
        target: The source of the target date window.
        references: ``{reference name: source}`` of every reference date window.
        windows: ``{reference name: (start, end)}``, recorded in :meth:`describe`.
    """

    def __init__(self, spec: StackSpec, target: Source, references: Mapping[str, Source],
                 windows: Mapping[str, tuple[str, str]]) -> None:
        missing = [r.name for r in spec.references if r.name not in references]
        if missing:
            raise ConfigError(f"No source for reference(s) {', '.join(missing)}.")
        self.spec = spec
        self.target = target
        self.references = dict(references)
        self.windows = dict(windows)
        self.kind = target.kind

    @property
    def bands(self) -> tuple[str, ...]:
        return self.spec.channels

    def _read(self, grid: PixelGrid, bands: tuple[str, ...]) -> Raster:
        need_target, need_refs = self.spec.needed()
        t = self.target.read(grid, need_target)
        valid = t.valid.copy()
        per_ref: dict[str, dict[str, np.ndarray]] = {}
        for name, src in self.references.items():
            if not valid.any():  # nothing left to compose: skip the other dates' reads
                per_ref[name] = {b: np.full(grid.shape, np.nan, np.float32)
                                 for b in need_refs[name]}
                continue
            r = src.read(grid, need_refs[name])
            valid &= r.valid  # valid only where every date is clear
            per_ref[name] = dict(zip(r.bands, r.data))
        data = compose(self.spec, dict(zip(t.bands, t.data)), per_ref)
        if not valid.all():
            data[:, ~valid] = np.nan
        raster = Raster(data, valid, grid, self.spec.channels)
        return raster if bands == self.spec.channels else raster.select(bands)

    def open(self) -> None:
        self.target.open()
        for s in self.references.values():
            s.open()

    def close(self) -> None:
        self.target.close()
        for s in self.references.values():
            s.close()

    def for_workers(self, layout: WorkerLayout) -> None:
        self.target.for_workers(layout)
        for s in self.references.values():
            s.for_workers(layout)

    def describe(self) -> dict:
        return {**self.target.describe(), "bands": list(self.bands),
                "stack": self.spec.to_dict(),
                "references": {name: {"window": list(self.windows[name]), **src.describe()}
                               for name, src in self.references.items()}}

    def footprint(self) -> tuple[str, tuple[float, float, float, float]] | None:
        return self.target.footprint()

    def check_covers(self, region: Any) -> None:
        for src in (self.target, *self.references.values()):
            check = getattr(src, "check_covers", None)
            if check is not None:
                check(region)


def _reference_spec(spec: Mapping[str, Any], name: str,
                    composite: str | None = None) -> dict[str, Any]:
    """The source spec of reference ``name``: the same source at another date."""
    from pipelines.sources.factory import images_without_year

    ref = {k: v for k, v in spec.items() if k not in {"year", "reference_images"}}
    if composite:
        if spec.get("kind") == "geotiff":
            raise ConfigError(
                f"Reference {name!r} asks for a {composite!r} composite, which the geotiff "
                f"source does not make (it mosaics its files): give one composited image with "
                f"--reference-images {name}=PATH, or drop ':{composite}'.")
        ref["composite"] = composite
    if spec.get("kind") == "geotiff" and ref.get("images"):
        own = (spec.get("reference_images") or {}).get(name)
        if own:
            ref["images"] = list(own) if not isinstance(own, str) else [own]
        elif images_without_year(ref):
            raise ConfigError(
                f"Reference {name!r}: the geotiff source's images hold no {{year}} and no "
                f"images were given for {name!r}, so the reference would read the target's "
                f"own images. Put {{year}} in --images (e.g. s2_{{year}}.tif) or give "
                f"--reference-images {name}=PATH[;PATH...].")
    return ref


def make_stacked_source(spec: Mapping[str, Any], stack: StackSpec, start: str | None,
                        end: str | None) -> Source:
    """The source of ``stack``'s channels for the target window ``start``..``end``.

    A single-date stack is the plain source itself.

    Raises:
        InputError: a reference's window cannot be supplied by the source (e.g. a year the
            synthetic world lacks, missing files); the message names the reference.
    """
    from pipelines.sources.factory import make_source

    need_target, need_refs = stack.needed()
    if not stack.temporal:
        return make_source(spec, start, end, bands=stack.bands)
    target = make_source(spec, start, end, bands=need_target)
    # the bands of every date, checked here: a missing band or file (listing a GeoTIFF
    # source's bands reads its files) fails on the launcher, not chunk after chunk
    bandreg.require(target.bands, need_target, f"{target.kind} source of the target dates "
                    f"{start}..{end}")
    windows = stack.windows(start, end)
    refs: dict[str, Source] = {}
    for r in stack.references:
        rs, re_ = windows[r.name]
        try:
            refs[r.name] = make_source(_reference_spec(spec, r.name, r.composite), rs, re_,
                                       bands=need_refs[r.name])
            bandreg.require(refs[r.name].bands, need_refs[r.name],
                            f"{refs[r.name].kind} source")
        except LandslideError as exc:
            cls = type(exc) if isinstance(exc, InputError) else InputError
            how = f"{r.offset} from {start}..{end}" if r.offset else "a fixed window"
            raise cls(f"The source cannot supply reference {r.name!r} of the model's input "
                      f"stack, dates {rs}..{re_} ({how}): {exc}") from exc
    return StackedSource(stack, target, refs, windows)

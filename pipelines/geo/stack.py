"""Input stacks: what a model sees, as one small frozen value.

A stack is the *target* image's bands (optical and terrain), plus zero or more
*reference* images of the same place at other dates (a fixed pre-event window, or an
offset from the target's window such as one year earlier) and *change* bands derived
from them (the target minus the reference, per band or of an index such as NDVI). A
pixel is valid only where every date in the stack is clear.

Channel names (the order a model takes them in)::

    B2 ... B12 DEM slope          the target's bands, as named
    B4@prev B8@prev ...           a reference's optical bands: ``<band>@<reference>``
    dNDVI@prev dB4@prev ...       change bands: ``d<band or index>@<reference>``

A stack without references is a single-date stack: its channels are its bands, so
models trained before stacks existed are single-date models.

This module is pure: dates, names and numpy. :class:`pipelines.sources.stacked.StackedSource`
reads a stack from any source; the manifest and the model artifact record
:meth:`StackSpec.to_dict`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import ConfigError
from pipelines.geo import bands as bandreg

#: Separates a band from the reference it comes from (``B4@prev``).
SEP = "@"
#: Spectral indices a change band may be computed of (defined with the bands).
INDICES = bandreg.INDICES
_OFFSET = re.compile(r"^([+-]?\d+)\s*([ymd])$")
#: Composites a reference may ask its source for (the synthetic world: mosaic, greenest,
#: barest; Earth Engine: all five).
COMPOSITES = ("mosaic", "greenest", "barest", "median", "mean")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,15}$")


def shift_date(date: dt.date, amount: int, unit: str) -> dt.date:
    """``date`` moved by ``amount`` years, months or days (``unit`` y, m or d).

    Days past the end of a shorter month are clamped (2016-02-29 - 1y = 2015-02-28).
    """
    if unit == "d":
        return date + dt.timedelta(days=amount)
    months = amount * 12 if unit == "y" else amount
    total = date.year * 12 + (date.month - 1) + months
    year, month = divmod(total, 12)
    day = min(date.day, calendar.monthrange(year, month + 1)[1])
    return dt.date(year, month + 1, day)


def _date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        raise ConfigError(f"Bad {what} date {text!r}: use YYYY-MM-DD.") from None


@dataclass(frozen=True)
class Reference:
    """One reference image of a stack.

    Attributes:
        name: Short name used in channel names (``prev`` -> ``B4@prev``).
        offset: Offset of the reference's date window from the target's: ``-1y`` (the same
            season a year earlier), ``-6m``, ``-30d``; or ``-3y..-1y``, a window from three
            years before the target's start to one year before its end. Exclusive with
            ``start``/``end``.
        start: A fixed date window's start (e.g. before an earthquake).
        end: A fixed date window's end.
        composite: How the source combines the images of the window (``None``: the
            source's default; ``greenest`` keeps each pixel's greenest clear image, a
            vegetation baseline from before a scar; ``barest`` its least green clear
            image, a scar at its freshest, from which its recovery shows; ``mosaic`` the
            most recent clear one; Earth Engine also ``median``, ``mean``).
    """

    name: str
    offset: str | None = None
    start: str | None = None
    end: str | None = None
    composite: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name or ""):
            raise ConfigError(
                f"Reference name {self.name!r} must start with a letter and hold at most 16 "
                f"letters, digits or '_' (e.g. prev, pre).")
        fixed = self.start is not None or self.end is not None
        if (self.offset is None) == (not fixed):
            raise ConfigError(
                f"Reference {self.name!r} needs either an offset (e.g. -1y) or a fixed window "
                f"start/end (e.g. 2014-01-01/2014-12-31), not both and not neither.")
        if self.composite is not None and self.composite not in COMPOSITES:
            raise ConfigError(f"Reference {self.name!r}: unknown composite {self.composite!r}; "
                              f"use one of {', '.join(COMPOSITES)}.")
        if self.offset is not None:
            parts = []
            for text in str(self.offset).split(".."):
                m = _OFFSET.match(text.strip())
                if not m or int(m.group(1)) == 0:
                    raise ConfigError(
                        f"Reference {self.name!r}: offset {self.offset!r} is not a non-zero "
                        f"number of years, months or days such as -1y, -6m or -30d, or a "
                        f"range such as -3y..-1y.")
                parts.append(f"{int(m.group(1))}{m.group(2)}")
            if len(parts) > 2:
                raise ConfigError(f"Reference {self.name!r}: offset {self.offset!r} has more "
                                  f"than two ends; use e.g. -3y..-1y.")
            object.__setattr__(self, "offset", "..".join(parts))
        else:
            if self.start is None or self.end is None:
                raise ConfigError(f"Reference {self.name!r}: give both start and end.")
            if _date(self.end, "end") <= _date(self.start, "start"):
                raise ConfigError(f"Reference {self.name!r}: empty window {self.start} .. "
                                  f"{self.end}; the end must be after the start.")

    @classmethod
    def parse(cls, text: str) -> Reference:
        """``NAME=OFFSET[:COMPOSITE]`` or ``NAME=START/END[:COMPOSITE]``.

        E.g. ``prev=-1y``, ``base=-3y..-1y:greenest``, ``pre=2014-01-01/2014-12-31``.
        """
        name, sep, value = str(text).partition("=")
        if not sep or not value.strip():
            raise ConfigError(
                f"Reference {text!r} is not NAME=OFFSET or NAME=START/END, e.g. prev=-1y, "
                f"base=-3y..-1y:greenest or pre=2014-01-01/2014-12-31.")
        value, _, composite = value.strip().partition(":")
        comp = composite.strip() or None
        if "/" in value:
            start, _, end = value.partition("/")
            return cls(name.strip(), start=start.strip(), end=end.strip(), composite=comp)
        return cls(name.strip(), offset=value, composite=comp)

    def window(self, start: str | None, end: str | None) -> tuple[str, str]:
        """The reference's date window for a target window ``start``..``end``.

        Both windows are end-exclusive. With a month offset an end that is not a 1st is
        mapped through its last day read (``end - 1 day``): shifted, clamped to its month,
        then the day added back (-1m of 2015-03-01..2015-03-31, read through
        30 March, is 2015-02-01..2015-03-01, read through 28 February, where clamping the
        end itself stopped on 27 February); an end on a 1st shifts as it is (-1m of
        ..2020-07-01 is ..2020-06-01).
        Year and day offsets shift both dates as :func:`shift_date` does.

        Args:
            start: The target window's start (YYYY-MM-DD).
            end: The target window's end, exclusive (YYYY-MM-DD).

        Returns:
            ``(start, end)`` of the reference's window, end exclusive.

        Raises:
            ConfigError: an offset reference without a target window.
        """
        if self.offset is None:
            return str(self.start), str(self.end)
        if not (start and end):
            raise ConfigError(f"Reference {self.name!r} is {self.offset} from the target's "
                              f"date window: give --start and --end.")
        first, _, last = self.offset.partition("..")
        shifted = []
        for date, text, is_end in ((start, first, False), (end, last or first, True)):
            m = _OFFSET.match(text)
            assert m is not None  # checked in __post_init__
            amount, unit = int(m.group(1)), m.group(2)
            day = _date(date, "date")
            if is_end and unit == "m" and day.day != 1:
                # the end is exclusive: shift the last day read, clamp it, and add the day
                # back, so -1m of 03-01..03-31 reads through 02-28 (not 02-27); an end on
                # a 1st (a window through a month's last day) shifts as it is
                day = shift_date(day - dt.timedelta(days=1), amount, unit)
                shifted.append(day + dt.timedelta(days=1))
            else:
                shifted.append(shift_date(day, amount, unit))
        if shifted[1] <= shifted[0]:
            raise ConfigError(f"Reference {self.name!r} ({self.offset}) of {start}..{end} is "
                              f"the empty window {shifted[0]}..{shifted[1]}.")
        return shifted[0].isoformat(), shifted[1].isoformat()

    def describe(self) -> str:
        when = self.offset if self.offset else f"{self.start}/{self.end}"
        return f"{self.name}={when}" + (f":{self.composite}" if self.composite else "")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("name", self.name), ("offset", self.offset),
                                  ("start", self.start), ("end", self.end),
                                  ("composite", self.composite)) if v is not None}


def parse_references(text: str | Sequence[str] | None) -> tuple[Reference, ...]:
    """Comma-separated (or listed) reference specs; see :meth:`Reference.parse`."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    refs = tuple(r if isinstance(r, Reference) else Reference.parse(str(r).strip())
                 for r in items if str(r).strip())
    return refs


def _change_name(name: str) -> str:
    upper = name.strip().upper()
    if upper in INDICES:
        return upper
    return bandreg.canonical(name)


@dataclass(frozen=True)
class StackSpec:
    """The input stack of a model.

    Attributes:
        bands: The target image's bands, in order (optical and terrain).
        references: Reference images, in order.
        reference_bands: Optical bands taken from every reference (default: the target's
            optical bands).
        change: Change bands per reference: band names (``B4`` -> ``dB4@prev``, the target
            minus the reference) and indices (``NDVI`` -> ``dNDVI@prev``).
    """

    bands: tuple[str, ...]
    references: tuple[Reference, ...] = ()
    reference_bands: tuple[str, ...] | None = None
    change: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bands = bandreg.resolve(self.bands)
        for b in bands:
            if SEP in b:
                raise ConfigError(f"Stack band {b!r}: name target bands without '{SEP}'; "
                                  f"references add their own bands.")
        object.__setattr__(self, "bands", bands)
        refs = tuple(r if isinstance(r, Reference) else Reference(**r) for r in self.references)
        names = [r.name for r in refs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"Reference names used twice: {', '.join(dupes)}.")
        object.__setattr__(self, "references", refs)
        if self.reference_bands is not None:
            rb = bandreg.resolve(self.reference_bands)
            not_optical = [b for b in rb if bandreg.get(b).kind != "optical"]
            if not_optical:
                raise ConfigError(
                    f"Reference bands {', '.join(not_optical)} are not optical: terrain does "
                    f"not change between dates, so the target's terrain bands suffice.")
            object.__setattr__(self, "reference_bands", rb)
        change = tuple(_change_name(c) for c in self.change)
        twice = sorted({c for c in change if change.count(c) > 1})
        if twice:  # they would make the same channel twice (dNDVI@prev, dNDVI@prev)
            raise ConfigError(f"Change bands listed twice: {', '.join(twice)}.")
        object.__setattr__(self, "change", change)
        if (change or self.reference_bands) and not refs:
            raise ConfigError("Change and reference bands need at least one reference "
                              "(e.g. --reference prev=-1y).")
        for c in change:
            if c not in INDICES and bandreg.get(c).kind != "optical":
                raise ConfigError(f"Change band {c!r} is not optical; change bands are "
                                  f"differences of optical bands or of {', '.join(INDICES)}.")

    # ---- what the stack holds
    @property
    def temporal(self) -> bool:
        """True when the stack has at least one reference image."""
        return bool(self.references)

    @property
    def ref_bands(self) -> tuple[str, ...]:
        """Optical bands read from every reference."""
        if self.reference_bands is not None:
            return self.reference_bands
        return tuple(b for b in self.bands if bandreg.get(b).kind == "optical")

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names in model order."""
        out = list(self.bands)
        for r in self.references:
            out += [f"{b}{SEP}{r.name}" for b in self.ref_bands]
            out += [f"d{c}{SEP}{r.name}" for c in self.change]
        return tuple(out)

    def needed(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """``(target bands, {reference: bands})`` to read for every channel."""
        extra: list[str] = []
        for c in self.change:
            extra += list(INDICES.get(c, (c,)))
        target = tuple(dict.fromkeys(list(self.bands) + extra))
        per_ref = tuple(dict.fromkeys(list(self.ref_bands) + extra))
        return target, {r.name: per_ref for r in self.references}

    def windows(self, start: str | None, end: str | None) -> dict[str, tuple[str, str]]:
        """Each reference's date window for the target window ``start``..``end``.

        Raises:
            ConfigError: an offset reference without a target window, or a reference
                window that overlaps the target's (its image could be the target's own,
                and every change band 0).
        """
        out = {r.name: r.window(start, end) for r in self.references}
        if start and end:
            t0, t1 = _date(start, "start"), _date(end, "end")
            for name, (r0, r1) in out.items():
                if _date(r0, "start") < t1 and t0 < _date(r1, "end"):
                    raise ConfigError(
                        f"Reference {name!r} of the target window {start}..{end} is "
                        f"{r0}..{r1}, which overlaps it: the reference could be the target's "
                        f"own image and its change bands 0. Give a reference before the "
                        f"target (e.g. {name}=-1y, or a fixed window ending by {start}).")
        return out

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bands": list(self.bands),
                             "references": [r.to_dict() for r in self.references],
                             "change": list(self.change), "channels": list(self.channels)}
        if self.reference_bands is not None:
            d["reference_bands"] = list(self.reference_bands)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StackSpec:
        spec = cls(bands=tuple(d["bands"]),
                   references=tuple(Reference(**r) for r in d.get("references", ())),
                   reference_bands=(tuple(d["reference_bands"]) if d.get("reference_bands")
                                    else None),
                   change=tuple(d.get("change", ())))
        if "channels" in d and list(d["channels"]) != list(spec.channels):
            raise ConfigError(f"Stack record lists channels {d['channels']} but its parts "
                              f"make {list(spec.channels)}: the record is inconsistent.")
        return spec

    @classmethod
    def of(cls, meta: Mapping[str, Any]) -> StackSpec:
        """The stack a manifest or artifact records.

        Records written before stacks existed give a single-date stack of their bands.
        """
        if meta.get("stack"):
            return cls.from_dict(meta["stack"])
        return cls(bands=tuple(meta["bands"]))

    def describe(self) -> str:
        if not self.references:
            return f"single date: {', '.join(self.bands)}"
        refs = "; ".join(r.describe() for r in self.references)
        change = f", change {', '.join(self.change)}" if self.change else ""
        return f"{len(self.channels)} channels: target + {refs}{change}"


# ----------------------------------------------------------------------------- pixels
def index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised difference ``(a - b) / (a + b)``, 0 where ``a + b`` is 0."""
    num = a - b
    den = a + b
    out = np.zeros_like(num, dtype=np.float32)
    np.divide(num, den, out=out, where=np.abs(den) > 1e-6)
    return out


def _values(name: str, data: Mapping[str, np.ndarray]) -> np.ndarray:
    if name in INDICES:
        a, b = INDICES[name]
        return index(data[a], data[b])
    return data[name]


def compose(spec: StackSpec, target: Mapping[str, np.ndarray],
            refs: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Channels of ``spec`` from per-date band arrays.

    Args:
        spec: The stack.
        target: ``{band: (h, w) array}`` of the target date (every band of
            :meth:`StackSpec.needed`).
        refs: ``{reference name: {band: (h, w) array}}``.

    Returns:
        ``(channels, h, w)`` float32; NaN wherever an input is NaN.
    """
    first = next(iter(target.values()))
    out = np.empty((len(spec.channels), *first.shape), np.float32)
    i = 0
    for b in spec.bands:
        out[i] = target[b]
        i += 1
    for r in spec.references:
        ref = refs[r.name]
        for b in spec.ref_bands:
            out[i] = ref[b]
            i += 1
        for c in spec.change:
            np.subtract(_values(c, target), _values(c, ref), out=out[i])
            if c in INDICES:  # an index of a NaN band is NaN, not the 0 of a zero division
                a, b = INDICES[c]
                bad = ~(np.isfinite(target[a]) & np.isfinite(target[b])
                        & np.isfinite(ref[a]) & np.isfinite(ref[b]))
                out[i][bad] = np.nan
            i += 1
    return out


def channel_band(name: str) -> tuple[str, str | None, bool]:
    """``(base, reference, is_change)`` of a channel name.

    ``dNDVI@prev`` -> ``("NDVI", "prev", True)``; ``B4`` -> ``("B4", None, False)``.
    """
    base, sep, ref = name.partition(SEP)
    if not sep:
        return name, None, False
    if base.startswith("d") and (base[1:] in INDICES or base[1:] in bandreg.REGISTRY):
        return base[1:], ref, True
    return base, ref, False

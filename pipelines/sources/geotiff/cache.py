"""A process-wide cache of decoded reads: one file's bands on one grid.

A temporal stack reads the same file onto the same chunk grid several times: the greenest
and the barest composite of the four years before an image decode the same four files,
the pre-event window overlaps them, and an export of several years reads each chunk once
per year, each time with the years before it. Every :class:`GeoTIFFSource` keeps its own
open datasets (and so its own GDAL block cache), so each of those reads decoded the tiles
again. This cache keeps the float32 result of a read (after scaling and nodata) under a
key that holds everything the result depends on, so a repeated read is a copy.

Reads are reused within a chunk (its dates, its periods), not across chunks, so the cache
keeps the reads of the few grids read last (:data:`MAX_GRIDS`: the current chunk and the
one before, with the DEM's grid grown by a pixel) and drops a grid's reads when newer
grids push it out: a sweep's memory does not grow with its region. It is also bounded in
bytes (least recently used first out) and thread-safe; hits hand out copies, so a caller
may change what it gets. Only files whose content can be identified
without reading them are cached (local files: size, inode, modification and change
times); a file rewritten at the same path gets another key, unless it keeps its size and
inode and is rewritten within one tick of the file system's clock (a few milliseconds).
Entries live while a source is open: when the last open source closes (a pipeline's
workers tear down), the cache empties (a source read without ``open()`` opens itself and
counts until it is closed). ``LANDSLIDES_READ_CACHE_MB`` sets the bound for a
process (``0`` turns the cache off).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

#: Default bound of the cache (MiB), a safety net beside :data:`MAX_GRIDS`.
DEFAULT_MB = 256.0
#: Grids whose reads are kept: a chunk's own grid (and its sub-grids at a file's edge) and
#: the DEM's grown one, for the chunk being read and the one before.
MAX_GRIDS = 4
ENV = "LANDSLIDES_READ_CACHE_MB"


def _bound_from_env() -> int:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return int(DEFAULT_MB * 2**20)
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"{ENV} must be a number of MiB (0 turns the cache off), got "
                         f"{text!r}.") from None
    if not mb >= 0:
        raise ValueError(f"{ENV} must be >= 0 MiB, got {text!r}.")
    return int(mb * 2**20)


class ReadCache:
    """A least-recently-used map of read results, bounded by their bytes.

    Args:
        max_bytes: The bound; 0 keeps nothing.
    """

    def __init__(self, max_bytes: int, max_grids: int = MAX_GRIDS) -> None:
        self.max_bytes = int(max_bytes)
        self.max_grids = int(max_grids)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._grids: OrderedDict[Hashable, set[Hashable]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._sessions = 0

    def get_or_read(self, key: Hashable | None, read: Callable[[], np.ndarray],
                    grid: Hashable = None) -> np.ndarray:
        """The cached result of ``key``, or ``read()``'s (kept for next time).

        ``key=None`` (content not identifiable) reads without caching. ``grid`` is the
        grid read onto: the reads of grids older than the last :attr:`max_grids` are
        dropped. The result is always the caller's own array.
        """
        if key is None or self.max_bytes <= 0:
            return read()
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                if grid in self._grids:
                    self._grids.move_to_end(grid)
                self.hits += 1
                return found.copy()
            self.misses += 1
        data = read()  # outside the lock: other threads read other keys meanwhile
        if data.nbytes <= self.max_bytes:
            kept = data.copy()
            with self._lock:
                self._drop(key)
                self._items[key] = kept
                self._bytes += kept.nbytes
                self._grids.setdefault(grid, set()).add(key)
                self._grids.move_to_end(grid)
                while len(self._grids) > max(1, self.max_grids):
                    _, keys = self._grids.popitem(last=False)
                    for k in keys:
                        self._drop(k)
                while self._bytes > self.max_bytes:
                    self._drop(next(iter(self._items)))
        return data

    def _drop(self, key: Hashable) -> None:
        """Forget ``key``'s result (the lock held)."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes

    def session_started(self) -> None:
        """A source opened (reads may follow)."""
        with self._lock:
            self._sessions += 1

    def session_ended(self) -> None:
        """A source closed; the last one to close empties the cache."""
        with self._lock:
            self._sessions = max(0, self._sessions - 1)
            if self._sessions == 0:
                self._items.clear()
                self._grids.clear()
                self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._grids.clear()
            self._bytes = 0
            self.hits = self.misses = 0


#: The process's cache, shared by every GeoTIFF source.
READS = ReadCache(_bound_from_env())

"""TFRecord shards per split, written deterministically, and the per-run summary.

Export and the Landslide4Sense importer both turn a PCollection of ``(split, record)``
into ``<out>/<split>/<split>-SSSSS-of-NNNNN.tfrecord[.gz]`` and a manifest. Both use:

* :class:`WriteShards`: every record goes to the shard its content hashes to and is framed
  (and, for gzip shards, compressed) where it is made; a shard's frames are written sorted
  by their bytes, then the file is renamed into place. The same records therefore give the
  same files, byte for byte, whatever order a runner delivers them in and however often a
  bundle is retried; a trainer reading them with a fixed seed sees the same sequence on
  every run. The records themselves never cross the runner's shuffle: each bundle appends
  its frames to a spill file of its own under the output's temporary folder, on a thread
  beside the stage that makes the records, and only their addresses (file, offset,
  length) are grouped by shard; the writer of a shard reads its frames back and
  concatenates them.
* :func:`frame`: TFRecord framing (length, masked CRC32C, data, masked CRC32C); a gzip
  shard holds one gzip member per record (a multi-member gzip file, which ``tf.data``
  reads as one stream), compressed with ISA-L when installed (Beam's own gzip compresses
  with zlib level 6, several times slower for ~4 % fewer bytes). Compressing each record
  where it is made puts the compression beside the export's reads instead of after them.
* :class:`Summary`: one combiner for counts, band statistics and failures, so the
  manifest waits on one small aggregate rather than three.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import logging
import math
import os
import struct
import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any, BinaryIO

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import fsio
from pipelines.beam_util import keeps_finish_bundle_outputs
from pipelines.errors import OutputError
from pipelines.geo.patches import SPLITS
from pipelines.transforms.background import InBackground

log = logging.getLogger(__name__)

#: compression name -> shard file suffix (readers pick GZIP for .gz files)
COMPRESSIONS = {"gzip": ".tfrecord.gz", "none": ".tfrecord"}
#: ISA-L level of gzip shards (see :func:`gzip_writer`)
GZIP_LEVEL = 2
TEMP_PREFIX = ".shards-tmp-"
#: Uncompressed bytes a shard should hold at most when the shard count is chosen for the
#: user: a shard's records are sorted in memory before it is written.
SHARD_BYTES = 256 * 2**20


def shard_name(split: str, index: int, total: int, compression: str) -> str:
    """``<split>/<split>-SSSSS-of-NNNNN<suffix>``, relative to the output folder."""
    return f"{split}/{split}-{index:05d}-of-{total:05d}{COMPRESSIONS[compression]}"


def split_of(out: str, path: str) -> str | None:
    """The split of a shard ``path`` written under ``out`` (its first folder below ``out``).

    Only the part below ``out`` counts: an output folder that is itself named ``train``
    (``shards/train/val/val-00000-of-00001.tfrecord``) holds a ``val`` shard. Local paths
    are compared normalised (``./shards/`` holds ``shards/train/...``, the path
    :func:`pipelines.fsio.join` makes of it; ``.`` holds ``train/...``); URLs as they are.
    """
    if fsio.is_remote(out):
        root = out.rstrip("/") + "/"
        if not path.startswith(root):
            return None
        rel = path[len(root):]
    else:
        try:
            rel = os.path.relpath(path, out).replace("\\", "/")
        except ValueError:  # another drive
            return None
        if rel == ".." or rel.startswith("../"):
            return None
    first = rel.split("/", 1)[0]
    return first if first in SPLITS else None


def files_by_split(out: str, files: Iterable[str]) -> dict[str, list[str]]:
    """``{split: sorted shard paths}`` for every split, of shards written under ``out``."""
    by: dict[str, list[str]] = {s: [] for s in SPLITS}
    for f in files:
        split = split_of(out, f)
        if split is not None:
            by[split].append(f)
    return {s: sorted(v) for s, v in by.items()}


def shard_count(records: int, record_bytes: int) -> int:
    """Shards for at most ``records`` records of ``record_bytes`` each (at least one)."""
    return max(1, math.ceil(max(records, 0) * max(record_bytes, 1) / SHARD_BYTES))


def shard_of(record: bytes, total: int) -> int:
    """The shard a record belongs to: a hash of its bytes, so a function of content only.

    CRC32C, computed in hardware: a cryptographic hash of every record cost the export
    more CPU than spilling it.
    """
    return google_crc32c.value(record) % total


def gzip_member(data: bytes) -> bytes:
    """``data`` as one gzip member, with no file name or time in its header.

    Equal data therefore give equal bytes. ISA-L's igzip when installed (``isal``: same
    gzip format, several times the speed of zlib level 1 on float32 imagery for 2% larger
    output), else the standard library's.
    """
    try:
        from isal import igzip
    except ImportError:  # no wheel for this platform
        return gzip.compress(data, compresslevel=1, mtime=0)
    return igzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _check_compression(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got "
                         f"{compression!r}")


def frame(record: bytes, compression: str) -> bytes:
    """``record`` as it lies in a shard: TFRecord-framed, for ``gzip`` a gzip member.

    Concatenated members are one gzip stream to ``tf.data`` (and to Python's gzip).

    Raises:
        ValueError: an unknown compression.
    """
    _check_compression(compression)
    length = struct.pack("<Q", len(record))
    framed = b"".join((length, _masked_crc(length), record, _masked_crc(record)))
    return gzip_member(framed) if compression == "gzip" else framed


def write_frames(fh: BinaryIO, frames: Iterable[bytes]) -> None:
    """Write ``frames`` (from :func:`frame`) to ``fh`` in order (``fh`` stays open).

    Raises:
        OutputError: the file cannot be written (e.g. the disk is full).
    """
    try:
        for data in frames:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"Writing a shard failed: {exc}") from exc


def write_records(fh: BinaryIO, records: Iterable[bytes], compression: str) -> None:
    """Write ``records`` to ``fh`` as TFRecords, gzipped or not, in order (``fh`` stays open).

    A gzip file without records is one empty gzip member, so every shard is valid gzip.

    Raises:
        ValueError: an unknown compression.
        OutputError: the file cannot be written (e.g. the disk is full).
    """
    _check_compression(compression)
    frames = (frame(r, compression) for r in records)
    first = next(frames, None)
    if first is None:
        write_frames(fh, [gzip_member(b"")] if compression == "gzip" else [])
    else:
        write_frames(fh, itertools.chain([first], frames))


class _SpillRecords(InBackground):
    """``(split, record)`` -> ``((split, shard), (spill file, offset, length))``.

    On two threads beside the bundle's (ISA-L, CRC32C and file I/O release the GIL), each
    record is framed and compressed (:func:`frame`) and appended to the bundle's own spill
    file under ``temp``; the output says where its frame lies: grouping the addresses by
    shard moves a few bytes per record instead of the record. The file is closed in
    ``finish_bundle``, after the last frame and before the bundle's outputs are committed,
    so the writers find it whole. A retried bundle writes a new file; the failed
    attempt's outputs are dropped with it.
    """

    thread_name = "shard-spill"

    def __init__(self, temp: str, totals: Mapping[str, int], compression: str = "gzip",
                 overlap: bool = True) -> None:
        # up to 32 records ahead: the threads compress while the stage makes the next ones
        super().__init__(max_pending=32, overlap=overlap, workers=2)
        _check_compression(compression)
        self.temp, self.totals, self.compression = temp, dict(totals), compression

    def setup(self) -> None:
        super().setup()
        self._fh: Any = None
        self._lock = threading.Lock()

    def start_bundle(self) -> None:
        super().start_bundle()
        self._close()

    def process(self, element: tuple[str, bytes], timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        yield from self._submit(None, timestamp, window, self._spill, *element)

    def _spill(self, split: str, record: bytes
               ) -> tuple[tuple[str, int], tuple[str, int, int]]:
        """On a spill thread: frame the record, then append it under the lock.

        The two threads append in the order they finish; each address says where its
        frame lies, and the writers sort the frames, so the order does not matter.
        """
        data = frame(record, self.compression)
        with self._lock:
            if self._fh is None:
                self._path = fsio.join(self.temp, f"spill-{uuid.uuid4().hex}.bin")
                self._fh = FileSystems.create(self._path, mime_type="application/octet-stream",
                                              compression_type=CompressionTypes.UNCOMPRESSED)
                self._offset = 0
            try:
                self._fh.write(data)
            except OSError as exc:
                raise OutputError(f"Spilling a record to {self._path!r} failed: {exc}") from exc
            address = (self._path, self._offset, len(data))
            self._offset += len(data)
        return (split, shard_of(record, self.totals[split])), address

    def _outputs(self, context: Any, future: Future) -> Iterable[Any]:
        yield future.result()

    def finish_bundle(self):
        yield from super().finish_bundle()  # every frame is written once this returns
        self._close()

    def teardown(self) -> None:
        super().teardown()
        self._close()

    def _close(self) -> None:
        # under the lock: a thread of an abandoned bundle may still be appending
        with getattr(self, "_lock", None) or contextlib.nullcontext():
            fh, self._fh = getattr(self, "_fh", None), None
            if fh is not None:
                fh.close()


def read_spilled(addresses: Iterable[tuple[str, int, int]]) -> list[bytes]:
    """The frames at ``(spill file, offset, length)`` addresses, each file opened once."""
    by_file: dict[str, list[tuple[int, int]]] = {}
    for path, offset, length in addresses:
        by_file.setdefault(path, []).append((offset, length))
    records = []
    for path, spans in by_file.items():
        with FileSystems.open(path, mime_type="application/octet-stream",
                              compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            for offset, length in sorted(spans):
                fh.seek(offset)
                data = fh.read(length)
                if len(data) != length:
                    raise OutputError(
                        f"Spill file {path!r} holds {len(data)} bytes at {offset}, not the "
                        f"{length} of its record: it was truncated; re-run the export.")
                records.append(data)
    return records


class _WriteShard(InBackground):
    """``((split, index), addresses)`` -> the shard file: its frames, sorted by their bytes.

    Shards are written on two threads (reading the spilled frames back, sorting and
    concatenating them, the rename; file I/O releases the GIL), one shard each; at most two
    shards' frames are held.
    """

    thread_name = "shard-write"

    def __init__(self, out: str, temp: str, compression: str, totals: Mapping[str, int],
                 overlap: bool = True) -> None:
        super().__init__(max_pending=1, overlap=overlap, workers=2)
        self.out, self.temp, self.compression = out, temp, compression
        self.totals = dict(totals)

    def process(self, element: tuple[tuple[str, int], Iterable[tuple[str, int, int]]],
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        (split, index), addresses = element
        yield from self._submit(None, timestamp, window, self._write, split, index,
                                list(addresses))

    def _write(self, split: str, index: int, addresses: list[tuple[str, int, int]]) -> str:
        frames = read_spilled(addresses)
        name = shard_name(split, index, self.totals[split], self.compression)
        final = fsio.join(self.out, name)
        temp = fsio.join(self.temp, f"{uuid.uuid4().hex[:12]}-{name.rsplit('/', 1)[-1]}")
        with FileSystems.create(temp, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            write_frames(fh, sorted(frames))
        FileSystems.rename([temp], [final])
        return final

    def _outputs(self, context: Any, future: Future) -> Iterable[str]:
        yield future.result()


class WriteShards(beam.PTransform):
    """``(split, record)`` -> shards under ``out/<split>/``; outputs their full paths.

    Args:
        out: Output folder, local or ``gs://``.
        compression: ``gzip`` or ``none``.
        totals: Shards per split (see :func:`shard_count`); every split named gets its
            folder and, once :func:`finish_shards` has run, all its shard files (empty
            ones where no record hashed to them).
    """

    def __init__(self, out: str, compression: str, totals: Mapping[str, int]) -> None:
        super().__init__()
        _check_compression(compression)
        bad = {s: n for s, n in totals.items() if n < 1}
        if bad:
            raise ValueError(f"every split needs at least one shard, got {bad}")
        self.out, self.compression, self.totals = out, compression, dict(totals)
        self.temp = fsio.join(out, TEMP_PREFIX + uuid.uuid4().hex[:12])

    def expand(self, pcoll):
        for split in self.totals:  # on the launcher; object stores need no folders
            fsio.makedirs(fsio.join(self.out, split))
        fsio.makedirs(self.temp)
        totals = self.totals
        overlap = keeps_finish_bundle_outputs(pcoll.pipeline.options)
        return (pcoll
                | "Spill" >> beam.ParDo(_SpillRecords(self.temp, totals, self.compression,
                                                      overlap))
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteShard(self.out, self.temp, self.compression,
                                                    totals, overlap)))


def finish_shards(out: str, files: Iterable[str], temp: str,
                  totals: Mapping[str, int] | None = None, compression: str = "gzip"
                  ) -> list[str]:
    """Check that every shard the write reported exists, add empty ones, drop the temp folder.

    In a split that has records, a shard no record hashed to is written empty, so its
    files are always all of ``0..N-1`` of ``N``; a split without records has no files.
    A reported shard that is missing (a failed rename) is an error: the manifest must
    never list such a file.

    Raises:
        OutputError: naming the missing shards.
    """
    files = sorted(set(files))
    missing = [f for f in files if not fsio.exists(f)]
    if missing:
        raise OutputError(
            f"{len(missing)} shard(s) reported written are missing, e.g. {missing[:3]}; the "
            f"output {out!r} is incomplete. Check that it is writable and re-run the export.")
    present = {split_of(out, f) for f in files}
    for split, total in (totals or {}).items():
        if split not in present:
            continue
        for index in range(total):
            path = fsio.join(out, shard_name(split, index, total, compression))
            if path not in files:
                with FileSystems.create(path, mime_type="application/octet-stream",
                                        compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                    write_records(fh, [], compression)
                files.append(path)
    fsio.remove_tree(temp)
    return sorted(files)


def _new_summary(bands: tuple[str, ...]) -> dict:
    from pipelines.geo.patches import BandStats

    return {"counts": {}, "stats": BandStats(bands), "failed": []}


def summary_item(counts: dict[str, int] | None = None, stats: Any = None,
                 failed: dict | None = None) -> dict:
    """One element for :class:`Summary`: counts, a ``BandStats`` and/or a failure."""
    return {"counts": counts or {}, "stats": stats, "failed": [failed] if failed else []}


class Summary(beam.CombineFn):
    """Counts (summed), band statistics (merged) and failure records (listed)."""

    def __init__(self, bands: tuple[str, ...]) -> None:
        self.bands = tuple(bands)

    def create_accumulator(self) -> dict:
        return _new_summary(self.bands)

    def add_input(self, acc: dict, item: dict) -> dict:
        return _merge(acc, item)

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out = _new_summary(self.bands)
        for a in accs:
            _merge(out, a)
        return out

    def extract_output(self, acc: dict) -> dict:
        return {"counts": acc["counts"], "stats": acc["stats"].summary(),
                "failed": sorted(acc["failed"], key=lambda f: json.dumps(f, sort_keys=True))}


def _merge(acc: dict, item: dict) -> dict:
    counts = acc["counts"]
    for k, v in item["counts"].items():
        counts[k] = counts.get(k, 0) + int(v)
    if item["stats"] is not None:
        acc["stats"].merge(item["stats"])
    acc["failed"].extend(item["failed"])
    return acc


class GatherOne(beam.PTransform):
    """``{name: PCollection of one element}`` -> one dict ``{name: element}``.

    None when a part is empty. A join rather than side inputs, so the step that reads the
    dict comes after every step that made its parts on any runner (Beam 2.77's Dask
    runner computes only the pipeline's last step and what it reads; a side input it
    evaluates again, apart).
    """

    def expand(self, parts: dict[str, beam.PCollection]) -> beam.PCollection:
        names = sorted(parts)
        keyed = [parts[n] | f"Key_{n}" >> beam.Map(_keyed, name=n) for n in names]
        return (keyed
                | "Flatten" >> beam.Flatten()
                | "Group" >> beam.GroupByKey()
                | "Parts" >> beam.FlatMap(_parts, names=names))


def _keyed(value: Any, name: str) -> tuple[None, tuple[str, Any]]:
    return None, (name, value)


def _parts(item: tuple[None, Iterable[tuple[str, Any]]], names: list[str]) -> Iterable[dict]:
    parts = dict(item[1])
    if set(parts) == set(names):
        yield parts


def summarise(bands: tuple[str, ...]) -> Any:
    """``CombineGlobally`` of :class:`Summary` (every run has at least one element)."""
    return beam.CombineGlobally(Summary(bands)).without_defaults()

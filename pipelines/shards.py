"""TFRecord shards per split, written deterministically, and the per-run summary.

Export and the Landslide4Sense importer both turn a PCollection of ``(split, record)``
into ``<out>/<split>/<split>-SSSSS-of-NNNNN.tfrecord[.gz]`` and a manifest. Both use:

* :class:`WriteShards`: every record goes to the shard its content hashes to, a shard's
  records are written sorted by their bytes, then the file is renamed into place. The
  same records therefore give the same files, byte for byte, whatever order a runner
  delivers them in and however often a bundle is retried; a trainer reading them with a
  fixed seed sees the same sequence on every run. The records themselves never cross the
  runner's shuffle: where they are made, each bundle appends them to a spill file of its
  own under the output's temporary folder, and only their addresses (file, offset,
  length) are grouped by shard; the writer of a shard reads its records back.
* :func:`write_records`: TFRecord framing (length, masked CRC32C, data, masked CRC32C),
  gzipped with ISA-L when installed (Beam's own gzip compresses with zlib level 6, several
  times slower for ~4 % fewer bytes); ``tf.data`` reads the files.
* :class:`Summary`: one combiner for counts, band statistics and failures, so the
  manifest waits on one small aggregate rather than three.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import struct
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
    (``shards/train/val/val-00000-of-00001.tfrecord``) holds a ``val`` shard.
    """
    root = out.replace("\\", "/").rstrip("/") + "/"
    rel = path.replace("\\", "/")
    if not rel.startswith(root):
        return None
    first = rel[len(root):].split("/", 1)[0]
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
    """The shard a record belongs to: a hash of its bytes, so a function of content only."""
    return int.from_bytes(hashlib.blake2b(record, digest_size=8).digest(), "big") % total


def gzip_writer(fh: Any) -> Any:
    """A gzip stream over ``fh`` (closing it writes the trailer, not closing ``fh``).

    No file name or time in the header: equal records give equal bytes.

    ISA-L's igzip when installed (``isal``: same gzip format, several times the speed of
    zlib level 1 on float32 imagery for 2% larger output), else the standard library's.
    """
    try:
        from isal import igzip
    except ImportError:  # no wheel for this platform
        return gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=1, mtime=0)
    return igzip.IGzipFile(filename="", fileobj=fh, mode="wb", compresslevel=GZIP_LEVEL,
                            mtime=0)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def write_records(fh: BinaryIO, records: Iterable[bytes], compression: str) -> None:
    """Write ``records`` to ``fh`` as TFRecords, gzipped or not (``fh`` stays open).

    Raises:
        ValueError: an unknown compression.
        OutputError: the file cannot be written (e.g. the disk is full).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}")
    out = gzip_writer(fh) if compression == "gzip" else fh
    try:
        for record in records:
            length = struct.pack("<Q", len(record))
            out.write(length + _masked_crc(length))
            out.write(record)
            out.write(_masked_crc(record))
        if out is not fh:
            out.close()  # writes the gzip trailer; leaves fh open
    except OSError as exc:
        raise OutputError(f"Writing a shard failed: {exc}") from exc


class _SpillRecords(beam.DoFn):
    """``(split, record)`` -> ``((split, shard), (spill file, offset, length))``.

    Each bundle appends its records to one spill file of its own under ``temp`` (closed in
    ``finish_bundle``, before the bundle's outputs are committed, so the writers find it
    whole) and outputs where each record lies: grouping the addresses by shard moves a few
    bytes per record instead of the record. A retried bundle writes a new file; the failed
    attempt's outputs are dropped with it.
    """

    def __init__(self, temp: str, totals: Mapping[str, int]) -> None:
        self.temp, self.totals = temp, dict(totals)

    def setup(self) -> None:
        self._fh: Any = None

    def start_bundle(self) -> None:
        self._close()

    def process(self, element: tuple[str, bytes]
                ) -> Iterable[tuple[tuple[str, int], tuple[str, int, int]]]:
        split, record = element
        if self._fh is None:
            self._path = fsio.join(self.temp, f"spill-{uuid.uuid4().hex}.bin")
            self._fh = FileSystems.create(self._path, mime_type="application/octet-stream",
                                          compression_type=CompressionTypes.UNCOMPRESSED)
            self._offset = 0
        try:
            self._fh.write(record)
        except OSError as exc:
            raise OutputError(f"Spilling a record to {self._path!r} failed: {exc}") from exc
        yield ((split, shard_of(record, self.totals[split])),
               (self._path, self._offset, len(record)))
        self._offset += len(record)

    def finish_bundle(self) -> None:
        self._close()

    def teardown(self) -> None:
        self._close()

    def _close(self) -> None:
        fh, self._fh = getattr(self, "_fh", None), None
        if fh is not None:
            fh.close()


def read_spilled(addresses: Iterable[tuple[str, int, int]]) -> list[bytes]:
    """The records at ``(spill file, offset, length)`` addresses, each file opened once."""
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
    """``((split, index), addresses)`` -> the shard file, records sorted by their bytes.

    Shards are written on two threads (reading the spilled records back, sorting them,
    gzip and the rename; ISA-L and file I/O release the GIL), one shard each, so a
    worker's two cores compress two shards at once; at most two shards' records are held.
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
        records = read_spilled(addresses)
        name = shard_name(split, index, self.totals[split], self.compression)
        final = fsio.join(self.out, name)
        temp = fsio.join(self.temp, f"{uuid.uuid4().hex[:12]}-{name.rsplit('/', 1)[-1]}")
        with FileSystems.create(temp, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            write_records(fh, sorted(records), self.compression)
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
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got "
                             f"{compression!r}")
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
                | "Spill" >> beam.ParDo(_SpillRecords(self.temp, totals))
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

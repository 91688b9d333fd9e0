"""The shard writer: TFRecord framing + gzip readable by tf.data; deterministic shards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import OutputError
from pipelines.shards import (
    COMPRESSIONS,
    WriteShards,
    files_by_split,
    finish_shards,
    frame,
    shard_name,
    split_of,
    write_records,
)


def _write(path, records, compression):
    with open(path, "wb") as fh:
        write_records(fh, records, compression)


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_tf_data_reads_what_the_sink_writes(tmp_path, compression):
    import tensorflow as tf

    records = [bytes([i % 251]) * (1000 + 7919 * i) for i in range(40)]  # up to ~300 KB
    path = tmp_path / f"x{COMPRESSIONS[compression]}"
    _write(path, records, compression)
    ds = tf.data.TFRecordDataset(str(path), compression_type="GZIP" if compression == "gzip"
                                 else "")
    assert [r.numpy() for r in ds] == records
    if compression == "gzip":
        assert path.stat().st_size < sum(map(len, records)) / 10  # repetitive bytes shrink


class _FailingFile(io.RawIOBase):
    def __init__(self, limit: int) -> None:
        self.left = limit

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.left:
            raise OSError(28, "No space left on device")
        self.left -= len(b)
        return len(b)


def test_a_failing_write_is_an_output_error():
    rng = np.random.default_rng(0)
    # random bytes do not compress: the "disk" fills up
    with pytest.raises(OutputError, match="No space left"):
        write_records(_FailingFile(limit=100), [rng.bytes(16384) for _ in range(200)], "gzip")


def test_finish_shards_refuses_a_reported_but_missing_shard(tmp_path):
    temp = tmp_path / ".shards-tmp-x"
    temp.mkdir()
    (tmp_path / "train").mkdir()
    ok = tmp_path / shard_name("train", 0, 2, "gzip")
    ok.write_bytes(b"")
    missing = tmp_path / shard_name("train", 1, 2, "gzip")
    with pytest.raises(OutputError, match="1 shard"):
        finish_shards(str(tmp_path), [str(ok), str(missing)], str(temp))
    assert finish_shards(str(tmp_path), [str(ok)], str(temp)) == [str(ok)]
    assert not temp.exists()


def test_splits_come_from_the_folder_below_the_output_even_when_it_is_named_train(tmp_path):
    out = tmp_path / "shards" / "train"  # the demo's training export folder
    (out / "train").mkdir(parents=True)
    (out / "val").mkdir()
    val = out / shard_name("val", 0, 1, "gzip")
    train = [out / shard_name("train", i, 2, "gzip") for i in range(2)]
    for f in (val, *train):
        f.write_bytes(b"")
    assert split_of(str(out), str(val)) == "val"  # its path holds /train/ too
    assert split_of(str(out), str(train[0])) == "train"
    assert split_of(str(out), str(tmp_path / "elsewhere" / "val-00000-of-00001")) is None
    assert files_by_split(str(out), map(str, (val, *reversed(train)))) == {
        "train": [str(f) for f in train], "val": [str(val)], "test": []}
    # finish_shards does not fill up a split that only the folder's name mentions
    temp = tmp_path / ".shards-tmp-y"
    temp.mkdir()
    assert finish_shards(str(out), [str(val)], str(temp), {"train": 2, "val": 1}) == [str(val)]


def test_split_of_compares_local_paths_as_fsio_join_writes_them():
    """``--out ./shards`` (or ``shards/``, ``.``): the writers' paths come from fsio.join,
    which normalises them; URLs are compared as they are."""
    from pipelines import fsio

    name = shard_name("val", 0, 1, "gzip")
    for out in ("./shards", "shards/", "./shards//", "x/../shards", "."):
        assert split_of(out, fsio.join(out, name)) == "val", out
        assert files_by_split(out, [fsio.join(out, name)])["val"] == [fsio.join(out, name)]
    assert split_of("./shards", "other/val/val-00000-of-00001.tfrecord.gz") is None
    assert split_of("./shards", "../shards/val/val-00000-of-00001.tfrecord.gz") is None
    assert split_of("gs://b/shards/", "gs://b/shards/val/v.tfrecord.gz") == "val"
    assert split_of("gs://b/shards", "gs://b/shards2/val/v.tfrecord.gz") is None


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compression"):
        write_records(io.BytesIO(), [], "zstd")
    with pytest.raises(ValueError, match="compression"):
        WriteShards(str(tmp_path), "zstd", {"train": 1})


def test_without_isal_the_standard_gzip_writes_the_same_records(tmp_path, monkeypatch):
    import sys

    import tensorflow as tf

    monkeypatch.setitem(sys.modules, "isal", None)  # "import isal" now raises ImportError
    records = [bytes([i]) * 5000 for i in range(10)]
    path = tmp_path / "x.tfrecord.gz"
    _write(path, records, "gzip")
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), "GZIP")] == records


def _run_write(out, elements, totals, compression="gzip"):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, is_not_empty

    write = WriteShards(str(out), compression, totals)
    with beam.Pipeline() as p:
        files = p | beam.Create(elements) | write
        assert_that(files, is_not_empty())
    reported = [str(f) for f in sorted((out / "train").glob("*"))] + \
        [str(f) for f in sorted((out / "val").glob("*"))]
    return finish_shards(str(out), reported, write.temp, totals, compression)


def test_the_same_records_in_any_order_give_the_same_files(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    records = [("train", rng.bytes(int(rng.integers(10, 3000)))) for _ in range(60)]
    records += [("val", rng.bytes(50)) for _ in range(5)]
    totals = {"train": 3, "val": 4, "test": 2}
    files_a = _run_write(tmp_path / "a", records, totals)
    files_b = _run_write(tmp_path / "b", list(reversed(records)), totals)
    names = [f.split("/a/")[1] for f in files_a]
    # every shard of a split with records exists (some empty), a split without has none
    assert names == [shard_name("train", i, 3, "gzip") for i in range(3)] + \
        [shard_name("val", i, 4, "gzip") for i in range(4)]
    assert [f.split("/b/")[1] for f in files_b] == names
    for fa, fb in zip(files_a, files_b):
        assert Path(fa).read_bytes() == Path(fb).read_bytes()
    read = [r.numpy() for f in files_a for r in tf.data.TFRecordDataset(f, "GZIP")]
    assert sorted(read) == sorted(r for _, r in records)
    train = [[r.numpy() for r in tf.data.TFRecordDataset(f, "GZIP")] for f in files_a[:3]]
    # within a shard, records lie in the order of their frames' bytes (content only)
    assert all(shard == sorted(shard, key=lambda r: frame(r, "gzip")) for shard in train)
    assert not list(tmp_path.glob("a/.shards-tmp-*"))


def _spill_bundles(spill, bundles):
    """Run ``_SpillRecords`` by hand over ``bundles``: its outputs' values."""
    from apache_beam.transforms.window import GlobalWindow

    spill.setup()
    outputs = []
    for bundle in bundles:
        spill.start_bundle()
        for element in bundle:
            outputs += list(spill.process(element, 0, GlobalWindow()))
        outputs += list(spill.finish_bundle())
    spill.teardown()
    return [o.value for o in outputs]


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_the_grouping_carries_addresses_and_the_shards_hold_the_records(tmp_path, compression):
    """Records are framed and spilled where they are made; only (file, offset, length) is
    grouped, and the shards are the frames concatenated."""
    import tensorflow as tf

    from pipelines.shards import _SpillRecords, read_spilled, shard_of

    rng = np.random.default_rng(2)
    records = [("train", rng.bytes(int(rng.integers(1000, 200_000)))) for _ in range(30)]
    totals = {"train": 3}
    temp = tmp_path / "spill"
    temp.mkdir()
    # two bundles: two spill files; two threads frame and append them
    outputs = _spill_bundles(_SpillRecords(str(temp), totals, compression),
                             (records[:20], records[20:]))
    assert len(outputs) == len(records)
    assert len({path for _, (path, _, _) in outputs}) == 2
    assert len(list(temp.iterdir())) == 2
    by_shard: dict[int, list] = {}
    for (split, index), address in outputs:
        assert split == "train" and address[0].startswith(str(temp))
        assert address[2] < 200_100  # an address, not the record
        by_shard.setdefault(index, []).append(address)
    # every frame lies where its address says, in the shard its record's bytes hash to
    for index in range(3):
        want = sorted(frame(r, compression) for _, r in records if shard_of(r, 3) == index)
        assert sorted(read_spilled(by_shard.get(index, []))) == want
    # and the whole writer gives shards that tf.data reads back as the same records
    files = _run_write(tmp_path / "out", records, totals, compression)
    kind = "GZIP" if compression == "gzip" else ""
    read = sorted(r.numpy() for f in files for r in tf.data.TFRecordDataset(f, kind))
    assert read == sorted(r for _, r in records)
    assert not list((tmp_path / "out").glob(".shards-tmp-*"))  # spill files removed


def test_a_gzip_shard_is_one_member_per_record_readable_as_one_stream(tmp_path):
    import gzip
    import zlib

    records = [bytes([i]) * (100 + 1000 * i) for i in range(5)]
    path = tmp_path / "x.tfrecord.gz"
    _write(path, records, "gzip")
    data = path.read_bytes()
    assert gzip.decompress(data) == b"".join(frame(r, "none") for r in records)
    members, rest = 0, data
    while rest:  # each member ends where zlib stops; the next starts right after
        d = zlib.decompressobj(wbits=31)
        assert d.decompress(rest) == frame(records[members], "none")
        rest, members = d.unused_data, members + 1
    assert members == len(records)
    # an empty shard is still gzip: one empty member
    _write(path, [], "gzip")
    assert gzip.decompress(path.read_bytes()) == b""


def test_a_spill_that_cannot_be_written_fails_the_bundle_naming_the_path(tmp_path):
    """The error on the spill thread reaches the bundle: no address of an unwritten frame."""
    from pipelines.shards import _SpillRecords

    blocker = tmp_path / "afile"  # a file where the temporary folder should be
    blocker.write_bytes(b"")
    with pytest.raises(OSError, match="afile"):
        _spill_bundles(_SpillRecords(str(blocker), {"train": 1}, "none"),
                       ([("train", b"x" * 100)],))


def test_a_truncated_spill_file_is_an_output_error_naming_it(tmp_path):
    from pipelines.shards import read_spilled

    path = tmp_path / "spill-x.bin"
    path.write_bytes(b"abcdefghij")
    assert read_spilled([(str(path), 6, 4), (str(path), 0, 3)]) == [b"abc", b"ghij"]
    with pytest.raises(OutputError, match=r"spill-x\.bin.*truncated"):
        read_spilled([(str(path), 8, 5)])

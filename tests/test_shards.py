"""The shard writer: TFRecord framing + gzip on a background thread, readable by tf.data."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipelines.errors import OutputError
from pipelines.shards import COMPRESSIONS, finish_shards, shard_name, tfrecord_sink


def _write(path, records, compression):
    sink = tfrecord_sink(compression)
    with open(path, "wb") as fh:
        sink.open(fh)
        for r in records:
            sink.write(("train", r))
        sink.flush()


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


def test_a_failing_write_on_the_compressor_thread_reaches_the_caller():
    rng = np.random.default_rng(0)
    sink = tfrecord_sink("gzip")
    sink.open(_FailingFile(limit=100))
    with pytest.raises(OutputError, match="No space left"):
        for _ in range(200):  # random bytes do not compress: the "disk" fills up
            sink.write(("train", rng.bytes(16384)))
        sink.flush()


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


def test_unknown_compression_is_refused():
    with pytest.raises(ValueError, match="compression"):
        tfrecord_sink("zstd")


def test_without_isal_the_standard_gzip_writes_the_same_records(tmp_path, monkeypatch):
    import sys

    import tensorflow as tf

    monkeypatch.setitem(sys.modules, "isal", None)  # "import isal" now raises ImportError
    records = [bytes([i]) * 5000 for i in range(10)]
    path = tmp_path / "x.tfrecord.gz"
    _write(path, records, "gzip")
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), "GZIP")] == records

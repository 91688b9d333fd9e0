"""The process's read cache: decoded reads shared by sources, copies, bounds, stale files."""

from __future__ import annotations

import collections
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from pipelines import cli
from pipelines.geo.grid import PixelGrid
from pipelines.sources.geotiff import GeoTIFFSource
from pipelines.sources.geotiff.cache import READS, ReadCache
from tests.geo.test_stack import _export_args
from tests.sources.test_source_geotiff import S2, X0, Y0, grid_of, s2_dn, write_tif


# ----------------------------------------------------------------------------- the cache
def test_results_are_kept_and_every_caller_gets_its_own_copy():
    cache, calls = ReadCache(10_000), []

    def read() -> np.ndarray:
        calls.append(1)
        return np.arange(10, dtype=np.float32)

    first = cache.get_or_read("k", read)
    first[:] = -1  # the caller's own array
    second = cache.get_or_read("k", read)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(second, np.arange(10))
    second[:] = 7
    np.testing.assert_array_equal(cache.get_or_read("k", read), np.arange(10))
    assert len(calls) == 1


def counting_reader(reads: collections.Counter, size: int):
    """``reader(key)``: a read of ``size`` float32 zeros that counts itself in ``reads``."""
    def reader(key: str):
        def read() -> np.ndarray:
            reads[key] += 1
            return np.zeros(size, np.float32)
        return read
    return reader


def test_least_recently_used_results_leave_first_within_the_byte_bound():
    cache = ReadCache(100)  # room for two 40-byte results
    reads: collections.Counter[str] = collections.Counter()
    reader = counting_reader(reads, 10)

    for key in ("a", "b"):
        cache.get_or_read(key, reader(key))
    cache.get_or_read("a", reader("a"))  # "a" used last: "b" is the oldest
    cache.get_or_read("c", reader("c"))
    assert len(cache) == 2 and cache.nbytes == 80
    cache.get_or_read("a", reader("a"))
    cache.get_or_read("b", reader("b"))
    assert reads == {"a": 1, "b": 2, "c": 1}
    # a result larger than the bound is returned but not kept; no key, no caching
    big = cache.get_or_read("big", lambda: np.zeros(100, np.float32))
    assert big.size == 100 and "big" not in cache._items and cache.nbytes <= 100
    for _ in range(2):
        cache.get_or_read(None, reader("none"))
    off = ReadCache(0)
    for _ in range(2):
        off.get_or_read("k", reader("off"))
    assert reads["none"] == 2 and reads["off"] == 2 and len(off) == 0


def test_reads_of_grids_older_than_the_last_few_are_dropped():
    cache = ReadCache(10**9, max_grids=2)
    reads: collections.Counter[str] = collections.Counter()
    read = counting_reader(reads, 1000)

    for grid in ("g1", "g2"):
        for f in ("a", "b"):
            cache.get_or_read((f, grid), read(f + grid), grid)
    cache.get_or_read(("a", "g1"), read("ag1"), "g1")  # a hit makes g1 the newest grid
    cache.get_or_read(("a", "g3"), read("ag3"), "g3")  # g2 is the oldest: its reads go
    assert len(cache) == 3 and cache.nbytes == 3 * 4000
    for f, grid in (("a", "g1"), ("b", "g1"), ("a", "g3"), ("a", "g2")):
        cache.get_or_read((f, grid), read(f + grid), grid)
    assert reads == {"ag1": 1, "bg1": 1, "ag2": 2, "bg2": 1, "ag3": 1}


def test_the_last_source_closed_empties_the_cache():
    cache = ReadCache(1000)
    cache.session_started()
    cache.session_started()
    cache.get_or_read("k", lambda: np.ones(4, np.float32))
    cache.session_ended()
    assert len(cache) == 1  # one source still open
    cache.session_ended()
    assert len(cache) == 0 and cache.nbytes == 0
    cache.session_ended()  # more closes than opens stay harmless
    assert cache._sessions == 0


def test_a_bad_bound_in_the_environment_is_refused(monkeypatch):
    from pipelines.sources.geotiff import cache as module

    monkeypatch.setenv(module.ENV, "lots")
    with pytest.raises(ValueError, match="LANDSLIDES_READ_CACHE_MB.*'lots'"):
        module._bound_from_env()
    monkeypatch.setenv(module.ENV, "-1")
    with pytest.raises(ValueError, match=">= 0"):
        module._bound_from_env()
    monkeypatch.setenv(module.ENV, "0.5")
    assert module._bound_from_env() == 2**19


# ----------------------------------------------------------------------------- sources
@pytest.fixture
def decodes(monkeypatch) -> Iterator[collections.Counter]:
    """``GeoTIFFSource._warp`` calls (real decodes) by file name, with the cache on."""
    counter: collections.Counter[str] = collections.Counter()
    real = GeoTIFFSource._warp

    def counting(self, info, grid, bands, scales):
        counter[Path(info.path).name] += 1
        return real(self, info, grid, bands, scales)

    monkeypatch.setattr(GeoTIFFSource, "_warp", counting)
    monkeypatch.setattr(READS, "max_bytes", 64 * 2**20)
    # sources other tests read without closing them count as open: start from none
    monkeypatch.setattr(READS, "_sessions", 0)
    READS.clear()
    yield counter
    READS.clear()


def test_sources_of_one_file_share_its_decoded_reads(tmp_path, rng, decodes):
    dn = s2_dn(rng)
    path = write_tif(tmp_path / "s2.tif", dn, from_origin(X0, Y0, 10, 10), descriptions=S2)
    grid = grid_of(path)
    with GeoTIFFSource(path) as a, GeoTIFFSource(path) as b:
        ra = a.read(grid, S2)
        ra.data[:] = -1  # the first reader changes its own copy
        rb = b.read(grid, S2)
        np.testing.assert_allclose(rb.data, dn.astype(np.float32) * np.float32(1e-4))
        assert decodes["s2.tif"] == 1  # b read the header only, decoded no pixel
        # another band order, another grid or another setting is another read
        b.read(grid, S2[::-1])
        b.read(PixelGrid(grid.crs, grid.transform, grid.width - 1, grid.height), S2)
        with GeoTIFFSource(path, resampling="nearest") as c:
            c.read(grid, S2)
        assert decodes["s2.tif"] == 4
    assert len(READS) == 0  # every source closed


def test_a_file_rewritten_at_the_same_path_is_read_again(tmp_path, rng, decodes):
    old, new = s2_dn(rng), s2_dn(rng)
    path = write_tif(tmp_path / "s2.tif", old, from_origin(X0, Y0, 10, 10), descriptions=S2)
    grid = grid_of(path)
    with GeoTIFFSource(path) as first:
        first.read(grid, S2)
        stamp = os.stat(path)
        time.sleep(0.05)  # file times tick in milliseconds: a rewrite within one tick, of
        # the same size and inode, would keep the stamp (the cache's documented limit)
        write_tif(tmp_path / "s2.tif", new, from_origin(X0, Y0, 10, 10), descriptions=S2)
        assert os.stat(path).st_size == stamp.st_size  # same size: only the stamp tells
        with GeoTIFFSource(path) as second:
            got = second.read(grid, S2)
    np.testing.assert_allclose(got.data, new.astype(np.float32) * np.float32(1e-4))
    assert decodes["s2.tif"] == 2


def _shards_digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.tfrecord*"))}


def test_a_stacked_export_of_two_years_decodes_each_date_once_per_chunk(
        tiny_world, tmp_path, decodes, monkeypatch):
    """2015 and 2016 with ``prev=-1y`` and ``pre`` = 2014: per chunk the six date reads of
    the two periods are three files; the shards are those of an export without cache."""
    args = ["--inventory", str(tiny_world["dir"] / "inventory_{year}.gpkg"),
            "--start", "2015-01-01", "--end", "2015-12-31", "--years", "2015,2016",
            "--bands", "b4,b8,slope", "--reference", "prev=-1y",
            "--reference", "pre=2014-01-01/2014-12-31",
            "--change", "ndvi", "--max-nodata", "0.5"]
    # room for one chunk's dates only (four 64 x 64 px reads of two bands): exporting
    # chunk by chunk, every period of a chunk in a row, is what lets the years share them
    monkeypatch.setattr(READS, "max_bytes", 4 * 64 * 64 * 2 * 4)
    assert cli.main(_export_args(tiny_world, tmp_path / "cached", *args)) == 0
    cached = dict(decodes)
    s2 = {k: v for k, v in cached.items() if k.startswith("s2_")}
    assert set(s2) == {"s2_2014.tif", "s2_2015.tif", "s2_2016.tif"}
    chunks = s2["s2_2016.tif"]
    assert chunks > 1 and set(s2.values()) == {chunks}  # each date once per chunk
    assert cached["dem.tif"] == chunks  # the DEM once per chunk, not once per year
    decodes.clear()
    monkeypatch.setattr(READS, "max_bytes", 0)
    assert cli.main(_export_args(tiny_world, tmp_path / "plain", *args)) == 0
    assert decodes["s2_2015.tif"] == 2 * chunks and decodes["s2_2014.tif"] == 3 * chunks
    assert _shards_digest(tmp_path / "cached") == _shards_digest(tmp_path / "plain")
    assert _shards_digest(tmp_path / "cached")

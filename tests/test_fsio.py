"""fsio against local folders and the real Cloud Storage emulator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rio_cogeo.cogeo import cog_validate

from pipelines import fsio
from pipelines.errors import DataNotFoundError, OutputError
from pipelines.geo.cog import read_raster, write_cog
from pipelines.geo.grid import PixelGrid

GRID = PixelGrid("EPSG:32645", (10.0, 0.0, 320000.0, 0.0, -10.0, 3130000.0), 300, 200)


def test_local_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "sub" / "x.json"
    fsio.write_json(p, {"a": 1})
    fsio.write_json(p, {"a": 2})
    assert fsio.read_json(p) == {"a": 2}
    assert os.listdir(p.parent) == ["x.json"]


def test_failed_staged_output_keeps_previous_file(tmp_path):
    dest = tmp_path / "out.bin"
    fsio.write_bytes(dest, b"old")
    with pytest.raises(RuntimeError), fsio.staged_output(str(dest)) as local:
        with open(local, "wb") as f:
            f.write(b"half")
        raise RuntimeError("writer died")
    assert dest.read_bytes() == b"old"


def test_missing_and_unwritable(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope"):
        fsio.read_bytes(tmp_path / "nope")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permission bits are not enforced")
        with pytest.raises(OutputError, match="ro"):
            fsio.write_bytes(ro / "f", b"x")
    finally:
        ro.chmod(0o700)


def test_gcs_roundtrip_through_beam_filesystems(gcs_bucket):
    url = fsio.join(gcs_bucket, "a", "b.json")
    assert not fsio.exists(url)
    fsio.write_json(url, {"k": [1, 2, 3]})
    assert fsio.exists(url)
    assert fsio.read_json(url) == {"k": [1, 2, 3]}
    fsio.write_bytes(fsio.join(gcs_bucket, "a", "c.bin"), b"xyz")
    assert fsio.glob(fsio.join(gcs_bucket, "a", "*")) == [url, fsio.join(gcs_bucket, "a", "c.bin")]
    with fsio.local_copy(url) as local, open(local) as f:
        assert f.read().startswith("{")


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_cog_written_valid_and_georeferenced(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    rng = np.random.default_rng(0)
    data = rng.random((2, GRID.height, GRID.width), dtype=np.float32)
    data[:, :5, :5] = -9999
    url = fsio.join(base, "cog.tif")
    write_cog(url, data, GRID, nodata=-9999, band_names=["p", "q"])
    with fsio.local_copy(url) as local:
        valid, errors, _ = cog_validate(local)
        assert valid, errors
        import rasterio

        with rasterio.open(local) as src:
            assert src.descriptions == ("p", "q")
            assert src.nodata == -9999
            assert src.crs.to_epsg() == 32645
            assert tuple(src.transform)[:6] == GRID.transform
    back, g = read_raster(url)
    assert g == GRID
    np.testing.assert_array_equal(back, data)


def test_cog_rejects_shape_mismatch(tmp_path):
    from pipelines.errors import InputError

    with pytest.raises(InputError, match="does not fit grid"):
        write_cog(str(tmp_path / "x.tif"), np.zeros((10, 10), np.uint8), GRID)
    assert not (tmp_path / "x.tif").exists()


def test_read_record_treats_missing_corrupt_and_non_objects_as_absent(tmp_path, caplog):
    p = tmp_path / "done" / "k.json"
    assert fsio.read_record(p) is None
    fsio.write_json(p, {"fingerprint": "abc"})
    assert fsio.read_record(p) == {"fingerprint": "abc"}
    p.write_text('{"fingerprint": "ab')  # an interrupted writer
    assert fsio.read_record(p) is None
    p.write_text("[1, 2]")
    assert fsio.read_record(p) is None
    assert caplog.text.count("will be redone") == 2


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_check_writable_leaves_no_probe_and_delete_removes(where, tmp_path, request):
    out = (str(tmp_path / "new" / "folder") if where == "local"
           else f"{request.getfixturevalue('gcs_bucket')}/new/folder")
    fsio.check_writable(out)
    assert not fsio.exists(fsio.join(out, ".write-probe"))
    if where == "local":
        assert os.path.isdir(out)
    f = fsio.join(out, "x.bin")
    fsio.write_bytes(f, b"1")
    fsio.delete(f)
    assert not fsio.exists(f)


def test_check_writable_names_an_output_that_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputError, match="file"):
        fsio.check_writable(str(blocker / "under"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_umask_permissions(tmp_path, umask, mode):
    """Atomic writes give outputs open()'s permissions, not mkstemp's private 0600."""
    old = os.umask(umask)
    try:
        fsio.write_bytes(tmp_path / "a" / "out.json", b"{}")
        with fsio.staged_output(tmp_path / "b.tif") as local:
            Path(local).write_bytes(b"x")
        plain = tmp_path / "plain"
        plain.write_bytes(b"")  # what open() gives under this umask
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "out.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.tif").stat().st_mode & 0o777 == mode
    assert plain.stat().st_mode & 0o777 == mode

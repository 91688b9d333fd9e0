"""fsio against local folders and the real Cloud Storage emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rio_cogeo.cogeo import cog_validate

from pipelines import fsio
from pipelines.errors import DataNotFoundError, InputError, OutputError
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


# --------------------------------------------------------------------------- globs
TREE = ["tiles/2020/a.tif", "tiles/2020/east/b.tif", "tiles/2020/east/deep/c.tif",
        "tiles/top.tif", "tiles/.hidden.tif", "tiles/notes.txt"]


@pytest.mark.parametrize("pattern, expected", [
    ("tiles/**/*.tif", [".hidden.tif", "2020/a.tif", "2020/east/b.tif",
                        "2020/east/deep/c.tif", "top.tif"]),
    ("tiles/**", [".hidden.tif", "2020/a.tif", "2020/east/b.tif", "2020/east/deep/c.tif",
                  "notes.txt", "top.tif"]),
    ("tiles/*", [".hidden.tif", "notes.txt", "top.tif"]),  # files only, no folder
    ("tiles/*/east/*.tif", ["2020/east/b.tif"]),
    ("tiles/20[12]?/*.tif", ["2020/a.tif"]),
])
def test_a_glob_matches_the_same_files_locally_and_in_a_bucket(pattern, expected, tmp_path,
                                                              gcs_bucket):
    for base in (str(tmp_path), gcs_bucket):
        for name in TREE:
            fsio.write_bytes(fsio.join(base, *name.split("/")), b"x")
        got = [p.replace("\\", "/").split("/tiles/", 1)[1]
               for p in fsio.glob(fsio.join(base, *pattern.split("/")))]
        assert got == expected, base


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_glob_escape_matches_only_the_named_folder(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    for name in ("run[1]/a.tif", "run1/b.tif", "run*/c.tif", "runX/d.tif"):
        fsio.write_bytes(fsio.join(base, *name.split("/")), b"x")
    for folder, name in (("run[1]", "a.tif"), ("run*", "c.tif")):
        pattern = fsio.join(fsio.glob_escape(fsio.join(base, folder)), "*")
        assert fsio.glob(pattern) == [fsio.join(base, folder, name)]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_remove_tree_removes_only_a_folder_whose_name_holds_glob_characters(where, tmp_path,
                                                                           request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    for name in ("run[1]/mask/a.tif", "run1/mask/keep.tif", "run[1]x/keep.tif"):
        fsio.write_bytes(fsio.join(base, *name.split("/")), b"x")
    fsio.remove_tree(fsio.join(base, "run[1]"))
    assert fsio.glob(fsio.join(base, "**")) == [fsio.join(base, "run1", "mask", "keep.tif"),
                                                fsio.join(base, "run[1]x", "keep.tif")]


def test_delete_in_a_bucket_deletes_only_the_named_object(gcs_bucket):
    odd, other = fsio.join(gcs_bucket, "dem[1].tif"), fsio.join(gcs_bucket, "dem1.tif")
    fsio.write_bytes(odd, b"x")
    fsio.write_bytes(other, b"y")
    fsio.delete(odd)
    assert fsio.glob(fsio.join(gcs_bucket, "*")) == [other]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_fingerprint_of_a_name_with_glob_characters_follows_its_content(where, tmp_path,
                                                                        request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    path = fsio.join(base, "dem [v2]*?.tif")
    assert fsio.fingerprint(path) is None
    fsio.write_bytes(path, b"old")
    before = fsio.fingerprint(path)
    fsio.write_bytes(path, b"new content")
    after = fsio.fingerprint(path)
    assert before and after and before != after
    assert after.startswith("11:")


# --------------------------------------------------------------------------- bytes as they are
@pytest.mark.parametrize("where", ["local", "gcs"])
def test_compressed_names_are_read_and_written_byte_for_byte(where, tmp_path, request):
    import gzip

    base = str(tmp_path / "out") if where == "local" else request.getfixturevalue("gcs_bucket")
    payload = gzip.compress(b'{"type": "FeatureCollection", "features": []}')
    src = tmp_path / "inv.geojson.gz"
    src.write_bytes(payload)
    for name in ("put.geojson.gz", "x.bz2", "y.zst", "z.deflate"):
        fsio.put_file(src, fsio.join(base, name))
        assert fsio.read_bytes(fsio.join(base, name)) == payload
        with fsio.open_binary(fsio.join(base, name)) as f:
            assert f.read() == payload
    fsio.write_bytes(fsio.join(base, "w.gz"), payload)
    with fsio.local_copy(fsio.join(base, "w.gz")) as local:
        assert Path(local).read_bytes() == payload
    if where == "gcs":  # the object itself holds the bytes given, not a second gzip layer
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="test", credentials=AnonymousCredentials())
        blob = client.bucket(base[len("gs://"):]).blob("put.geojson.gz")
        assert blob.download_as_bytes() == payload


# --------------------------------------------------------------------------- file:// URLs
def test_file_urls_are_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "dir with space" / "x.json"
    url = "file://" + str(target).replace(" ", "%20")
    fsio.write_json(url, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not (tmp_path / "file:").exists()
    assert fsio.exists(url) and fsio.read_json(url) == {"a": 1}
    assert fsio.glob(fsio.join("file://" + str(tmp_path), "*", "*.json")) == [str(target)]
    assert fsio.fingerprint(url) == fsio.fingerprint(target)
    assert fsio.norm("file://localhost/tmp/a") == "/tmp/a"
    with pytest.raises(InputError, match="other-host"):
        fsio.norm("file://other-host/tmp/a")

"""File access for local paths and ``gs://`` URLs, with atomic, idempotent writes.

Local writes go to a temporary file in the destination folder, then ``os.replace``: a
reader never sees a half-written file. ``gs://`` writes are single-object uploads through
Beam's ``FileSystems`` (which honours ``STORAGE_EMULATOR_HOST``), so an object is either
complete or absent. Beam is imported only when a ``gs://`` path is used.

Bytes in are bytes out on both: nothing is compressed or decompressed on the way, whatever
the extension (``.gz`` objects are read and written as they are, as local files are).

``file://`` URLs are local paths (``file:///data/x.tif`` is ``/data/x.tif``).

Glob patterns (:func:`glob`) mean the same locally and on ``gs://``: ``*`` matches any
characters but ``/`` (names that start with a dot included), ``?`` one such character,
``[seq]`` one character of ``seq`` (``[!seq]``: one not in it), and ``**`` as a whole path
component any number of folders, none included (``tiles/**/*.tif`` matches
``tiles/a.tif`` and ``tiles/2020/east/b.tif``; ``tiles/**`` every file under ``tiles``).
Only files (objects) are matched, never folders. A path that is to be matched literally is
passed through :func:`glob_escape` first, so that ``[``, ``*`` and ``?`` in its name are
not taken for wildcards.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.errors import (
    TRANSIENT,
    DataNotFoundError,
    InputError,
    OutputError,
    SourceError,
    TransientSourceError,
    failure_class,
)

log = logging.getLogger(__name__)

_GLOB_CHARS = "*?["


def is_remote(path: str | Path) -> bool:
    """True for URLs handled by Beam's FileSystems (gs://, s3://...)."""
    return "://" in str(path) and not str(path).startswith("file://")


def norm(path: str | Path) -> str:
    """``path`` as fsio handles it: a ``file://`` URL becomes the local path it names.

    Every function of this module that takes a path goes through here first.

    Raises:
        InputError: a ``file://`` URL naming another host than this machine.
    """
    text = str(path)
    if not text.startswith("file://"):
        return text
    from urllib.parse import unquote, urlsplit

    url = urlsplit(text)
    if url.netloc not in ("", "localhost"):
        raise InputError(f"{text!r} names the host {url.netloc!r}: file:// URLs must name a "
                         f"path on this machine. Write 'file:///path' or the plain path.")
    return unquote(url.path) or "/"


def _fs():  # lazy: Beam is heavy to import
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _raw():
    """Beam's compression type that leaves bytes as they are (not AUTO, by extension)."""
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def join(base: str | Path, *parts: str) -> str:
    """Join path parts for local paths and URLs alike."""
    base = norm(base)
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def relative_href(target: str, start_dir: str) -> str:
    """``target`` relative to the folder ``start_dir`` (local paths and URLs alike)."""
    target, start_dir = norm(target), norm(start_dir)
    if is_remote(target) or is_remote(start_dir):
        return posixpath.relpath(target.split("://", 1)[1], start_dir.split("://", 1)[1])
    return os.path.relpath(target, start_dir).replace(os.sep, "/")


def exists(path: str | Path) -> bool:
    path = norm(path)
    if is_remote(path):
        return bool(_fs().exists(path))
    return Path(path).exists()


def makedirs(path: str | Path) -> None:
    """Create a local folder (a no-op for object stores, which have no folders)."""
    path = norm(path)
    if not is_remote(path):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot create output folder {str(path)!r}: {exc}") from exc


def read_bytes(path: str | Path) -> bytes:
    path = norm(path)
    if not exists(path):
        raise DataNotFoundError(f"{path!r} does not exist.")
    if is_remote(path):
        with _fs().open(path, compression_type=_raw()) as f:
            return f.read()
    return Path(path).read_bytes()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically (temp + rename locally, one upload on object stores)."""
    path = norm(path)
    try:
        if is_remote(path):
            with _fs().create(path, compression_type=_raw()) as f:
                f.write(data)
            return
        with _local_atomic(path) as f:
            f.write(data)
    except OSError as exc:
        raise OutputError(f"Cannot write {str(path)!r}: {exc}") from exc


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, rare)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _local_atomic(path: str | Path) -> Iterator[io.BufferedWriter]:
    """A binary file in ``path``'s folder that replaces ``path`` only when fully written.

    The file gets the permissions ``open()`` would give it (0666 less the umask), not
    ``mkstemp``'s private 0600, so outputs can be shared and served.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str | Path) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def read_record(path: str | Path) -> dict | None:
    """A small JSON record (done-records, run records), or ``None`` if absent or unreadable.

    A record left corrupt by an interrupted writer is logged and treated as absent, so the
    work it describes is redone rather than trusted.
    """
    path = norm(path)
    if not exists(path):
        return None
    try:
        rec = read_json(path)
    except (ValueError, OSError) as exc:
        log.warning("Ignoring unreadable record %s (%s); its work will be redone", path, exc)
        return None
    if not isinstance(rec, dict):
        log.warning("Ignoring record %s: not a JSON object; its work will be redone", path)
        return None
    return rec


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """Rows as UTF-8 CSV with a header, ``None`` written as an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    return buf.getvalue().encode("utf-8")


def put_file(local: str | Path, dest: str | Path) -> None:
    """Move/copy a finished local file to ``dest`` atomically."""
    local, dest = norm(local), norm(dest)
    try:
        if is_remote(dest):
            with open(local, "rb") as src, _fs().create(dest, compression_type=_raw()) as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)
            return
        with open(local, "rb") as src, _local_atomic(dest) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
    except OSError as exc:
        raise OutputError(f"Cannot write {str(dest)!r}: {exc}") from exc


@contextlib.contextmanager
def local_copy(path: str | Path) -> Iterator[str]:
    """Yield a local path holding ``path``'s content (downloaded if remote)."""
    path = norm(path)
    if not is_remote(path):
        if not Path(path).exists():
            raise DataNotFoundError(f"{str(path)!r} does not exist.")
        yield str(path)
        return
    suffix = "".join(Path(str(path)).suffixes)
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "obj" + suffix)
        with open(local, "wb") as f:
            f.write(read_bytes(path))
        yield local


@contextlib.contextmanager
def staged_output(dest: str | Path, suffix: str = "") -> Iterator[str]:
    """Yield a local temp path to write; on success it is published to ``dest`` atomically.

    On error nothing is published and any previous ``dest`` is left untouched.
    """
    dest = norm(dest)
    with tempfile.TemporaryDirectory(prefix="landslides-") as d:
        local = os.path.join(d, "out" + (suffix or "".join(Path(str(dest)).suffixes)))
        yield local
        put_file(local, dest)


def glob_escape(path: str | Path) -> str:
    """``path`` as a glob pattern that matches only itself (see the module on patterns).

    For a path (a folder a caller appends wildcards to, say) whose name may hold ``[``,
    ``*`` or ``?``: ``gs://b/run[1]`` becomes ``gs://b/run[[]1]``, which :func:`glob` does
    not take for ``gs://b/run1``.
    """
    path = norm(path)
    if is_remote(path):
        return "".join(f"[{c}]" if c in _GLOB_CHARS else c for c in path)
    import glob as _glob

    return _glob.escape(path)


def _literal_prefix(pattern: str) -> str:
    """The start of ``pattern`` before its first ``*``, ``?`` or ``[``: plain text."""
    end = min((i for i in (pattern.find(c) for c in _GLOB_CHARS) if i >= 0),
              default=len(pattern))
    return pattern[:end]


def _match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether the path components ``parts`` match the pattern components ``pattern``."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":  # any number of folders, none included
        return any(_match_parts(rest, parts[i:]) for i in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], head)
            and _match_parts(rest, parts[1:]))


def glob(pattern: str) -> list[str]:
    """The files (objects) a glob pattern matches, local or remote; sorted.

    The pattern means the same locally and on object stores (see the module): ``**`` as a
    path component is any number of folders, ``*`` also matches names that start with a
    dot, and folders are never returned. Pass literal parts through :func:`glob_escape`.
    """
    pattern = norm(pattern)
    if is_remote(pattern):
        prefix = _literal_prefix(pattern)
        if prefix == pattern:  # nothing to expand: the object itself, if it exists
            return [pattern] if exists(pattern) and not pattern.endswith("/") else []
        # list once under the literal prefix (Beam gets no set to translate), then match
        # each path component as the local glob does
        listed = _fs().match([prefix + "**"])[0].metadata_list
        want = pattern.split("/")
        return sorted(m.path for m in listed
                      if not m.path.endswith("/") and _match_parts(want, m.path.split("/")))
    import glob as _glob

    found = _glob.glob(pattern, recursive=True, include_hidden=True)
    return sorted(p for p in found if os.path.isfile(p))


def delete(path: str | Path) -> None:
    """Delete one file or object."""
    path = norm(path)
    if is_remote(path):
        _delete_objects([path])
    else:
        os.unlink(path)


def _delete_objects(paths: Sequence[str]) -> None:
    """Delete these objects, each by its exact name.

    Beam's ``delete`` takes each path for a pattern: names are escaped, so that deleting
    ``gs://b/run[1]/a.tif`` does not delete ``gs://b/run1/a.tif``.
    """
    # Beam compiles the escape of a literal "[" (``[[]``) into the regex "[[]", which
    # Python flags as a possible nested set: it is none (set here, as test runners reset
    # the filters)
    warnings.filterwarnings("ignore", message="Possible nested set", category=FutureWarning,
                            module=r"apache_beam\.io\.filesystem")
    _fs().delete([glob_escape(p) for p in paths])


def check_creatable(out: str | Path) -> None:
    """A local folder ``out`` could be made and written: checked without creating it.

    For commands that must not leave a folder behind when they refuse bad input (see
    :func:`check_writable`, which creates it). Buckets answer at the first write.

    Raises:
        OutputError: naming the path in the way (a file) or the folder not writable.
    """
    out = norm(out)
    if is_remote(out):
        return
    path = Path(out).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"--out {str(out)!r} cannot be created: {str(existing)!r} is a "
                          f"file. Choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {str(out)!r} cannot be written: {str(existing)!r} is not "
                          f"writable. Choose another folder or fix its permissions.")


def check_writable(out: str | Path) -> None:
    """Create ``out`` if needed and write, then delete, a probe file in it.

    Raises:
        OutputError: naming the folder or bucket and why it cannot be written.
    """
    out = norm(out)
    probe = join(out, ".write-probe")
    try:
        makedirs(out)
        write_bytes(probe, b"ok")
        delete(probe)
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"Output {str(out)!r} is not writable: {exc}") from exc


def remove_tree(path: str | Path) -> None:
    """Delete a local folder and its contents, or every object under a URL prefix.

    Only that folder: glob characters in its name are matched literally.
    """
    path = norm(path)
    if is_remote(path):
        found = glob(glob_escape(path.rstrip("/")) + "/**")
        if found:
            _delete_objects(found)
        return
    shutil.rmtree(path, ignore_errors=True)


def remove_empty_dir(path: str | Path) -> None:
    """Remove a local folder if it is empty (a no-op for object stores and other folders)."""
    path = norm(path)
    if is_remote(path):
        return
    with contextlib.suppress(OSError):  # not empty, or already gone
        os.rmdir(path)


def open_binary(path: str | Path) -> io.BufferedIOBase:
    """Open for reading (a stream), local or remote."""
    path = norm(path)
    if is_remote(path):
        return _fs().open(path, compression_type=_raw())
    return open(path, "rb")


def is_http(path: str | Path) -> bool:
    """True for ``http://`` and ``https://`` URLs."""
    return str(path).startswith(("http://", "https://"))


def is_gs(path: str | Path) -> bool:
    """True for ``gs://`` (Cloud Storage) URLs."""
    return str(path).startswith("gs://")


def vsigs(path: str) -> str:
    """GDAL's name of a ``gs://`` object: ``gs://b/k.tif`` -> ``/vsigs/b/k.tif``.

    GDAL reads it by HTTP range requests, only the bytes a read needs (the header, then
    the tiles of a window), with the configuration of :func:`gdal_gs_options`.
    """
    return "/vsigs/" + str(path)[len("gs://"):]


def gdal_gs_options() -> dict[str, str]:
    """GDAL configuration for range reads of ``gs://`` objects through ``/vsigs/``.

    GDAL finds credentials on its own (``GOOGLE_APPLICATION_CREDENTIALS``, ``~/.boto``,
    the metadata server of a Compute Engine or Dataflow worker). With
    ``STORAGE_EMULATOR_HOST`` set (a local Cloud Storage emulator, as for
    google-cloud-storage and Beam), requests go to the emulator, unsigned. Folder listings
    are not asked for: sidecar files (``.aux.xml``, ``.ovr``) are not looked up.
    """
    opts = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if host:
        if "://" not in host:
            host = "http://" + host
        opts["CPL_GS_ENDPOINT"] = host.rstrip("/") + "/"
        opts["GS_NO_SIGN_REQUEST"] = "YES"
    return opts


def gdal_readable(path: str, tmpdir: str, what: str = "Raster",
                  hint: str = "check the path") -> str:
    """A path GDAL can open: local as is, http(s) through ``/vsicurl/``, objects copied.

    Args:
        path: Local path, URL or ``gs://`` object.
        tmpdir: Folder that receives a downloaded object (the caller removes it).
        what: What the file is, for messages (``Raster``, ``Label raster``).
        hint: What to check when a local file is missing.

    Raises:
        DataNotFoundError: the file or object does not exist.
        SourceError: the object cannot be downloaded.
    """
    path = norm(path)
    if is_http(path):
        return f"/vsicurl/{path}"
    if not is_remote(path):
        if not Path(path).exists():
            raise DataNotFoundError(f"{what} {path!r} does not exist; {hint}.")
        return path
    if not exists(path):
        raise DataNotFoundError(f"{what} object {path!r} does not exist; check the bucket and "
                                f"the object name.")
    import hashlib

    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    local = os.path.join(tmpdir, f"{digest}_{Path(path).name}")
    log.debug("Downloading %s to %s", path, local)
    try:
        with open_binary(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
    except OSError as exc:  # a dropped connection or a timeout may pass: retried
        kind = TransientSourceError if failure_class(exc) == TRANSIENT else SourceError
        raise kind(f"Cannot download {what.lower()} {path!r}: {exc}") from exc
    return local


def digest(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj``.

    The one way configurations, stage records and resume signatures are hashed (values
    JSON cannot hold count by their ``str``).
    """
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path: str | Path) -> str | None:
    """What identifies the content of a file or object without reading it.

    Local files: size and modification time (ns); ``gs://`` objects: size and update
    time from the object's metadata; URLs: ``None`` (not known). A file replaced at the
    same path gets another fingerprint, so resume signatures that hold it redo its work.
    """
    p = norm(path)
    if is_http(p):
        return None
    if is_remote(p):
        try:  # the object itself: its name is not a pattern
            meta = _fs().get_filesystem(p).metadata(p)
        except Exception:  # Beam raises BeamIOError for a missing object
            return None
        return f"{meta.size_in_bytes}:{getattr(meta, 'last_updated_in_seconds', '')}"
    try:
        st = os.stat(p)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"

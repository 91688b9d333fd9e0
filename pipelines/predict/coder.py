"""The Beam coder of :class:`~pipelines.predict.chunk.ChunkTiles`.

Why a coder of our own: an element of an untyped PCollection is encoded with Beam's
``FastPrimitivesCoder``, which pickles objects it does not know, and a runner's output
counters estimate the size of a sample of every step's outputs (the first ten, then
fewer) by encoding them, in the DirectRunner's fused steps as in Dataflow's workers, where
nothing else is encoded. A chunk's image is megabytes, so each of those estimates pickled
megabytes for nothing. :class:`ChunkTilesCoder` knows a chunk's size from its arrays'
shapes (:meth:`~ChunkTilesCoder.estimate_size` encodes nothing but the few small fields),
and encodes it, where a runner really does (worker processes, Dask, Dataflow's shuffles),
as its arrays' raw bytes with their dtype and shape instead of a pickle.

It is used where a PCollection's type says it holds chunks: :func:`register` adds it to
Beam's coder registry for :class:`ChunkTiles`, and the sweep types the PCollections that
carry them (``tuple[tuple[int, str], ChunkTiles]``, see :mod:`pipelines.predict.pipeline`).
"""

from __future__ import annotations

import struct

import numpy as np
from apache_beam import coders

from pipelines.predict.chunk import ChunkTiles

#: The small fields: job, key, spec, region_wkb, signature, size.
_FIELDS = coders.TupleCoder([coders.VarIntCoder(), coders.StrUtf8Coder(),
                             coders.FastPrimitivesCoder(), coders.BytesCoder(),
                             coders.StrUtf8Coder(), coders.VarIntCoder()])
_LENGTH = struct.Struct(">Q")
_ARRAY, _NONE = 1, 0


def _array_parts(a: np.ndarray | None) -> list[bytes | memoryview]:
    """An array as ``[header, raw bytes]`` (``[header]`` for ``None``)."""
    if a is None:
        return [bytes([_NONE])]
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        raise TypeError(f"ChunkTilesCoder encodes arrays of numbers, not {a.dtype}.")
    dtype = a.dtype.str.encode("ascii")
    head = struct.pack(f">BB{len(dtype)}sB{a.ndim}Q", _ARRAY, len(dtype), dtype, a.ndim,
                       *a.shape)
    return [head, a.data.cast("B") if a.size else b""]


def _array_size(a: np.ndarray | None) -> int:
    """Encoded bytes of an array, from its shape."""
    if a is None:
        return 1
    return 3 + len(a.dtype.str) + 8 * a.ndim + a.nbytes


def _read_array(buf: memoryview, at: int) -> tuple[np.ndarray | None, int]:
    """The array encoded at ``buf[at:]`` and the offset where it ends.

    The array is a copy: writable, and not tied to ``buf``.
    """
    if buf[at] == _NONE:
        return None, at + 1
    n = buf[at + 1]
    dtype = np.dtype(bytes(buf[at + 2:at + 2 + n]).decode("ascii"))
    at += 2 + n
    ndim = buf[at]
    shape = struct.unpack_from(f">{ndim}Q", buf, at + 1)
    at += 1 + 8 * ndim
    count = int(np.prod(shape, dtype=np.int64))
    a = np.frombuffer(buf, dtype=dtype, count=count, offset=at).reshape(shape).copy()
    return a, at + count * dtype.itemsize


def _fields(tiles: ChunkTiles) -> bytes:
    return _FIELDS.encode((tiles.job, tiles.key, tiles.spec, tiles.region_wkb,
                           tiles.signature, tiles.size))


class ChunkTilesCoder(coders.Coder):
    """Encodes a :class:`ChunkTiles` as its small fields, then its arrays' raw bytes.

    Layout: the length of the small fields' encoding (8 bytes), that encoding (Beam's
    coders: varint, UTF-8, ``FastPrimitivesCoder`` for the grid spec's dict, bytes), then
    ``origins``, ``valid`` and ``image``, each a marker byte (``image`` may be ``None``),
    the dtype's string (``'<f4'``), the dimensions and the C-order bytes.
    """

    def encode(self, value: ChunkTiles) -> bytes:
        """The chunk's bytes."""
        fields = _fields(value)
        parts: list[bytes | memoryview] = [_LENGTH.pack(len(fields)), fields]
        for a in (value.origins, value.valid, value.image):
            parts += _array_parts(a)
        return b"".join(parts)

    def decode(self, encoded: bytes) -> ChunkTiles:
        """The chunk of :meth:`encode`'s bytes; its arrays are copies, writable."""
        buf = memoryview(encoded)
        (n,) = _LENGTH.unpack_from(buf, 0)
        job, key, spec, region_wkb, signature, size = _FIELDS.decode(
            bytes(buf[_LENGTH.size:_LENGTH.size + n]))
        at = _LENGTH.size + n
        origins, at = _read_array(buf, at)
        valid, at = _read_array(buf, at)
        image, at = _read_array(buf, at)
        if at != len(buf) or origins is None or valid is None:
            raise ValueError(f"Not a ChunkTilesCoder encoding ({len(buf)} bytes, "
                             f"{at} read).")
        return ChunkTiles(job, key, spec, region_wkb, signature, origins, valid, size, image)

    def estimate_size(self, value: ChunkTiles) -> int:
        """Bytes of :meth:`encode`, from the arrays' shapes: the pixels are not copied."""
        return (_LENGTH.size + len(_fields(value)) + _array_size(value.origins)
                + _array_size(value.valid) + _array_size(value.image))

    def is_deterministic(self) -> bool:
        """Not a key coder: the grid spec's dict is encoded in its insertion order."""
        return False

    def to_type_hint(self) -> type:
        return ChunkTiles


def register() -> None:
    """Make :class:`ChunkTilesCoder` Beam's coder of PCollections typed :class:`ChunkTiles`.

    Idempotent; call it while building a pipeline, before it runs (Beam picks each
    PCollection's coder from its type when the pipeline is translated).
    """
    coders.registry.register_coder(ChunkTiles, ChunkTilesCoder)


__all__ = ["ChunkTilesCoder", "register"]

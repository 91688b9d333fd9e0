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

import io
import struct

import numpy as np
from apache_beam import coders
from numpy.lib import format as npformat

from pipelines.predict.chunk import ChunkTiles

#: The small fields: job, key, spec, region_wkb, signature, size.
_FIELDS = coders.TupleCoder([coders.VarIntCoder(), coders.StrUtf8Coder(),
                             coders.FastPrimitivesCoder(), coders.BytesCoder(),
                             coders.StrUtf8Coder(), coders.VarIntCoder()])
_LENGTH = struct.Struct(">Q")
_ARRAY, _NONE = b"\x01", b"\x00"


def _header(a: np.ndarray) -> bytes:
    """The ``.npy`` header of a C-ordered copy of ``a`` (its pixels are not touched)."""
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": npformat.dtype_to_descr(a.dtype),
                                          "fortran_order": False, "shape": a.shape})
    return buf.getvalue()


def _array_parts(a: np.ndarray | None) -> list[bytes | memoryview]:
    """An array as a marker and its ``.npy`` bytes (``[marker]`` for ``None``)."""
    if a is None:
        return [_NONE]
    if a.dtype.hasobject:
        raise TypeError(f"ChunkTilesCoder encodes arrays of numbers, not {a.dtype}.")
    a = np.ascontiguousarray(a)
    return [_ARRAY, _header(a), a.data.cast("B") if a.size else b""]


def _array_size(a: np.ndarray | None) -> int:
    """Encoded bytes of an array, from its shape."""
    if a is None:
        return 1
    return 1 + len(_header(a)) + a.nbytes


def _read_array(stream: io.BytesIO) -> np.ndarray | None:
    """The next array of ``stream`` (a copy: writable, not tied to the encoded bytes)."""
    marker = stream.read(1)
    if marker == _NONE:
        return None
    if marker != _ARRAY:
        raise ValueError(f"Not a ChunkTilesCoder array (marker {marker!r}).")
    return npformat.read_array(stream, allow_pickle=False)


def _fields(tiles: ChunkTiles) -> bytes:
    return _FIELDS.encode((tiles.job, tiles.key, tiles.spec, tiles.region_wkb,
                           tiles.signature, tiles.size))


class ChunkTilesCoder(coders.Coder):
    """Encodes a :class:`ChunkTiles` as its small fields, then its arrays' raw bytes.

    Layout: the length of the small fields' encoding (8 bytes), that encoding (Beam's
    coders: varint, UTF-8, ``FastPrimitivesCoder`` for the grid spec's dict, bytes), then
    ``origins``, ``valid`` and ``image``, each a marker byte (``image`` may be ``None``)
    and the array in NumPy's ``.npy`` format (C order, no pickles).
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
        stream = io.BytesIO(encoded)
        (n,) = _LENGTH.unpack(stream.read(_LENGTH.size))
        job, key, spec, region_wkb, signature, size = _FIELDS.decode(stream.read(n))
        try:
            origins, valid, image = (_read_array(stream) for _ in range(3))
        except (ValueError, EOFError) as exc:
            raise ValueError(f"Not a ChunkTilesCoder encoding ({len(encoded)} bytes): "
                             f"{exc}") from None
        if stream.tell() != len(encoded) or origins is None or valid is None:
            raise ValueError(f"Not a ChunkTilesCoder encoding ({len(encoded)} bytes, "
                             f"{stream.tell()} read).")
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

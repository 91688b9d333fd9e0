"""The TFRecord patch schema ``lsm/v1``: the one place that encodes and parses patches.

Export (Beam) encodes with :func:`encode_patch`, training (``tf.data``) and inference parse
with :func:`make_parser`, tools and tests decode with :func:`decode_patch`.

One ``tf.train.Example`` per patch, with these features:

==============  =========================================================================
``image``       bytes: float32 little-endian, HWC order, ``H*W*C`` values
``mask``        bytes: uint8 ``H*W`` (0 background, 1.. landslide class ids, 255 ignore)
``shape``       int64 list ``[H, W, C]``
``bands``       bytes list: the ``C`` band names in the order of the image channels
``key``         bytes: chunk key / row_col offset, e.g. ``32645_r1342_c63/00128_00256``
``crs``         bytes: e.g. ``EPSG:32645``
``transform``   bytes: the 6 affine coefficients ``(a, b, c, d, e, f)`` as float64
                little-endian (float32 cannot hold UTM coordinates exactly)
``date``        bytes: ISO date or window ``2016-01-01/2016-12-31``
``format``      bytes: ``lsm/v1``
==============  =========================================================================

Pixels are raw bytes rather than per-band float lists: building a ``FloatList`` per band
costs many times more CPU per patch (see :func:`encoding_cost_ratio`).

Earth Engine's own TFRecord patch export (``Export.image.toCloudStorage(...,
fileFormat='TFRecord', formatOptions={'patchDimensions': [H, W]})``) parses too, with
``make_parser(..., fmt="ee")``: one float list of length ``H*W`` (row-major) per band
name, the label being one more band.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from model.errors import SchemaError

logger = logging.getLogger(__name__)

#: The value of the ``format`` feature written by :func:`encode_patch`.
FORMAT = "lsm/v1"
#: Mask value for pixels that carry no label (nodata, outside the image): never scored.
IGNORE_VALUE = 255

_LSM_FEATURES = ("image", "mask", "shape", "bands", "key", "crs", "transform", "date", "format")


@dataclass(frozen=True, eq=False)
class Patch:
    """One decoded patch (numpy), as returned by :func:`decode_patch`.

    Attributes:
        image: ``(H, W, C)`` float32 pixels in physical units.
        mask: ``(H, W)`` uint8 labels (0 background, class ids, 255 ignore).
        bands: The ``C`` band names in channel order.
        key: Chunk key and offset of the patch.
        crs: CRS of the patch grid (``EPSG:xxxxx``).
        transform: The 6 affine coefficients ``(a, b, c, d, e, f)`` of the patch, exact.
        date: ISO date or ``start/end`` window of the imagery.
    """

    image: np.ndarray
    mask: np.ndarray
    bands: tuple[str, ...]
    key: str
    crs: str
    transform: tuple[float, ...]
    date: str


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def _text(name: str, value: object, allow_empty: bool = False) -> bytes:
    if not isinstance(value, str) or not (value or allow_empty):
        raise SchemaError(f"patch {name} must be a non-empty string, got {value!r}")
    return value.encode("utf-8")


def _check_transform(transform: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in transform)
    if len(values) == 9:  # affine.Affine is a 9-tuple whose last row is (0, 0, 1)
        if values[6:] != (0.0, 0.0, 1.0):
            raise SchemaError(f"transform {values} is not affine (last row must be 0, 0, 1)")
        values = values[:6]
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise SchemaError(
            f"transform must be 6 finite affine coefficients (a, b, c, d, e, f), got {values}"
        )
    return values


def _check_bands(bands: Sequence[str], n_channels: int | None = None) -> tuple[str, ...]:
    if isinstance(bands, str):
        raise SchemaError(f"bands must be a sequence of band names, got the string {bands!r}")
    names = tuple(bands)
    if not names or not all(isinstance(b, str) and b for b in names):
        raise SchemaError(f"bands must be non-empty band names, got {names!r}")
    duplicates = sorted({b for b in names if names.count(b) > 1})
    if duplicates:
        raise SchemaError(f"band names must be unique, {duplicates} repeat in {names}")
    if n_channels is not None and len(names) != n_channels:
        raise SchemaError(
            f"{len(names)} band names {names} for an image with {n_channels} channels"
        )
    return names


def _check_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise SchemaError(f"mask shape {mask.shape} does not match the image's {shape}")
    if mask.dtype == np.uint8:
        return np.ascontiguousarray(mask)
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.number):
        raise SchemaError(f"mask must be numeric class ids, got dtype {mask.dtype}")
    if mask.size and (
        np.nanmin(mask) < 0 or np.nanmax(mask) > 255 or not np.array_equal(mask, np.round(mask))
    ):
        raise SchemaError(
            "mask values must be integer class ids in 0..255 (255 = ignore), got range "
            f"[{np.nanmin(mask)}, {np.nanmax(mask)}]"
        )
    return mask.astype(np.uint8)


def encode_patch(
    image: np.ndarray,
    mask: np.ndarray,
    bands: Sequence[str],
    key: str,
    crs: str,
    transform: Sequence[float],
    date: str,
) -> bytes:
    """Serialize one patch as an ``lsm/v1`` ``tf.train.Example``.

    Pure protobuf work: no TensorFlow graph or session per record.

    Args:
        image: ``(H, W, C)`` pixels (cast to float32); must be finite: fill nodata first
            and mark it 255 in ``mask``.
        mask: ``(H, W)`` (or ``(H, W, 1)``) integer labels in 0..255; 255 = ignore.
        bands: ``C`` unique band names in channel order.
        key: Chunk key / offset of the patch.
        crs: CRS string, e.g. ``EPSG:32645``.
        transform: 6 affine coefficients ``(a, b, c, d, e, f)``, or an ``affine.Affine``.
        date: ISO date or ``start/end`` window.

    Returns:
        The serialized ``tf.train.Example``.

    Raises:
        SchemaError: on a wrong shape, non-finite pixels, bad mask values, band names that
            do not match the channels, or empty metadata.
    """
    image = np.asarray(image)
    if image.ndim != 3 or 0 in image.shape:
        raise SchemaError(f"image must be a non-empty (H, W, C) array, got shape {image.shape}")
    if image.dtype != np.dtype("<f4"):
        image = image.astype("<f4")
    if not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise SchemaError(
            f"image of patch {key!r} holds {bad} non-finite values: fill nodata (e.g. with 0) "
            f"and set those pixels to {IGNORE_VALUE} in the mask before encoding"
        )
    h, w, c = image.shape
    mask = _check_mask(mask, (h, w))
    names = _check_bands(bands, c)
    coeffs = _check_transform(transform)
    # Filled in place: building Feature messages first and passing them to the
    # constructor copies the pixel bytes twice more.
    example = tf.train.Example()
    feature = example.features.feature
    feature["image"].bytes_list.value.append(image.tobytes())  # C order, also from a view
    feature["mask"].bytes_list.value.append(mask.tobytes())
    feature["shape"].int64_list.value.extend([h, w, c])
    feature["bands"].bytes_list.value.extend([n.encode("utf-8") for n in names])
    feature["key"].bytes_list.value.append(_text("key", key))
    # "" = not georeferenced (e.g. Landslide4Sense patches carry no coordinates)
    feature["crs"].bytes_list.value.append(_text("crs", crs, allow_empty=True))
    feature["transform"].bytes_list.value.append(np.asarray(coeffs, dtype="<f8").tobytes())
    # "" = no acquisition window known (e.g. undated GeoTIFF mosaics)
    feature["date"].bytes_list.value.append(_text("date", date, allow_empty=True))
    feature["format"].bytes_list.value.append(FORMAT.encode())
    # deterministic: map entries in key order, so equal patches give equal bytes (shards
    # are sorted and hashed by their records' bytes)
    return example.SerializeToString(deterministic=True)


def encode_ee_patch(
    image: np.ndarray, mask: np.ndarray, bands: Sequence[str], label: str = "landslide"
) -> bytes:
    """Serialize a patch the way Earth Engine's TFRecord patch export does.

    One float list of ``H*W`` row-major values per band name, the label as one more
    float band. Used to measure the cost of that layout and to build EE-style fixtures;
    the project's own export writes :func:`encode_patch` records.

    Args:
        image: ``(H, W, C)`` pixels.
        mask: ``(H, W)`` labels.
        bands: ``C`` band names in channel order.
        label: Name of the label band.

    Returns:
        The serialized ``tf.train.Example``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise SchemaError(f"image must be an (H, W, C) array, got shape {image.shape}")
    names = _check_bands([*bands, label], image.shape[2] + 1)
    mask = _check_mask(mask, image.shape[:2])
    feature = {
        name: tf.train.Feature(float_list=tf.train.FloatList(value=image[..., i].ravel()))
        for i, name in enumerate(names[:-1])
    }
    feature[label] = tf.train.Feature(
        float_list=tf.train.FloatList(value=mask.astype(np.float32).ravel())
    )
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# ---------------------------------------------------------------------------------------
# Decoding (numpy)
# ---------------------------------------------------------------------------------------


def _parse_example(record: bytes) -> tf.train.Example:
    if not isinstance(record, bytes | bytearray | memoryview):
        raise SchemaError(f"a record must be bytes, got {type(record).__name__}")
    try:
        return tf.train.Example.FromString(bytes(record))
    except DecodeError as exc:
        raise SchemaError(
            f"record ({len(record)} bytes) is not a serialized tf.train.Example: {exc}"
        ) from exc


def _single_bytes(features: Any, name: str) -> bytes:
    if name not in features:
        raise SchemaError(
            f"record lacks the {name!r} feature (has {sorted(features)}); "
            f"is it an {FORMAT} patch?"
        )
    values = features[name].bytes_list.value
    if len(values) != 1:
        raise SchemaError(f"feature {name!r} must hold one bytes value, holds {len(values)}")
    return values[0]


def detect_format(record: bytes) -> Literal["lsm", "ee"]:
    """Tell an ``lsm/v1`` record from an Earth Engine patch export record.

    Args:
        record: One serialized ``tf.train.Example``.

    Returns:
        ``"lsm"`` for records written by :func:`encode_patch`, ``"ee"`` for records whose
        features are all per-band float (or int64) lists.

    Raises:
        SchemaError: for bytes that are not an Example, or an Example of neither layout.
    """
    features = _parse_example(record).features.feature
    if "format" in features:
        fmt = features["format"].bytes_list.value
        if len(fmt) == 1 and fmt[0].startswith(b"lsm/"):
            if fmt[0] != FORMAT.encode():
                raise SchemaError(
                    f"record format {fmt[0].decode(errors='replace')!r} is not supported by "
                    f"this reader ({FORMAT}); upgrade landslide-mapper"
                )
            return "lsm"
    kinds = {name: f.WhichOneof("kind") for name, f in features.items()}
    if kinds and all(k in ("float_list", "int64_list") for k in kinds.values()):
        return "ee"
    raise SchemaError(
        f"record is neither an {FORMAT} patch nor an Earth Engine patch export "
        f"(features: {sorted(kinds)} of kinds {sorted(set(kinds.values()), key=str)})"
    )


def read_stored_bands(record: bytes) -> tuple[str, ...]:
    """Band names stored in one record.

    Args:
        record: One serialized ``lsm/v1`` or Earth Engine record.

    Returns:
        For ``lsm/v1``: the image band names in channel order. For Earth Engine records,
        whose features are an unordered map: every float feature name, sorted (the label
        band included).
    """
    if detect_format(record) == "ee":
        return tuple(sorted(_parse_example(record).features.feature))
    features = _parse_example(record).features.feature
    if "bands" not in features:
        raise SchemaError("record lacks the 'bands' feature; is it an lsm/v1 patch?")
    return tuple(b.decode("utf-8") for b in features["bands"].bytes_list.value)


def decode_patch(record: bytes) -> Patch:
    """Decode one ``lsm/v1`` record to numpy.

    Args:
        record: One serialized record written by :func:`encode_patch`.

    Returns:
        The :class:`Patch`, with the exact float64 transform.

    Raises:
        SchemaError: for a missing feature, a wrong format or a byte length that does not
            match ``shape``.
    """
    features = _parse_example(record).features.feature
    missing = [name for name in _LSM_FEATURES if name not in features]
    if missing:
        raise SchemaError(
            f"record lacks the feature(s) {missing} of an {FORMAT} patch "
            f"(has {sorted(features)}); Earth Engine records parse with make_parser(fmt='ee')"
        )
    fmt = _single_bytes(features, "format").decode("utf-8", errors="replace")
    if fmt != FORMAT:
        raise SchemaError(f"record format is {fmt!r}, this reader reads {FORMAT!r}")
    shape = tuple(int(v) for v in features["shape"].int64_list.value)
    if len(shape) != 3 or min(shape) <= 0:
        raise SchemaError(f"'shape' must be [H, W, C] with positive sizes, got {list(shape)}")
    h, w, c = shape
    key = _single_bytes(features, "key").decode("utf-8")
    image_bytes = _single_bytes(features, "image")
    if len(image_bytes) != h * w * c * 4:
        raise SchemaError(
            f"patch {key!r}: 'image' holds {len(image_bytes)} bytes, shape {list(shape)} needs "
            f"{h * w * c * 4} (float32); the record is truncated or corrupt"
        )
    mask_bytes = _single_bytes(features, "mask")
    if len(mask_bytes) != h * w:
        raise SchemaError(
            f"patch {key!r}: 'mask' holds {len(mask_bytes)} bytes, shape {list(shape)} needs "
            f"{h * w} (uint8); the record is truncated or corrupt"
        )
    transform_bytes = _single_bytes(features, "transform")
    if len(transform_bytes) != 48:
        raise SchemaError(
            f"patch {key!r}: 'transform' holds {len(transform_bytes)} bytes, needs 48 "
            "(6 float64 coefficients)"
        )
    bands = tuple(b.decode("utf-8") for b in features["bands"].bytes_list.value)
    if len(bands) != c:
        raise SchemaError(f"patch {key!r}: {len(bands)} band names {bands} for {c} channels")
    return Patch(
        image=np.frombuffer(image_bytes, dtype="<f4").reshape(h, w, c).astype(np.float32),
        mask=np.frombuffer(mask_bytes, dtype=np.uint8).reshape(h, w).copy(),
        bands=bands,
        key=key,
        crs=_single_bytes(features, "crs").decode("utf-8"),
        transform=tuple(float(v) for v in np.frombuffer(transform_bytes, dtype="<f8")),
        date=_single_bytes(features, "date").decode("utf-8"),
    )


# ---------------------------------------------------------------------------------------
# Parsing (tf.data, graph mode)
# ---------------------------------------------------------------------------------------

ParseFn = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def _select_indices(
    requested: tuple[str, ...], stored: tuple[str, ...] | None, what: str
) -> list[int] | None:
    if stored is None:
        return None
    unknown = [b for b in requested if b not in stored]
    if unknown:
        raise SchemaError(
            f"band(s) {unknown} are not in the {what} (stored bands: {list(stored)}); "
            "request only stored bands, or re-export the shards with them"
        )
    return [stored.index(b) for b in requested]


def _lsm_parser(
    bands: tuple[str, ...],
    stored: tuple[str, ...] | None,
    patch_size: int | None,
    label: str,
) -> ParseFn:
    indices = _select_indices(bands, stored, "shards' stored bands")
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        label: tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "bands": tf.io.VarLenFeature(tf.string),
    }
    requested = tf.constant(list(bands))
    stored_joined = None if stored is None else "|".join(stored)

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ex = tf.io.parse_single_example(serialized, spec)
        shape = tf.cast(ex["shape"], tf.int32)
        h, w, c = shape[0], shape[1], shape[2]
        record_bands = tf.sparse.to_dense(ex["bands"], default_value="")
        flat = tf.io.decode_raw(ex["image"], tf.float32, little_endian=True)
        raw_mask = tf.io.decode_raw(ex[label], tf.uint8)
        checks = [
            tf.debugging.assert_equal(
                tf.size(flat), h * w * c,
                message="lsm/v1 'image' byte length does not match its 'shape' [H, W, C] "
                "(float32): the record is truncated or corrupt",
            ),
            tf.debugging.assert_equal(
                tf.size(raw_mask), h * w,
                message=f"lsm/v1 '{label}' byte length does not match H*W of 'shape' (uint8): "
                "the record is truncated or corrupt",
            ),
        ]
        if patch_size is not None:
            checks.append(tf.debugging.assert_equal(
                tf.stack([h, w]), tf.constant([patch_size, patch_size]),
                message=f"patch size differs from the requested {patch_size}x{patch_size}",
            ))
        if stored_joined is not None:
            checks.append(tf.debugging.Assert(
                tf.equal(tf.strings.reduce_join(record_bands, separator="|"), stored_joined),
                ["record bands differ from the manifest's stored bands", stored_joined,
                 "record:", record_bands],
            ))
            index = tf.constant(indices, dtype=tf.int32)
        else:
            hits = tf.equal(requested[:, None], record_bands[None, :])
            checks.append(tf.debugging.Assert(
                tf.reduce_all(tf.reduce_any(hits, axis=1)),
                ["requested bands", requested, "are not all in the record's bands",
                 record_bands],
            ))
            index = tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32)
        with tf.control_dependencies(checks):
            image = tf.reshape(flat, tf.stack([h, w, c]))
            mask = tf.reshape(raw_mask, tf.stack([h, w, 1]))
        image = tf.gather(image, index, axis=2)
        mask = tf.cast(mask, tf.float32)
        size = patch_size
        image.set_shape([size, size, len(bands)])
        mask.set_shape([size, size, 1])
        return image, mask

    return parse


def _ee_parser(
    bands: tuple[str, ...],
    stored: tuple[str, ...] | None,
    patch_size: int | None,
    label: str,
) -> ParseFn:
    _select_indices(bands, stored, "Earth Engine export's bands")
    if label in bands:
        raise SchemaError(f"label band {label!r} is also requested as an image band")
    names = [*bands, label]
    if patch_size is not None:
        spec = {n: tf.io.FixedLenFeature([patch_size * patch_size], tf.float32) for n in names}
    else:
        spec = {n: tf.io.VarLenFeature(tf.float32) for n in names}

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ex = tf.io.parse_single_example(serialized, spec)
        if patch_size is None:
            cols = [tf.sparse.to_dense(ex[n]) for n in names]
            n = tf.size(cols[0])
            side = tf.cast(tf.round(tf.sqrt(tf.cast(n, tf.float64))), tf.int32)
            checks = [tf.debugging.assert_equal(
                side * side, n,
                message="Earth Engine patch is not square: export square patchDimensions [N, N]",
            )] + [tf.debugging.assert_equal(
                tf.size(col), n, message=f"Earth Engine band {name!r} has a different length",
            ) for name, col in zip(names, cols)]
            with tf.control_dependencies(checks):
                stack = tf.reshape(tf.stack(cols, axis=-1), tf.stack([side, side, len(names)]))
        else:
            stack = tf.reshape(
                tf.stack([ex[n] for n in names], axis=-1), [patch_size, patch_size, len(names)]
            )
        image, mask = stack[..., :-1], stack[..., -1:]
        # EE writes masked pixels as NaN or a fill value; non-finite pixels are not scored.
        bad = tf.logical_not(tf.reduce_all(tf.math.is_finite(stack), axis=-1, keepdims=True))
        image = tf.where(bad, tf.zeros_like(image), image)
        mask = tf.where(bad, tf.fill(tf.shape(mask), float(IGNORE_VALUE)), mask)
        return image, mask

    return parse


def make_parser(
    bands: Sequence[str],
    stored_bands: Sequence[str] | None = None,
    patch_size: int | None = None,
    fmt: str = "lsm",
    label: str = "mask",
) -> ParseFn:
    """A graph-safe function that parses one serialized record for ``tf.data``.

    Args:
        bands: Band names the model wants, in the order it wants them.
        stored_bands: Band order stored in the shards (from ``manifest.json``). Given, band
            selection is resolved now (unknown names raise at once) and every record is
            checked against it; omitted, each ``lsm`` record's own ``bands`` feature is used.
        patch_size: Expected square patch size: fixes the static shape and is checked per
            record. Without it, Earth Engine patches' side is inferred from their length
            (patches must be square: ``patchDimensions: [N, N]``).
        fmt: ``"lsm"`` (this project's records) or ``"ee"`` (Earth Engine patch export).
        label: Name of the label feature: ``"mask"`` for ``lsm`` records; the label band
            (e.g. ``"landslide"``) for Earth Engine records (``"mask"`` is read as such).

    Returns:
        ``fn(serialized) -> (image, mask)``: ``image`` float32 ``[H, W, len(bands)]`` in the
        requested order, ``mask`` float32 ``[H, W, 1]`` (255 = ignore; for Earth Engine
        records also where any band is non-finite; all bands of such a pixel become 0).
        Called eagerly, record problems raise :class:`SchemaError`; inside ``tf.data`` they surface
        as ``tf.errors.InvalidArgumentError`` with the same message.

    Raises:
        SchemaError: for an unknown ``fmt``, bad band names, or requested bands missing
            from ``stored_bands``.
    """
    requested = _check_bands(bands)
    stored = None if stored_bands is None else _check_bands(stored_bands)
    if patch_size is not None and (int(patch_size) != patch_size or patch_size <= 0):
        raise SchemaError(f"patch_size must be a positive integer, got {patch_size!r}")
    if not isinstance(label, str) or not label:
        raise SchemaError(f"label must be a feature name, got {label!r}")
    if fmt == "lsm":
        parse = _lsm_parser(requested, stored, patch_size, label)
    elif fmt == "ee":
        parse = _ee_parser(requested, stored, patch_size, label)
    else:
        raise SchemaError(f"unknown record format {fmt!r}: use 'lsm' or 'ee'")

    def parse_record(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if not tf.executing_eagerly():
            return parse(serialized)
        try:
            return parse(serialized)
        except tf.errors.InvalidArgumentError as exc:
            raise SchemaError(f"cannot parse {fmt} record: {exc.message}") from exc

    return parse_record


# ---------------------------------------------------------------------------------------
# Cost of the pixel layout
# ---------------------------------------------------------------------------------------


def encoding_cost_ratio(
    patch_size: int = 128, n_bands: int = 12, repeats: int = 20, seed: int = 0
) -> float:
    """Measure how much more CPU per-band float lists cost than raw bytes to encode.

    Encodes the same random patch ``repeats`` times with :func:`encode_patch` (raw bytes)
    and with :func:`encode_ee_patch` (one ``FloatList`` per band, Earth Engine's layout)
    and compares the best times.

    Args:
        patch_size: Patch side in pixels.
        n_bands: Number of image bands.
        repeats: Timed repetitions of each encoder (the fastest counts).
        seed: Seed of the random patch.

    Returns:
        ``time(float lists) / time(raw bytes)`` per patch.
    """
    rng = np.random.default_rng(seed)
    image = rng.random((patch_size, patch_size, n_bands), dtype=np.float32)
    mask = (rng.random((patch_size, patch_size)) < 0.1).astype(np.uint8)
    bands = [f"b{i}" for i in range(n_bands)]
    transform = (10.0, 0.0, 600000.0, 0.0, -10.0, 3100000.0)

    def best(fn: Callable[[], bytes]) -> float:
        fn()  # warm up
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    raw = best(lambda: encode_patch(image, mask, bands, "k/0_0", "EPSG:32645", transform,
                                    "2020-01-01"))
    floats = best(lambda: encode_ee_patch(image, mask, bands))
    logger.info("encoding a %dx%dx%d patch: raw bytes %.3f ms, float lists %.3f ms",
                patch_size, patch_size, n_bands, raw * 1e3, floats * 1e3)
    return floats / raw

"""The TFRecord patch schema ``lsm/v1``: the one place that encodes and decodes patches.

Export (Beam) encodes with :func:`encode_patch`, tools and tests decode with
:func:`decode_patch`; training (``tf.data``) parses with :func:`model.parsing.make_parser`,
the TensorFlow side of this schema. This module does not import TensorFlow: the records
are built with the ``tf.train.Example`` messages of :mod:`model.example_proto` (plain
protobuf), so a worker that only exports patches runs without the TensorFlow wheel.

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
``model.parsing.make_parser(..., fmt="ee")``: one float list of length ``H*W`` (row-major) per band
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
from google.protobuf.message import DecodeError

from model import example_proto as pb
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


def check_bands(bands: Sequence[str], n_channels: int | None = None) -> tuple[str, ...]:
    """Unique, non-empty band names (``n_channels`` of them when given).

    Raises:
        SchemaError: a string instead of a sequence, empty or repeated names, or a count
            that does not match the channels.
    """
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
    names = check_bands(bands, c)
    coeffs = _check_transform(transform)
    # Filled in place: building Feature messages first and passing them to the
    # constructor copies the pixel bytes twice more.
    example = pb.Example()
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
    names = check_bands([*bands, label], image.shape[2] + 1)
    mask = _check_mask(mask, image.shape[:2])
    example = pb.Example()
    feature = example.features.feature
    for i, name in enumerate(names[:-1]):
        feature[name].float_list.value.extend(image[..., i].ravel())
    feature[label].float_list.value.extend(mask.astype(np.float32).ravel())
    return example.SerializeToString()


# ---------------------------------------------------------------------------------------
# Decoding (numpy)
# ---------------------------------------------------------------------------------------


def _parse_example(record: bytes) -> Any:
    if not isinstance(record, bytes | bytearray | memoryview):
        raise SchemaError(f"a record must be bytes, got {type(record).__name__}")
    try:
        return pb.Example.FromString(bytes(record))
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

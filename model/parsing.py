"""Parsing ``lsm/v1`` and Earth Engine TFRecord patches in ``tf.data`` (graph mode).

The TensorFlow side of :mod:`model.schema`, which encodes and decodes the same records
without TensorFlow: :func:`make_parser` turns one serialized record into the
``(image, mask)`` tensors training and evaluation feed the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from model.errors import SchemaError
from model.schema import IGNORE_VALUE, check_bands

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
    requested = check_bands(bands)
    stored = None if stored_bands is None else check_bands(stored_bands)
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


__all__ = ["ParseFn", "make_parser"]

"""``tf.train.Example`` protocol buffer messages without TensorFlow.

TFRecord patches are ``tf.train.Example`` messages. Encoding and decoding them is pure
protobuf work, so a worker that only exports patches (GeoTIFF, Earth Engine or synthetic
imagery to TFRecord shards) does not need the TensorFlow wheel: the message types are
declared here from TensorFlow's ``example.proto`` / ``feature.proto`` (package
``tensorflow``, the same field numbers and types) with the ``protobuf`` runtime that
Apache Beam already depends on, so the bytes are those ``tf.train.Example`` writes and
reads.

The declarations live in a private descriptor pool: TensorFlow registers the same
message names in protobuf's default pool, and both can be loaded in one process (a
trainer decodes with these classes while ``tf.data`` parses the same records).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "tensorflow"

_LABEL_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_LABEL_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_TYPE_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_TYPE_FLOAT = descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT
_TYPE_INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_TYPE_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_TYPE_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE


def _field(msg: Any, name: str, number: int, kind: int, label: int = _LABEL_OPTIONAL,
           type_name: str = "", packed: bool = False, oneof: int | None = None) -> None:
    f = msg.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        f.type_name = f".{_PACKAGE}.{type_name}"
    if packed:
        f.options.packed = True
    if oneof is not None:
        f.oneof_index = oneof


def _file() -> descriptor_pb2.FileDescriptorProto:
    """``feature.proto`` and ``example.proto`` of TensorFlow, declared in one proto3 file."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="landslides/tensorflow_example.proto", package=_PACKAGE, syntax="proto3")
    for name, kind, packed in (("BytesList", _TYPE_BYTES, False),
                               ("FloatList", _TYPE_FLOAT, True),
                               ("Int64List", _TYPE_INT64, True)):
        msg = fd.message_type.add(name=name)
        _field(msg, "value", 1, kind, _LABEL_REPEATED, packed=packed)

    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    _field(feature, "bytes_list", 1, _TYPE_MESSAGE, type_name="BytesList", oneof=0)
    _field(feature, "float_list", 2, _TYPE_MESSAGE, type_name="FloatList", oneof=0)
    _field(feature, "int64_list", 3, _TYPE_MESSAGE, type_name="Int64List", oneof=0)

    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _TYPE_STRING)
    _field(entry, "value", 2, _TYPE_MESSAGE, type_name="Feature")
    _field(features, "feature", 1, _TYPE_MESSAGE, _LABEL_REPEATED,
           type_name="Features.FeatureEntry")

    example = fd.message_type.add(name="Example")
    _field(example, "features", 1, _TYPE_MESSAGE, type_name="Features")
    return fd


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"{_PACKAGE}.{name}")) for name in ("BytesList", "FloatList", "Int64List", "Feature",
                                            "Features", "Example")}


_CLASSES = _classes()

#: ``tf.train.Example``: ``features``, a map of feature name to :data:`Feature`.
Example: Any = _CLASSES["Example"]
#: ``tf.train.Features``
Features: Any = _CLASSES["Features"]
#: ``tf.train.Feature``: one of ``bytes_list``, ``float_list``, ``int64_list``.
Feature: Any = _CLASSES["Feature"]
BytesList: Any = _CLASSES["BytesList"]
FloatList: Any = _CLASSES["FloatList"]
Int64List: Any = _CLASSES["Int64List"]

__all__ = ["BytesList", "Example", "Feature", "Features", "FloatList", "Int64List"]

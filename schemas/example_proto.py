"""The tf.Example / tf.SequenceExample wire format, in a private protobuf descriptor pool.

TensorFlow registers ``tensorflow.BytesList`` and friends in protobuf's default pool from
``tensorflow/core/example/feature.proto``; the ``tfrecord`` package registers the same symbols from
its own ``example.proto``. Two definitions of one symbol in the default pool is an error, so the
two packages cannot be imported in one process as shipped.

Here the same messages (same full names and field numbers, hence the same bytes on the wire) are
built in a pool of our own, which never touches the default pool. Our TensorFlow-free codec uses
these classes, and ``schemas.compat`` hands them to ``tfrecord`` as its ``example_pb2`` so that
``tfrecord`` and ``tensorflow`` coexist in any import order.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FILE = "qtopt/schemas/tf_example_wire.proto"
_PKG = "tensorflow"

_F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None, oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


def _map(msg, entry_name, value_type):
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)
    return entry


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name=_FILE, package=_PKG, syntax="proto3")
    rep = _F.LABEL_REPEATED
    for name, ftype in (("BytesList", _F.TYPE_BYTES), ("FloatList", _F.TYPE_FLOAT),
                        ("Int64List", _F.TYPE_INT64)):
        msg = fd.message_type.add(name=name)
        f = _field(msg, "value", 1, ftype, rep)
        if ftype != _F.TYPE_BYTES:
            f.options.packed = True
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    _field(feature, "bytes_list", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.BytesList", oneof=0)
    _field(feature, "float_list", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.FloatList", oneof=0)
    _field(feature, "int64_list", 3, _F.TYPE_MESSAGE, type_name=".tensorflow.Int64List", oneof=0)
    features = fd.message_type.add(name="Features")
    _map(features, "FeatureEntry", ".tensorflow.Feature")
    _field(features, "feature", 1, _F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")
    flist = fd.message_type.add(name="FeatureList")
    _field(flist, "feature", 1, _F.TYPE_MESSAGE, rep, ".tensorflow.Feature")
    flists = fd.message_type.add(name="FeatureLists")
    _map(flists, "FeatureListEntry", ".tensorflow.FeatureList")
    _field(flists, "feature_list", 1, _F.TYPE_MESSAGE, rep,
           ".tensorflow.FeatureLists.FeatureListEntry")
    example = fd.message_type.add(name="Example")
    _field(example, "features", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.Features")
    seq = fd.message_type.add(name="SequenceExample")
    _field(seq, "context", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.Features")
    _field(seq, "feature_lists", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.FeatureLists")
    return fd


POOL = descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(_build_file().SerializeToString())
DESCRIPTOR = POOL.FindFileByName(_FILE)


def _cls(name: str):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{_PKG}.{name}"))


BytesList = _cls("BytesList")
FloatList = _cls("FloatList")
Int64List = _cls("Int64List")
Feature = _cls("Feature")
Features = _cls("Features")
FeatureList = _cls("FeatureList")
FeatureLists = _cls("FeatureLists")
Example = _cls("Example")
SequenceExample = _cls("SequenceExample")

"""TensorFlow parsers and Keras inputs, derived from the specs.

Imports TensorFlow; nothing in the TensorFlow-free path imports this module. Parsed images come out
as ``uint8`` tensors of shape ``image_shape``; strings as ``tf.string``; booleans as ``tf.bool``.
"""

from __future__ import annotations

from schemas import compat

compat.ensure_compatible()  # a clear message instead of protobuf's duplicate-symbol error

import tensorflow as tf  # noqa: E402

from schemas.specs import SUPPORTED_VERSIONS, RecordSpec, Field, added_since, spec_for

_TF_DTYPES = {"float32": tf.float32, "int64": tf.int64, "bool": tf.int64, "string": tf.string,
              "image": tf.string}


def _feature(f: Field, sequence: bool = False, default=None):
    dtype = _TF_DTYPES[f.dtype]
    if f.variable:
        return tf.io.RaggedFeature(dtype)
    shape = () if f.dtype == "image" else f.shape
    if sequence:
        return tf.io.FixedLenSequenceFeature(shape, dtype)
    return tf.io.FixedLenFeature(shape, dtype, default_value=default)


def feature_spec(spec: RecordSpec) -> dict:
    """``tf.io`` feature description of a record kind (the context, for episodes); a field that
    older supported versions lack reads as the value they stand for."""
    oldest = added_since(spec.kind, min(SUPPORTED_VERSIONS))
    return {f.name: _feature(f, default=oldest.get(f.name)) for f in spec.fields}


def _supported(version: tf.Tensor) -> tf.Tensor:
    return tf.reduce_any(tf.equal(tf.reshape(version, (-1, 1)),
                                  tf.constant(SUPPORTED_VERSIONS, tf.int64)), axis=1)


def sequence_feature_spec(spec: RecordSpec) -> dict:
    return {f.name: _feature(f, sequence=True) for f in spec.step_fields}


def _finish(spec: RecordSpec, parsed: dict, image_shape, batched: bool) -> dict:
    out = {}
    for f in spec.fields + spec.step_fields:
        if f.name not in parsed:
            continue
        v = parsed[f.name]
        if f.dtype == "image":
            v = tf.io.decode_raw(v, tf.uint8)
            lead = tf.shape(v)[:-1]
            v = tf.reshape(v, tf.concat([lead, tf.constant(image_shape, tf.int32)], 0))
            if not batched and spec.step_fields == ():
                v = tf.ensure_shape(v, image_shape)
        elif f.dtype == "bool":
            v = tf.cast(v, tf.bool)
        out[f.name] = v
    return out


def parse_batch(serialized: tf.Tensor, kind: str, image_shape, names=None,
                sources: tf.Tensor | None = None) -> dict:
    """Parse a batch of serialised tf.Example records (transitions) into tensors.

    ``names``: parse only these fields (and the header); parsing fewer images is faster.
    ``sources``: string tensor [B], the file each record came from; named in version errors.
    Raises ``tf.errors.InvalidArgumentError`` if a record's schema version is not the current one.
    """
    spec = spec_for(kind)
    if spec.container != "example":
        raise ValueError(f"{kind} records are SequenceExamples; use parse_episode")
    features = feature_spec(spec)
    if names is not None:
        keep = set(names) | {"schema_version", "kind", "image_shape"}
        features = {k: v for k, v in features.items() if k in keep}
    parsed = tf.io.parse_example(serialized, features)
    ok = _supported(parsed["schema_version"])
    message = f"{kind} record with an unsupported schema version (this reader knows " \
              f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
    if sources is None:
        tf.debugging.Assert(tf.reduce_all(ok), [message, "version", tf.boolean_mask(
            parsed["schema_version"], tf.logical_not(ok))[:1]])
    else:
        tf.debugging.Assert(tf.reduce_all(ok), [message, "in file", tf.boolean_mask(
            sources, tf.logical_not(ok))[:1], "version", tf.boolean_mask(
            parsed["schema_version"], tf.logical_not(ok))[:1]])
    out = _finish(spec, parsed, tuple(image_shape), batched=True)
    for name, value in out.items():
        if spec.field(name).dtype == "image":
            out[name] = tf.ensure_shape(value, (None,) + tuple(image_shape))
    return out


def parse_episode(serialized: tf.Tensor, image_shape) -> tuple[dict, dict]:
    """Parse one serialised episode into (context, steps) tensors."""
    spec = spec_for("episode")
    context, steps = tf.io.parse_single_sequence_example(
        serialized, context_features=feature_spec(spec),
        sequence_features=sequence_feature_spec(spec))
    tf.debugging.Assert(tf.reduce_all(_supported(context["schema_version"])),
                        ["episode record with an unsupported schema version",
                         context["schema_version"]])
    return (_finish(spec, dict(context), tuple(image_shape), batched=False),
            _finish(spec, dict(steps), tuple(image_shape), batched=True))


MODEL_INPUTS = ("observation/image", "observation/gripper_closed", "observation/gripper_opening",
                "observation/height", "action")


def keras_inputs(image_size: int, names=MODEL_INPUTS, kind: str = "transition") -> dict:
    """Keras ``Input`` layers for the named fields, shaped and typed from the spec."""
    spec = spec_for(kind)
    inputs = {}
    for name in names:
        f = spec.field(name)
        if f.dtype == "image":
            shape, dtype = (image_size, image_size, 3), "uint8"
        else:
            shape, dtype = f.shape, {"float32": "float32", "int64": "int64",
                                     "bool": "bool"}[f.dtype]
        inputs[name] = tf.keras.Input(shape=shape, dtype=dtype, name=name.replace("/", "_"))
    return inputs

"""TensorFlow-free encoder, decoder and validator for every record kind, derived from the specs.

A record in memory is a flat dict keyed by field name. Scalars are numpy scalars (``float32``,
``int64``), ``bool`` or ``str``; vectors are numpy arrays; images are ``uint8`` arrays of shape
``image_shape``. In an episode, each step field is an array with one leading entry per step.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np

from schemas import example_proto as pb
from schemas.errors import RecordError
from schemas.specs import (MAX_IMAGE_SIZE, SCHEMA_VERSION, SUPPORTED_VERSIONS, Field,
                           RecordSpec, added_since, spec_for)


# ---------------------------------------------------------------------------------- validation

def _check_field(f: Field, value: Any, image_shape: tuple, where: str = "") -> Any:
    """Normalise one field's value to its in-memory type, or raise RecordError."""
    label = f"field {f.name!r}{where}"
    if f.dtype == "image":
        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            raise RecordError(f"{label}: image must be uint8, got {arr.dtype}")
        if arr.shape != tuple(image_shape):
            raise RecordError(f"{label}: image shape {arr.shape} does not match image_shape "
                              f"{tuple(image_shape)}")
        return arr
    if f.dtype == "string":
        if f.variable:
            if isinstance(value, (str, bytes)):
                raise RecordError(f"{label}: expected a list of strings, got a single string")
            return [_as_str(v, label) for v in value]
        return _as_str(value, label)
    if f.dtype == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
            return bool(value)
        raise RecordError(f"{label}: expected a boolean (0 or 1), got {value!r}")
    np_dtype = np.float32 if f.dtype == "float32" else np.int64
    try:
        arr = np.asarray(value, dtype=np_dtype)
    except (TypeError, ValueError):
        raise RecordError(f"{label}: expected {f.dtype} values, got {value!r}") from None
    if not f.variable and arr.shape != f.shape:
        raise RecordError(f"{label}: expected shape {f.shape}, got {arr.shape}")
    if f.dtype == "float32" and not np.all(np.isfinite(arr)):
        raise RecordError(f"{label}: contains NaN or infinite values: {arr.tolist()}")
    return arr[()] if arr.ndim == 0 else arr


def _as_str(value: Any, label: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(f"{label}: not valid UTF-8") from None
    if not isinstance(value, str):
        raise RecordError(f"{label}: expected a string, got {value!r}")
    # Readers built on numpy byte arrays (the tfrecord package among them) drop trailing NULs,
    # so a string holding one would not read back the same everywhere.
    if "\x00" in value:
        raise RecordError(f"{label}: contains a NUL character: {value!r}")
    return value


def _check_image_shape(value: Any) -> tuple:
    shape = tuple(int(v) for v in np.asarray(value).reshape(-1))
    if len(shape) != 3 or shape[2] != 3 or not all(1 <= s <= MAX_IMAGE_SIZE for s in shape[:2]):
        raise RecordError(f"field 'image_shape': expected (height, width, 3) with sides in "
                          f"1..{MAX_IMAGE_SIZE}, got {shape}")
    return shape


def _unsupported(version) -> str:
    msg = (f"schema version {version} is not supported (this reader knows "
           f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    if version is not None and int(version) == 1:
        msg += ("; version 1 observations lack gripper_opening, which no default can stand in "
                "for: collect the episodes again")
    return msg


def validate(record: Mapping[str, Any]) -> dict:
    """Check a record against its spec and return it normalised. Raises RecordError."""
    if "kind" not in record:
        raise RecordError("record has no 'kind' field")
    try:
        spec = spec_for(_as_str(record["kind"], "field 'kind'"))
    except KeyError as exc:
        raise RecordError(str(exc.args[0])) from None
    version = record.get("schema_version")
    if version is None or int(version) not in SUPPORTED_VERSIONS:
        raise RecordError(_unsupported(version))
    if int(version) != SCHEMA_VERSION:
        # An older record reads as the current version, with what its version lacked filled in.
        record = {**added_since(spec.kind, int(version)), **record,
                  "schema_version": SCHEMA_VERSION}
    missing = [n for n in spec.names if n not in record]
    if missing:
        raise RecordError(f"{spec.kind} record lacks fields: {', '.join(missing)}")
    unknown = sorted(set(record) - set(spec.names))
    if unknown:
        raise RecordError(f"{spec.kind} record has unknown fields: {', '.join(unknown)}")
    image_shape = _check_image_shape(record["image_shape"])
    out = {}
    for f in spec.fields:
        out[f.name] = _check_field(f, record[f.name], image_shape)
    out["image_shape"] = np.asarray(image_shape, np.int64)
    if spec.step_fields:
        out.update(_check_steps(spec, record, out, image_shape))
    return out


_STEP_DTYPES = {"image": np.uint8, "float32": np.float32, "int64": np.int64, "bool": bool}


def _checked_steps(f: Field, values: Any, n: int, image_shape: tuple) -> np.ndarray | None:
    """``values`` when it is already the array the step-by-step check would build (a decoded or
    validated episode's), checked as a whole; None when it is not, or fails a check, so that the
    step-by-step check runs and names the step at fault."""
    if not isinstance(values, np.ndarray) or values.dtype != _STEP_DTYPES[f.dtype]:
        return None
    shape = tuple(image_shape) if f.dtype == "image" else f.shape
    if f.variable or values.shape != (n,) + tuple(shape):
        return None
    if f.dtype == "float32" and not np.isfinite(values).all():
        return None
    return values


def _check_steps(spec: RecordSpec, record: Mapping[str, Any], context: dict,
                 image_shape: tuple) -> dict:
    n = int(context["num_steps"]) + 1
    out = {}
    for f in spec.step_fields:
        values = record[f.name]
        if len(values) != n:
            raise RecordError(f"field {f.name!r}: {len(values)} steps, but num_steps + 1 = {n}")
        checked = _checked_steps(f, values, n, image_shape)
        if checked is None:  # not one array of every step already: check step by step
            checked = np.asarray([_check_field(f, v, image_shape, f" at step {t}")
                                  for t, v in enumerate(values)], dtype=_STEP_DTYPES[f.dtype])
        out[f.name] = checked
    first, last = out["is_first"], out["is_last"]
    if not first[0] or first[1:].any():
        raise RecordError("field 'is_first': must be true at step 0 only")
    if not last[-1] or last[:-1].any():
        raise RecordError("field 'is_last': must be true at the last step only")
    return out


# ------------------------------------------------------------------------------------ encoding

def _put(feature, f: Field, value: Any) -> None:
    if f.dtype == "image":
        feature.bytes_list.value.append(np.ascontiguousarray(value).tobytes())
    elif f.dtype == "string":
        items = value if f.variable else [value]
        feature.bytes_list.value.extend(v.encode("utf-8") for v in items)
    elif f.dtype == "bool":
        feature.int64_list.value.append(int(value))
    elif f.dtype == "int64":
        feature.int64_list.value.extend(np.asarray(value, np.int64).reshape(-1).tolist())
    else:
        feature.float_list.value.extend(np.asarray(value, np.float32).reshape(-1).tolist())


def encode(record: Mapping[str, Any]) -> bytes:
    """Validate a record and serialise it as a tf.Example or tf.SequenceExample."""
    rec = validate(record)
    spec = spec_for(rec["kind"])
    if spec.container == "example":
        msg = pb.Example()
        features = msg.features.feature
    else:
        msg = pb.SequenceExample()
        features = msg.context.feature
        for f in spec.step_fields:
            flist = msg.feature_lists.feature_list[f.name].feature
            for value in rec[f.name]:
                _put(flist.add(), f, value)
    for f in spec.fields:
        _put(features[f.name], f, rec[f.name])
    # Map entries are otherwise written in a per-process hash order: deterministic output keeps
    # one byte form per record, so shards are byte-identical across workers and runs.
    return msg.SerializeToString(deterministic=True)


def feature(f: Field, value: Any):
    """One field's value, already validated, as the tf.train.Feature ``encode`` stores."""
    msg = pb.Feature()
    _put(msg, f, value)
    return msg


def example_bytes(features: Mapping[str, Any]) -> bytes:
    """The tf.Example of ready Features (``feature``) serialised as ``encode`` serialises it:
    byte for byte what ``encode`` writes for a record whose fields give these Features. Lets a
    caller that builds many records from shared values encode each value once."""
    msg = pb.Example()
    entries = msg.features.feature
    for name, value in features.items():
        entries[name].CopyFrom(value)
    return msg.SerializeToString(deterministic=True)


def new_record(kind: str, image_shape: tuple, **values) -> dict:
    """A record dict with the header filled in: ``new_record("transition", (64, 64, 3), ...)``."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "image_shape": tuple(image_shape),
            **values}


# ------------------------------------------------------------------------------------ decoding

_STORED_AS = {"image": "bytes_list", "string": "bytes_list", "bool": "int64_list",
              "int64": "int64_list", "float32": "float_list"}


def _take(feature, f: Field, image_shape: tuple, where: str) -> Any:
    label = f"field {f.name!r}{where}"
    kind = feature.WhichOneof("kind")
    expected = _STORED_AS[f.dtype]
    if kind != expected:
        raise RecordError(f"{label}: stored as {kind}, expected {expected}")
    values = getattr(feature, kind).value
    if f.dtype == "image":
        if len(values) != 1:
            raise RecordError(f"{label}: expected one image, got {len(values)}")
        raw = values[0]
        expected_len = int(np.prod(image_shape))
        if len(raw) != expected_len:
            raise RecordError(f"{label}: {len(raw)} bytes do not make an image of shape "
                              f"{tuple(image_shape)} ({expected_len} bytes)")
        return np.frombuffer(raw, np.uint8).reshape(image_shape)
    if f.dtype == "string":
        items = [_as_str(bytes(v), label) for v in values]
        if f.variable:
            return items
        if len(items) != 1:
            raise RecordError(f"{label}: expected one string, got {len(items)}")
        return items[0]
    arr = np.asarray(values, np.float32 if f.dtype == "float32" else np.int64)
    if not f.variable:
        if arr.size != f.size:
            raise RecordError(f"{label}: expected {f.size} values, got {arr.size}")
        arr = arr.reshape(f.shape)
    if f.dtype == "bool":
        return bool(arr)
    return arr[()] if arr.ndim == 0 else arr


def _take_steps(features, f: Field, image_shape: tuple) -> Any:
    """A feature list's values, one entry per step: as one array when every step is stored as
    expected (a few numpy calls for the whole list), else step by step, which names the step
    at fault."""
    n = len(features)
    kind = _STORED_AS[f.dtype]
    stored = [getattr(v, kind).value for v in features if v.WhichOneof("kind") == kind]
    if n and len(stored) == n and f.dtype != "string" and not f.variable:
        if f.dtype == "image":
            size = int(np.prod(image_shape))
            if all(len(v) == 1 and len(v[0]) == size for v in stored):
                # A bytearray, so that the array is writable like the step-by-step one.
                pixels = bytearray(b"".join(v[0] for v in stored))
                return np.frombuffer(pixels, np.uint8).reshape((n,) + tuple(image_shape))
        else:
            size = f.size
            if all(len(v) == size for v in stored):
                dtype = np.float32 if f.dtype == "float32" else np.int64
                arr = np.fromiter(itertools.chain.from_iterable(stored), dtype, count=n * size)
                arr = arr.reshape((n,) + f.shape)
                return arr != 0 if f.dtype == "bool" else arr
    return [_take(v, f, image_shape, f" at step {t}") for t, v in enumerate(features)]


def peek_kind(data: bytes) -> tuple[str, int]:
    """(kind, schema_version) of a serialised record, whatever its kind.

    A SequenceExample's context is field 1 with the same type as an Example's features, so
    parsing any of our records as an Example yields the header.
    """
    try:
        msg = pb.Example.FromString(bytes(data))
    except Exception:  # protobuf raises DecodeError, or RuntimeError in some builds
        raise RecordError("not a valid tf.Example / tf.SequenceExample protocol buffer") from None
    feats = msg.features.feature
    if "kind" not in feats or "schema_version" not in feats:
        raise RecordError("not a QT-Opt record: no 'kind' or 'schema_version' feature")
    kind = bytes(feats["kind"].bytes_list.value[0]).decode("utf-8", "replace") \
        if feats["kind"].bytes_list.value else ""
    version = int(feats["schema_version"].int64_list.value[0]) \
        if feats["schema_version"].int64_list.value else -1
    return kind, version


def decode(data: bytes, steps: bool = True) -> dict:
    """Parse and validate one serialised record of any kind. Raises RecordError.

    ``steps=False`` parses an episode's header (its context fields) only, for counts and ids
    without the cost of every step's image."""
    kind, version = peek_kind(data)
    if version not in SUPPORTED_VERSIONS:
        raise RecordError(_unsupported(version))
    try:
        spec = spec_for(kind)
    except KeyError as exc:
        raise RecordError(str(exc.args[0])) from None
    if spec.container == "example":
        features = pb.Example.FromString(bytes(data)).features.feature
        lists = None
    else:
        msg = pb.SequenceExample.FromString(bytes(data))
        features, lists = msg.context.feature, msg.feature_lists.feature_list
    added = added_since(kind, version)
    missing = [f.name for f in spec.fields if f.name not in features and f.name not in added]
    if lists is not None and steps:
        missing += [f.name for f in spec.step_fields if f.name not in lists]
    if missing:
        raise RecordError(f"{kind} record lacks fields: {', '.join(missing)}")
    image_shape = _check_image_shape(features["image_shape"].int64_list.value)
    out = {f.name: _take(features[f.name], f, image_shape, "") if f.name in features
           else added[f.name] for f in spec.fields}
    if lists is not None and not steps:
        return out
    if lists is not None:
        for f in spec.step_fields:
            out[f.name] = _take_steps(lists[f.name].feature, f, image_shape)
    return validate(out)

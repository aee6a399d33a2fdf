"""Reading our records with the ``tfrecord`` package (no TensorFlow), e.g. from PyTorch.

``tfrecord`` needs a description of each feature's storage type and hands back flat numpy arrays;
both directions are derived from the specs here::

    import schemas                      # first: lets tfrecord and tensorflow share a process
    from schemas.interop import tfrecord_description, from_tfrecord
    from tfrecord.reader import tfrecord_loader

    for raw in tfrecord_loader("transitions/shard-00000-of-00004.tfrecord.gz", None,
                               tfrecord_description("transition"), compression_type="gzip"):
        record = from_tfrecord("transition", raw)   # images (H, W, 3) uint8, strings as str

The ``tfrecord`` package does not check the records' CRCs: a damaged record decodes as whatever
its bytes now say. ``check_file(path)`` checks every frame first with our reader (as
``schemas.tfrecord_io.read_records`` and TensorFlow's reader do while reading).
"""

from __future__ import annotations

import numpy as np

from schemas.codec import validate
from schemas.specs import spec_for

def check_file(path: str) -> int:
    """Check every record's length and data CRC in ``path`` (gzip or not); the number of
    records, or RecordError naming the file, record index and byte offset of the first fault."""
    from schemas.errors import RecordError
    from schemas.tfrecord_io import scan

    n = 0
    for item in scan(path):
        if isinstance(item, RecordError):
            raise item
        n += 1
    return n


_STORAGE = {"float32": "float", "int64": "int", "bool": "int", "string": "byte", "image": "byte"}


def tfrecord_description(kind: str) -> dict:
    """``description`` for ``tfrecord.reader.tfrecord_loader`` (the context, for episodes)."""
    return {f.name: _STORAGE[f.dtype] for f in spec_for(kind).fields}


def tfrecord_sequence_description(kind: str = "episode") -> dict:
    """``sequence_description`` for episodes (their per-step features)."""
    return {f.name: _STORAGE[f.dtype] for f in spec_for(kind).step_fields}


def _convert(f, value, image_shape):
    # tfrecord returns a bytes feature with one value as ``bytes`` and with several as an array.
    if f.dtype == "image":
        return np.frombuffer(value, np.uint8).reshape(image_shape)
    if f.dtype == "string":
        if isinstance(value, bytes):
            return [value.decode("utf-8")] if f.variable else value.decode("utf-8")
        return [bytes(v).decode("utf-8") for v in value]
    arr = np.asarray(value)
    if f.variable:
        return arr
    return arr.reshape(f.shape) if f.shape else arr.reshape(())[()]


def from_tfrecord(kind: str, raw, steps=None) -> dict:
    """Our record dict from what ``tfrecord`` returned, validated against the spec.

    For episodes pass ``(context, steps)`` as ``raw`` or the two separately.
    """
    if isinstance(raw, tuple):
        raw, steps = raw
    spec = spec_for(kind)
    image_shape = tuple(int(v) for v in np.asarray(raw["image_shape"]).reshape(-1))
    out = {f.name: _convert(f, raw[f.name], image_shape) for f in spec.fields}
    for f in spec.step_fields:
        out[f.name] = [_convert(f, v, image_shape) for v in steps[f.name]]
    return validate(out)

"""Hypothesis strategies for records, derived from the specs (so a new field is covered at once)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from schemas.codec import new_record
from schemas.specs import ACTION_DIM, Field, spec_for

# Any text a record may hold: UTF-8 without NUL (the spec refuses NUL, see schemas.codec).
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
                min_size=0, max_size=12)
_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


def _field(f: Field, image_shape):
    if f.dtype == "image":
        return st.binary(min_size=int(np.prod(image_shape)), max_size=int(np.prod(image_shape))) \
            .map(lambda b: np.frombuffer(b, np.uint8).reshape(image_shape))
    if f.dtype == "string":
        if f.variable:
            return st.lists(_text.filter(bool), min_size=1, max_size=5)
        return _text
    if f.dtype == "bool":
        return st.booleans()
    if f.dtype == "int64":
        return st.integers(-2**63, 2**63 - 1).map(np.int64)
    if f.shape:
        return st.lists(_floats, min_size=ACTION_DIM, max_size=ACTION_DIM) \
            .map(lambda v: np.asarray(v, np.float32))
    return _floats.map(np.float32)


_HEADER = ("schema_version", "kind", "image_shape")


@st.composite
def records(draw, kind: str):
    spec = spec_for(kind)
    image_shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)), 3)
    values = {f.name: draw(_field(f, image_shape)) for f in spec.fields if f.name not in _HEADER}
    if spec.step_fields:
        n = draw(st.integers(0, 4))
        values["num_steps"] = np.int64(n)
        for f in spec.step_fields:
            values[f.name] = [draw(_field(f, image_shape)) for _ in range(n + 1)]
        values["is_first"] = [t == 0 for t in range(n + 1)]
        values["is_last"] = [t == n for t in range(n + 1)]
    return new_record(kind, image_shape, **values)

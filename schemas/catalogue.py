"""The episode catalogue: one row per episode, as a pyarrow table, derived from the episode spec.

The columns are the episode's metadata (every non-step field but the image shape) in spec order.
"""

from __future__ import annotations

from typing import Iterable

import pyarrow as pa

from schemas.specs import EPISODE

_ARROW = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(),
          "float32": pa.float32()}
_SKIP = ("image_shape", "kind")


def catalogue_fields() -> list:
    return [f for f in EPISODE.fields if f.name not in _SKIP]


def catalogue_schema() -> pa.Schema:
    cols = []
    for f in catalogue_fields():
        t = _ARROW[f.dtype]
        cols.append(pa.field(f.name, pa.list_(t) if f.variable else t, nullable=False))
    return pa.schema(cols, metadata={"record_kind": "episode_catalogue"})


def catalogue_row(episode: dict) -> dict:
    """The catalogue row of a decoded episode record."""
    row = {}
    for f in catalogue_fields():
        v = episode[f.name]
        row[f.name] = list(v) if f.variable else (v.item() if hasattr(v, "item") else v)
    return row


def catalogue_table(rows: Iterable[dict]) -> pa.Table:
    rows = list(rows)
    schema = catalogue_schema()
    return pa.Table.from_pylist(rows, schema=schema)

"""``qtopt inspect PATH...``: what a TFRecord file holds, without TensorFlow.

    qtopt inspect 'runs/demo/transitions/scripted/shard-*.tfrecord.gz'

For each file (local or ``gs://``, globs allowed): record kind, schema version, record count, the
shape of every field, and one decoded record. Every record is read and validated (checksums,
spec), so a corrupted file is reported with the record at fault.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from schemas import codec, fs, tfrecord_io
from schemas.errors import RecordError
from schemas.specs import spec_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="TFRecord files or globs, local or gs:// (gzip or not)")
    parser.add_argument("--record", type=int, default=0, metavar="N",
                        help="which record to show decoded (default: the first)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")


def _shape(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, list):
        return f"list[{len(value)}]"
    return type(value).__name__


def _show(value, limit: int = 8):
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8 and value.ndim >= 2:
            return f"<uint8 image {list(value.shape)}, mean {value.mean():.1f}>"
        if value.size > limit:
            return f"<{value.dtype} {list(value.shape)}, first {value.reshape(-1)[:limit].tolist()}>"
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def summarise(path: str, show_index: int = 0) -> dict:
    count, kind, version, shown = 0, None, None, None
    for raw in tfrecord_io.iter_raw(path):
        try:
            record = codec.decode(raw.data)
        except RecordError as exc:
            raise exc.located(raw.path, raw.index, raw.offset) from None
        if kind is None:
            # The version as stored: decoding reads an older record as the current one.
            kind, version = record["kind"], codec.peek_kind(raw.data)[1]
        elif record["kind"] != kind:
            raise RecordError(f"mixed record kinds in one file ({kind} then {record['kind']})",
                              path, raw.index, raw.offset)
        if raw.index == show_index:
            shown = record
        count += 1
    if count == 0:
        return {"path": path, "records": 0}
    if shown is None:
        raise RecordError(f"--record {show_index} is out of range ({count} records)", path)
    spec = spec_for(kind)
    return {
        "path": path,
        "kind": kind,
        "schema_version": version,
        "records": count,
        "fields": {name: _shape(shown[name]) for name in spec.names},
        "record": {"index": show_index, **{name: _show(shown[name]) for name in spec.names}},
    }


def run(args: argparse.Namespace) -> int:
    paths = []
    for pattern in args.paths:
        matches = fs.glob(pattern)
        if not matches:
            raise RecordError("no such file", pattern)
        paths.extend(matches)
    for path in paths:
        info = summarise(path, args.record)
        if args.json:
            print(json.dumps(info, default=str))
            continue
        print(f"{info['path']}")
        if not info["records"]:
            print("  empty file (0 records)")
            continue
        print(f"  kind {info['kind']}, schema version {info['schema_version']}, "
              f"{info['records']} records")
        print("  fields:")
        for name, shape in info["fields"].items():
            print(f"    {name:32s} {shape}")
        print(f"  record {info['record']['index']}:")
        for name, value in info["record"].items():
            if name != "index":
                print(f"    {name:32s} {value}")
    sys.stdout.flush()
    return 0

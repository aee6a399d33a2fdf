"""Labelled shards on disk for the model tests: real gzip TFRecords through schemas/."""

from __future__ import annotations

import os
import re

import numpy as np

from schemas import codec, tfrecord_io
from schemas.fake import fake_record

SIZE = 16


def labelled(rng, image_value: int, close: bool, target: float, size: int = SIZE) -> dict:
    rec = fake_record("labelled_transition", rng, size)
    rec["observation/image"] = np.clip(
        image_value + rng.integers(-10, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    action = rec["action"].copy()
    action[5:7] = (1.0, 0.0) if close else (0.0, 1.0)
    rec["action"] = action
    rec["target"] = np.float32(target)
    return rec


def ordering_records(n: int, seed: int, size: int = SIZE) -> list[dict]:
    """Q should be high only for closing the gripper on a bright (object-present) image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bright, close = bool(i % 2), bool(i // 2 % 2)
        out.append(labelled(rng, 200 if bright else 40, close,
                            0.9 if (bright and close) else 0.1, size))
    return out


def write_shards(directory, records_per_shard: int, shards: int, seed: int = 0,
                 size: int = SIZE) -> str:
    for s in range(shards):
        tfrecord_io.write_records(os.path.join(directory, f"shard-{s:05d}.tfrecord.gz"),
                                  ordering_records(records_per_shard, seed * 1000 + s, size))
    return os.path.join(directory, "*.tfrecord.gz")


def write_raw(path, records: list[dict], edit=None) -> None:
    """Write records, letting ``edit(index, tf.train.Example)`` break them past the validator."""
    import tensorflow as tf

    with tfrecord_io.RecordWriter(str(path)) as w:
        for i, rec in enumerate(records):
            data = codec.encode(rec)
            if edit is not None:
                example = tf.train.Example.FromString(data)
                edit(i, example)
                data = example.SerializeToString()
            w.write(data)


def latest_checkpoint_step(workdir) -> int:
    """The step of the newest checkpoint a workdir's index names (0 without one)."""
    index = os.path.join(workdir, "checkpoints", "checkpoint")
    if not os.path.exists(index):
        return 0
    found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', open(index).read(), re.M)
    return int(found.group(1)) if found else 0

"""``qtopt export rlds``: episodes to an RLDS dataset in TFDS's folder format.

    OUT/qtopt_episodes-train.tfrecord-00000-of-00003 ...  one tf.train.Example per episode,
                                                          written by tfds's own serializer
    OUT/dataset_info.json, features.json                  tfds.folder_dataset.write_metadata
    OUT/dead-letter.jsonl, manifest.json                  (the manifest is written last)

``tfds.builder_from_directory(OUT).as_dataset(split="train")`` loads it: each element holds
``steps`` (a ``tfds.features.Dataset``) and ``episode_metadata``. The features come from the
episode spec (``schemas.specs.EPISODE``): a step's ``observation`` holds every
``observation/*`` field (the image as PNG), then ``action``, ``reward``, ``discount``,
``is_first``, ``is_last``, ``is_terminal``; the metadata holds every context field plus
``ended_by`` (``termination`` or ``step_limit``, see ``pipelines.jobs.convert``).

Step semantics are RLDS's (google-research/rlds README, "Dataset Format"): step t holds o_t, the
action a_t taken there, the reward r_t for it and the discount d_t for that reward; the last step
holds the final observation, its action, reward and discount being zeros. So an episode that
ended by termination has ``discount`` 0 on its last action and ``is_terminal`` on its last step;
one cut off by the step limit is truncated: ``discount`` 1 throughout and ``is_last`` without
``is_terminal``. Our own records (``discount`` 0 only on the last step, every end terminal) keep
what the Bellman target needs; this is what RLDS readers expect.

An episode goes to shard ``sha256(id) mod --num-shards``, sorted by id inside it, so the same
episodes give the same dataset on any runner; shards no episode fell into are not written.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

from pipelines.machinery import dataset
from pipelines.formats.common import (
    ENDED_BY_TERMINATION,
    NAMESPACE,
    ended_by,
    publish_export,
    episodes_of,
    refusal,
)
from schemas import fs
from schemas.errors import UserError
from schemas.specs import EPISODE
from schemas.tfrecord_io import RecordWriter

DATASET_NAME = "qtopt_episodes"
SPLIT = "train"
METADATA_FILES = ("dataset_info.json", "features.json")
_SHARD = re.compile(rf"^{DATASET_NAME}-{SPLIT}\.tfrecord-\d{{5}}-of-\d{{5}}$")
_HEADER = ("schema_version", "kind", "image_shape")
OBSERVATION = "observation/"


def ours(name: str) -> bool:
    """Whether a top-level name is one this export writes."""
    return bool(_SHARD.match(name)) or name in METADATA_FILES or name == dataset.MANIFEST


def shard_file(index: int, count: int) -> str:
    return f"{DATASET_NAME}-{SPLIT}.tfrecord-{index:05d}-of-{count:05d}"


def shard_of(episode_id: str, num_shards: int) -> int:
    digest = hashlib.sha256(f"export\x00{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def features(image_shape):
    """The dataset's ``tfds.features.FeaturesDict``, derived from the episode spec."""
    import numpy as np
    import tensorflow_datasets as tfds

    F = tfds.features  # noqa: N806

    def connector(f):
        if f.dtype == "image":
            return F.Image(shape=tuple(int(v) for v in image_shape), dtype=np.uint8,
                           encoding_format="png", doc=f.doc)
        if f.dtype == "string":
            return F.Sequence(F.Text(), doc=f.doc) if f.variable else F.Text(doc=f.doc)
        dtype = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}[f.dtype]
        if f.shape:
            return F.Tensor(shape=f.shape, dtype=dtype, doc=f.doc)
        return F.Scalar(dtype=dtype, doc=f.doc)

    step = {"observation": F.FeaturesDict({f.name[len(OBSERVATION):]: connector(f)
                                           for f in EPISODE.step_fields
                                           if f.name.startswith(OBSERVATION)})}
    step.update({f.name: connector(f) for f in EPISODE.step_fields
                 if not f.name.startswith(OBSERVATION)})
    step["discount"] = F.Scalar(dtype=np.float32, doc="RLDS: discount for this step's reward; 0 "
                                                      "on the action that ended the episode by "
                                                      "termination")
    step["is_terminal"] = F.Scalar(dtype=np.bool_, doc="RLDS: the last step of an episode ended "
                                                       "by termination (not by the step limit)")
    metadata = {f.name: connector(f) for f in EPISODE.fields if f.name not in _HEADER}
    metadata["ended_by"] = F.Text(doc="termination (the terminate action or the scripted "
                                      "termination) or step_limit (truncated)")
    return F.FeaturesDict({"steps": F.Dataset(step), "episode_metadata": F.FeaturesDict(metadata)})


def rlds_episode(episode: dict) -> dict:
    """An episode record as the nested dict ``features(...)`` serialises, in RLDS semantics."""
    import numpy as np
    from PIL import Image

    n = int(episode["num_steps"])
    how = ended_by(episode)
    terminated = how == ENDED_BY_TERMINATION
    steps = []
    for t in range(n + 1):
        # Images go to tfds as PIL images, which it encodes with PIL: several times faster than
        # its TensorFlow encoder for arrays, and the same lossless PNG.
        step = {"observation": {f.name[len(OBSERVATION):]:
                                Image.fromarray(np.ascontiguousarray(episode[f.name][t]))
                                if f.dtype == "image" else episode[f.name][t]
                                for f in EPISODE.step_fields if f.name.startswith(OBSERVATION)}}
        step.update({f.name: episode[f.name][t] for f in EPISODE.step_fields
                     if not f.name.startswith(OBSERVATION)})
        step["discount"] = np.float32(0.0 if t == n or (terminated and t == n - 1) else 1.0)
        step["is_first"], step["is_last"] = t == 0, t == n
        step["is_terminal"] = terminated and t == n
        steps.append(step)
    metadata = {f.name: episode[f.name] for f in EPISODE.fields if f.name not in _HEADER}
    metadata["ended_by"] = how
    return {"steps": steps, "episode_metadata": metadata}


def write_metadata(staging: str, shards: list[str], lengths: list[int], num_bytes: int,
                   image_shape) -> None:
    """dataset_info.json and features.json for the shards, by tfds's own writer.

    The writer lists its directory for the shard names and, given the split's lengths, reads no
    shard; so it runs in a local directory of empty stand-ins and its files are copied to the
    staging directory, local or in a bucket alike.
    """
    import tensorflow_datasets as tfds

    with tempfile.TemporaryDirectory() as tmp:
        for name in shards:
            open(os.path.join(tmp, name), "wb").close()
        split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=list(lengths), num_bytes=num_bytes)
        tfds.folder_dataset.write_metadata(
            data_dir=tmp, features=features(image_shape), split_infos=[split],
            check_data=False,
            description="QT-Opt grasping episodes (qtopt export rlds), as RLDS steps")
        for name in METADATA_FILES:
            with open(os.path.join(tmp, name), "rb") as f:
                fs.write_bytes(fs.join(staging, name), f.read())


def build(pipeline, files, out, run_id, args, config, first, expected, manifest_extra):
    """Add the job to ``pipeline``: read -> serialise -> shards in staging -> commit."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    num_shards = args.num_shards if args.num_shards is not None else config.pipeline.num_shards
    if num_shards < 1:
        raise UserError(f"--num-shards must be >= 1, got {num_shards}")
    image_shape = tuple(int(v) for v in first["image_shape"])
    staging = dataset.staging_dir(out, run_id)

    class Serialise(beam.DoFn):
        def __init__(self):
            self.steps = Metrics.counter(NAMESPACE, "steps")

        def setup(self):
            self.features = features(image_shape)

        def process(self, episode):
            # Another cell's episode is not written: the commit refuses the export.
            if tuple(int(v) for v in episode["image_shape"]) == image_shape:
                self.steps.inc(int(episode["num_steps"]) + 1)
                yield (shard_of(episode["episode_id"], num_shards),
                       (episode["episode_id"],
                        self.features.serialize_example(rlds_episode(episode))))

    def write_shard(item):
        index, rows = item
        rows = sorted(rows)
        name = f"shard-{index:05d}.tmp"
        # Uncompressed: tfds reads its TFRecord shards without a compression option.
        with RecordWriter(fs.join(staging, name), compress=False) as w:
            for _id, data in rows:
                w.write(data)
        return {"index": index, "staged": name, "records": len(rows),
                "bytes": fs.size(fs.join(staging, name))}

    read = episodes_of(pipeline, files, expected)
    shards = (read.episodes
              | "Serialise" >> beam.ParDo(Serialise())
              | "Group by shard" >> beam.GroupByKey()
              | "Write shards" >> beam.Map(write_shard))

    def commit(_, infos, letters, ids, counted):
        reason = refusal(out, ids)
        if reason:
            return dataset.refuse(out, run_id, reason)
        infos = sorted(infos, key=lambda i: i["index"])
        written = sum(i["records"] for i in infos)
        if written != len(ids) or len({i["index"] for i in infos}) != len(infos):
            raise RuntimeError(f"export rlds for {out}: wrote {written} episodes but read "
                               f"{len(ids)}; not published")
        names = []
        for k, info in enumerate(infos):
            name = shard_file(k, len(infos))
            dataset._move(fs.join(staging, info["staged"]), fs.join(staging, name))  # noqa: SLF001
            names.append(name)
        if infos:
            write_metadata(staging, names, [i["records"] for i in infos],
                           sum(i["bytes"] for i in infos), image_shape)
            names += list(METADATA_FILES)
        return publish_export("rlds", out, run_id, names, letters, counted, written, ids, {
            **manifest_extra, "image_shape": list(image_shape), "num_shards": len(infos),
            "counts": {"episodes": written, "steps": sum(s + 1 for _i, s, _c, _p, _x in ids),
                       "dead_lettered": len(letters)}})

    AsList = beam.pvalue.AsList  # noqa: N806
    return (pipeline
            | "Commit trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, AsList(shards), AsList(read.dead), AsList(read.ids),
                                   AsList(read.counted)))

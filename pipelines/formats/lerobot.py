"""``qtopt export lerobot``: episodes to a LeRobot v3.0 dataset, written with pyarrow.

    OUT/meta/info.json                               codebase_version v3.0, features, fps, splits,
                                                     data_path; no videos (video_path null)
    OUT/meta/stats.json                              min, max, mean, std, count per feature
    OUT/meta/tasks.parquet                           one task (--task), index "task", task_index
    OUT/meta/episodes/chunk-CCC/file-FFF.parquet     one row per episode: episode_index, tasks,
                                                     length, data/chunk_index, data/file_index,
                                                     dataset_from_index, dataset_to_index,
                                                     meta/episodes/*, stats/*, and ours (episode_id,
                                                     source, policy, success, seed, object_ids,
                                                     cell, ended_by)
    OUT/data/chunk-CCC/file-FFF.parquet              one row per frame
    OUT/dead-letter.jsonl, manifest.json             (the manifest is written last)

The layout follows LeRobot's own writer (huggingface/lerobot, ``src/lerobot/datasets/utils.py``:
paths and ``create_empty_dataset_info``; ``dataset_metadata.py``: the episodes and tasks tables;
``dataset_writer.py``: the frame columns). A frame is one step of an episode record (an episode of
T actions gives T + 1 frames; the last holds the final observation with a zero action):
``observation.image`` (an ``image`` feature: PNG bytes in the parquet, as a Hugging Face
``datasets.Image`` struct), ``observation.state`` (the episode spec's state scalars, in
``schemas.specs.STATE_SCALARS`` order), ``action``, ``next.reward`` (the reward for the frame's
action), ``next.done`` (the episode's last frame), ``timestamp`` (frame_index / fps),
``frame_index``, ``episode_index``, ``index`` and ``task_index``.

Episodes are numbered in the order of their ids, so the same episodes give the same dataset on
any runner; ``--episodes-per-file`` of them share a data file (and an episodes metadata file),
1000 files to a chunk as in LeRobot.
"""

from __future__ import annotations

import io
import json

import numpy as np

from pipelines.machinery import dataset
from pipelines.formats.common import NAMESPACE, ended_by, publish_export, episodes_of, refusal
from schemas import fs
from schemas.errors import UserError
from schemas.specs import ACTION_LAYOUT, STATE_SCALARS

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO, STATS, TASKS = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
IMAGE = "observation.image"
DEFAULT_TASK = "grasp an object from the bin and lift it"
DEFAULT_FPS = 10.0
DEFAULT_EPISODES_PER_FILE = 500
# Episode-level fields of ours carried in the episodes table.
_METADATA = ("episode_id", "source", "policy", "robot_id", "cell", "object_ids", "seed",
             "success", "num_steps")


def ours(name: str) -> bool:
    """Whether a top-level name is one this export writes."""
    return name in ("meta", "data", dataset.MANIFEST)


def file_location(number: int) -> tuple[int, int]:
    """(chunk index, file index) of the ``number``-th file."""
    return number // CHUNKS_SIZE, number % CHUNKS_SIZE


def frame_features(image_shape) -> dict:
    """info.json's ``features``."""
    scalar = {"shape": [1], "names": None}
    return {
        IMAGE: {"dtype": "image", "shape": [int(v) for v in image_shape],
                "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [len(STATE_SCALARS)],
                              "names": list(STATE_SCALARS)},
        "action": {"dtype": "float32", "shape": [len(ACTION_LAYOUT)],
                   "names": list(ACTION_LAYOUT)},
        "next.reward": {"dtype": "float32", **scalar},
        "next.done": {"dtype": "bool", **scalar},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
    }


def frame_schema(image_shape):
    """The data files' arrow schema, with the Hugging Face ``datasets`` features in its metadata
    (what LeRobot's loader and ``datasets`` read the image column by)."""
    import pyarrow as pa

    hf, fields = {}, []
    for name, ft in frame_features(image_shape).items():
        if ft["dtype"] == "image":
            image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            fields.append(pa.field(name, image))
            hf[name] = {"_type": "Image"}
            continue
        value = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}[ft["dtype"]]
        if ft["shape"] == [1]:
            fields.append(pa.field(name, value))
            hf[name] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            fields.append(pa.field(name, pa.list_(value, ft["shape"][0])))
            hf[name] = {"feature": {"dtype": ft["dtype"], "_type": "Value"},
                        "length": ft["shape"][0], "_type": "Sequence"}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _stats(values: np.ndarray, axis) -> dict:
    values = np.asarray(values, np.float64)
    return {"min": values.min(axis=axis), "max": values.max(axis=axis),
            "mean": values.mean(axis=axis), "std": values.std(axis=axis),
            "count": np.array([values.shape[0]])}


def episode_frames(episode: dict, episode_index: int, first_index: int, fps: float,
                   task_index: int = 0) -> tuple[dict, dict]:
    """(columns of the episode's frames, its stats by feature) as LeRobot computes them: per
    dimension over the frames; per channel over the pixels, in [0, 1], for the image."""
    n = int(episode["num_steps"]) + 1
    images = np.asarray(episode["observation/image"])
    state = np.stack([np.asarray(episode[f"observation/{name}"], np.float32)
                      for name in STATE_SCALARS], axis=1)
    frame_index = np.arange(n, dtype=np.int64)
    columns = {
        IMAGE: [{"bytes": png(img), "path": None} for img in images],
        "observation.state": state,
        "action": np.asarray(episode["action"], np.float32),
        "next.reward": np.asarray(episode["reward"], np.float32),
        "next.done": frame_index == n - 1,
        "timestamp": (frame_index / fps).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.full(n, episode_index, np.int64),
        "index": first_index + frame_index,
        "task_index": np.full(n, task_index, np.int64),
    }
    stats = {name: _stats(np.asarray(values).reshape(n, -1), 0)
             for name, values in columns.items() if name != IMAGE}
    pixels = images.reshape(n, -1, 3).astype(np.float64) / 255.0
    image_stats = _stats(pixels.reshape(-1, 3), 0)
    stats[IMAGE] = {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in image_stats.items()}
    stats[IMAGE]["count"] = np.array([n])
    return columns, stats


def aggregate_stats(all_stats: list[dict]) -> dict:
    """Dataset stats from episode stats: counts add, means weigh by count, variances combine
    (within plus between episodes), as LeRobot's ``aggregate_stats`` does."""
    out = {}
    for name in all_stats[0]:
        parts = [s[name] for s in all_stats]
        counts = np.array([float(p["count"][0]) for p in parts])
        weights = (counts / counts.sum()).reshape((-1,) + (1,) * np.ndim(parts[0]["mean"]))
        means = np.stack([p["mean"] for p in parts])
        mean = (weights * means).sum(axis=0)
        var = (weights * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(0)
        out[name] = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
                     "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
                     "mean": mean, "std": np.sqrt(var),
                     "count": np.array([int(counts.sum())])}
    return out


def _jsonable(stats: dict) -> dict:
    return {name: {k: np.asarray(v).tolist() for k, v in s.items()} for name, s in stats.items()}


def tasks_table(task: str):
    """meta/tasks.parquet as pandas writes LeRobot's tasks frame: the task string is the index."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return pa.table({"task_index": pa.array([0], pa.int64()), "task": pa.array([task])},
                    schema=pa.schema([("task_index", pa.int64()), ("task", pa.string())],
                                     metadata={"pandas": json.dumps(pandas_meta)}))


def _write_parquet(path: str, table) -> None:
    import pyarrow.parquet as pq

    with fs.atomic_write(path, "wb") as f:
        pq.write_table(table, f, compression="snappy")


def build(pipeline, files, out, run_id, args, config, first, expected, manifest_extra):
    """Add the job to ``pipeline``: read -> number -> frames -> data files -> commit."""
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.metrics import Metrics

    fps = args.fps if args.fps is not None else DEFAULT_FPS
    task = args.task if args.task is not None else DEFAULT_TASK
    per_file = args.episodes_per_file if args.episodes_per_file is not None else \
        DEFAULT_EPISODES_PER_FILE
    if not fps > 0:
        raise UserError(f"--fps must be > 0, got {fps:g}")
    if per_file < 1:
        raise UserError(f"--episodes-per-file must be >= 1, got {per_file}")
    if not task.strip():
        raise UserError("--task must not be empty")
    image_shape = tuple(int(v) for v in first["image_shape"])
    staging = dataset.staging_dir(out, run_id)
    schema = frame_schema(image_shape)

    def numbering(ids):
        """{episode id: (episode index, index of its first frame)}, in the order of the ids."""
        order, start = {}, 0
        for episode_id, steps, *_ in sorted(ids):
            if episode_id not in order:
                order[episode_id] = (len(order), start)
                start += steps + 1
        return order

    class ToFrames(beam.DoFn):
        def __init__(self):
            self.frames = Metrics.counter(NAMESPACE, "frames")

        def process(self, episode, order):
            # Another cell's episode is not written: the commit refuses the export.
            if tuple(int(v) for v in episode["image_shape"]) == image_shape:
                index, start = order[episode["episode_id"]]
                columns, stats = episode_frames(episode, index, start, fps)
                meta = {name: episode[name] for name in _METADATA}
                meta["ended_by"] = ended_by(episode)
                self.frames.inc(int(episode["num_steps"]) + 1)
                yield index // per_file, (index, columns, stats, meta)

    def write_file(item):
        number, parts = item
        parts = sorted(parts, key=lambda p: p[0])
        chunk, file_index = file_location(number)
        columns = {name: [] for name in schema.names}
        rows = []
        for index, cols, stats, meta in parts:
            length = len(cols["frame_index"])
            first_frame = int(cols["index"][0])
            for name in schema.names:
                values = cols[name]
                columns[name].extend(values if name == IMAGE else np.asarray(values).tolist())
            row = {"episode_index": index, "tasks": [task], "length": length,
                   "data/chunk_index": chunk, "data/file_index": file_index,
                   "dataset_from_index": first_frame, "dataset_to_index": first_frame + length,
                   "meta/episodes/chunk_index": chunk, "meta/episodes/file_index": file_index}
            for name, s in stats.items():
                for key, value in s.items():
                    row[f"stats/{name}/{key}"] = np.asarray(value).tolist()
            row.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in meta.items()})
            rows.append(row)
        table = pa.table({name: pa.array(columns[name], schema.field(name).type)
                          for name in schema.names}, schema=schema)
        data = DATA_PATH.format(chunk_index=chunk, file_index=file_index)
        episodes = EPISODES_PATH.format(chunk_index=chunk, file_index=file_index)
        _write_parquet(fs.join(staging, data), table)
        _write_parquet(fs.join(staging, episodes), pa.Table.from_pylist(rows))
        return {"number": number, "names": [data, episodes], "episodes": len(parts),
                "frames": table.num_rows, "stats": [p[2] for p in parts],
                "robot_ids": sorted({p[3]["robot_id"] for p in parts})}

    read = episodes_of(pipeline, files, expected)
    order = read.ids | "Number episodes" >> beam.combiners.ToList() \
        | "Numbering" >> beam.Map(numbering)
    written = (read.episodes
               | "To frames" >> beam.ParDo(ToFrames(), beam.pvalue.AsSingleton(order))
               | "Group by file" >> beam.GroupByKey()
               | "Write files" >> beam.Map(write_file))

    def commit(_, infos, letters, ids, counted):
        reason = refusal(out, ids)
        if reason:
            return dataset.refuse(out, run_id, reason)
        infos = sorted(infos, key=lambda i: i["number"])
        episodes = sum(i["episodes"] for i in infos)
        frames = sum(i["frames"] for i in infos)
        if episodes != len(ids) or frames != sum(s + 1 for _i, s, *_ in ids):
            raise RuntimeError(f"export lerobot for {out}: wrote {episodes} episodes "
                               f"({frames} frames) but read {len(ids)}; not published")
        names = [name for i in infos for name in i["names"]]
        info = {"codebase_version": CODEBASE_VERSION,
                "robot_type": ",".join(sorted({r for i in infos for r in i["robot_ids"]})) or None,
                "total_episodes": episodes, "total_frames": frames, "total_tasks": 1,
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100,
                "video_files_size_in_mb": 500, "fps": fps,
                "splits": {"train": f"0:{episodes}"}, "data_path": DATA_PATH,
                "video_path": None, "features": frame_features(image_shape)}
        fs.write_text(fs.join(staging, INFO), json.dumps(info, indent=4) + "\n")
        all_stats = [s for i in infos for s in i["stats"]]
        if all_stats:
            fs.write_text(fs.join(staging, STATS),
                          json.dumps(_jsonable(aggregate_stats(all_stats)), indent=4) + "\n")
            names.append(STATS)
        _write_parquet(fs.join(staging, TASKS), tasks_table(task))
        names += [INFO, TASKS]
        return publish_export("lerobot", out, run_id, names, letters, counted, episodes, ids, {
            **manifest_extra, "image_shape": list(image_shape), "fps": fps, "task": task,
            "episodes_per_file": per_file,
            "counts": {"episodes": episodes, "frames": frames, "dead_lettered": len(letters)}})

    AsList = beam.pvalue.AsList  # noqa: N806
    return (pipeline
            | "Commit trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, AsList(written), AsList(read.dead), AsList(read.ids),
                                   AsList(read.counted)))

"""``qtopt export rlds|lerobot`` end to end: real episodes of the simulated cell and fake ones,
the real Beam runner, loaded back with tfds (RLDS) and pyarrow through LeRobot's layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.formats.common import ENDED_BY_STEP_LIMIT, ENDED_BY_TERMINATION, ended_by
from pipelines_testlib import (IN_PROCESS, corrupt_record, dead_letters, manifest, qtopt,
                               truncate)
from schemas import codec, tfrecord_io
from schemas.cells import default_cell
from schemas.config import RobotConfig
from schemas.fake import fake_records
from schemas.specs import STATE_SCALARS
from test_pipelines_gcs import bucket  # noqa: F401  (the GCS emulator fixture)

SIZE = 32
OTHER_CELL = RobotConfig(image_size=SIZE, object_scale=1.0).cell_identity()


def _write(path: Path, episodes: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tfrecord_io.RecordWriter(str(path)) as w:
        for e in episodes:
            w.write(codec.encode(e))
    return path


def _fake(seed: int, n: int, steps: int, terminate_last: bool | None = None,
          cell: str | None = None) -> list[dict]:
    eps = fake_records("episode", n, seed=seed, image_size=SIZE, num_steps=steps)
    for e in eps:
        e["cell"] = cell or e["cell"]
        if terminate_last is not None:
            e["action"][steps - 1][7] = float(terminate_last)
        # As the cell records every end: terminal, discount 0 on the last step.
        e["is_terminal"] = [t == steps for t in range(steps + 1)]
        e["discount"] = [np.float32(t != steps) for t in range(steps + 1)]
    return eps


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """Two episodes of the real cell, one cut off by the step limit and one ended by the
    terminate action, and fake ones of the same cell, in two files."""
    from robot.cell import SimCell
    from robot.episode import run_episode
    from robot.policies import RandomPolicy

    src = tmp_path_factory.mktemp("export") / "episodes"
    config = RobotConfig(image_size=SIZE, max_steps=3)
    cell = SimCell(config, "train")
    real = []
    for seed, terminate in ((1, 0.0), (2, 1.0)):
        real.append(run_episode(cell, RandomPolicy(config, terminate_prob=terminate, rng=seed),
                                seed, source="sim"))
        how = cell.outcome.terminated_by
        assert ended_by(real[-1]) == (ENDED_BY_STEP_LIMIT if how == "step_limit" else
                                      ENDED_BY_TERMINATION), how
    cell.close()
    assert [ended_by(e) for e in real] == [ENDED_BY_STEP_LIMIT, ENDED_BY_TERMINATION]
    assert real[0]["cell"] == default_cell(SIZE)
    _write(src / "real.tfrecord.gz", real)
    _write(src / "fake.tfrecord.gz", _fake(5, 2, 4, terminate_last=True)
           + _fake(6, 1, 20, terminate_last=False))
    return src


def _sources(directory: Path) -> dict:
    return {e["episode_id"]: e for p in sorted(directory.glob("*.tfrecord.gz"))
            for e in tfrecord_io.read_records(str(p))}


def _load_rlds(out: Path) -> dict:
    import tensorflow_datasets as tfds

    ds = tfds.builder_from_directory(str(out)).as_dataset(split="train")
    loaded = {}
    for episode in tfds.as_numpy(ds):
        meta = episode["episode_metadata"]
        loaded[meta["episode_id"].decode()] = (meta, list(episode["steps"]))
    return loaded


def _check_rlds(out: Path, sources: dict) -> None:
    loaded = _load_rlds(out)
    assert sorted(loaded) == sorted(sources)
    for episode_id, src in sources.items():
        meta, steps = loaded[episode_id]
        n = int(src["num_steps"])
        terminated = ended_by(src) == ENDED_BY_TERMINATION
        assert len(steps) == n + 1
        assert meta["ended_by"].decode() == ended_by(src)
        assert meta["source"].decode() == src["source"] and meta["seed"] == src["seed"]
        assert bool(meta["success"]) == src["success"] and meta["num_steps"] == n
        assert [o.decode() for o in meta["object_ids"]] == src["object_ids"]
        assert meta["cell"].decode() == src["cell"]
        for t, step in enumerate(steps):
            np.testing.assert_array_equal(step["observation"]["image"],
                                          src["observation/image"][t])
            for name in STATE_SCALARS:
                assert step["observation"][name] == src[f"observation/{name}"][t]
            np.testing.assert_array_equal(step["action"], src["action"][t])
            assert step["reward"] == src["reward"][t]
            assert (step["is_first"], step["is_last"]) == (t == 0, t == n)
            # RLDS: a step-limit end is a truncation; a termination zeroes the discount of the
            # action that ended the episode.
            assert step["is_terminal"] == (terminated and t == n)
            assert step["discount"] == (0.0 if t == n or (terminated and t == n - 1) else 1.0)


def _load_lerobot(out: Path) -> dict:
    """{episode_id: (episode row, frame rows)} read through the layout: info.json's paths and
    the episodes table's file indices and frame ranges."""
    import pyarrow.parquet as pq

    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["video_path"] is None
    rows = [r for p in sorted((out / "meta/episodes").glob("chunk-*/file-*.parquet"))
            for r in pq.read_table(p).to_pylist()]
    assert [r["episode_index"] for r in rows] == list(range(info["total_episodes"]))
    assert info["splits"] == {"train": f"0:{info['total_episodes']}"}
    tables: dict = {}
    loaded = {}
    for row in rows:
        path = out / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                              file_index=row["data/file_index"])
        if path not in tables:
            tables[path] = pq.read_table(path).to_pylist()
        frames = [f for f in tables[path]
                  if row["dataset_from_index"] <= f["index"] < row["dataset_to_index"]]
        assert len(frames) == row["length"]
        loaded[row["episode_id"]] = (row, frames)
    assert sum(len(f) for _r, f in loaded.values()) == info["total_frames"]
    return loaded


def _check_lerobot(out: Path, sources: dict, fps: float = 10.0) -> None:
    from PIL import Image

    info = json.loads((out / "meta/info.json").read_text())
    features = info["features"]
    assert features["observation.image"]["dtype"] == "image"
    assert features["observation.image"]["shape"] == [SIZE, SIZE, 3]
    assert features["observation.state"]["names"] == list(STATE_SCALARS)
    assert info["fps"] == fps
    loaded = _load_lerobot(out)
    assert sorted(loaded) == sorted(sources)
    # Episodes are numbered in the order of their ids; frame indices run on across them.
    assert [loaded[i][0]["episode_index"] for i in sorted(sources)] == list(range(len(sources)))
    for episode_id, src in sources.items():
        row, frames = loaded[episode_id]
        n = int(src["num_steps"])
        assert row["ended_by"] == ended_by(src) and row["success"] == src["success"]
        assert row["seed"] == src["seed"] and row["object_ids"] == src["object_ids"]
        assert row["tasks"] == ["grasp an object from the bin and lift it"]
        assert [f["frame_index"] for f in frames] == list(range(n + 1))
        for t, frame in enumerate(frames):
            image = np.asarray(Image.open(io.BytesIO(frame["observation.image"]["bytes"])))
            np.testing.assert_array_equal(image, src["observation/image"][t])
            assert frame["observation.state"] == [float(src[f"observation/{s}"][t])
                                                  for s in STATE_SCALARS]
            assert frame["action"] == [float(v) for v in src["action"][t]]
            assert frame["next.reward"] == float(src["reward"][t])
            assert frame["next.done"] == (t == n)
            assert frame["episode_index"] == row["episode_index"]
            assert frame["timestamp"] == pytest.approx(t / fps)
            assert frame["task_index"] == 0
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["index"]["count"] == [info["total_frames"]]
    red = np.concatenate([src["observation/image"][..., 0].reshape(-1) for src in sources.values()])
    assert stats["observation.image"]["mean"][0][0][0] == pytest.approx(red.mean() / 255.0)
    import pyarrow.parquet as pq

    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.to_pylist() == [{"task_index": 0, "task": row["tasks"][0]}]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]


def test_rlds_round_trip_every_step(episodes, tmp_path, capsys):
    out = tmp_path / "rlds"
    assert qtopt("export", "rlds", episodes, "-o", out, "--num-shards", 3, *IN_PROCESS) == 0
    m = manifest(out)
    assert m["format"] == "qtopt-export/1" and m["export"] == "rlds"
    assert m["accounting"]["records_in"] == m["accounting"]["records_out"] == 5
    assert m["counts"]["episodes"] == 5 and m["cell"] == default_cell(SIZE)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["accounting"]["records_dead_lettered"] == 0
    _check_rlds(out, _sources(episodes))


def test_lerobot_round_trip_every_frame(episodes, tmp_path):
    out = tmp_path / "lerobot"
    # Two episodes to a file: three data files, and the frame index runs on across them.
    assert qtopt("export", "lerobot", f"{episodes}/*.tfrecord.gz", "-o", out,
                 "--episodes-per-file", 2, "--fps", 5, *IN_PROCESS) == 0
    assert sorted(p.name for p in (out / "data/chunk-000").iterdir()) == \
        ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    m = manifest(out)
    assert m["accounting"]["records_in"] == m["accounting"]["records_out"] == 5
    _check_lerobot(out, _sources(episodes), fps=5.0)


@pytest.mark.parametrize("fmt", ["rlds", "lerobot"])
def test_damaged_input_is_dead_lettered_and_exits_3(fmt, tmp_path, capsys):
    # Named as collect names its shards, so the job knows how many episodes each should hold.
    src = tmp_path / "episodes"
    a = _write(src / "episodes-s0-0000000-0000003.tfrecord.gz", _fake(11, 3, 3))
    b = _write(src / "episodes-s0-0000003-0000006.tfrecord.gz", _fake(12, 3, 3))
    c = _write(src / "episodes-s0-0000006-0000009.tfrecord.gz", _fake(13, 3, 3))
    offset = corrupt_record(b, 1)
    truncate(c, 0.5)
    out = tmp_path / fmt
    assert qtopt("export", fmt, src, "-o", out, *IN_PROCESS) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"export {fmt}:" in err[0] and "dead-lettered" in err[0], err
    letters = dead_letters(out)
    assert any(d["file"] == str(b) and d["index"] == 1 and d["offset"] == offset
               for d in letters)
    assert any(d["file"] == str(c) for d in letters)
    acc = manifest(out)["accounting"]
    # Every episode in is exported or dead-lettered.
    assert acc["records_in"] == 9
    assert acc["records_out"] + acc["records_dead_lettered"] == 9
    assert acc["records_out"] >= 3 + 2
    from pipelines.machinery.records import read_file

    # The readable episodes are exactly the ones exported.
    kept = {}
    for path in (a, b, c):
        for raw in read_file(str(path)):
            if not isinstance(raw, dict):
                episode = codec.decode(raw.data)
                kept[episode["episode_id"]] = episode
    assert len(kept) == acc["records_out"]
    (_check_rlds if fmt == "rlds" else _check_lerobot)(out, kept)


@pytest.mark.parametrize("missing", ["nowhere", "nowhere/*.tfrecord.gz"])
def test_missing_input_exits_2_naming_it(missing, tmp_path, capsys):
    path = tmp_path / missing
    assert qtopt("export", "rlds", path, "-o", tmp_path / "out", *IN_PROCESS) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err, err
    assert err.startswith("qtopt export: error: input ")
    assert not (tmp_path / "out").exists()


def test_rerun_replaces_a_finished_export_and_other_outputs_are_refused(episodes, tmp_path,
                                                                         capsys):
    out = tmp_path / "rlds"
    assert qtopt("export", "rlds", episodes, "-o", out, "--num-shards", 4, *IN_PROCESS) == 0
    first = {f["name"] for f in manifest(out)["files"]}
    assert sum(n.startswith("qtopt_episodes-train") for n in first) == manifest(out)["num_shards"]
    # The same export again, in one shard: the old shards go, the episodes are the same.
    assert qtopt("export", "rlds", episodes, "-o", out, "--num-shards", 1, *IN_PROCESS) == 0
    shards = sorted(p.name for p in out.glob("qtopt_episodes-train*"))
    assert shards == ["qtopt_episodes-train.tfrecord-00000-of-00001"]
    assert not (out / "_staging").exists()
    _check_rlds(out, _sources(episodes))
    capsys.readouterr()
    # Another format into it, and a directory holding something else, are refused.
    assert qtopt("export", "lerobot", episodes, "-o", out, *IN_PROCESS) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a qtopt rlds export" in err, err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert qtopt("export", "lerobot", episodes, "-o", foreign, *IN_PROCESS) == 2
    err = capsys.readouterr().err.strip()
    assert "is not empty (notes.txt" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_refusals_two_cells_and_the_other_formats_options(tmp_path, capsys):
    src = tmp_path / "episodes"
    _write(src / "a.tfrecord.gz", _fake(21, 2, 2))
    other = _write(src / "b.tfrecord.gz", _fake(22, 2, 2, cell=OTHER_CELL))
    out = tmp_path / "out"
    # The first file's cell is the export's; the job finds the second and publishes nothing.
    assert qtopt("export", "lerobot", src, "-o", out, *IN_PROCESS) == 2
    err = capsys.readouterr().err.strip()
    assert "would mix data of different cells" in err and f"{OTHER_CELL} ({other})" in err
    assert not (out / "manifest.json").exists() and not (out / "_staging").exists()
    assert qtopt("export", "lerobot", src / "a.tfrecord.gz", "-o", out, "--num-shards", 2,
                 *IN_PROCESS) == 2
    assert "--num-shards is an option of export rlds, not of export lerobot" in \
        capsys.readouterr().err


def test_both_exports_from_and_into_a_bucket(bucket, tmp_path, capsys):
    from schemas import fs

    local = tmp_path / "episodes"
    path = _write(local / "episodes-s0-0000000-0000003.tfrecord.gz", _fake(31, 3, 3))
    fs.write_bytes(f"{bucket}/episodes/{path.name}", path.read_bytes())
    for fmt, check in (("rlds", _check_rlds), ("lerobot", _check_lerobot)):
        out = f"{bucket}/export/{fmt}"
        assert qtopt("export", fmt, f"{bucket}/episodes", "-o", out, *IN_PROCESS) == 0
        assert not fs.glob(f"{out}/_staging/*")
        names = [f["name"] for f in json.loads(fs.read_text(f"{out}/manifest.json"))["files"]]
        copy = tmp_path / fmt
        for name in names:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(fs.read_bytes(f"{out}/{name}"))
        check(copy, _sources(local))


def test_an_episode_read_twice_is_refused(tmp_path, capsys):
    src = tmp_path / "episodes"
    a = _write(src / "a.tfrecord.gz", _fake(41, 2, 2))
    (src / "copy.tfrecord.gz").write_bytes(a.read_bytes())
    out = tmp_path / "out"
    assert qtopt("export", "rlds", src, "-o", out, *IN_PROCESS) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read more than once, nothing published" in err, err
    assert f"{a} (record 0)" in err and not (out / "manifest.json").exists()

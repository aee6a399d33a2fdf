"""qtopt shard and subsample on real files with real Beam runners."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines_testlib import (IN_PROCESS, PYTHON, REPO, corrupt_record, dead_letters, manifest,
                               qtopt, read_all, shard_bytes, truncate, write_episodes)
from schemas import tfrecord_io
from schemas.cells import default_cell
from schemas.config import RobotConfig
from schemas.specs import CELL_BEFORE_IDENTITIES

# Locally shard runs in one process unless told otherwise.
WORKER_PROCESSES = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_episodes(root / "a", files=3, per_file=3, seed=1)
    write_episodes(root / "b", files=2, per_file=2, seed=2)
    return root


@pytest.fixture(scope="module")
def sharded(episodes, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "ds"
    assert qtopt("shard", "-i", f"{episodes}/a/*.gz", "-i", f"online={episodes}/b/*.gz",
                 "-o", out, "--num-shards", 3, *IN_PROCESS) == 0
    return out


def _episodes(glob):
    return list(tfrecord_io.read_glob(glob))


def test_transitions_pair_each_step_with_the_next(episodes, sharded):
    eps = {e["episode_id"]: e for e in _episodes(f"{episodes}/*/*.gz")}
    recs = read_all(sharded)
    assert len(recs) == sum(int(e["num_steps"]) for e in eps.values())
    seen = set()
    for r in recs:
        e = eps[r["episode_id"]]
        t = int(r["step"])
        seen.add((r["episode_id"], t))
        np.testing.assert_array_equal(r["observation/image"], e["observation/image"][t])
        np.testing.assert_array_equal(r["next_observation/image"], e["observation/image"][t + 1])
        np.testing.assert_array_equal(r["action"], e["action"][t])
        assert r["reward"] == e["reward"][t]
        assert r["is_terminal"] == bool(e["is_terminal"][t + 1])
        assert r["next_observation/height"] == e["observation/height"][t + 1]
    assert len(seen) == len(recs)  # nothing duplicated
    sources = {r["episode_id"]: r["source"] for r in recs}
    b_ids = {e["episode_id"] for e in _episodes(f"{episodes}/b/*.gz")}
    assert {sources[i] for i in b_ids} == {"online"}
    assert {s for i, s in sources.items() if i not in b_ids} == {"fake-source"}


def test_shuffle_mixes_episodes_and_orders_by_salted_hash(sharded):
    from pipelines.jobs.shard import shard_of, shuffle_key

    for name, data in shard_bytes(sharded).items():
        index = int(name.split("-")[1])
        recs = [tfrecord_io.codec.decode(r.data) for r in
                tfrecord_io.iter_raw(str(sharded / name))]
        keys = [shuffle_key(0, r["episode_id"], int(r["step"])) for r in recs]
        assert keys == sorted(keys)
        assert {shard_of(k, 3) for k in keys} <= {index}
    first = read_all(sharded)[:6]
    assert len({r["episode_id"] for r in first}) > 1  # consecutive records from several episodes


def test_catalogue_and_manifest(episodes, sharded):
    m = manifest(sharded)
    assert m["kind"] == "transition" and m["schema_version"] == 4
    assert m["counts"]["episodes"] == 13 and m["counts"]["dead_lettered"] == 0
    assert set(m["counts"]["by_source"]) == {"fake-source", "online"}
    assert m["counts"]["by_source"]["online"]["episodes"] == 4
    assert m["image_shapes"] == [[16, 16, 3]]
    assert [f["name"] for f in m["files"]] == [f"shard-0000{i}-of-00003.tfrecord.gz"
                                              for i in range(3)]
    assert sum(f["records"] for f in m["files"]) == m["counts"]["transitions"]
    table = pq.read_table(sharded / "catalogue.parquet")
    assert table.num_rows == 13
    assert {"episode_id", "source", "policy", "robot_id", "cell", "object_ids", "success",
            "num_steps"} <= set(table.column_names)
    # The cell every episode came from travels with the dataset, for the jobs downstream.
    assert m["cell"] == default_cell(16) == RobotConfig(image_size=16).cell_identity()
    assert set(table.column("cell").to_pylist()) == {default_cell(16)}
    eps = {e["episode_id"]: e for e in _episodes(f"{episodes}/*/*.gz")}
    for row in table.to_pylist():
        assert row["num_steps"] == int(eps[row["episode_id"]]["num_steps"])
        assert row["success"] == bool(eps[row["episode_id"]]["success"])
    assert not (sharded / "_staging").exists()


def test_byte_identical_across_runners_and_input_order(episodes, sharded, tmp_path):
    # Multi-process runner with two workers, inputs named in the other order, same seed.
    out = tmp_path / "again"
    assert qtopt("shard", "-i", f"online={episodes}/b/*.gz", "-i", f"{episodes}/a/*.gz",
                 "-o", out, "--num-shards", 3, *WORKER_PROCESSES) == 0
    assert shard_bytes(out) == shard_bytes(sharded)
    other = tmp_path / "seed1"
    assert qtopt("shard", "-i", f"{episodes}/a/*.gz", "-i", f"online={episodes}/b/*.gz",
                 "-o", other, "--num-shards", 3, "--seed", 1, *IN_PROCESS) == 0
    assert shard_bytes(other) != shard_bytes(sharded)


def test_empty_shards_are_written(episodes, tmp_path):
    out = tmp_path / "many"
    assert qtopt("shard", "-i", f"{episodes}/b/ep-0.tfrecord.gz", "-o", out, "--num-shards", 40,
                 *IN_PROCESS) == 0
    m = manifest(out)
    assert len(m["files"]) == 40 and any(f["records"] == 0 for f in m["files"])
    assert len(read_all(out)) == m["counts"]["transitions"]


def test_all_inputs_damaged_gives_empty_shards_in_worker_processes(tmp_path):
    # No transition reaches the shard grouping at all: every shard must still be written, by
    # the commit step, also with worker processes.
    src = tmp_path / "bad"
    src.mkdir()
    (src / "x.tfrecord.gz").write_bytes(b"\x1f\x8b" + os.urandom(3000))
    out = tmp_path / "out"
    assert qtopt("shard", "-i", f"{src}/*.gz", "-o", out, "--num-shards", 3,
                 *WORKER_PROCESSES) == 3
    m = manifest(out)
    assert [f["records"] for f in m["files"]] == [0, 0, 0]
    assert m["counts"]["transitions"] == 0 and m["counts"]["dead_lettered"] == 1
    assert sorted(p.name for p in out.glob("shard-*")) == [
        f"shard-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert read_all(out) == []


def test_damaged_inputs_are_dead_lettered(episodes, tmp_path, capsys):
    src = tmp_path / "bad"
    paths = write_episodes(src, files=3, per_file=4, seed=7)
    truncate(paths[0])
    offset = corrupt_record(paths[1], 2)
    out = tmp_path / "out"
    assert qtopt("shard", "-i", f"{src}/*.gz", "-o", out, "--num-shards", 2, *IN_PROCESS) == 3
    letters = dead_letters(out)
    by_file = {(d["file"], d["index"]): d for d in letters}
    assert (str(paths[1]), 2) in by_file and by_file[(str(paths[1]), 2)]["offset"] == offset
    assert "checksum" in by_file[(str(paths[1]), 2)]["reason"]
    assert any(d["file"] == str(paths[0]) and "truncated" in d["reason"] for d in letters)
    m = manifest(out)
    readable = sum(1 for p in paths for r in _safe_count(p))
    # Every frame read is an episode or a dead letter: nothing lost, nothing counted twice.
    assert m["counts"]["episodes"] + m["counts"]["dead_lettered"] == readable
    assert m["counts"]["dead_lettered"] == len(letters) == 2
    assert m["counts"]["episodes"] >= 4 + 3
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"records_in": %d' % readable in summary


def _safe_count(path):
    from pipelines.machinery.records import read_file

    return list(read_file(str(path)))


def test_bad_arguments_fail_before_work(episodes, tmp_path, capsys):
    out = tmp_path / "never"
    assert qtopt("shard", "-i", f"{tmp_path}/nothing/*.gz", "-o", out) == 2
    err = capsys.readouterr().err
    assert "no files match" in err and len(err.strip().splitlines()) == 1
    ds = tmp_path / "ds"
    assert qtopt("shard", "-i", f"{episodes}/b/*.gz", "-o", ds, *IN_PROCESS) == 0
    capsys.readouterr()
    assert qtopt("shard", "-i", f"{ds}/shard-*", "-o", out) == 2
    assert "holds transition records" in capsys.readouterr().err
    assert qtopt("shard", "-i", f"{episodes}/b/*.gz", "-o", out, "--no_such_beam_option=1") == 2
    assert "--no_such_beam_option" in capsys.readouterr().err
    assert not out.exists()


def test_killed_job_leaves_old_output_and_rerun_is_complete(tmp_path):
    # Enough episodes that the job is still reading when the first file's marker appears.
    write_episodes(tmp_path / "big", files=6, per_file=60, seed=9, steps=10)
    out, clean = tmp_path / "ds", tmp_path / "clean"
    args = ["shard", "-i", f"{tmp_path}/big/*.gz", "--num-shards", 3, *IN_PROCESS]
    assert qtopt(*args, "-o", clean) == 0
    # A first, different publication that the killed run must leave whole.
    assert qtopt(*args[:-4], "--num-shards", 2, *IN_PROCESS, "-o", out) == 0
    before = shard_bytes(out)
    proc = subprocess.Popen([PYTHON, "-m", "pipelines.cli", *map(str, args), "-o", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((out / "_staging").rglob("read/*")):
        assert proc.poll() is None, "the job finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert manifest(out)["num_shards"] == 2 and shard_bytes(out) == before
    assert qtopt(*args, "-o", out) == 0
    assert shard_bytes(out) == shard_bytes(clean)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["catalogue.parquet", "dead-letter.jsonl", "manifest.json"] + \
        [f"shard-0000{i}-of-00003.tfrecord.gz" for i in range(3)]


def test_interrupted_commit_is_repaired_by_a_rerun(episodes, sharded, tmp_path):
    from pipelines.machinery import dataset

    out = tmp_path / "ds"
    args = ["shard", "-i", f"{episodes}/a/*.gz", "-i", f"online={episodes}/b/*.gz", "-o", out,
            "--num-shards", 3, *IN_PROCESS]
    assert qtopt(*args) == 0
    # The state a kill between "manifest removed" and "manifest written" leaves: some shards
    # of a newer run moved in, the rest old, no manifest.
    (out / "manifest.json").unlink()
    (out / "shard-00001-of-00003.tfrecord.gz").write_bytes(b"from another run")
    (out / "_staging" / "x").mkdir(parents=True)
    (out / "_staging" / "x" / "shard-00000-of-00003.tfrecord.gz").write_bytes(b"partial")
    with pytest.raises(dataset.UserError, match="incomplete"):
        dataset.read_dataset_manifest(str(out))
    assert qtopt(*args) == 0
    assert shard_bytes(out) == shard_bytes(sharded)
    assert not (out / "_staging").exists()


def test_incomplete_dataset_is_refused(sharded, tmp_path, capsys):
    from pipelines.machinery import dataset
    from schemas.errors import UserError

    copy = tmp_path / "copy"
    copy.mkdir()
    for p in sharded.iterdir():
        if p.name != "manifest.json":
            (copy / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UserError, match="incomplete"):
        dataset.read_dataset_manifest(str(copy))
    assert qtopt("subsample", "-i", copy, "--fraction", 0.5, "-o", tmp_path / "sub") == 2
    assert "incomplete" in capsys.readouterr().err


def test_subsample_is_stable_and_nested(sharded, tmp_path):
    outs = {}
    for frac in (0.25, 0.55, 1.0):
        outs[frac] = tmp_path / f"sub{frac}"
        assert qtopt("subsample", "-i", sharded, "--fraction", frac, "-o", outs[frac],
                     *IN_PROCESS) == 0
    ids = {f: {r["episode_id"] for r in read_all(o)} for f, o in outs.items()}
    full = read_all(sharded)
    assert ids[0.25] < ids[0.55] < ids[1.0] == {r["episode_id"] for r in full}
    assert len(read_all(outs[1.0])) == len(full)
    steps = {}
    for r in full:
        steps.setdefault(r["episode_id"], set()).add(int(r["step"]))
    sub = read_all(outs[0.55])
    for eid in ids[0.55]:  # a kept episode keeps every transition
        assert {int(r["step"]) for r in sub if r["episode_id"] == eid} == steps[eid]
    # Order within a shard is the parent's order.
    parent = [(r["episode_id"], int(r["step"])) for r in full]
    child = [(r["episode_id"], int(r["step"])) for r in read_all(outs[0.55])]
    assert child == [k for k in parent if k[0] in ids[0.55]]
    m = manifest(outs[0.55])
    assert m["counts"]["episodes"] == len(ids[0.55]) and m["fraction"] == 0.55
    assert m["cell"] == manifest(sharded)["cell"]
    assert pq.read_table(outs[0.55] / "catalogue.parquet").num_rows == len(ids[0.55])


# Another cell at the test image size: the objects scaled as random_urdfs ships them.
SCALE_1 = RobotConfig(image_size=16, object_scale=1.0).cell_identity()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_shard_refuses_episodes_of_two_cells_before_any_work(tmp_path, capsys):
    a = write_episodes(tmp_path / "a", files=2, per_file=2, seed=3)
    b = write_episodes(tmp_path / "b", files=2, per_file=2, seed=4, cell=SCALE_1)
    out = tmp_path / "ds"
    assert qtopt("shard", "-i", f"{tmp_path}/a/*.gz", "-i", f"{tmp_path}/b/*.gz", "-o", out,
                 *IN_PROCESS) == 2
    err = _one_line_error(capsys)
    assert f"{default_cell(16)} ({a[0]})" in err and f"{SCALE_1} ({b[0]})" in err
    assert "would mix data of different cells" in err
    assert not out.exists()


def test_shard_finds_a_cell_mixed_into_one_directory_and_publishes_nothing(tmp_path, capsys):
    # The look before work reads each directory's first file only: the job checks every episode.
    write_episodes(tmp_path / "eps", files=1, per_file=2, seed=5, prefix="a")
    other = write_episodes(tmp_path / "eps", files=1, per_file=2, seed=6, prefix="b",
                           cell=SCALE_1)
    out = tmp_path / "ds"
    assert qtopt("shard", "-i", f"{tmp_path}/eps/a-*.gz", "-o", out, *IN_PROCESS) == 0
    before = shard_bytes(out)
    assert qtopt("shard", "-i", f"{tmp_path}/eps/*.gz", "-o", out, *IN_PROCESS) == 2
    err = _one_line_error(capsys)
    assert f"{SCALE_1} ({other[0]})" in err and default_cell(16) in err
    # The previous publication stays whole and nothing of the refused run is left.
    assert shard_bytes(out) == before and manifest(out)["cell"] == default_cell(16)
    assert not (out / "_staging").exists()


def test_episodes_of_the_old_layout_read_as_the_old_cell_and_are_not_mixed(tmp_path, capsys):
    old = write_episodes(tmp_path / "old", files=2, per_file=2, seed=7, before_cells=True)
    write_episodes(tmp_path / "new", files=1, per_file=2, seed=8)
    episode = next(tfrecord_io.read_records(str(old[0])))
    assert episode["cell"] == CELL_BEFORE_IDENTITIES != default_cell(16)
    assert int(episode["schema_version"]) == 4  # read as the current layout
    from pipelines.jobs.inspect_records import summarise
    info = summarise(str(old[0]))  # inspect tells the version stored
    assert info["schema_version"] == 2 and info["record"]["cell"] == CELL_BEFORE_IDENTITIES
    out = tmp_path / "ds"
    assert qtopt("shard", "-i", f"{tmp_path}/new/*.gz", "-i", f"{tmp_path}/old/*.gz", "-o", out,
                 *IN_PROCESS) == 2
    err = _one_line_error(capsys)
    assert f"{CELL_BEFORE_IDENTITIES} ({old[0]})" in err and default_cell(16) in err
    assert not out.exists()
    # On their own they still shard, as what they are.
    assert qtopt("shard", "-i", f"{tmp_path}/old/*.gz", "-o", out, *IN_PROCESS) == 0
    assert manifest(out)["cell"] == CELL_BEFORE_IDENTITIES
    assert set(pq.read_table(out / "catalogue.parquet").column("cell").to_pylist()) == \
        {CELL_BEFORE_IDENTITIES}

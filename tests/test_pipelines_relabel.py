"""qtopt relabel: the Bellman updater over a real (tiny) export, on real shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from pipelines_testlib import (IN_PROCESS, PYTHON, REPO, as_before_cells, corrupt_record,
                               dead_letters, make_export, manifest, qtopt, read_all, shard_bytes,
                               truncate, write_episodes)
from schemas.cells import default_cell
from schemas.config import RobotConfig
from schemas.specs import CELL_BEFORE_IDENTITIES

CHUNK = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("relabel")
    write_episodes(root / "episodes", files=2, per_file=3, seed=3)
    ds = root / "transitions"
    assert qtopt("shard", "-i", f"{root}/episodes/*.gz", "-o", ds, "--num-shards", 2,
                 *IN_PROCESS) == 0
    export = make_export(root / "exports", step=100, seed=0)
    return root, ds, export


def relabel(ds, export, out, epoch, *extra):
    return qtopt("relabel", "-i", ds, "-e", export, "-o", out, "--epoch", epoch,
                 "--set", f"pipeline.relabel_batch_size={CHUNK}", *extra)


@pytest.fixture(scope="module")
def labelled(data):
    root, ds, export = data
    assert relabel(ds, export, root / "labelled", 1, *IN_PROCESS) == 0
    return root / "labelled" / "epoch-1"


def test_every_transition_gains_its_target(data, labelled):
    from model.export import load_export
    from model.targets import compute_targets
    from pipelines.jobs.relabel import chunk_seed, stack_inputs
    from schemas.config import load_config

    _root, ds, export = data
    cfg = load_config("demo")
    m = manifest(labelled)
    assert m["kind"] == "labelled_transition" and m["target_version"] == "export-000000100"
    assert m["counts"]["dead_lettered"] == 0
    assert m["cell"] == manifest(ds)["cell"] == default_cell(16)
    exp = load_export(export, copies=("polyak", "lagged"))
    for j, name in enumerate(sorted(shard_bytes(ds))):
        inputs = read_all_file(ds / name)
        outputs = read_all_file(labelled / name)
        assert len(outputs) == len(inputs) > 0
        for start in range(0, len(inputs), CHUNK):
            chunk = inputs[start:start + CHUNK]
            targets, actions = compute_targets(exp, stack_inputs(chunk), cfg.cem, cfg.targets,
                                               seed=chunk_seed(j, start))
            for k, (src, out) in enumerate(zip(chunk, outputs[start:start + CHUNK])):
                for field in src:
                    if field != "kind":
                        np.testing.assert_array_equal(out[field], src[field])
                assert out["kind"] == "labelled_transition"
                assert out["target_version"] == "export-000000100"
                np.testing.assert_allclose(out["target"], targets[k], atol=1e-6)
                np.testing.assert_allclose(out["next_action"], actions[k], atol=1e-6)
                if src["is_terminal"]:
                    assert out["target"] == pytest.approx(float(src["reward"]))
                else:
                    v = (out["target"] - src["reward"]) / cfg.targets.gamma
                    assert 0.0 <= v <= 1.0


def read_all_file(path):
    from schemas import tfrecord_io

    return list(tfrecord_io.read_records(str(path)))


def test_default_local_runner_gives_the_same_labels(data, labelled, capsys):
    root, ds, export = data
    capsys.readouterr()
    # No runner options at all: the multi-process local default, one worker per core.
    assert relabel(ds, export, root / "multi", 1) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metrics"]["records_in"] == summary["metrics"]["labelled"] == \
        manifest(labelled)["counts"]["transitions"]
    assert 0.0 < summary["metrics"]["mean_target"] < 1.0
    assert shard_bytes(root / "multi" / "epoch-1") == shard_bytes(labelled)


def test_damaged_shards_are_dead_lettered_and_counted(data, tmp_path, capsys):
    _root, ds, export = data
    bad = tmp_path / "bad"
    shutil.copytree(ds, bad)
    names = sorted(shard_bytes(ds))
    offset = corrupt_record(bad / names[0], 1)
    truncate(bad / names[1], 0.5)
    capsys.readouterr()
    # Published, with dead letters: exit status 3 and one line on stderr naming them.
    assert relabel(bad, export, tmp_path / "out", 0, *IN_PROCESS) == 3
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1
    summary = json.loads(captured.out.strip().splitlines()[-1])
    metrics = summary["metrics"]
    letters = dead_letters(tmp_path / "out" / "epoch-0")
    assert metrics["records_in"] == metrics["labelled"] + metrics["dead_lettered"]
    assert metrics["dead_lettered"] == len(letters) == 2
    assert {"file": str(bad / names[0]), "index": 1, "offset": offset, "stage": "read",
            "reason": "bad data checksum (corrupted record)", "records": 1} in letters
    assert any(d["file"] == str(bad / names[1]) and "truncated" in d["reason"] for d in letters)
    assert manifest(tmp_path / "out" / "epoch-0")["counts"]["transitions"] == metrics["labelled"]
    # The truncated shard's unread remainder counts as what its input manifest says it held.
    acc = manifest(tmp_path / "out" / "epoch-0")["accounting"]
    assert acc["records_in"] == manifest(ds)["counts"]["transitions"]
    assert acc["records_in"] == acc["records_out"] + acc["records_dead_lettered"]


def test_missing_or_incompatible_export_fails_before_work(data, tmp_path, capsys):
    _root, ds, export = data
    out = tmp_path / "labelled"
    assert relabel(ds, tmp_path / "no-exports", out, 1, *IN_PROCESS) == 2
    err = capsys.readouterr().err.strip()
    assert "no-exports" in err and len(err.splitlines()) == 1
    half = tmp_path / "half" / "export-000000005"
    shutil.copytree(export, half)
    (half / "manifest.json").unlink()
    assert relabel(ds, half.parent, out, 1, *IN_PROCESS) == 2
    assert "no complete export" in capsys.readouterr().err
    wide = make_export(tmp_path / "wide", image_size=32)
    assert relabel(ds, wide, out, 1, *IN_PROCESS) == 2
    err = capsys.readouterr().err
    assert "32" in err and "16" in err and str(ds) in err
    assert not out.exists()


def test_rerun_replaces_an_epoch_cleanly(data, labelled, tmp_path):
    root, ds, export = data
    out = tmp_path / "labelled"
    assert relabel(ds, export, out, 4, *IN_PROCESS) == 0
    first = shard_bytes(out / "epoch-4")
    newer = make_export(root / "exports", step=200, seed=1)
    args = ["relabel", "-i", ds, "-e", newer, "-o", out, "--epoch", 4,
            "--set", f"pipeline.relabel_batch_size={CHUNK}", *IN_PROCESS]
    proc = subprocess.Popen([PYTHON, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((out / "epoch-4" / "_staging").rglob("label/*")):
        assert proc.poll() is None, "the job finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed mid-run: the published epoch is the old one, whole.
    assert shard_bytes(out / "epoch-4") == first
    assert manifest(out / "epoch-4")["target_version"] == "export-000000100"
    assert qtopt(*args) == 0
    m = manifest(out / "epoch-4")
    assert m["target_version"] == "export-000000200" and m["export_step"] == 200
    recs = read_all(out / "epoch-4")
    assert len(recs) == m["counts"]["transitions"] == len(read_all(ds))
    assert {r["target_version"] for r in recs} == {"export-000000200"}
    assert len({(r["episode_id"], int(r["step"])) for r in recs}) == len(recs)
    assert sorted(p.name for p in (out / "epoch-4").iterdir()) == \
        ["dead-letter.jsonl", "manifest.json"] + sorted(first)
    from pipelines.jobs.relabel import latest_epoch
    assert latest_epoch(str(out)) == 4


def test_relabel_refuses_labelled_or_incomplete_input(labelled, data, tmp_path, capsys):
    _root, _ds, export = data
    assert relabel(labelled, export, tmp_path / "x", 1) == 2
    assert "relabel reads transition datasets" in capsys.readouterr().err
    assert relabel(tmp_path / "nothing", export, tmp_path / "x", 1) == 2
    assert "does not exist" in capsys.readouterr().err



def test_several_inputs_are_labelled_together(data, tmp_path):
    _root, ds, export = data
    half = tmp_path / "half"
    assert qtopt("subsample", "-i", ds, "--fraction", 0.5, "-o", half, *IN_PROCESS) == 0
    out = tmp_path / "labelled"
    assert relabel(ds, export, out, 2, "-i", half, *IN_PROCESS) == 0
    m = manifest(out / "epoch-2")
    assert m["inputs"] == [str(ds), str(half)] and m["num_shards"] == 4
    recs = read_all(out / "epoch-2")
    assert len(recs) == len(read_all(ds)) + len(read_all(half))
    # Input shard j is output shard j: the subsample's shards come last, in their order.
    tail = [(r["episode_id"], int(r["step"])) for r in read_all_file(
        out / "epoch-2" / "shard-00003-of-00004.tfrecord.gz")]
    assert tail == [(r["episode_id"], int(r["step"])) for r in read_all_file(
        half / "shard-00001-of-00002.tfrecord.gz")]


def test_relabel_keeps_cells_apart(data, tmp_path, capsys):
    _root, ds, export = data
    scale_1 = RobotConfig(image_size=16, object_scale=1.0).cell_identity()
    write_episodes(tmp_path / "episodes", files=1, per_file=2, seed=11, cell=scale_1)
    other = tmp_path / "other"
    assert qtopt("shard", "-i", f"{tmp_path}/episodes/*.gz", "-o", other, *IN_PROCESS) == 0
    capsys.readouterr()
    out = tmp_path / "labelled"

    def error():
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    # Two cells' transitions into one labelled set (finetune's offline + online mix).
    assert relabel(ds, export, out, 1, "-i", other, *IN_PROCESS) == 2
    err = error()
    assert "would mix data of different cells" in err
    assert f"{default_cell(16)} ({ds})" in err and f"{scale_1} ({other})" in err
    # Targets from a Q-function trained on another cell's images.
    assert relabel(other, export, out, 1, *IN_PROCESS) == 2
    err = error()
    assert f"was trained on {default_cell(16)} but dataset {other} was made by {scale_1}" in err
    old = as_before_cells(make_export(tmp_path / "old", step=5))
    assert relabel(ds, old, out, 1, *IN_PROCESS) == 2
    assert f"was trained on {CELL_BEFORE_IDENTITIES} but dataset {ds}" in error()
    assert not out.exists()
    # An export of that cell labels it.
    same = make_export(tmp_path / "same", step=5, cell=scale_1)
    assert relabel(other, same, out, 1, *IN_PROCESS) == 0
    assert manifest(out / "epoch-1")["cell"] == scale_1


def test_the_returns_rules_use_each_transitions_own_return(data, labelled, tmp_path):
    """targets.returns=only labels every transition with its episode's discounted return,
    floor with the larger of that and the Bellman target; both from what shard recorded."""
    _root, ds, export = data
    assert manifest(ds)["return_gamma"] == pytest.approx(0.9)
    plain = {(r["episode_id"], int(r["step"])): r for r in read_all(labelled)}
    by_rule = {}
    for rule in ("only", "floor"):
        assert relabel(ds, export, tmp_path / rule, 1, "--set", f"targets.returns={rule}",
                       *IN_PROCESS) == 0
        assert manifest(tmp_path / rule / "epoch-1")["targets"]["returns"] == rule
        by_rule[rule] = read_all(tmp_path / rule / "epoch-1")
    episodes: dict = {}
    for r in plain.values():
        episodes.setdefault(r["episode_id"], {})[int(r["step"])] = float(r["reward"])
    for rule, rows in by_rule.items():
        assert len(rows) == len(plain)
        for r in rows:
            rewards = [episodes[r["episode_id"]][t] for t in sorted(episodes[r["episode_id"]])]
            expected = sum(0.9 ** k * x for k, x in enumerate(rewards[int(r["step"]):]))
            assert r["return_to_go"] == pytest.approx(expected, abs=1e-5)
            bellman = plain[(r["episode_id"], int(r["step"]))]["target"]
            want = expected if rule == "only" else max(expected, bellman)
            assert r["target"] == pytest.approx(want, abs=1e-5)


def test_returns_discounted_otherwise_are_refused(data, tmp_path, capsys):
    _root, ds, export = data
    assert relabel(ds, export, tmp_path / "out", 1, "--set", "targets.returns=floor",
                   "--set", "targets.gamma=0.8", *IN_PROCESS) == 2
    err = capsys.readouterr().err
    assert f"dataset {ds} holds returns discounted with gamma 0.9" in err
    assert not (tmp_path / "out").exists()

"""Joint finetuning end to end with real physics, Beam and training: a finetune process group
killed with SIGKILL in each phase of a round resumes without losing or duplicating data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipelines.machinery import dataset
from pipelines.cli import invoke
from pipelines.flows.phases import initial_export
from schemas import fs, tfrecord_io
from schemas.config import load_config

SETS = ["robot.image_size=32", "model.preset=tiny", "train.batch_size=8", "train.steps=4",
        "train.shuffle_buffer=16", "collect.episodes_per_block=2", "pipeline.num_shards=2",
        "pipeline.direct_num_workers=1", "finetune.rounds=2", "finetune.episodes_per_round=4",
        "finetune.steps_per_transition=0.5", "finetune.ramp_steps=20", "finetune.ramp_chunk=5",
        "cem.samples=16", "cem.elites=4"]
ARGS = [a for s in SETS for a in ("--set", s)]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """A small real offline run: scripted episodes, shard, one relabel and a few train steps."""
    root = tmp_path_factory.mktemp("offline")
    cfg = load_config("demo", overrides=SETS)
    invoke(["collect", "--policy", "scripted", "--episodes", 4, "--out", root / "episodes",
            *ARGS])
    invoke(["shard", "--input", root / "episodes" / "*.tfrecord.gz",
            "--output", root / "transitions", *ARGS])
    initial_export(cfg, str(root / "train"))
    invoke(["relabel", "--input", root / "transitions", "--export", root / "train" / "exports",
            "--output", root / "labelled", "--epoch", 0, *ARGS])
    invoke(["train", "--data", root / "labelled" / "epoch-0", "--workdir", root / "train",
            "--until-step", 4, "--no-progress", *ARGS])
    return root


def _finetune_cmd(run, offline):
    return [sys.executable, "-m", "pipelines.cli", "finetune", "--run", str(run),
            "--offline", str(offline / "transitions"), "--init", str(offline / "train"), *ARGS]


def _run_until(cmd, trigger: str, delay: float, timeout: float = 240) -> bool:
    """Run cmd; SIGKILL its whole process group ``delay`` s after a line starting with
    ``trigger`` appears. Returns True if it was killed, False if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            if line.startswith(trigger):
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            assert time.monotonic() < deadline, "finetune took too long"
        assert proc.wait() == 0
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_finetune_resumes_after_a_kill_in_every_phase(offline, tmp_path):
    run = tmp_path / "run"
    cmd = _finetune_cmd(run, offline)
    killed = []
    for trigger, delay in (("collect:", 4.0), ("shard:", 1.0), ("relabel:", 2.0),
                           ("finetune: round 0 trains", 1.5)):
        if _run_until(cmd, trigger, delay):
            killed.append(trigger)
    assert killed, "no phase was interrupted"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    state = json.loads((run / "finetune" / "state.json").read_text())
    assert state["round"] == 2 and state["done"] == []
    online = 0
    for r in range(2):
        ids = []
        steps = 0
        for path in fs.glob(str(run / "finetune" / "episodes" / f"round-{r:03d}" / "*.gz")):
            for ep in tfrecord_io.read_records(path):
                ids.append(ep["episode_id"])
                steps += int(ep["num_steps"])
        assert len(ids) == 4 and len(set(ids)) == 4          # nothing lost, nothing twice
        manifest = dataset.read_dataset_manifest(
            str(run / "finetune" / "transitions" / f"round-{r:03d}"))
        assert manifest["counts"]["transitions"] == steps
        online += steps
    assert state["online_transitions"] == online
    # The balancer: 0.5 gradient steps per on-policy transition, all rounds together.
    assert state["steps_done"] == int(0.5 * online)
    labelled = dataset.read_dataset_manifest(
        str(run / "finetune" / "labelled" / "online" / "epoch-1"))
    assert labelled["counts"]["transitions"] == online
    assert not (run / "finetune" / "labelled" / "online" / "epoch-0").exists()
    # Of the exports every training chunk wrote, the one finetuning started from and the one
    # each round ended with (the next round's collection policy; the last is the newest) stay.
    exports = run / "finetune" / "train" / "exports"
    kept = sorted(p.name for p in exports.iterdir())
    wanted = sorted({f"export-{4:09d}"} | {os.path.basename(r["export"])
                                            for r in state["rounds"]})
    assert kept == wanted, (kept, wanted)
    assert len(wanted) == 3
    assert all((exports / name / "manifest.json").exists() for name in kept)
    assert state["steps_done"] > 2 * 5  # more chunks ran than exports were kept
    # The offline run was not touched.
    assert json.loads(json.dumps(dataset.read_dataset_manifest(str(offline / "transitions"))))
    ckpts = sorted(p.name for p in (offline / "train" / "checkpoints").glob("ckpt-*"))
    assert ckpts == ["ckpt-4.data-00000-of-00001", "ckpt-4.index"], ckpts
    assert '"ckpt-4"' in (offline / "train" / "checkpoints" / "checkpoint").read_text()


def test_finetune_refuses_offline_data_or_weights_of_another_cell(offline, tmp_path):
    import shutil

    from model.export import latest_export
    from schemas.config import RobotConfig
    from schemas.errors import UserError

    current = RobotConfig(image_size=32).cell_identity()
    other = RobotConfig(image_size=32, object_scale=1.0).cell_identity()
    run = tmp_path / "run"
    base = ["finetune", "--run", run, "--offline", offline / "transitions", *ARGS]
    # On-policy data of this config's cell would be mixed with offline data of another.
    with pytest.raises(UserError) as err:
        invoke([*base, "--init", offline / "train", "--set", "robot.object_scale=1"])
    assert str(err.value) == (
        f"finetune: offline dataset {offline / 'transitions'} was made by {current} but "
        f"on-policy episodes would come from {other} (the robot config); use --set "
        "robot.object_scale=0.8")
    init = tmp_path / "init"
    shutil.copytree(offline / "train", init)
    manifest = json.loads(open(f"{latest_export(str(init / 'exports'))}/manifest.json").read())
    manifest["cell"] = other
    with open(f"{latest_export(str(init / 'exports'))}/manifest.json", "w") as f:
        json.dump(manifest, f)
    with pytest.raises(UserError, match=rf"--init {init} was trained on {other} .* but the robot "
                                        rf"config is {current}"):
        invoke([*base, "--init", init])
    assert not run.exists()


def test_a_round_whose_relabel_dead_letters_stops_with_status_3_and_resumes(offline, tmp_path,
                                                                            capsys):
    from pipelines_testlib import corrupt_record, qtopt

    bad = tmp_path / "transitions"
    shutil.copytree(offline / "transitions", bad)
    shard = json.loads((bad / "manifest.json").read_text())["files"][0]["name"]
    corrupt_record(bad / shard, 0)
    run = tmp_path / "run"
    argv = ["finetune", "--run", run, "--offline", bad, "--init", offline / "train", *ARGS,
            "--set", "finetune.rounds=1"]
    capsys.readouterr()
    assert qtopt(*argv) == 3
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith(("relabel:", "qtopt"))]
    assert len(err) == 2, err
    assert err[0].startswith("relabel: 1 of ") and f"(first: {bad / shard}, record 0" in err[0]
    assert err[1].startswith("qtopt finetune: error: qtopt relabel published its output but "
                             "dead-lettered input records")
    # Round 0 stopped after its relabel published: collected and sharded, not trained.
    state = json.loads((run / "finetune" / "state.json").read_text())
    assert state["round"] == 0 and state["done"] == ["collect", "shard"]
    labelled = json.loads((run / "finetune" / "labelled" / "offline" / "epoch-0" /
                           "manifest.json").read_text())["accounting"]
    assert labelled["records_dead_lettered"] == 1
    assert labelled["records_out"] + 1 == labelled["records_in"]
    # Allowed, the same command goes on from the relabel and finishes the round.
    assert qtopt(*argv, "--set", "pipeline.max_dead_fraction=0.5") == 0
    state = json.loads((run / "finetune" / "state.json").read_text())
    assert state["round"] == 1 and [r["round"] for r in state["rounds"]] == [0]

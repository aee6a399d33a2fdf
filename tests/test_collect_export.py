"""``qtopt collect --policy EXPORT_DIR``: the model's greedy CEM policy, wrapped in epsilon-greedy
exploration, drives the simulated cell through the real collect pipeline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from schemas import fs, tfrecord_io

tf = pytest.importorskip("tensorflow")


def test_collect_runs_a_greedy_export_policy(tmp_path):
    from model.export import write_export
    from model.network import InputSpec, QNetwork

    nets = {name: QNetwork(InputSpec(16, "image+gripper+height"), "tiny", name)
            for name in ("online", "polyak", "lagged")}
    # Trained, as the demo preset collects, under the scripted termination, with gripper steps
    # that do not move.
    export = write_export(str(tmp_path / "exports"), 1, nets, termination="scripted",
                          gripper_moves=False)
    out = tmp_path / "eps"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "collect", "--policy", export, "--episodes", "2",
         "--episodes-per-block", "1", "--out", str(out), "--workers", "1",
         "--set", "robot.image_size=16", "--set", "robot.max_steps=3",
         "--set", "cem.samples=8", "--set", "cem.elites=2"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    episodes = [r for p in fs.glob(os.path.join(out, "*.tfrecord.gz"))
                for r in tfrecord_io.read_records(p)]
    assert len(episodes) == 2
    assert all(e["policy"] == f"export:{export.rstrip('/')}" for e in episodes)
    assert all(1 <= int(e["num_steps"]) <= 3 for e in episodes)
    assert episodes[0]["source"].endswith("-train")


def test_collect_refuses_an_export_of_another_cell(tmp_path):
    import json

    from model.export import write_export
    from model.network import InputSpec, QNetwork
    from schemas.config import RobotConfig

    nets = {name: QNetwork(InputSpec(16, "image+gripper+height"), "tiny", name)
            for name in ("online", "polyak", "lagged")}
    current = RobotConfig(image_size=16).cell_identity()
    other = RobotConfig(image_size=16, object_scale=1.0).cell_identity()
    scale_1 = write_export(str(tmp_path / "scale-1"), 1, nets, cell=other)
    old = write_export(str(tmp_path / "old"), 1, nets)
    manifest = json.loads(open(f"{old}/manifest.json").read())
    del manifest["cell"]  # as written before cells had identities
    open(f"{old}/manifest.json", "w").write(json.dumps(manifest))

    def collect(export):
        out = tmp_path / "eps"
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "collect", "--policy", export,
             "--episodes", "1", "--out", str(out), "--workers", "1", "--preset", "paper",
             "--set", "robot.image_size=16"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and not out.exists(), proc.stderr[-3000:]
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert collect(scale_1) == (
        f"qtopt collect: error: export {scale_1}: trained on images of {other} but this cell is "
        f"{current}; use --set robot.object_scale=1, or use an export trained on {current}")
    assert f"export {old}: has no cell identity" in collect(old)

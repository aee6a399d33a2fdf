"""A `qtopt train` subprocess killed mid-run and rerun continues at its last checkpoint's step and
ends with exactly the weights of a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import schemas  # noqa: F401

pytest.importorskip("tensorflow")

from model_testlib import SIZE, latest_checkpoint_step, write_shards  # noqa: E402

from model.export import load_export  # noqa: E402

UNTIL = 120
ARGS = ["--set", "model.preset=tiny", "--set", f"robot.image_size={SIZE}",
        "--set", "train.batch_size=16", "--set", "train.shuffle_buffer=64",
        "--set", "train.checkpoint_every=10", "--set", "train.log_every=10",
        "--set", "train.deterministic=true", "--set", "train.optimizer=sgd",
        "--set", "targets.lag_steps=15", "--set", "targets.polyak=0.9",
        "--no-progress", "--until-step", str(UNTIL)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(pattern, workdir):
    return [sys.executable, "-m", "pipelines.cli", "train", "--data", pattern,
            "--workdir", str(workdir)] + ARGS


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    pattern = write_shards(tmp_path / "labelled", 48, 3)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    proc = subprocess.Popen(_command(pattern, killed), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while latest_checkpoint_step(killed) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = latest_checkpoint_step(killed)
    assert 20 <= at_kill < UNTIL, proc.stdout.read().decode()[-2000:]
    assert not os.path.exists(killed / "exports")           # it never reached the end

    resumed = subprocess.run(_command(pattern, killed), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {at_kill}" in resumed.stdout
    assert f"step {UNTIL}:" in resumed.stdout

    reference = subprocess.run(_command(pattern, straight), cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert "resumed at step" not in reference.stdout

    a, b = load_export(str(straight / "exports")), load_export(str(killed / "exports"))
    assert a.step == b.step == UNTIL
    for name in ("online", "polyak", "lagged"):
        for va, vb in zip(a.networks[name].variables, b.networks[name].variables):
            np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=f"{name} {va.path}")
    # The weights did move, so equality is not the trivial equality of two fresh networks.
    assert any(not np.array_equal(va.numpy(), vb.numpy())
               for va, vb in zip(a.online.variables, a.lagged.variables))

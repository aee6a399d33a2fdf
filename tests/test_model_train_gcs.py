"""The trainer on a gs:// bucket (gcp-storage-emulator, no mocks): shards read and checkpoints,
logs and exports written through schemas.fs, and a run stopped and started again on the same
workdir resumes at its checkpoint's step with the weights of a run never stopped."""

import os

import numpy as np
import pytest

import schemas  # noqa: F401

pytest.importorskip("tensorflow")
pytest.importorskip("gcsfs")

from model_testlib import SIZE, write_shards  # noqa: E402
from test_pipelines_gcs import bucket  # noqa: E402,F401  (the emulator fixture)

from model.export import load_export  # noqa: E402
from model.train import Trainer, train_until  # noqa: E402
from schemas import fs  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.errors import RecordError, UserError  # noqa: E402


def _config():
    return load_config("demo", overrides=[
        "model.preset=tiny", f"robot.image_size={SIZE}", "train.batch_size=16",
        "train.shuffle_buffer=64", "train.checkpoint_every=10", "train.log_every=10",
        "train.keep_checkpoints=2", "train.deterministic=true", "train.optimizer=sgd",
        "targets.lag_steps=15", "targets.polyak=0.9"])


def _upload_shards(local_pattern, remote_dir):
    import glob

    for path in sorted(glob.glob(local_pattern)):
        fs.write_bytes(fs.join(remote_dir, os.path.basename(path)), open(path, "rb").read())
    return fs.join(remote_dir, "*.tfrecord.gz")


@pytest.fixture
def staging(tmp_path, monkeypatch):
    path = tmp_path / "staging"
    monkeypatch.setenv("QTOPT_STAGING_DIR", str(path))
    return path


def test_run_resumed_on_a_gs_workdir_continues_at_its_step(bucket, staging, tmp_path):  # noqa: F811
    local = write_shards(tmp_path / "labelled", 24, 3)
    remote = _upload_shards(local, f"{bucket}/labelled")
    work = f"{bucket}/train"

    first = train_until(_config(), [(remote, 1.0)], work, until_step=20, progress=False)
    assert (first.start_step, first.step) == (0, 20)
    ckpts = f"{work}/checkpoints"
    assert 'model_checkpoint_path: "ckpt-20"' in fs.read_text(f"{ckpts}/checkpoint")
    assert fs.glob(f"{ckpts}/ckpt-20.index") and fs.glob(f"{ckpts}/ckpt-20.data-*")
    assert fs.glob(f"{ckpts}/input-*/input-20.index")
    assert fs.glob(f"{work}/logs/events.out.tfevents.*")
    assert fs.glob(f"{work}/exports/export-000000020/manifest.json")

    # A kill while the next checkpoint was being copied up leaves its files without the index
    # naming them: the index still names ckpt-20, and that is where the run resumes.
    stray = f"{ckpts}/ckpt-30.data-00000-of-00001"
    fs.write_bytes(stray, b"cut short")
    trainer = Trainer(_config(), [(remote, 1.0)], work)
    assert trainer.restore() == 20
    resumed = trainer.run(until_step=40, progress=False)
    assert (resumed.start_step, resumed.step) == (20, 40)
    # keep_checkpoints=2: the remote copy is pruned like a local one.
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{ckpts}/ckpt-*"))
    assert [n.split(".")[0] for n in names] == ["ckpt-30", "ckpt-30", "ckpt-40", "ckpt-40"]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{ckpts}/input-*/input-*.index")) == \
        ["input-30.index", "input-40.index"]

    # The same 40 steps in one go on local paths: bit-identical weights, so the resumed run
    # restored the weights, optimizer, copies and input position exactly.
    straight = train_until(_config(), [(local, 1.0)], str(tmp_path / "straight"), until_step=40,
                     progress=False)
    a, b = load_export(straight.export_path), load_export(resumed.export_path)
    assert resumed.export_path.startswith("gs://") and a.step == b.step == 40
    for name in ("online", "polyak", "lagged"):
        for va, vb in zip(a.networks[name].variables, b.networks[name].variables):
            np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=f"{name} {va.path}")


def test_half_written_remote_checkpoint_is_named(bucket, staging, tmp_path):  # noqa: F811
    remote = _upload_shards(write_shards(tmp_path / "labelled", 16, 2), f"{bucket}/labelled")
    work = f"{bucket}/train"
    train_until(_config(), [(remote, 1.0)], work, until_step=10, progress=False)
    fs.remove(f"{work}/checkpoints/ckpt-10.index")
    with pytest.raises(UserError, match=rf"{work}/checkpoints/ckpt-10: checkpoint is missing"):
        train_until(_config(), [(remote, 1.0)], work, until_step=20, progress=False)


def test_bad_remote_shard_is_named_by_its_url(bucket, staging, tmp_path):  # noqa: F811
    url = f"{bucket}/labelled/shard-00000.tfrecord.gz"
    fs.write_bytes(url, b"not a tfrecord")
    with pytest.raises(RecordError, match=rf"{url}, record 0"):
        train_until(_config(), [(url, 1.0)], str(tmp_path / "work"), until_step=1, progress=False)


def test_killed_qtopt_train_on_gs_resumes_at_its_step(bucket, staging, tmp_path):  # noqa: F811
    import re
    import signal
    import subprocess
    import sys
    import time

    remote = _upload_shards(write_shards(tmp_path / "labelled", 24, 3), f"{bucket}/labelled")
    work = f"{bucket}/train"
    index = f"{work}/checkpoints/checkpoint"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "pipelines.cli", "train", "--data", remote, "--workdir",
               work, "--no-progress", "--until-step", "200", "--set", "model.preset=tiny",
               "--set", f"robot.image_size={SIZE}", "--set", "train.batch_size=16",
               "--set", "train.checkpoint_every=10"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")

    def remote_step():
        fs.filesystem(index)[0].invalidate_cache()   # another process writes the bucket
        if not fs.exists(index):
            return 0
        return int(re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', fs.read_text(index),
                             re.M).group(1))

    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while remote_step() < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = remote_step()
    assert 20 <= at_kill < 200, proc.stdout.read().decode()[-2000:]
    assert not fs.glob(f"{work}/exports/*/manifest.json")

    resumed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {at_kill}" in resumed.stdout
    assert "step 200:" in resumed.stdout and remote_step() == 200
    assert fs.glob(f"{work}/exports/export-000000200/manifest.json")

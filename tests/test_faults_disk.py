"""A full disk: every writing job stops with one line naming where and "no space", status 2,
publishes nothing, leaves its inputs as they were, and completes when rerun after space is
freed. The disk is a real tmpfs of 1 MiB, filled but for a few kilobytes."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from pipelines_testlib import IMAGE, IN_PROCESS, make_export, qtopt, write_episodes

TRAIN = ["--set", "model.preset=tiny", "--set", f"robot.image_size={IMAGE}",
         "--set", "train.batch_size=4", "--set", "train.shuffle_buffer=8", "--no-progress",
         "--until-step", "40"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    write_episodes(root / "episodes", files=3, per_file=4, steps=3, seed=2)
    assert qtopt("shard", "-i", root / "episodes", "-o", root / "transitions", "--num-shards",
                 2, *IN_PROCESS) == 0
    export = make_export(root / "exports", step=100)
    assert qtopt("relabel", "-i", root / "transitions", "-e", export, "-o", root / "labelled",
                 "--epoch", 0, *IN_PROCESS) == 0
    return root, export


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); these tests need root "
                    "or CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount, leave: int):
    """Fill ``mount`` but for ``leave`` bytes; returns the filler, to free space later."""
    stat = os.statvfs(mount)
    filler = mount / "filler"
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def digest(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def command(job: str, root, export: str, out) -> list:
    if job == "shard":
        return ["shard", "-i", root / "episodes", "-o", out, "--num-shards", 2, *IN_PROCESS]
    if job == "relabel":
        return ["relabel", "-i", root / "transitions", "-e", export, "-o", out, "--epoch", 1,
                *IN_PROCESS]
    if job == "train":
        return ["train", "--data", root / "labelled" / "epoch-0", "--workdir", out, *TRAIN]
    return ["export", job, f"{root / 'episodes'}/*.tfrecord.gz", "-o", out, *IN_PROCESS]


def published(job: str, out) -> bool:
    if job == "relabel":
        out = out / "epoch-1"
    if job != "train":
        return (out / "manifest.json").exists()
    # A checkpoint index may stand only if what it names loads whole.
    index = out / "checkpoints" / "checkpoint"
    if index.exists():
        import tensorflow as tf

        tf.train.load_checkpoint(str(out / "checkpoints"))
    exports = out / "exports"
    return exports.exists() and any((e / "manifest.json").exists() for e in exports.iterdir())


# Free bytes that leave each job short partway through its writing.
LEAVE = {"shard": 20_000, "relabel": 20_000, "train": 120_000, "rlds": 20_000,
         "lerobot": 20_000}


@pytest.mark.parametrize("job", list(LEAVE))
def test_a_full_disk_stops_the_job_with_one_line_and_the_rerun_completes(inputs, small_disk,
                                                                          job, capsys):
    root, export = inputs
    out = small_disk / "out"
    before = digest(root)
    filler = fill(small_disk, LEAVE[job])
    capsys.readouterr()
    assert qtopt(*command(job, root, export, out)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"qtopt {'export' if job in ('rlds', 'lerobot') else job}: error: "
                             f"{out}") and "no space left on device" in err[0], err
    assert not published(job, out)
    assert digest(root) == before
    filler.unlink()
    assert qtopt(*command(job, root, export, out)) == 0
    assert published(job, out)
    assert digest(root) == before

"""Two jobs, one output: the second refuses at once naming the first, or both publish the same
dataset; never a mix. A lock left by a killed job is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from pipelines_testlib import (IN_PROCESS, PYTHON, REPO, make_export, manifest, qtopt,
                               shard_bytes, write_episodes)
from pipelines.machinery.outputlock import LOCK, acquire, release


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    write_episodes(root / "episodes", files=3, per_file=4, steps=3, seed=2)
    clean = root / "clean"
    assert qtopt("shard", "-i", root / "episodes", "-o", clean, "--num-shards", 2,
                 *IN_PROCESS) == 0
    return root, clean, make_export(root / "exports", step=100)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "pipelines.cli", *map(str, args), *IN_PROCESS],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.mark.parametrize("job", ["shard", "relabel"])
def test_two_jobs_started_together_on_one_output_never_mix(inputs, tmp_path, job):
    root, clean, export = inputs
    out = tmp_path / "out"
    if job == "shard":
        args = ("shard", "-i", root / "episodes", "-o", out, "--num-shards", 2)
        published, reference = out, clean
    else:
        args = ("relabel", "-i", clean, "-e", export, "-o", out, "--epoch", 1)
        published = out / "epoch-1"
        reference = tmp_path / "reference"
        assert qtopt("relabel", "-i", clean, "-e", export, "-o", reference, "--epoch", 1,
                     *IN_PROCESS) == 0
        reference = reference / "epoch-1"
    procs = [start(*args), start(*args)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    statuses = sorted(r[0] for r in results)
    assert statuses in ([0, 2], [0, 0]), results
    for (status, _, stderr), other in zip(results, reversed(procs)):
        if status == 2:
            lines = errors(stderr)
            assert len(lines) == 1, stderr
            assert f"in use by qtopt {job} (pid {other.pid} on {socket.gethostname()}" \
                in lines[0]
    # Whoever won, the dataset is one run's, whole: the same bytes as a run alone.
    assert shard_bytes(published) == shard_bytes(reference)
    assert not (published / LOCK).exists()


def test_a_held_lock_refuses_at_once_and_leaves_the_published_dataset(inputs, tmp_path,
                                                                      capsys):
    root, clean, export = inputs
    out = tmp_path / "out"
    assert qtopt("relabel", "-i", clean, "-e", export, "-o", out, "--epoch", 0,
                 *IN_PROCESS) == 0
    before = {p.name: p.read_bytes() for p in (out / "epoch-0").iterdir()}
    capsys.readouterr()
    held = acquire(str(out / "epoch-0"), "relabel")
    try:
        t0 = time.monotonic()
        status = qtopt("relabel", "-i", clean, "-e", export, "-o", out, "--epoch", 0,
                       *IN_PROCESS)
        seconds = time.monotonic() - t0
    finally:
        release(str(out / "epoch-0"), held)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(err) == 1, err
    assert f"in use by qtopt relabel (pid {os.getpid()}" in err[0] and LOCK in err[0]
    assert seconds < 30
    assert {p.name: p.read_bytes() for p in (out / "epoch-0").iterdir()} == before
    # Released, the same command runs.
    assert qtopt("relabel", "-i", clean, "-e", export, "-o", out, "--epoch", 0,
                 *IN_PROCESS) == 0


def test_the_lock_of_a_killed_job_is_taken_over(inputs, tmp_path):
    root, clean, _ = inputs
    out = tmp_path / "out"
    gone = subprocess.Popen([PYTHON, "-c", "pass"])
    gone.wait()
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"job": "shard", "pid": gone.pid,
                                        "host": socket.gethostname(), "started": "earlier",
                                        "token": "killed"}))
    assert qtopt("shard", "-i", root / "episodes", "-o", out, "--num-shards", 2,
                 *IN_PROCESS) == 0
    assert shard_bytes(out) == shard_bytes(clean) and manifest(out)["counts"]
    assert not (out / LOCK).exists()


def test_a_lock_held_on_another_host_is_not_taken_over(inputs, tmp_path, capsys):
    root, _, _ = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"job": "shard", "pid": 1, "host": "elsewhere",
                                        "started": "earlier", "token": "far"}))
    capsys.readouterr()
    assert qtopt("shard", "-i", root / "episodes", "-o", out, *IN_PROCESS) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "in use by qtopt shard (pid 1 on elsewhere" in err[0], err
    assert not (out / "manifest.json").exists()

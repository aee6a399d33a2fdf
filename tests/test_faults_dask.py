"""A Dask worker killed mid-job: collect, shard and relabel on a two-worker cluster lose one
worker process (SIGKILL) while their tasks run, and still publish what the local runner does."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pipelines_testlib import IN_PROCESS, make_export, qtopt

pytest.importorskip("distributed")

SMALL = ["--set", "robot.image_size=32", "--set", "robot.max_objects=6"]


@pytest.fixture
def cluster():
    """Two single-threaded worker processes under nannies, which restart a killed worker."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None) as c, Client(c) as client:
        yield c.scheduler_address, client


def published(directory) -> dict:
    """Every file a job published, by name (the manifest less what names the run)."""
    import json

    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name not in ("_SUCCESS.json",):
            data = p.read_bytes()
            if p.name == "manifest.json":
                m = json.loads(data)
                data = {k: v for k, v in m.items() if k not in ("run_id", "published")}
            out[p.name] = data
    return out


def run_killing_a_worker(client, args, started) -> int:
    """``qtopt ARGS`` in a thread; once ``started()`` says its tasks are under way, one worker
    process is killed with SIGKILL. Returns the job's status."""
    result = {}
    job = threading.Thread(target=lambda: result.update(status=qtopt(*args)))
    job.start()
    deadline = time.monotonic() + 120
    while not started() and job.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.is_alive(), "the job ended before its tasks could be interrupted"
    busy = [w for w, tasks in client.processing().items() if tasks] or \
        list(client.scheduler_info()["workers"])
    pids = client.run(os.getpid, workers=busy[:1])
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    job.join(300)
    assert not job.is_alive()
    return result["status"]


def test_a_killed_dask_worker_loses_nothing(cluster, tmp_path, capsys):
    address, client = cluster
    dask = ["--runner=DaskRunner", f"--dask_client_address={address}"]
    collect = ["collect", "--policy", "scripted", "--episodes", 6, "--episodes-per-block", 1,
               "--seed", 3, *SMALL]
    assert qtopt(*collect, "--out", tmp_path / "local" / "episodes", *IN_PROCESS) == 0
    episodes = tmp_path / "dask" / "episodes"
    # Killed once the first block of episodes is written: the rest are still to run.
    status = run_killing_a_worker(client, [*collect, "--out", episodes, *dask],
                                  lambda: any(episodes.glob("episodes-*.tfrecord.gz")))
    if status == 2:   # stopped with one line: the same command finishes the collection
        assert qtopt(*collect, "--out", episodes, *dask) == 0
    assert status in (0, 2)
    assert published(episodes) == published(tmp_path / "local" / "episodes")

    make_export(tmp_path / "exports", image_size=32)
    for job, args, out in (
            ("shard", ["shard", "-i", f"{tmp_path}/local/episodes/*.tfrecord.gz",
                       "--num-shards", 3], "ds"),
            ("relabel", ["relabel", "-i", tmp_path / "local" / "ds", "-e",
                         tmp_path / "exports", "--epoch", 0, "--set", "model.preset=tiny"],
             "labelled")):
        assert qtopt(*args, "-o", tmp_path / "local" / out, *IN_PROCESS) == 0
        target = tmp_path / "dask" / out
        # Killed as soon as the scheduler has given the job's tasks to a worker.
        status = run_killing_a_worker(client, [*args, "-o", target, *dask],
                                      lambda: any(client.processing().values()))
        if status == 2:
            assert qtopt(*args, "-o", target, *dask) == 0
        assert status in (0, 2)
        where = (lambda root: root / "epoch-0") if job == "relabel" else (lambda root: root)
        assert published(where(target)) == published(where(tmp_path / "local" / out)), job
    capsys.readouterr()

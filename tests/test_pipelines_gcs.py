"""collect -> shard -> relabel -> train -> relabel with every path in a gs:// bucket.

The bucket lives in gcp-storage-emulator, started by the fixture as its own process on
127.0.0.1 and stopped after; gcsfs reaches it through STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipelines_testlib import IN_PROCESS, IMAGE, REPO, free_port, make_export, qtopt, stop, \
    wait_for_port

BUCKET = "qtopt-e2e"


@pytest.fixture
def bucket(monkeypatch):
    import fsspec
    import gcsfs.core

    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port),
                             "--default-bucket", BUCKET, "--in-memory", "--quiet"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        # gcsfs's default class first asks the storage-control gRPC API about the bucket and
        # waits a minute for an answer the emulator never gives; the plain class does not ask.
        monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        fsspec.register_implementation("gs", gcsfs.core.GCSFileSystem, clobber=True)
        gcsfs.core.GCSFileSystem.clear_instance_cache()
        yield f"gs://{BUCKET}/work"
    finally:
        gcsfs.core.GCSFileSystem.clear_instance_cache()
        stop(proc)


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_whole_loop_in_a_bucket(bucket, capsys, tmp_path, tmp_path_factory, monkeypatch):
    from schemas import fs

    monkeypatch.chdir(tmp_path)  # anything written to a local relative path would show here
    size = [f"--set=robot.image_size={IMAGE}", "--set=model.preset=tiny"]
    episodes = f"{bucket}/episodes/scripted"
    assert qtopt("collect", "--policy", "scripted", "--episodes", 2, "--episodes-per-block", 1,
                 "--out", episodes, "--workers", 1, *size, *IN_PROCESS) == 0
    assert len(fs.glob(f"{episodes}/*.tfrecord.gz")) == 2

    transitions = f"{bucket}/transitions/demo"
    capsys.readouterr()
    assert qtopt("shard", "-i", f"{episodes}/*.tfrecord.gz", "-o", transitions,
                 "--num-shards", 2, *IN_PROCESS) == 0
    shard = _summary(capsys)
    assert shard["counts"]["episodes"] == 2 and shard["counts"]["transitions"] > 0
    assert fs.exists(f"{transitions}/manifest.json") and fs.exists(f"{transitions}/catalogue.parquet")
    assert not fs.glob(f"{transitions}/_staging/*")

    export0 = make_export(f"{bucket}/exports", IMAGE, step=0)
    labelled = f"{bucket}/labelled"
    assert qtopt("relabel", "-i", transitions, "-e", f"{bucket}/exports", "-o", labelled,
                 "--epoch", 0, *size, *IN_PROCESS) == 0
    relabel = _summary(capsys)
    assert relabel["metrics"]["labelled"] == shard["counts"]["transitions"]
    assert relabel["metrics"]["records_in"] == relabel["metrics"]["labelled"]
    assert export0.startswith("gs://")

    # A newer export in the bucket relabels the same transitions as the next epoch.
    make_export(f"{bucket}/exports", IMAGE, step=7, seed=1)
    assert qtopt("relabel", "-i", transitions, "-e", f"{bucket}/exports", "-o", labelled,
                 "--epoch", 1, *size, *IN_PROCESS) == 0
    assert _summary(capsys)["metrics"]["labelled"] == shard["counts"]["transitions"]
    manifest = json.loads(fs.read_text(f"{labelled}/epoch-1/manifest.json"))
    assert manifest["target_version"] == "export-000000007"
    assert manifest["inputs"] == [transitions]
    assert sorted(os.listdir(tmp_path)) == []

    # Training reads the labelled shards and writes checkpoints, logs and exports in the bucket
    # through schemas.fs; only the local staging it needs goes elsewhere.
    monkeypatch.setenv("QTOPT_STAGING_DIR", str(tmp_path_factory.mktemp("staging")))
    train = f"{bucket}/train"
    status = qtopt("train", "--data", f"{labelled}/epoch-1", "--workdir", train,
                   "--until-step", 3, "--no-progress", "--set=train.batch_size=8", *size)
    assert status == 0
    assert fs.glob(f"{train}/exports/export-000000003/manifest.json")
    assert fs.glob(f"{train}/checkpoints/ckpt-3.index")
    assert 'model_checkpoint_path: "ckpt-3"' in fs.read_text(f"{train}/checkpoints/checkpoint")
    assert fs.glob(f"{train}/logs/events.out.tfevents.*")
    assert sorted(os.listdir(tmp_path)) == []
    capsys.readouterr()
    assert qtopt("relabel", "-i", transitions, "-e", f"{train}/exports", "-o", labelled,
                 "--epoch", 2, *size, *IN_PROCESS) == 0
    assert json.loads(fs.read_text(f"{labelled}/epoch-2/manifest.json"))["target_version"] == \
        "export-000000003"

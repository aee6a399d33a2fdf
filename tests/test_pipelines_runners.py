"""Runner choice and option pass-through; Dataflow dry runs; a PortableRunner cluster on loopback."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import pytest

from pipelines_testlib import (IN_PROCESS, PYTHON, REPO, free_port, make_export, qtopt,
                               shard_bytes, stop, wait_for_port, write_episodes)
from pipelines import runner

DATAFLOW = ["--runner=DataflowRunner", "--project=qtopt-test", "--region=europe-west4",
            "--temp_location=gs://qtopt-test-bucket/tmp", "--dry_run=True"]


def test_local_default_is_the_multiprocess_fnapi_runner():
    args = runner.resolve_args([], num_workers=0)
    assert args == ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                    f"--direct_num_workers={os.cpu_count()}"]
    # DirectRunner would try PrismRunner first (a download): it means the same engine here.
    assert runner.resolve_args(["--runner", "DirectRunner", "--direct_num_workers=3"]) == \
        ["--direct_num_workers=3", "--runner=FnApiRunner", "--direct_running_mode=multi_processing"]
    assert runner.resolve_args([], num_workers=5)[-1] == "--direct_num_workers=5"
    options = runner.pipeline_options([])
    assert runner.runner_name(options) == "FnApiRunner" and runner.is_local(options)


def test_relabel_runs_locally_in_one_process_unless_told_otherwise():
    from pipelines import relabel

    args = runner.resolve_args([], num_workers=2, local_mode=relabel.LOCAL_MODE)
    assert "--direct_running_mode=in_memory" in args
    assert "--direct_num_workers=1" in args   # one process: Beam warns if told of 2
    options = runner.pipeline_options([], 2, local_mode=relabel.LOCAL_MODE)
    assert runner.threads_per_worker(options) is None  # TensorFlow keeps its whole pool
    mine = runner.resolve_args(["--direct_running_mode=multi_processing"], 2,
                               local_mode=relabel.LOCAL_MODE)
    assert mine.count("--direct_running_mode=multi_processing") == 1
    assert "--direct_running_mode=in_memory" not in mine
    assert "--direct_num_workers=2" in mine
    assert runner.threads_per_worker(runner.pipeline_options(
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])) == max(
            1, (os.cpu_count() or 1) // 2)
    # Off this machine the mode means nothing and is not added.
    assert not any("direct_running_mode" in a for a in runner.resolve_args(
        DATAFLOW, local_mode=relabel.LOCAL_MODE))
    with pytest.raises(ValueError, match="local_mode"):
        runner.resolve_args([], local_mode="threads")


def test_other_runners_and_options_pass_through():
    portable = ["--runner=PortableRunner", "--job_endpoint=localhost:1"]
    assert runner.resolve_args(portable) == portable
    dataflow = runner.resolve_args(DATAFLOW + ["--max_num_workers=50"], job_name="qtopt-shard")
    assert dataflow[:len(DATAFLOW) + 1] == DATAFLOW + ["--max_num_workers=50"]
    assert f"--setup_file={REPO / 'setup.py'}" in dataflow
    assert any(a.startswith("--job_name=qtopt-shard-") for a in dataflow)
    own = runner.resolve_args(DATAFLOW + ["--sdk_container_image=img", "--job_name=mine"])
    assert not any(a.startswith("--setup_file") for a in own) and own[-1] == "--job_name=mine"
    options = runner.pipeline_options(DATAFLOW + ["--num_workers", "7", "--no_use_public_ips"])
    assert options.get_all_options()["num_workers"] == 7
    assert options.get_all_options()["use_public_ips"] is False  # a flag named unlike its dest
    with pytest.raises(runner.UserError, match="--no_such_option"):
        runner.pipeline_options(["--no_such_option=1"])


def test_command_parsers_keep_unknown_options_for_beam():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output")
    runner.add_beam_arguments(parser)
    ns = parser.parse_args(["--output", "x", "--runner", "DataflowRunner", "--region=eu"])
    assert ns.output == "x" and ns.beam_args == ["--runner", "DataflowRunner", "--region=eu"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--output", "x", "stray"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runners")
    write_episodes(root / "episodes", files=2, per_file=2, seed=5)
    assert qtopt("shard", "-i", f"{root}/episodes/*.gz", "-o", root / "ds", "--num-shards", 2,
                 *IN_PROCESS) == 0
    make_export(root / "exports")
    return root


def _dry_run(capsys, *args):
    capsys.readouterr()
    assert qtopt(*args, *DATAFLOW) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert "dry run, nothing submitted" in out
    return json.loads(out.split("nothing submitted: ", 1)[1])


@pytest.mark.parametrize("command", ["collect", "shard", "subsample", "relabel"])
def test_every_pipeline_builds_a_dataflow_job(inputs, command, capsys, tmp_path):
    bucket = "gs://qtopt-test-bucket/work"
    args = {
        # collect reads its output directory on the launcher, so that one stays local here.
        "collect": ["collect", "--policy", "scripted", "--episodes", 4,
                    "--out", tmp_path / "episodes"],
        "shard": ["shard", "-i", f"{inputs}/episodes/*.gz", "-o", f"{bucket}/transitions/ds"],
        "subsample": ["subsample", "-i", inputs / "ds", "--fraction", 0.5,
                      "-o", f"{bucket}/transitions/half"],
        "relabel": ["relabel", "-i", inputs / "ds", "-e", inputs / "exports",
                    "-o", f"{bucket}/labelled", "--epoch", 0],
    }[command]
    info = _dry_run(capsys, *args)
    assert info["runner"] == "DataflowRunner" and info["submitted"] is False
    assert info["job_name"].startswith(f"qtopt-{command}-")
    assert "workflow.tar.gz" in info["staged"]  # the project's sdist, for the workers
    assert info["transforms"] > 5
    expected = {"shard": ["Read episodes", "Commit"], "subsample": ["Filter shards", "Commit"],
                "relabel": ["Relabel shards", "Commit"], "collect": ["Collect"]}[command]
    assert set(expected) <= set(info["steps"])


@pytest.fixture
def portable_cluster():
    """A Beam job service and an external SDK worker pool, each its own process, on loopback."""
    env = {**os.environ, "PATH": f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '')}"}
    job_port, pool_port = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [PYTHON, "-m", "apache_beam.runners.portability.local_job_service_main",
             "--port", str(job_port)], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [PYTHON, "-m", "apache_beam.runners.worker.worker_pool_main",
             "--service_port", str(pool_port)], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(job_port, procs[0])
        wait_for_port(pool_port, procs[1])
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]
    finally:
        for proc in procs:
            stop(proc)


def test_shard_on_a_portable_cluster_matches_the_local_runner(inputs, portable_cluster,
                                                             tmp_path):
    out = tmp_path / "portable"
    assert qtopt("shard", "-i", f"{inputs}/episodes/*.gz", "-o", out, "--num-shards", 2,
                 *portable_cluster) == 0
    assert shard_bytes(out) == shard_bytes(inputs / "ds")
    assert not (out / "_staging").exists()

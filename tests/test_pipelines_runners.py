"""Runner choice and option pass-through; Dataflow dry runs; a PortableRunner cluster on loopback;
collect, shard and relabel on a Dask cluster of worker processes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import pytest

from pipelines_testlib import (IN_PROCESS, PYTHON, REPO, free_port, make_export, manifest, qtopt,
                               shard_bytes, stop, wait_for_port, write_episodes)
from pipelines.machinery import runner

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
    from pipelines.jobs import relabel

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


def test_dask_runner_gets_our_runner_one_element_per_partition_and_local_workers():
    mine = "--runner=pipelines.machinery.dask_runner.DaskRunner"
    for name in ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"):
        assert runner.resolve_args([f"--runner={name}"], num_workers=3) == \
            [mine, "--dask_partition_size=1", "--direct_num_workers=3"]
    remote = runner.resolve_args(["--runner", "DaskRunner", "--dask_client_address", "h:8786",
                                  "--dask_npartitions=8"])
    assert remote == ["--dask_client_address", "h:8786", "--dask_npartitions=8", mine]
    options = runner.pipeline_options(["--runner=DaskRunner", "--dask_client_address=h:8786"])
    assert runner.runner_name(options) == "DaskRunner" and not runner.is_local(options)
    assert options.get_all_options()["address"] == "h:8786"
    assert runner.threads_per_worker(options) is None  # TensorFlow: the cluster's cores
    local = runner.pipeline_options(["--runner=DaskRunner", "--direct_num_workers=2"])
    assert runner.threads_per_worker(local) == max(1, (os.cpu_count() or 1) // 2)
    with pytest.raises(runner.UserError, match="--dask_adress"):
        runner.pipeline_options(["--runner=DaskRunner", "--dask_adress=h:8786"])


def test_an_unreachable_dask_scheduler_is_a_one_line_error(inputs, tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert qtopt("shard", "-i", f"{inputs}/episodes/*.gz", "-o", tmp_path / "ds",
                 "--runner=DaskRunner", f"--dask_client_address={address}",
                 "--dask_connection_timeout=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"qtopt shard: error: --runner=DaskRunner: cannot reach the Dask "
                              f"scheduler at {address}")
    assert not (tmp_path / "ds").exists()


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


@pytest.fixture(scope="module")
def dask_cluster():
    """A Dask scheduler and two single-threaded worker processes, as a lab would run them."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield cluster.scheduler_address, client


def _job_line(capsys) -> dict:
    """The job's JSON summary line, less its output directory."""
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    line.pop("output")
    return line


def _published(directory) -> tuple[dict, dict]:
    """Every published file's bytes, and the manifest less what names this run."""
    m = manifest(directory)
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "manifest.json"}
    return files, {k: v for k, v in m.items() if k not in ("run_id", "published")}


def test_collect_shard_and_relabel_on_a_dask_cluster_match_the_local_runner(dask_cluster,
                                                                           tmp_path, capsys):
    address, client = dask_cluster
    dask = ["--runner=DaskRunner", f"--dask_client_address={address}"]
    small = ["--set", "robot.image_size=32", "--set", "robot.max_objects=6"]
    collect = ["collect", "--policy", "scripted", "--episodes", 4, "--episodes-per-block", 1,
               "--seed", 3, *small]
    for where, beam_args in (("local", IN_PROCESS), ("dask", dask)):
        assert qtopt(*collect, "--out", tmp_path / where / "episodes", *beam_args) == 0
    summaries = []
    for where in ("local", "dask"):
        episodes = tmp_path / where / "episodes"
        summary = json.loads((episodes / "_SUCCESS.json").read_text())
        assert summary.pop("seconds") >= 0 and summary.pop("episodes_per_s") > 0
        summaries.append(summary)
        assert sorted(p.name for p in episodes.glob("episodes-*")) == sorted(summary["files"])
    # The counts Beam's metrics gave (new episodes, steps) are the same on both runners.
    assert summaries[0] == summaries[1] and summaries[0]["new_episodes"] == 4
    assert summaries[0]["steps_per_episode"] > 0
    local_eps = {p.name: p.read_bytes() for p in (tmp_path / "local" / "episodes").iterdir()}
    dask_eps = {p.name: p.read_bytes() for p in (tmp_path / "dask" / "episodes").iterdir()
                if p.name != "_SUCCESS.json"}
    local_eps.pop("_SUCCESS.json")
    assert dask_eps == local_eps

    make_export(tmp_path / "exports", image_size=32)
    lines = {}
    for where, beam_args in (("local", IN_PROCESS), ("dask", dask)):
        capsys.readouterr()
        assert qtopt("shard", "-i", f"{tmp_path}/local/episodes/*.tfrecord.gz",
                     "-o", tmp_path / where / "ds", "--num-shards", 3, *beam_args) == 0
        lines[where, "shard"] = _job_line(capsys)
        # Both runners read the same inputs, which the manifests name.
        assert qtopt("relabel", "-i", tmp_path / "local" / "ds", "-e", tmp_path / "exports",
                     "-o", tmp_path / where / "labelled", "--epoch", 0,
                     "--set", "model.preset=tiny", *beam_args) == 0
        lines[where, "relabel"] = _job_line(capsys)
    for job, directory in (("shard", "ds"), ("relabel", "labelled/epoch-0")):
        local, dask_out = (_published(tmp_path / w / directory) for w in ("local", "dask"))
        assert dask_out == local  # shards, catalogue, dead letters and manifest
        assert local[1]["accounting"]["records_out"] > 0
        # Counts, accounting and Beam's metrics, as the job printed them.
        assert lines["dask", job] == lines["local", job] and lines["local", job]["metrics"]
    # Both worker processes ran the jobs' tasks.
    executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(n > 0 for n in executed.values())

"""Bad configuration of the scale-out paths: one line naming what is wrong, status 2, in
seconds, from the real command in a process of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from pipelines_testlib import PYTHON, REPO, write_episodes


def run(args, env=None, prelude: str = "", timeout: float = 60):
    """``qtopt ARGS`` in a new interpreter (after ``prelude``): (status, error lines, seconds)."""
    code = (f"{prelude}\nimport sys\nfrom pipelines.cli import main\n"
            f"sys.exit(main({[str(a) for a in args]!r}))")
    start = time.monotonic()
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    seconds = time.monotonic() - start
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    return proc.returncode, errors, seconds


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-faults")
    write_episodes(root / "episodes", files=1, per_file=2, steps=3, seed=1)
    return root


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_runner_without_the_dask_extra_says_how_to_install_it(episodes, tmp_path):
    # The packages made unimportable in that process, as in an install without the extra.
    hide = "import sys\nsys.modules.update(dask=None, distributed=None)"
    status, errors, seconds = run(
        ["shard", "--input", episodes / "episodes", "--output", tmp_path / "out",
         "--runner=DaskRunner"], prelude=hide)
    assert status == 2 and len(errors) == 1, errors
    assert "--runner=DaskRunner needs Dask" in errors[0] and ".[dask]" in errors[0]
    assert seconds < 30 and not (tmp_path / "out" / "manifest.json").exists()


def test_dask_runner_at_a_closed_port_names_the_address_within_seconds(episodes, tmp_path):
    port = closed_port()
    status, errors, seconds = run(
        ["shard", "--input", episodes / "episodes", "--output", tmp_path / "out",
         "--runner=DaskRunner", f"--dask_client_address=127.0.0.1:{port}"])
    assert status == 2 and len(errors) == 1, errors
    assert f"cannot reach the Dask scheduler at 127.0.0.1:{port}" in errors[0]
    assert seconds < 30 and not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("tf_config, says", [
    ("{", "TF_CONFIG: not valid JSON"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}), "TF_CONFIG: 'task' must name a job"),
])
def test_multi_worker_with_a_malformed_tf_config_is_one_line(tmp_path, tf_config, says):
    env = {**os.environ, "TF_CONFIG": tf_config}
    status, errors, seconds = run(
        ["train", "--workdir", tmp_path / "work", "--data", tmp_path / "nothing",
         "--strategy", "multi-worker"], env=env)
    assert status == 2 and len(errors) == 1, errors
    assert says in errors[0]
    assert seconds < 30 and not (tmp_path / "work").exists()


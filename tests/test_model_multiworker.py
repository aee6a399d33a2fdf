"""`qtopt train --strategy multi-worker`: two local worker processes on the CPU train one model.

The data is two shards of 8 records and the global batch is 16, read in order
(``train.shuffle_buffer=1``, no augmentation), so every global batch is the whole data set both
for one process and for two workers that each read one shard: the two runs must compute the same
steps, up to the order of floating-point sums. A wrong split (both workers reading one shard)
moves the weights by far more than the tolerance of 1e-4 (reproductions/README.md).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import schemas  # noqa: F401

tf = pytest.importorskip("tensorflow")

from model_testlib import labelled, latest_checkpoint_step, write_shards  # noqa: E402
from pipelines_testlib import free_port, qtopt  # noqa: E402

from model import data  # noqa: E402
from model.distribute import cluster_from_env  # noqa: E402
from model.export import load_export, weights_digest  # noqa: E402
from model.network import InputSpec  # noqa: E402
from model.train import train_until  # noqa: E402
from schemas import tfrecord_io  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.errors import UserError  # noqa: E402

SIZE = 32
UNTIL = 40
OVERRIDES = ["model.preset=tiny", f"robot.image_size={SIZE}", "train.batch_size=16",
             "train.shuffle_buffer=1", "train.augment=false", "train.checkpoint_every=10",
             "train.log_every=1", "train.optimizer=adam", "train.learning_rate=0.01",
             "targets.lag_steps=5"]
ARGS = [a for o in OVERRIDES for a in ("--set", o)] + ["--no-progress", "--until-step",
                                                        str(UNTIL)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _workers(pattern, workdir):
    """Both workers of a two-worker cluster on this machine, as subprocesses (their temporary
    files beside the workdir: a worker killed while saving leaves its scratch checkpoint)."""
    hosts = [f"localhost:{free_port()}" for _ in range(2)]
    scratch = workdir.parent / "tmp"
    scratch.mkdir(exist_ok=True)
    procs = []
    for i in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps(tf_config), TMPDIR=str(scratch))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "train", "--data", pattern, "--workdir",
             str(workdir), "--strategy", "multi-worker"] + ARGS,
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


# Two replicas on one machine: the CPU split into two logical devices (before TensorFlow starts),
# so that the worker's batch is cut in two as it would be for two GPUs.
MIRRORED_SCRIPT = """
import sys
import schemas
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from model.distribute import Distribution
from model.train import Trainer
from schemas.config import load_config
d = Distribution(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "mirrored")
config = load_config("demo", overrides=sys.argv[4:])
result = Trainer(config, [(sys.argv[1], 1.0)], sys.argv[2], distribution=d).run(
    int(sys.argv[3]), progress=False)
print(d.describe(), result.step, result.digest)
"""


def _mirrored(pattern, workdir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-c", MIRRORED_SCRIPT, pattern, str(workdir),
                             str(UNTIL)] + OVERRIDES, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _losses(workdir):
    """{step: loss} from the run's TensorBoard events."""
    found = {}
    for events in sorted((workdir / "logs").iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == "loss":
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def _assert_close(reference, workdir):
    """``workdir``'s export and logged losses are ``reference``'s, up to rounding."""
    alone, other = load_export(str(reference / "exports")), load_export(str(workdir / "exports"))
    for name in ("online", "polyak", "lagged"):
        for a, b in zip(alone.networks[name].variables, other.networks[name].variables):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-4,
                                       err_msg=f"{workdir.name}: {name} {a.path}")
    # The loss of every global batch too, from the first step (initial weights, whole data).
    losses, expected = _losses(workdir), _losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(1, UNTIL + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                               [expected[s] for s in sorted(expected)], rtol=0, atol=1e-5,
                               err_msg=workdir.name)
    assert expected[UNTIL] < expected[1] - 0.05        # it did learn something


@pytest.fixture
def processes():
    """Popen objects the test starts; any still running at its end are killed."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_workers_train_one_model_and_resume_after_one_is_killed(tmp_path, processes):
    """Also two replicas of one process (``mirrored``), run while a worker is down."""
    pattern = write_shards(tmp_path / "labelled", 8, 2, size=SIZE)
    single, multi, mirrored = tmp_path / "single", tmp_path / "multi", tmp_path / "mirrored"
    workers = _workers(pattern, multi)
    processes.extend(workers)
    deadline = time.time() + 150
    while latest_checkpoint_step(multi) < 10 and workers[1].poll() is None and time.time() < deadline:
        time.sleep(0.005)
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait()
    at_kill = latest_checkpoint_step(multi)
    assert 10 <= at_kill < UNTIL, _finish(workers[0])[2][-2000:]
    # While the other worker waits to notice the loss: two replicas of one process, and one
    # process alone, on the same global batch of 16.
    two_replicas = _mirrored(pattern, mirrored)
    processes.append(two_replicas)
    train_until(load_config("demo", overrides=OVERRIDES), [(pattern, 1.0)], str(single),
          until_step=UNTIL, progress=False)
    # The other worker cannot go on alone: it stops with one line naming the lost task.
    status, out, err = _finish(workers[0])
    assert status == 2, err[-2000:]
    assert re.search(r"qtopt train: error: worker 0 of 2: lost contact with "
                     r"/job:worker/replica:0/task:1 after step \d+; nothing saved", err), err
    assert not (multi / "exports").exists()
    assert latest_checkpoint_step(multi) == at_kill

    restarted = _workers(pattern, multi)
    processes.extend(restarted)
    results = [_finish(p) for p in restarted]
    for i, (status, out, err) in enumerate(results):
        assert status == 0, err[-2000:]
        assert f"worker {i} of 2: resumed at step {at_kill}" in out
        assert f"worker {i} of 2: step {UNTIL}:" in out
    assert "export (the chief writes it)" in results[1][1]
    assert sorted(os.listdir(multi / "exports")) == [f"export-{UNTIL:09d}"]

    # One model: both workers hold the weights the chief exported.
    digests = [re.search(r"weights ([0-9a-f]{16})", out).group(1) for _, out, _ in results]
    exported = load_export(str(multi / "exports"))
    assert digests[0] == digests[1] == weights_digest(exported.networks)
    _assert_close(single, multi)

    status, out, err = _finish(two_replicas)
    assert status == 0, err[-2000:]
    assert out.split() == ["2", "replicas", str(UNTIL),
                           weights_digest(load_export(str(mirrored / "exports")).networks)]
    _assert_close(single, mirrored)


def _records(dataset):
    return sorted(float(t) for _, target in dataset for t in target.numpy())


@pytest.mark.parametrize("shards", [4, 1])
def test_workers_read_disjoint_parts_that_cover_the_data(tmp_path, shards):
    """Four shards split by file; one shard split by record (each worker reads it whole)."""
    rng = np.random.default_rng(0)
    for s in range(shards):  # distinct targets tell the records apart
        tfrecord_io.write_records(str(tmp_path / "d" / f"shard-{s:05d}.tfrecord.gz"),
                                  [labelled(rng, 100, True, (s * 6 + i) / 100, 8)
                                   for i in range(6)])
    expanded = data.expand([(str(tmp_path / "d" / "*.tfrecord.gz"), 1.0)])
    spec = InputSpec(8)
    whole = _records(data.from_files(expanded, spec, 1, training=False))
    parts = [_records(data.from_files(expanded, spec, 1, training=False, shard=(i, 2)))
             for i in range(2)]
    assert len(whole) == 6 * shards and len(parts[0]) == len(parts[1]) == 3 * shards
    assert sorted(parts[0] + parts[1]) == whole

    # Training streams (repeated, shuffled by file) split the same way over one pass.
    first = [data.from_files(expanded, spec, 3 * shards, training=True, shuffle_buffer=1,
                             augment=False, seed=7, shard=(i, 2)) for i in range(2)]
    seen = [_records(ds.take(1)) for ds in first]
    assert sorted(seen[0] + seen[1]) == whole


@pytest.mark.parametrize("value, message", [
    (None, "TF_CONFIG is not set"),
    ("{", "TF_CONFIG: not valid JSON"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
     "needs a 'cluster' with a 'worker' list"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker"}}',
     "cluster job 'ps' is not supported"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is not one of the 2 'worker' tasks"),
    ('{"cluster": {"worker": ["a:1"]}}', "'task' must name a job"),
])
def test_bad_tf_config_is_refused_with_its_fault(value, message):
    env = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(UserError, match=re.escape(message)):
        cluster_from_env(env)


def test_tf_config_ids_put_the_chief_first():
    cluster = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    ids = [cluster_from_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})})
           for task in ({"type": "chief", "index": 0}, {"type": "worker", "index": 0},
                        {"type": "worker", "index": 1})]
    assert ids == [(0, 3), (1, 3), (2, 3)]


def test_multi_worker_without_tf_config_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    pattern = write_shards(tmp_path / "labelled", 8, 1, size=SIZE)
    status = qtopt("train", "--data", pattern, "--workdir", tmp_path / "w",
                   "--strategy", "multi-worker")
    assert status == 2
    assert "qtopt train: error: --strategy multi-worker: TF_CONFIG is not set" in \
        capsys.readouterr().err

"""Training on several devices or machines: ``qtopt train --strategy``.

- ``default``: no ``tf.distribute`` strategy; one process, TensorFlow's default device.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU (the CPU when there is
  none), one replica per device.
- ``multi-worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines the
  ``TF_CONFIG`` environment variable lists; every machine runs the same command with its own
  ``TF_CONFIG`` task.

Every replica holds the same weights; gradients are summed over replicas each step, so a step
with ``train.batch_size`` B on R replicas matches one process's step on the same B records. Each
worker reads its own part of the data (``model.data``'s ``shard``) and its own B / workers of every
global batch. The chief (the ``chief`` task if the cluster has one, else worker 0) writes the
checkpoints, logs and exports of the workdir, which every worker must reach (a shared file
system or ``gs://``); the others write their checkpoints to a temporary directory, as
TensorFlow's multi-worker guide prescribes, and only their input positions to the workdir.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from schemas.errors import UserError

STRATEGIES = ("default", "mirrored", "multi-worker")


@dataclass
class Distribution:
    """A ``tf.distribute`` strategy and this process's place in it."""

    strategy: object          # tf.distribute.Strategy
    kind: str                 # "mirrored" or "multi-worker"
    worker: int = 0           # this process's id among the workers; the chief is 0
    workers: int = 1

    @property
    def chief(self) -> bool:
        return self.worker == 0

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    def describe(self) -> str:
        return (f"worker {self.worker} of {self.workers}" if self.kind == "multi-worker"
                else f"{self.replicas} replica{'s' if self.replicas > 1 else ''}")


def cluster_from_env(environ=None) -> tuple[int, int]:
    """(this worker's id, number of workers) from ``TF_CONFIG``; UserError naming what is wrong.

    Ids follow TensorFlow's order: the ``chief`` task (if any) is 0, then the ``worker`` tasks."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise UserError("--strategy multi-worker: TF_CONFIG is not set (JSON naming the cluster's "
                        "workers and this process's task; README, 'Running at scale')")
    try:
        tf_config = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"TF_CONFIG: not valid JSON ({exc})") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise UserError("TF_CONFIG: needs a 'cluster' with a 'worker' list of host:port")
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise UserError(f"TF_CONFIG: cluster job {unknown[0]!r} is not supported by --strategy "
                        "multi-worker (only 'chief' and 'worker')")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h
                                                  for h in hosts):
            raise UserError(f"TF_CONFIG: cluster {job!r} must be a list of host:port strings")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserError(f"TF_CONFIG: 'task' must name a job of the cluster "
                        f"({', '.join(sorted(cluster))}) as its 'type'; got {task!r}")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise UserError(f"TF_CONFIG: task index {index!r} is not one of the "
                        f"{len(cluster[task['type']])} {task['type']!r} tasks")
    chiefs = len(cluster.get("chief", []))
    if chiefs > 1:
        raise UserError("TF_CONFIG: a cluster has at most one 'chief'")
    worker = index if task["type"] == "chief" else chiefs + index
    return worker, chiefs + len(cluster.get("worker", []))


def make(name: str) -> Distribution | None:
    """The strategy ``--strategy name`` asks for; None for ``default``. Call it before any other
    TensorFlow work: the multi-worker strategy must set up the runtime first."""
    if name not in STRATEGIES:
        raise UserError(f"--strategy: unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")
    if name == "default":
        return None
    if name == "mirrored":
        import tensorflow as tf

        return Distribution(tf.distribute.MirroredStrategy(), "mirrored")
    worker, workers = cluster_from_env()
    import tensorflow as tf

    return Distribution(tf.distribute.MultiWorkerMirroredStrategy(), "multi-worker", worker,
                        workers)

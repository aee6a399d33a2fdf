"""``qtopt train``: fit the Q-function to labelled shards, checkpoint, export.

    qtopt train --workdir work/train --until-step 0       # the untrained export, for epoch 0
    qtopt train --data work/labelled/epoch-0 --workdir work/train --until-step 1000
    qtopt train --data work/labelled/epoch-1 --workdir work/train --steps 1000   # 1000 more
    qtopt train --data 'offline/*.tfrecord.gz@0.9' --data 'online/*.tfrecord.gz@0.1' ...

Rerunning the same command after a kill resumes from the newest checkpoint in ``--workdir``; a
workdir already at its target step says so and trains nothing. Without ``--data`` the command
only exports (the newest checkpoint, or the untrained network at step 0).
Both ``--data`` and ``--workdir`` may be ``gs://`` (any fsspec URL): shards are copied and
checkpoints and logs staged locally under ``$QTOPT_STAGING_DIR`` (default: the temp directory),
with every checkpoint copied up to ``--workdir`` as soon as it is saved.

``--strategy mirrored`` trains on every local GPU, ``--strategy multi-worker`` on the machines
``TF_CONFIG`` lists, each running the same command (``model.distribute``; README, "Running at
scale").
"""

from __future__ import annotations

import os

from model.distribute import STRATEGIES
from pipelines.machinery.job import JobResult
from pipelines.machinery.options import add_config_arguments, config_from_args
from schemas.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--data", "--input", "-i", action="append", default=[], dest="data",
                        metavar="GLOB[@WEIGHT]",
                        help="labelled shards (a glob or a directory); repeat to mix datasets, "
                             "each drawn with probability proportional to its weight (default 1)."
                             " Without it train only exports: --until-step 0 writes the "
                             "untrained network's export-000000000")
    parser.add_argument("--workdir", "--output", "-o", required=True, dest="workdir",
                        help="checkpoints/, exports/ and logs/ go here (local or gs://)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--until-step", type=int, default=None, metavar="N",
                        help="train until the global step reaches N (default: train.steps)")
    target.add_argument("--steps", type=int, default=None, metavar="N",
                        help="train N steps more than the workdir's newest checkpoint")
    parser.add_argument("--strategy", default="default", choices=STRATEGIES,
                        help="default: one process as is; mirrored: every local GPU; "
                             "multi-worker: the machines TF_CONFIG lists, each running this "
                             "command (train.batch_size is the global batch)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress lines (train: step S/U, steps/s, ETA, loss)")
    add_config_arguments(parser)


def parse_data(values) -> list[tuple[str, float]]:
    out = []
    for value in values:
        pattern, sep, weight = value.rpartition("@")
        if not sep:
            out.append((value, 1.0))
            continue
        try:
            out.append((pattern, float(weight)))
        except ValueError:
            raise UserError(f"--data {value}: weight {weight!r} is not a number") from None
    return out


def run(args) -> int:
    return train(config_from_args(args), parse_data(args.data), args.workdir,
                 until_step=args.until_step, steps=args.steps, progress=not args.no_progress,
                 strategy=args.strategy).status


def open_trainer(cfg, data: list[tuple[str, float]], workdir: str, strategy: str = "default"):
    """The trainer ``qtopt train`` runs on ``data`` in ``workdir``, as one worker of
    ``strategy``: the one entry to training, which finetuning uses too (one trainer a round,
    its input swapped chunk by chunk with ``use_data``)."""
    from model import distribute

    distribution = distribute.make(strategy)   # before any other TensorFlow work
    from model.train import Trainer

    return Trainer(cfg, data, workdir, distribution=distribution)


def train(cfg, data: list[tuple[str, float]], workdir: str, *, until_step: int | None = None,
          steps: int | None = None, progress: bool = True,
          strategy: str = "default") -> JobResult:
    """Train on ``data`` ((glob or directory, weight) pairs) in ``workdir`` until ``until_step``
    (or ``steps`` more), in this process or as one worker of ``strategy``; without data, only
    export."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for flag, value in (("--until-step", until_step), ("--steps", steps)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be >= 0, got {value}")
    if not data:
        if strategy != "default":
            raise UserError(f"--strategy {strategy}: needs --data (without it train only "
                            "exports, which one process does: drop --strategy)")
        from model.train import export_only

        result, distribution = export_only(cfg, workdir, until_step, steps), None
    else:
        trainer = open_trainer(cfg, data, workdir, strategy)
        distribution = trainer.distribution
        result = trainer.run(until_step, progress=progress, steps=steps)
    who = f"{distribution.describe()}: " if distribution is not None else ""
    export = result.export_path or "(the chief writes it)"
    summary = {"step": result.step, "export": result.export_path, "trained": result.trained}
    if not result.trained:
        print(f"train: {who}{workdir} is at step {result.step} (target {result.until_step}):"
              f" nothing to train; export {export}")
        return JobResult("train", workdir, 0, summary)
    if result.start_step:
        print(f"{who}resumed at step {result.start_step}")
    print(f"{who}step {result.step}: loss {result.loss:.4f}, {result.steps_per_s:.1f} steps/s, "
          f"export {export}" + (f", weights {result.digest}" if result.digest else ""))
    return JobResult("train", workdir, 0, {**summary, "loss": result.loss,
                                           "digest": result.digest})

"""What every job shares: its result, the dead-letter allowance and the one-line summary that
ends a Beam job's run, with its exit status.

Each job is a function of its configuration and paths returning a ``JobResult``
(``collect.collect``, ``shard.shard``, ``relabel.relabel``, ``subsample.subsample``,
``evaluate.evaluate``, ``train.train``, ``finetune.finetune``); the command line parses
arguments and calls it, and jobs that chain others (finetune, curve, demo, study) call the
functions and ``require`` each result.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from pipelines.machinery import dataset, runner
from schemas import fs
from schemas.errors import DeadLettered, UserError


@dataclass(frozen=True)
class JobResult:
    """What a job did: its exit status (0, or 3 when it published with dead letters beyond
    the allowance), where it wrote, and its summary (the JSON line it printed)."""

    job: str
    output: str
    status: int = 0
    summary: dict = field(default_factory=dict)

    def require(self) -> "JobResult":
        """The result, or DeadLettered for a job that published with dead letters: a job
        chaining others stops there (the job's own line named the records)."""
        if self.status == DeadLettered.exit_status:
            raise DeadLettered(f"qtopt {self.job} published its output but dead-lettered input "
                               "records (its line above names them); allow them with --set "
                               "pipeline.max_dead_fraction=F")
        if self.status:
            raise UserError(f"qtopt {self.job} exited with status {self.status}")
        return self


def recorded_identity(path: str) -> dict | None:
    """What a previous run into the same output recorded about itself (collect's
    ``_collect.json``, evaluate's ``plan.json``), or None; a rerun compares it with its own
    and refuses to mix two different runs in one directory."""
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except ValueError:
        raise UserError(f"{path}: not valid JSON; remove it or use another --output") from None


def add_max_dead_fraction(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-dead-fraction", type=float, default=None, metavar="F",
                        help="share of the input records that may be dead-lettered with exit "
                             "status 0 (default pipeline.max_dead_fraction, 0: any dead letter "
                             "exits 3, after publishing)")


def max_dead_fraction(value: float | None, cfg) -> float:
    """``--max-dead-fraction``, else ``pipeline.max_dead_fraction``; checked like the option."""
    if value is None:
        return cfg.pipeline.max_dead_fraction
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--max-dead-fraction must be in [0, 1], got {value:g}")
    return value



def report(pipeline, result, out: str, namespace: str, label: str,
           max_dead_fraction: float = 0.0) -> JobResult:
    """Print the job's one-line JSON summary (counts and accounting from the manifest, metrics
    from Beam); the exit status: 3 when more was dead-lettered than allowed."""
    if runner.is_dry_run(pipeline.options):
        described = runner.describe_dry_run(pipeline, result)
        print(f"{label}: dry run, nothing submitted: {json.dumps(described, sort_keys=True)}",
              flush=True)
        return JobResult(label, out, 0, {"dry_run": described})
    manifest = dataset.read_dataset_manifest(out)
    metrics = runner.counters(result, namespace)
    if "target_x1e6" in metrics:  # relabel's distribution of targets, in millionths
        value = metrics.pop("target_x1e6")
        metrics["mean_target"] = None if value is None else value / 1e6
    summary = {"output": out, "counts": manifest["counts"],
               "accounting": manifest.get("accounting"), "metrics": metrics}
    print(json.dumps(summary, sort_keys=True), flush=True)
    return JobResult(label, out, dataset.dead_letter_status(label, out, manifest,
                                                            max_dead_fraction), summary)

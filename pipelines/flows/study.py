"""``qtopt study dataset-size``: success against dataset size (the paper's table 6).

    qtopt study dataset-size --transitions runs/demo/transitions/scripted \\
                             --fractions 0.25,0.55,1.0 --run runs/study

For each fraction: ``qtopt subsample`` keeps that stable share of the episodes (the subsets are
nested: the 25% set is inside the 55% set), the same offline training as the demo runs on it
(relabel/train epochs with the same configuration), and ``qtopt evaluate`` scores the result on
test objects. Writes ``RUN/results.json``, ``RUN/results.md`` (the table) and
``RUN/success_vs_size.png``. Every step is a recorded phase: rerunning after a kill goes on
where it stopped.
"""

from __future__ import annotations

import argparse
import io
import json

from pipelines.machinery import dataset
from pipelines.jobs.evaluate import evaluate
from pipelines.machinery.job import JobResult
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.flows.phases import resolve_epochs, train_offline
from pipelines.machinery.runstate import Phases
from pipelines.jobs.subsample import subsample
from schemas import fs
from schemas.rundirs import Workdir
from schemas.errors import UserError


def parse_fractions(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--fractions {text!r}: expected comma-separated numbers") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise UserError(f"--fractions {text!r}: each must be in (0, 1]")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", choices=["dataset-size"], help="which study")
    parser.add_argument("--transitions", "--input", "-i", required=True, metavar="DIR",
                        dest="transitions",
                        help="the full transition dataset (from qtopt shard)")
    parser.add_argument("--fractions", default="0.25,0.55,1.0",
                        help="shares of episodes to train on (default 0.25,0.55,1.0)")
    parser.add_argument("--run", required=True, metavar="DIR", help="study directory")
    parser.add_argument("--epochs", type=int, default=None,
                        help="relabel/train epochs per subset (default: train.epochs)")
    parser.add_argument("--objects", default="test", help="objects to evaluate on (test)")
    add_config_arguments(parser)


def _plot(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    x = [r["grasps"] for r in rows]
    y = [100 * r["rate"] for r in rows]
    err = [[100 * (r["rate"] - r["ci95"][0]) for r in rows],
           [100 * (r["ci95"][1] - r["rate"]) for r in rows]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4)
    ax.set_xlabel("grasps (episodes) trained on")
    ax.set_ylabel("success on test objects, % (95% CI)")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    return dataset_size(config_from_args(args), args.transitions, parse_fractions(args.fractions),
                        args.run, epochs=args.epochs, objects=args.objects).status


def dataset_size(cfg, transitions_in: str, fractions: list[float], run_dir: str, *,
                 epochs: int | None = None, objects: str = "test") -> JobResult:
    """Offline training on nested subsets of ``transitions_in``, each scored on ``objects``."""
    epochs = resolve_epochs(epochs, cfg)
    manifest = dataset.read_dataset_manifest(transitions_in)
    if manifest.get("kind") != "transition":
        raise UserError(f"--transitions {transitions_in}: holds {manifest.get('kind')} "
                        "records; give a dataset from qtopt shard")
    run_dir = run_dir.rstrip("/")
    fs.makedirs(run_dir)
    phase = Phases(fs.join(run_dir, "study-state.json"),
                   {**cfg.to_dict(), "transitions": transitions_in, "epochs": epochs,
                    "objects": objects}, "study")
    rows = []
    for f in fractions:
        tag = f"fraction-{f:g}"
        sub = fs.join(run_dir, tag)
        transitions = fs.join(sub, "transitions")
        phase(f"{tag}/subsample", lambda f=f, transitions=transitions: subsample(
            cfg, transitions_in, f, transitions).require())
        inner = _Prefixed(phase, tag)
        train_offline(cfg, inner, transitions, fs.join(sub, "labelled"), fs.join(sub, "train"),
                      epochs)
        phase(f"{tag}/evaluate", lambda sub=sub: evaluate(
            cfg, Workdir(fs.join(sub, "train")).exports, fs.join(sub, "eval"),
            objects=objects).require())
        result = json.loads(fs.read_text(fs.join(sub, "eval", "result.json")))["replacement"]
        counts = dataset.read_dataset_manifest(transitions)["counts"]
        rows.append({"fraction": f, "grasps": int(counts["episodes"]),
                     "transitions": int(counts["transitions"]), "rate": result["rate"],
                     "ci95": result["ci95"], "attempts": result["attempts"]})
    lines = ["| share of episodes | grasps | transitions | success on test objects | "
             "95% interval |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {100 * r['fraction']:.0f}% | {r['grasps']} | {r['transitions']} | "
                     f"{100 * r['rate']:.1f}% | {100 * r['ci95'][0]:.1f}-"
                     f"{100 * r['ci95'][1]:.1f}% |")
    text = "\n".join(lines)
    fs.write_text(fs.join(run_dir, "results.md"), text + "\n")
    fs.write_text(fs.join(run_dir, "results.json"), json.dumps(rows, indent=1))
    fs.write_bytes(fs.join(run_dir, "success_vs_size.png"), _plot(rows))
    print(text, flush=True)
    return JobResult("study", run_dir, 0, {"rows": rows})


class _Prefixed:
    """The same phase recorder, with the subset's name in front of every phase."""

    def __init__(self, phase, prefix: str):
        self.phase, self.prefix = phase, prefix

    def __call__(self, name: str, fn) -> None:
        self.phase(f"{self.prefix}/{name}", fn)

"""``qtopt curve``: a run's learning curve, one point per kept export.

    qtopt curve --run RUN [--attempts 25]

Every complete export of the run's offline training (``RUN/train/exports``, the untrained step 0
left out) and every finetuning round's export (``RUN/finetune/state.json``) is evaluated on
*train* objects, grasping with replacement (``evaluate --each`` into ``RUN/eval/curve``; it
resumes, and an export already evaluated is not evaluated again). Each point carries the
gradient step, the grasps collected until that export was trained (the offline episodes, plus
the on-policy episodes of the rounds it trained on) and its phase. Writes
``RUN/learning_curve.json``, ``RUN/learning_curve.csv`` and ``RUN/learning_curve.png`` (success
against gradient steps and against grasps, the phases marked). The test objects are never used.
"""

from __future__ import annotations

import argparse
import csv
import io
import json

from pipelines.machinery import dataset
from pipelines.jobs.evaluate import evaluate
from pipelines.machinery.options import add_config_arguments, config_from_args
from schemas import fs
from schemas.rundirs import RunDir
from schemas.errors import UserError

CURVE = "learning_curve"


def episodes(transitions: str) -> int:
    """Episodes (grasp attempts) in a transition dataset, from its manifest."""
    return int(dataset.read_dataset_manifest(transitions)["counts"]["episodes"])


def offline_transitions(run_dir: str) -> str:
    """The transition dataset the run's offline phase trained on (demo and study layouts)."""
    for candidate in (RunDir(run_dir).transitions("scripted"),
                      fs.join(run_dir, "transitions")):
        if fs.exists(fs.join(candidate, dataset.MANIFEST)):
            return candidate
    raise UserError(f"{run_dir}: no offline transition dataset (transitions/scripted/)")


def candidates(run_dir: str) -> list[dict]:
    """The points of the curve, before evaluation: export, step, grasps and phase."""
    from model.export import complete_exports, export_step

    run = RunDir(run_dir)
    offline_grasps = episodes(offline_transitions(run_dir))
    points = [{"export": path, "step": export_step(path), "grasps": offline_grasps,
               "phase": "offline"}
              for path in complete_exports(run.train.exports)
              if export_step(path) > 0]
    state_path = run.finetune.state
    if fs.exists(state_path):
        state = json.loads(fs.read_text(state_path))
        grasps = offline_grasps
        for r in state.get("rounds", []):
            grasps += episodes(run.finetune.round_transitions(r["round"]))
            if r.get("export"):
                points.append({"export": fs.join(run.finetune.train.exports,
                                                 fs.basename(r["export"])),
                               "step": export_step(r["export"]), "grasps": grasps,
                               "phase": "finetune", "round": r["round"]})
    if not points:
        raise UserError(f"{run_dir}: no trained export to put on a learning curve")
    return points


def evaluate_points(cfg, run_dir: str, points: list[dict], attempts: int) -> list[dict]:
    out = RunDir(run_dir).eval("curve")
    evaluate(cfg.updated(evaluate={"bin_trials": 0, "attempts": attempts}),
             ",".join(p["export"] for p in points), out, objects="train", each=True).require()
    rows = {fs.basename(r["export"]): r
            for r in json.loads(fs.read_text(fs.join(out, "each.json")))["exports"]}
    for p in points:
        r = rows[fs.basename(p["export"])]
        p.update(rate=r["rate"], ci95=r["ci95"], attempts=r["attempts"],
                 successes=r["successes"])
    return points


def plot(points: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, label in ((axes[0], "step", "gradient steps"),
                           (axes[1], "grasps", "grasps collected")):
        for phase, colour in (("offline", "tab:blue"), ("finetune", "tab:orange")):
            pts = [p for p in points if p["phase"] == phase]
            if not pts:
                continue
            x = [p[key] for p in pts]
            y = [100 * p["rate"] for p in pts]
            err = [[100 * (p["rate"] - p["ci95"][0]) for p in pts],
                   [100 * (p["ci95"][1] - p["rate"]) for p in pts]]
            ax.errorbar(x, y, yerr=err, fmt="o-", color=colour, capsize=3, label=phase)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success on train objects, % (95% CI)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_outputs(run_dir: str, points: list[dict]) -> None:
    fs.write_text(fs.join(run_dir, f"{CURVE}.json"), json.dumps(points, indent=1))
    buf = io.StringIO()
    fields = ["phase", "round", "step", "grasps", "rate", "ci_low", "ci_high", "successes",
              "attempts", "export"]
    writer = csv.DictWriter(buf, fields, extrasaction="ignore")
    writer.writeheader()
    for p in points:
        writer.writerow({**p, "round": p.get("round", ""), "ci_low": p["ci95"][0],
                         "ci_high": p["ci95"][1]})
    fs.write_text(fs.join(run_dir, f"{CURVE}.csv"), buf.getvalue())
    fig = plot(points, f"{fs.basename(run_dir)}: grasping with replacement on train objects")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    fs.write_bytes(fs.join(run_dir, f"{CURVE}.png"), png.getvalue())


def curve(cfg, run_dir: str, attempts: int | None = None) -> list[dict]:
    """Evaluate every point not yet evaluated and write the curve's files; returns the points."""
    attempts = attempts or cfg.evaluate.curve_attempts
    points = evaluate_points(cfg, run_dir, candidates(run_dir), attempts)
    write_outputs(run_dir, points)
    return points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="a demo or study run directory, local or gs://")
    parser.add_argument("--attempts", type=int, default=None,
                        help="attempts per robot for each point (default evaluate.curve_attempts)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.attempts is not None and args.attempts < 1:
        raise UserError(f"--attempts must be >= 1, got {args.attempts}")
    run_dir = args.run.rstrip("/")
    points = curve(cfg, run_dir, args.attempts)
    for p in points:
        print(f"curve: {p['phase']:8s} step {p['step']:>7d} grasps {p['grasps']:>6d} "
              f"{100 * p['rate']:5.1f}% ({100 * p['ci95'][0]:.1f}-{100 * p['ci95'][1]:.1f}%)")
    print(f"curve: {run_dir}/{CURVE}.png", flush=True)
    return 0

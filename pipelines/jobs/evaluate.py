"""``qtopt evaluate``: a policy under the paper's two protocols (section 6.1), as a Beam job.

    qtopt evaluate --policy runs/demo/train/exports --objects test --out runs/demo/eval/offline

Grasping with replacement runs ``evaluate.robots`` robots of ``evaluate.attempts`` attempts each;
bin emptying runs ``evaluate.bin_trials`` trials of ``evaluate.bin_attempts`` attempts at
``evaluate.bin_objects`` objects (0 trials skips it). Each robot or trial is one Beam element,
so robots run in parallel, one cell per worker. Each element publishes its attempts as
``attempts/<protocol>-<n>.json`` (atomically), and a rerun after a kill runs only the missing
ones. The launcher then writes, in ``--out``:

    result.json      success rates with 95% Wilson intervals, per protocol, and first 10/20/30
    report.md        the same as a Markdown report
    success.png      the rates with their intervals (matplotlib)
    gifs/*.gif       the first ``evaluate.gifs`` episodes of robot 0, if asked for

A greedy policy is the export's Polyak network, maximised by CEM, with no exploration
(``pi_eval``). An export whose image size or action bounds do not match the cell's configuration
is refused before any robot runs. An ``exports/`` directory stands for its newest export, resolved
once: ``result.json``, the report and the plot name the export evaluated (path, step and the
SHA-256 of its manifest, which holds every weights file's), and an output directory holding an
evaluation of another export is refused, not reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass

import apache_beam as beam

from pipelines.machinery import runner
from pipelines.machinery.job import JobResult, recorded_identity
from pipelines.machinery.movies import frames, write_movie
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.machinery.policies import make_policy, worker_cell_and_policy
from schemas import fs
from schemas.config import EvaluateConfig, RobotConfig
from schemas.errors import UserError
from schemas.rundirs import attempts_dir, attempts_file
from schemas.tfrecord_io import read_records, write_records

NAMESPACE = "qtopt.evaluate"


@dataclass(frozen=True)
class EvaluatePlan:
    """What every evaluation worker needs; ``plan.json`` records it, and a rerun into the same
    directory must match it."""

    out: str
    policy: str                  # scripted, random, or an export directory
    policy_label: str
    objects: str
    robot: RobotConfig
    evaluate: EvaluateConfig
    export: dict | None = None   # path, step and SHA-256 of an export policy

    def to_dict(self) -> dict:
        out = {"out": self.out, "policy": self.policy, "policy_label": self.policy_label,
               "objects": self.objects, "robot": dataclasses.asdict(self.robot),
               "evaluate": dataclasses.asdict(self.evaluate)}
        if self.export is not None:
            out["export"] = self.export
        return out


class EvaluateGroup(beam.DoFn):
    """(protocol, group) -> that robot's or trial's attempts, published as JSON."""

    def __init__(self, plan: EvaluatePlan):
        self.plan = plan

    def setup(self):
        plan = self.plan
        self.cell, self.policy = worker_cell_and_policy(plan.robot, plan.objects, plan.policy,
                                                        "sim-eval", epsilon=0.0)
        self.pool = self.cell.pool

    def process(self, element):
        from robot import protocols

        protocol, group = element
        plan, ev = self.plan, self.plan.evaluate
        path = attempts_file(plan.out, protocol, group)
        if fs.exists(path):
            return
        keep = ev.gifs if group == 0 else 0
        if protocol == "replacement":
            rows, kept = protocols.with_replacement(
                self.cell, self.policy, group, ev.attempts, ev.objects_per_robot,
                self.pool, ev.seed, plan.policy_label, keep)
        else:
            rows, kept = protocols.bin_emptying(
                self.cell, self.policy, group, ev.bin_objects, ev.bin_attempts,
                self.pool, ev.seed, plan.policy_label, keep)
        if kept:
            write_records(fs.join(plan.out, "episodes", f"{protocol}-{group:03d}.tfrecord.gz"),
                          kept)
        fs.write_text(path, json.dumps([r.row() for r in rows]))
        yield path

    def teardown(self):
        if hasattr(self, "cell"):
            self.cell.close()


def elements(ev) -> list[tuple[str, int]]:
    return ([("replacement", r) for r in range(ev.robots)] +
            [("bin_emptying", t) for t in range(ev.bin_trials)])


def build(pipeline, todo: list, plan: EvaluatePlan):
    return (pipeline
            | "Groups" >> beam.Create(todo)
            | "Spread" >> beam.Reshuffle()
            | "Evaluate" >> beam.ParDo(EvaluateGroup(plan)))


def check_policy(policy: str, robot_config) -> str:
    """A label for the policy; refuses an export that does not fit the cell, before any work."""
    if policy in ("scripted", "random"):
        return policy

    make_policy(policy, robot_config, epsilon=0.0)  # loads and checks the export's input spec
    return f"export:{policy.rstrip('/')}"


def export_identity(policy: str) -> dict | None:
    """The export a policy argument names, resolved now (an ``exports/`` directory: its newest
    complete export): path, step and the SHA-256 of its manifest. None for built-in policies."""
    if policy in ("scripted", "random"):
        return None
    from model.export import MANIFEST, resolve

    path = resolve(policy)
    text = fs.read_bytes(fs.join(path, MANIFEST))
    try:
        step = int(json.loads(text)["step"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{fs.join(path, MANIFEST)}: not an export manifest") from None
    return {"path": path, "step": step, "sha256": hashlib.sha256(text).hexdigest()}


def describe_export(identity: dict) -> str:
    return f"{identity['path']} (step {identity['step']}, sha256 {identity['sha256'][:12]})"


def check_plan(out: str, plan: dict) -> None:
    """Refuse an output directory holding another evaluation: another export above all."""
    stored = recorded_identity(fs.join(out, "plan.json"))
    if stored is None or stored == plan:
        return
    old, new = stored.get("export"), plan.get("export")
    if old and new and old != new:
        raise UserError(f"--out {out} holds an evaluation of export {describe_export(old)}, "
                        f"not {describe_export(new)}; use another directory")
    # Recorded before exports were identified: goes on only if it named this export itself.
    if "export" not in stored and stored == {k: v for k, v in plan.items() if k != "export"}:
        return
    raise UserError(f"--out {out} holds an evaluation with other settings; use another "
                    "directory")


def aggregate(out: str, ev) -> dict:
    from robot import protocols

    rows = []
    for protocol, group in elements(ev):
        path = attempts_file(out, protocol, group)
        if not fs.exists(path):
            raise UserError(f"{path}: missing after the job ran (rerun to complete it)")
        rows.extend(json.loads(fs.read_text(path)))
    result: dict = {}
    rep = [r for r in rows if r["protocol"] == "replacement"]
    if rep:
        result["replacement"] = protocols.summarise([r["success"] for r in rep])
        result["replacement"]["per_robot"] = [
            protocols.summarise([r["success"] for r in rep if r["group"] == g])["rate"]
            for g in range(ev.robots)]
        result["replacement"]["mean_steps"] = sum(r["steps"] for r in rep) / len(rep)
    bins = [r for r in rows if r["protocol"] == "bin_emptying"]
    if bins:
        trials = [[r["success"] for r in sorted(bins, key=lambda r: r["attempt"])
                   if r["group"] == t] for t in range(ev.bin_trials)]
        result["bin_emptying"] = {"trials": len(trials), "first_k": protocols.first_k(trials)}
    return result


def write_report(out: str, result: dict) -> None:
    lines = [f"# Evaluation: {result['policy']}", ""]
    if result.get("export"):
        e = result["export"]
        lines += [f"Export: {e['path']}, step {e['step']}, manifest SHA-256 {e['sha256']}.", ""]
    lines += [f"Objects: {result['objects']}. Seed {result['evaluate']['seed']}. "
              f"{result['seconds']:.0f} s.", ""]
    if "replacement" in result:
        r = result["replacement"]
        lines += ["## Grasping with replacement", "",
                  f"{result['evaluate']['robots']} robots x {result['evaluate']['attempts']} "
                  f"attempts, {result['evaluate']['objects_per_robot']} objects per tray.", "",
                  "| attempts | successes | success rate | 95% interval |", "|---|---|---|---|",
                  f"| {r['attempts']} | {r['successes']} | {100 * r['rate']:.1f}% | "
                  f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}% |", ""]
    if "bin_emptying" in result:
        b = result["bin_emptying"]
        lines += ["## Bin emptying", "",
                  f"{b['trials']} trials, {result['evaluate']['bin_objects']} objects, "
                  f"{result['evaluate']['bin_attempts']} attempts each.", "",
                  "| first | success rate | 95% interval |", "|---|---|---|"]
        for k, s in b["first_k"].items():
            lines.append(f"| {k} | {100 * s['rate']:.1f}% | "
                         f"{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f}% |")
        lines.append("")
    fs.write_text(fs.join(out, "report.md"), "\n".join(lines))


def success_figure(result: dict):
    """One bar per protocol with its 95% interval and its count written on it; a bar of 0% is
    drawn as an outline at the axis, so it does not vanish."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    if "replacement" in result:
        bars.append(("with replacement", result["replacement"]))
    for k, s in result.get("bin_emptying", {}).get("first_k", {}).items():
        bars.append((f"bin, first {k}", s))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(bars), 3.2))
    rates = [100 * s["rate"] for _, s in bars]
    err = [[100 * (s["rate"] - s["ci95"][0]) for _, s in bars],
           [100 * (s["ci95"][1] - s["rate"]) for _, s in bars]]
    ax.bar(range(len(bars)), rates, yerr=err, capsize=4, color="#4477aa", edgecolor="#223355",
           linewidth=1.5)
    for i, (_, s) in enumerate(bars):
        top = 100 * s["ci95"][1]
        ax.text(i, min(top + 2, 93), f"{s['successes']}/{s['attempts']}\n{100 * s['rate']:.1f}%",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("grasp success, % (95% CI)")
    title = result["policy"][-40:]
    if result.get("export"):
        e = result["export"]
        title = f"{fs.basename(e['path'])} (step {e['step']}, sha256 {e['sha256'][:12]})"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot(out: str, result: dict) -> None:
    import matplotlib.pyplot as plt

    fig = success_figure(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fs.write_bytes(fs.join(out, "success.png"), buf.getvalue())


def render_gifs(out: str) -> list[str]:
    written = []
    for path in fs.glob(fs.join(out, "episodes", "*.tfrecord.gz")):
        for episode in read_records(path):
            gif = fs.join(out, "gifs", f"{episode['episode_id']}.gif")
            if not fs.exists(gif):
                write_movie(gif, frames(episode, 4), 4.0)
            written.append(gif)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True,
                        help="scripted | random | an export directory (or an exports/ directory: "
                             "its newest export)")
    parser.add_argument("--objects", default="test", help="train | test | comma-separated URDF "
                                                          "files (default: test)")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR",
                        help="result directory")
    parser.add_argument("--robots", type=int, metavar="N",
                        help="grasping with replacement: robots (default: evaluate.robots)")
    parser.add_argument("--attempts", type=int, metavar="N",
                        help="grasping with replacement: attempts per robot (default: "
                             "evaluate.attempts)")
    parser.add_argument("--each", action="store_true",
                        help="evaluate every complete export in --policy (an exports/ directory, "
                             "or export directories separated by commas) into OUT/<export>/, "
                             "rank them by grasping with replacement, write OUT/each.md")
    parser.add_argument("--workers", type=int, metavar="W",
                        help="local worker processes (default: pipeline.direct_num_workers)")
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def evaluate_policy(cfg, policy: str, objects_arg: str, out: str, workers: int | None,
                    beam_args: list) -> dict:
    """One policy's evaluation into ``out`` (resumable); returns and writes its result."""
    ev = cfg.evaluate
    label = check_policy(policy, cfg.robot)
    export = export_identity(policy)
    if export is not None:  # the workers load this export, whatever appears beside it later
        policy, label = export["path"], f"export:{export['path']}"
    out = out.rstrip("/")
    fs.makedirs(out)
    plan = EvaluatePlan(out=out, policy=policy, policy_label=label, objects=objects_arg,
                        robot=cfg.robot, evaluate=ev, export=export)
    check_plan(out, plan.to_dict())
    fs.write_text(fs.join(out, "plan.json"), json.dumps(plan.to_dict(), indent=1,
                                                        sort_keys=True))
    todo = [e for e in elements(ev)
            if not fs.exists(attempts_file(out, e[0], e[1]))]
    total = len(elements(ev))
    print(f"evaluate: {label} on {objects_arg} objects -> {out}: {total - len(todo)}/{total} "
          f"robots and trials done", flush=True)
    t0 = time.monotonic()
    if todo:
        runner.quiet_beam_logging()
        workers = workers if workers is not None else cfg.pipeline.direct_num_workers
        options = runner.pipeline_options(beam_args, workers, "qtopt-evaluate")
        pipeline = runner.new_pipeline(options)
        build(pipeline, todo, plan)

        def poll():
            done = len(fs.glob(fs.join(attempts_dir(out), "*.json")))
            return done, ""

        with runner.progress("evaluate", poll if runner.is_local(options) else None,
                             total=total, unit="robots and trials", every=5.0,
                             initial=total - len(todo)):
            runner.run_pipeline(pipeline)
    result = {"policy": label, "objects": objects_arg, "evaluate": dataclasses.asdict(ev),
              "robot": dataclasses.asdict(cfg.robot), "seconds": time.monotonic() - t0,
              **({"export": export} if export else {}), **aggregate(out, ev)}
    if ev.gifs:
        result["gifs"] = render_gifs(out)
    fs.write_text(fs.join(out, "result.json"), json.dumps(result, indent=1, sort_keys=True))
    write_report(out, result)
    plot(out, result)
    line = f"evaluate: {label}"
    if "replacement" in result:
        r = result["replacement"]
        line += (f"; with replacement {r['successes']}/{r['attempts']} = {100 * r['rate']:.1f}% "
                 f"(95% CI {100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}%)")
    if "bin_emptying" in result:
        fk = result["bin_emptying"]["first_k"]
        line += "; bin emptying first 10/20/30: " + "/".join(
            f"{100 * s['rate']:.0f}%" for s in fk.values())
    print(line, flush=True)
    return result


def candidate_exports(policy: str) -> list[str]:
    """``--each``'s exports: a comma-separated list of export directories, or every complete
    export in an ``exports/`` directory, oldest first."""
    from model.export import MANIFEST, complete_exports, export_step, resolve

    if "," in policy:
        found = [resolve(p) for p in policy.split(",") if p.strip()]
    elif fs.exists(fs.join(policy, MANIFEST)):  # one export directory: a list of one
        found = [policy.rstrip("/")]
    else:
        found = complete_exports(policy)
        if not found:
            raise UserError(f"--policy {policy}: --each needs an exports/ directory with complete "
                            "exports, or a comma-separated list of export directories")
    names = [export_step(path) for path in found]  # names a directory not export-<step>
    for path, step in zip(found, names):
        if names.count(step) > 1:
            raise UserError(f"--policy: {path} is listed twice (or another export of step "
                            f"{step} is)")
    return found


def best_of(rows: list[dict]) -> dict:
    """The row with the highest with-replacement success; a tie goes to the later export (it
    trained on at least as much data)."""
    return max(rows, key=lambda r: (r["rate"], r["step"]))


def each_table(rows: list[dict], best: dict, objects_arg: str) -> str:
    lines = [f"| export | step | success on {objects_arg} objects | 95% interval | attempts |",
             "|---|---|---|---|---|"]
    for r in rows:
        mark = " (best)" if r is best else ""
        lines.append(f"| {r['name']}{mark} | {r['step']} | {100 * r['rate']:.1f}% | "
                     f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}% | {r['attempts']} |")
    return "\n".join(lines)


def evaluate_each(cfg, policy: str, objects_arg: str, output: str, workers: int | None,
                  beam_args) -> dict:
    """``--each``: evaluate every candidate export into OUT/<export-name>/ and pick the best by
    grasping with replacement; OUT/each.json and OUT/each.md hold the table and the pick."""
    from model.export import export_step

    found = candidate_exports(policy)
    out = output.rstrip("/")
    rows = []
    for k, path in enumerate(found):
        name = fs.basename(path)
        print(f"evaluate: --each {k + 1}/{len(found)}: {name}", flush=True)
        result = evaluate_policy(cfg, path, objects_arg, fs.join(out, name), workers,
                                 beam_args)
        r = result["replacement"]
        rows.append({"export": path, "name": name, "step": export_step(path), "rate": r["rate"],
                     "ci95": r["ci95"], "attempts": r["attempts"],
                     "successes": r["successes"]})
    best = best_of(rows)
    text = each_table(rows, best, objects_arg)
    fs.write_text(fs.join(out, "each.json"), json.dumps(
        {"objects": objects_arg, "exports": rows, "best": best["export"]}, indent=1))
    fs.write_text(fs.join(out, "each.md"), text + "\n")
    print(text, flush=True)
    print(f"evaluate: best on {objects_arg} objects: {best['export']}", flush=True)
    return {"objects": objects_arg, "exports": rows, "best": best["export"]}


def evaluate(cfg, policy: str, output: str, *, objects: str = "test", each: bool = False,
             workers: int | None = None, beam_args=()) -> JobResult:
    """``policy`` (scripted, random, an export, or with ``each`` every export of an exports/
    directory or comma-separated list) under ``cfg.evaluate``'s protocols, into ``output``."""
    from robot import objects as object_sets

    object_sets.resolve(objects)  # unknown or malformed object files fail here, named
    if each:
        return JobResult("evaluate", output, 0,
                         evaluate_each(cfg, policy, objects, output, workers, list(beam_args)))
    return JobResult("evaluate", output, 0,
                     evaluate_policy(cfg, policy, objects, output, workers, list(beam_args)))


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("robots", args.robots), ("attempts", args.attempts))
                 if v is not None}
    args.overrides = list(args.overrides) + [f"evaluate.{k}={v}" for k, v in overrides.items()]
    return evaluate(config_from_args(args), args.policy, args.output, objects=args.objects,
                    each=args.each, workers=args.workers, beam_args=args.beam_args).status

"""``qtopt demo`` (``make demo``): the whole system end to end on local defaults.

    qtopt demo --run runs/demo

1. collect   scripted episodes on train objects            -> RUN/episodes/scripted-train/
             and, with ``collect.explore_episodes``, episodes of ``collect.explore_policy``
             -> RUN/episodes/explore-train/ (both go into the offline dataset)
2. shard     them into shuffled transitions                -> RUN/transitions/scripted/
3. epochs    relabel with the newest export, then train    -> RUN/labelled/epoch-K/, RUN/train/
             (epoch K's targets come from the export at the end of epoch K-1; epoch 0's from
             the untrained network, as in any bootstrapped Q-learning)
4. finetune  rounds of on-policy collect, shard, relabel, train  -> RUN/finetune/
5. curve     every kept export on train objects against gradient steps and grasps
             -> RUN/learning_curve.{png,csv,json}, RUN/eval/curve/; with ``finetune.select=train``
             the round export best there is the finetuned policy
6. evaluate  scripted, offline and finetuned policies on test objects -> RUN/eval/<policy>/

and prints one table: each policy's success rate with its 95% interval on the test objects and
the number of grasps it was trained on. Every phase is a ``qtopt`` command a user could run by
hand; ``RUN/demo-state.json`` records the phases done, so rerunning after a kill goes on where it
stopped.
"""

from __future__ import annotations

import argparse
import json
import time

from pipelines import curve
from pipelines.cli import add_config_arguments, config_args, config_from_args, invoke
from pipelines.finetune import round_name
from schemas import fs
from schemas.errors import UserError

STATE = "demo-state.json"


def initial_export(cfg, workdir: str) -> str:
    """Export the untrained network (step 0) so that epoch 0 has targets to relabel with."""
    from model.export import latest_export
    from model.train import export_weights

    return latest_export(fs.join(workdir, "exports")) or export_weights(cfg, workdir)


def train_offline(cfg, phase, transitions: str, labelled: str, train_dir: str, epochs: int,
                  cargs: list) -> None:
    """Batch epochs of the Bellman updater: relabel with the newest export, then train
    ``train.steps`` more steps. Each step is a phase, so a killed run resumes at the next one."""
    exports = fs.join(train_dir, "exports")
    phase("initial-export", lambda: initial_export(cfg, train_dir))
    for k in range(epochs):
        phase(f"relabel-{k}", lambda k=k: invoke([
            "relabel", "--input", transitions, "--export", exports, "--output", labelled,
            "--epoch", k, *cargs]))
        phase(f"train-{k}", lambda k=k: invoke([
            "train", "--data", fs.join(labelled, f"epoch-{k}"), "--workdir", train_dir,
            "--until-step", (k + 1) * cfg.train.steps, *cargs]))
        if k > 0:  # superseded labels; the transitions stay
            fs.remove(fs.join(labelled, f"epoch-{k - 1}"), recursive=True)


class Phases:
    """Named steps of a long job, recorded in a JSON state file as each one completes."""

    def __init__(self, path: str, config: dict, label: str):
        self.path, self.label = path, label
        self.state = json.loads(fs.read_text(path)) if fs.exists(path) else {"done": []}
        stored = self.state.get("config")
        if stored is not None and not same_config(stored, config):
            raise UserError(f"{path}: this run was made with another configuration; use "
                            "another run directory or remove it")
        self.state["config"] = config

    def __call__(self, name: str, fn) -> None:
        if name in self.state["done"]:
            print(f"{self.label}: {name} already done", flush=True)
            return
        start = time.monotonic()
        print(f"{self.label}: --- {name} ---", flush=True)
        fn()
        self.state["done"].append(name)
        self.state.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
        fs.write_text(self.path, json.dumps(self.state, indent=1, sort_keys=True))


# Options that only choose what the table reports, not how anything is made: a finished run
# may be asked again under another value (each finetuned export is evaluated in its own directory).
REPORTING_OPTIONS = {("finetune", "select")}
# Options a finished run may be asked again under a larger value: more finetuning rounds go on
# from the rounds done (finetuning resumes), and the curve and table are brought up to date.
GROWING_OPTIONS = {("finetune", "rounds")}


def same_config(stored: dict, current: dict) -> bool:
    """Whether a run recorded with ``stored`` may go on under ``current``: equal, except that
    an option added to the code since (missing from ``stored``) may hold its default, which
    keeps the old behaviour, that REPORTING_OPTIONS may differ and GROWING_OPTIONS grow."""
    from schemas.config import Config

    defaults = Config().to_dict()

    def same(a, b, d, path=()) -> bool:
        if path in REPORTING_OPTIONS:
            return True
        if path in GROWING_OPTIONS and a is not None and b is not None:
            return b >= a
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return a == b
        for key in b:
            if key not in a:
                if (path + (key,) not in REPORTING_OPTIONS and
                        (not isinstance(d, dict) or key not in d or b[key] != d[key])):
                    return False
            elif not same(a[key], b[key], d.get(key) if isinstance(d, dict) else None,
                          path + (key,)):
                return False
        return set(a) <= set(b)

    return same(stored, current, defaults)


def more_rounds(phase: Phases, ft_dir: str, rounds: int) -> None:
    """Raising finetune.rounds on a run whose finetuning is done reopens finetuning and the
    curve (both resume: only the new rounds and their exports cost time)."""
    state_path = fs.join(ft_dir, "state.json")
    if "finetune" not in phase.state["done"] or not fs.exists(state_path):
        return
    done = len(json.loads(fs.read_text(state_path)).get("rounds", []))
    if rounds < done:
        raise UserError(f"finetune.rounds={rounds} but {state_path} has {done} rounds done; "
                        "ask for at least as many, or use another run directory")
    if rounds > done:
        phase.state["done"] = [d for d in phase.state["done"] if d not in ("finetune", "curve")]


def table(rows: list[dict]) -> str:
    head = ("| policy | success on test objects | 95% interval | attempts | grasps trained on |\n"
            "|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['policy']} | {100 * r['rate']:.1f}% | {100 * r['ci95'][0]:.1f}-"
                     f"{100 * r['ci95'][1]:.1f}% | {r['attempts']} | {r['grasps']} |")
    return "\n".join(lines)


def choose_finetuned(cfg, phase, run_dir: str, ft_state: dict, cargs: list) -> tuple[str, int]:
    """The finetuned export the demo reports and its round: the last round's
    (``finetune.select=last``), or the round export with the best grasping-with-replacement
    success on *train* objects (``train``; the test objects stay unseen until the table), read
    off the learning curve (``qtopt curve``), which evaluates every round export there anyway.
    A tie goes to the later round."""
    exports = fs.join(run_dir, "finetune", "train", "exports")
    # Recorded as paths; joined again here so that a moved or copied run still resolves.
    names = [fs.basename(r["export"]) for r in ft_state["rounds"]]
    if not names:
        raise UserError(f"{run_dir}/finetune/state.json: no finetuning round finished")
    candidates = [fs.join(exports, n) for n in names]
    phase("curve", lambda: curve.curve(cfg, run_dir, cargs))
    if cfg.finetune.select == "last":
        return candidates[-1], len(candidates) - 1
    points = json.loads(fs.read_text(fs.join(run_dir, f"{curve.CURVE}.json")))
    rate = {fs.basename(p["export"]): p["rate"] for p in points if p["phase"] == "finetune"}
    k = max(range(len(names)), key=lambda i: (rate[names[i]], i))
    return candidates[k], k


def finetuned_line(row: dict) -> str:
    how = ("the last round's" if row["select"] == "last" else
           "the round export best on train objects, learning_curve.csv")
    return (f"finetuned QT-Opt: {row['export']}, after round {row['round'] + 1} of "
            f"{row['rounds']} ({how})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="runs/demo", metavar="DIR",
                        help="run directory, local or gs:// (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="offline relabel/train epochs (default: train.epochs)")
    add_config_arguments(parser)


def resolve_epochs(args: argparse.Namespace, cfg) -> int:
    """``--epochs``, else ``train.epochs``; refused below 1 (demo and study)."""
    epochs = cfg.train.epochs if args.epochs is None else args.epochs
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    return epochs


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    args.epochs = resolve_epochs(args, cfg)
    run_dir = args.run.rstrip("/")
    fs.makedirs(run_dir)
    cargs = config_args(args)
    phase = Phases(fs.join(run_dir, STATE), {**cfg.to_dict(), "epochs": args.epochs}, "demo")
    t0 = time.monotonic()

    episodes = fs.join(run_dir, "episodes", "scripted-train")
    transitions = fs.join(run_dir, "transitions", "scripted")
    labelled = fs.join(run_dir, "labelled")
    train_dir = fs.join(run_dir, "train")
    exports = fs.join(train_dir, "exports")

    phase("collect", lambda: invoke(["collect", "--policy", "scripted", "--objects", "train",
                                     "--out", episodes, *cargs]))
    inputs = ["--input", fs.join(episodes, "*.tfrecord.gz")]
    if cfg.collect.explore_episodes:
        explore = fs.join(run_dir, "episodes", "explore-train")
        phase("collect-explore", lambda: invoke([
            "collect", "--policy", cfg.collect.explore_policy, "--objects", "train",
            "--episodes", cfg.collect.explore_episodes, "--seed", cfg.collect.seed + 1,
            "--source", "explore-train", "--out", explore, *cargs]))
        inputs += ["--input", fs.join(explore, "*.tfrecord.gz")]
    phase("shard", lambda: invoke(["shard", *inputs, "--output", transitions, *cargs]))
    train_offline(cfg, phase, transitions, labelled, train_dir, args.epochs, cargs)
    ft_dir = fs.join(run_dir, "finetune")
    more_rounds(phase, ft_dir, cfg.finetune.rounds)
    phase("finetune", lambda: invoke(["finetune", "--run", run_dir, "--offline", transitions,
                                      "--init", train_dir, *cargs]))
    ft_state = json.loads(fs.read_text(fs.join(ft_dir, "state.json")))
    finetuned, chosen = choose_finetuned(cfg, phase, run_dir, ft_state, cargs)
    policies = [("scripted", "scripted"), ("offline QT-Opt", exports),
                ("finetuned QT-Opt", finetuned)]
    # The finetuned export depends on finetune.select, which a finished run may be asked again
    # under: each one chosen gets an evaluation of its own.
    names = ["scripted", "offline", f"finetuned-{fs.basename(finetuned)}"]
    for (label, policy), name in zip(policies, names):
        phase(f"evaluate-{name}", lambda policy=policy, name=name: invoke([
            "evaluate", "--policy", policy, "--objects", "test",
            "--out", fs.join(run_dir, "eval", name), *cargs]))

    offline_grasps = curve.episodes(transitions)
    # The chosen round's export trained on the on-policy data of that round and those before.
    online_grasps = sum(curve.episodes(fs.join(ft_dir, "transitions", round_name(r)))
                        for r in range(chosen + 1))
    rows = []
    for (label, _), name, grasps in zip(policies, names,
                                        (0, offline_grasps, offline_grasps + online_grasps)):
        result = json.loads(fs.read_text(fs.join(run_dir, "eval", name, "result.json")))
        r = result["replacement"]
        rows.append({"policy": label, "rate": r["rate"], "ci95": r["ci95"],
                     "attempts": r["attempts"], "grasps": grasps})
    rows[-1].update(export=fs.basename(finetuned), round=chosen,
                    rounds=len(ft_state["rounds"]), select=cfg.finetune.select)
    text = table(rows) + "\n\n" + finetuned_line(rows[-1])
    fs.write_text(fs.join(run_dir, "results.md"), text + "\n")
    fs.write_text(fs.join(run_dir, "results.json"), json.dumps(rows, indent=1))
    print(f"\ndemo: done in {time.monotonic() - t0:.0f} s (this invocation); results in "
          f"{run_dir}/results.md\n")
    print(text, flush=True)
    return 0

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

from pipelines.jobs import collect, shard

from pipelines.flows import curve
from pipelines.jobs.evaluate import evaluate
from pipelines.flows.finetune import finetune
from pipelines.machinery.job import JobResult
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.flows.phases import resolve_epochs, train_offline
from pipelines.machinery.runstate import Phases
from schemas import fs
from schemas.rundirs import FinetuneDir, RunDir
from schemas.errors import UserError

STATE = "demo-state.json"


def more_rounds(phase: Phases, ft_dir: str, rounds: int) -> None:
    """Raising finetune.rounds on a run whose finetuning is done reopens finetuning and the
    curve (both resume: only the new rounds and their exports cost time)."""
    state_path = FinetuneDir(ft_dir).state
    if "finetune" not in phase.state["done"] or not fs.exists(state_path):
        return
    done = len(json.loads(fs.read_text(state_path)).get("rounds", []))
    if rounds < done:
        raise UserError(f"finetune.rounds={rounds} but {state_path} has {done} rounds done; "
                        "ask for at least as many, or use another run directory")
    if rounds > done:
        phase.state["done"] = [d for d in phase.state["done"] if d not in ("finetune", "curve")]


def explore_config(cfg):
    """The configuration of the exploration episodes' collection: ``collect.explore_*``."""
    c = cfg.collect
    return cfg.updated(collect={"policy": c.explore_policy, "objects": "train",
                                "episodes": c.explore_episodes, "seed": c.seed + 1,
                                "scripted_close_max": c.explore_close_max})


def table(rows: list[dict]) -> str:
    head = ("| policy | success on test objects | 95% interval | attempts | grasps trained on |\n"
            "|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['policy']} | {100 * r['rate']:.1f}% | {100 * r['ci95'][0]:.1f}-"
                     f"{100 * r['ci95'][1]:.1f}% | {r['attempts']} | {r['grasps']} |")
    return "\n".join(lines)


def choose_finetuned(cfg, phase, run_dir: str, ft_state: dict) -> tuple[str, int]:
    """The finetuned export the demo reports and its round: the last round's
    (``finetune.select=last``), or the round export with the best grasping-with-replacement
    success on *train* objects (``train``; the test objects stay unseen until the table), read
    off the learning curve (``qtopt curve``), which evaluates every round export there anyway.
    A tie goes to the later round."""
    exports = RunDir(run_dir).finetune.train.exports
    # Recorded as paths; joined again here so that a moved or copied run still resolves.
    names = [fs.basename(r["export"]) for r in ft_state["rounds"]]
    if not names:
        raise UserError(f"{run_dir}/finetune/state.json: no finetuning round finished")
    candidates = [fs.join(exports, n) for n in names]
    phase("curve", lambda: curve.curve(cfg, run_dir))
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


def run(args: argparse.Namespace) -> int:
    return demo(config_from_args(args), args.run, epochs=args.epochs).status


def demo(cfg, run_dir: str, *, epochs: int | None = None) -> JobResult:
    """The whole system into ``run_dir`` (resumable); the table in ``run_dir/results.md``."""
    epochs = resolve_epochs(epochs, cfg)
    run_dir = run_dir.rstrip("/")
    fs.makedirs(run_dir)
    run = RunDir(run_dir)
    phase = Phases(run.file(STATE), {**cfg.to_dict(), "epochs": epochs}, "demo")
    t0 = time.monotonic()

    episodes = run.episodes("scripted-train")
    transitions = run.transitions("scripted")
    labelled = run.labelled
    train_dir = run.train.root
    exports = run.train.exports

    scripted = cfg.updated(collect={"policy": "scripted", "objects": "train"})
    phase("collect", lambda: collect.collect(scripted, episodes).require())
    inputs = [fs.join(episodes, "*.tfrecord.gz")]
    if cfg.collect.explore_episodes:
        explore = run.episodes("explore-train")
        exploring = explore_config(cfg)
        phase("collect-explore", lambda: collect.collect(exploring, explore,
                                                         source="explore-train").require())
        inputs.append(fs.join(explore, "*.tfrecord.gz"))
    phase("shard", lambda: shard.shard(cfg, inputs, transitions).require())
    train_offline(cfg, phase, transitions, labelled, train_dir, epochs)
    ft_dir = run.finetune.root
    more_rounds(phase, ft_dir, cfg.finetune.rounds)
    phase("finetune", lambda: finetune(cfg, run_dir, transitions, train_dir).require())
    ft_state = json.loads(fs.read_text(run.finetune.state))
    finetuned, chosen = choose_finetuned(cfg, phase, run_dir, ft_state)
    policies = [("scripted", "scripted"), ("offline QT-Opt", exports),
                ("finetuned QT-Opt", finetuned)]
    # The finetuned export depends on finetune.select, which a finished run may be asked again
    # under: each one chosen gets an evaluation of its own.
    names = ["scripted", "offline", f"finetuned-{fs.basename(finetuned)}"]
    for (label, policy), name in zip(policies, names):
        phase(f"evaluate-{name}", lambda policy=policy, name=name: evaluate(
            cfg, policy, run.eval(name), objects="test").require())

    offline_grasps = curve.episodes(transitions)
    # The chosen round's export trained on the on-policy data of that round and those before.
    online_grasps = sum(curve.episodes(run.finetune.round_transitions(r))
                        for r in range(chosen + 1))
    rows = []
    for (label, _), name, grasps in zip(policies, names,
                                        (0, offline_grasps, offline_grasps + online_grasps)):
        result = json.loads(fs.read_text(fs.join(run.eval(name), "result.json")))
        r = result["replacement"]
        rows.append({"policy": label, "rate": r["rate"], "ci95": r["ci95"],
                     "attempts": r["attempts"], "grasps": grasps})
    rows[-1].update(export=fs.basename(finetuned), round=chosen,
                    rounds=len(ft_state["rounds"]), select=cfg.finetune.select)
    text = table(rows) + "\n\n" + finetuned_line(rows[-1])
    fs.write_text(run.file("results.md"), text + "\n")
    fs.write_text(run.file("results.json"), json.dumps(rows, indent=1))
    print(f"\ndemo: done in {time.monotonic() - t0:.0f} s (this invocation); results in "
          f"{run_dir}/results.md\n")
    print(text, flush=True)
    return JobResult("demo", run_dir, 0, {"rows": rows})

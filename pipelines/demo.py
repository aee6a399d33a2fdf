"""``qtopt demo`` (``make demo``): the whole system end to end on local defaults.

    qtopt demo --run runs/demo

1. collect   scripted episodes on train objects            -> RUN/episodes/scripted-train/
2. shard     them into shuffled transitions                -> RUN/transitions/scripted/
3. epochs    relabel with the newest export, then train    -> RUN/labelled/epoch-K/, RUN/train/
             (epoch K's targets come from the export at the end of epoch K-1; epoch 0's from
             the untrained network, as in any bootstrapped Q-learning)
4. finetune  rounds of on-policy collect, shard, relabel, train  -> RUN/finetune/
5. evaluate  scripted, offline and finetuned policies on test objects -> RUN/eval/<policy>/

and prints one table: each policy's success rate with its 95% interval on the test objects and
the number of grasps it was trained on. Every phase is a ``qtopt`` command a user could run by
hand; ``RUN/demo-state.json`` records the phases done, so rerunning after a kill goes on where it
stopped.
"""

from __future__ import annotations

import argparse
import json
import time

from pipelines import dataset
from pipelines.cli import add_config_arguments, config_from_args, invoke
from schemas import fs
from schemas.errors import UserError

STATE = "demo-state.json"


def initial_export(cfg, workdir: str) -> str:
    """Export the untrained network (step 0) so that epoch 0 has targets to relabel with."""
    import dataclasses

    from model.export import latest_export
    from model.train import Trainer

    existing = latest_export(fs.join(workdir, "exports"))
    if existing:
        return existing
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_input=False))
    return Trainer(cfg, [], workdir, input_dataset=iter(())).export()


def _grasps(directory: str) -> int:
    """Episodes (grasp attempts) in a transition dataset, from its manifest."""
    return int(dataset.read_manifest(directory)["counts"]["episodes"])


def table(rows: list[dict]) -> str:
    head = ("| policy | success on test objects | 95% interval | attempts | grasps trained on |\n"
            "|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['policy']} | {100 * r['rate']:.1f}% | {100 * r['ci95'][0]:.1f}-"
                     f"{100 * r['ci95'][1]:.1f}% | {r['attempts']} | {r['grasps']} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="runs/demo", metavar="DIR",
                        help="run directory, local or gs:// (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="offline relabel/train epochs (default 3)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    run_dir = args.run.rstrip("/")
    fs.makedirs(run_dir)
    cargs = ["--preset", args.preset]
    for path in args.config:
        cargs += ["--config", path]
    for item in args.overrides:
        cargs += ["--set", item]
    state_path = fs.join(run_dir, STATE)
    state = json.loads(fs.read_text(state_path)) if fs.exists(state_path) else {"done": []}
    if state.get("config") not in (None, cfg.to_dict()):
        raise UserError(f"{run_dir} holds a demo run with another configuration; use another "
                        "--run or remove it")
    state["config"] = cfg.to_dict()
    t0 = time.monotonic()

    def phase(name: str, fn) -> None:
        if name in state["done"]:
            print(f"demo: {name} already done", flush=True)
            return
        start = time.monotonic()
        print(f"demo: --- {name} ---", flush=True)
        fn()
        state["done"].append(name)
        state.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
        fs.write_text(state_path, json.dumps(state, indent=1, sort_keys=True))

    episodes = fs.join(run_dir, "episodes", "scripted-train")
    transitions = fs.join(run_dir, "transitions", "scripted")
    labelled = fs.join(run_dir, "labelled")
    train_dir = fs.join(run_dir, "train")
    exports = fs.join(train_dir, "exports")
    steps = cfg.train.steps

    phase("collect", lambda: invoke(["collect", "--policy", "scripted", "--objects", "train",
                                     "--out", episodes, *cargs]))
    phase("shard", lambda: invoke(["shard", "--input", fs.join(episodes, "*.tfrecord.gz"),
                                   "--output", transitions, *cargs]))
    phase("initial-export", lambda: initial_export(cfg, train_dir))
    for k in range(args.epochs):
        phase(f"relabel-{k}", lambda k=k: invoke([
            "relabel", "--input", transitions, "--export", exports, "--output", labelled,
            "--epoch", k, *cargs]))
        phase(f"train-{k}", lambda k=k: invoke([
            "train", "--data", fs.join(labelled, f"epoch-{k}"), "--workdir", train_dir,
            "--until-step", (k + 1) * steps, *cargs]))
        if k > 0:  # superseded labels; the transitions stay
            fs.remove(fs.join(labelled, f"epoch-{k - 1}"), recursive=True)
    phase("finetune", lambda: invoke(["finetune", "--run", run_dir, "--offline", transitions,
                                      "--init", train_dir, *cargs]))
    finetuned = fs.join(run_dir, "finetune", "train", "exports")
    policies = [("scripted", "scripted"), ("offline QT-Opt", exports),
                ("finetuned QT-Opt", finetuned)]
    for label, policy in policies:
        name = label.split()[0]
        phase(f"evaluate-{name}", lambda policy=policy, name=name: invoke([
            "evaluate", "--policy", policy, "--objects", "test",
            "--out", fs.join(run_dir, "eval", name), *cargs]))

    offline_grasps = _grasps(transitions)
    ft_state = json.loads(fs.read_text(fs.join(run_dir, "finetune", "state.json")))
    online_grasps = sum(_grasps(fs.join(run_dir, "finetune", "transitions", f"round-{r:03d}"))
                        for r in range(ft_state["round"]))
    rows = []
    for (label, _), grasps in zip(policies, (0, offline_grasps, offline_grasps + online_grasps)):
        result = json.loads(fs.read_text(fs.join(run_dir, "eval", label.split()[0],
                                                 "result.json")))
        r = result["replacement"]
        rows.append({"policy": label, "rate": r["rate"], "ci95": r["ci95"],
                     "attempts": r["attempts"], "grasps": grasps})
    text = table(rows)
    fs.write_text(fs.join(run_dir, "results.md"), text + "\n")
    fs.write_text(fs.join(run_dir, "results.json"), json.dumps(rows, indent=1))
    print(f"\ndemo: done in {time.monotonic() - t0:.0f} s (this invocation); results in "
          f"{run_dir}/results.md\n")
    print(text, flush=True)
    return 0

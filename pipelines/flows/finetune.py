"""``qtopt finetune``: joint finetuning with on-policy data (appendix F.3), round by round.

    qtopt finetune --run runs/demo --offline runs/demo/transitions/scripted \\
                   --init runs/demo/train

Each round is four jobs, each the command a user could run by hand:

1. collect  ``finetune/episodes/round-R``: on-policy episodes with the newest export's Polyak
            weights and epsilon-greedy exploration (``qtopt collect --policy EXPORT``);
2. shard    ``finetune/transitions/round-R``: those episodes as transitions;
3. relabel  ``finetune/labelled/{offline,online}/epoch-R``: the offline data and every round's
            on-policy data so far, with targets from the newest export;
4. train    ``finetune/train``: the balancer gives the steps this round may train (gradient steps
            per new on-policy transition); they run in chunks, each at the ramp's on-policy share
            for the step where the chunk starts; past the ramp the rest of the round is one
            chunk. One trainer serves the round's chunks, each swapping in its input
            (``benchmarks.finetune_chunks`` measures what chunking costs); every chunk
            checkpoints, the round's last exports. Only the export each round collected with,
            finetuning's first and the newest are kept.

``finetune/state.json`` records the phases done (written atomically after each one). Every job
is idempotent (collect completes its set, shard and relabel republish, train resumes from its
checkpoint), so a finetune killed in any phase resumes where it stopped, and no round's data is
lost or duplicated. Training starts from a copy of ``--init``'s newest checkpoint; the offline
run is never modified.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from model.finetune_schedule import Balancer, chunk_end, online_share
from pipelines.jobs import collect, relabel, shard
from pipelines.machinery import dataset
from pipelines.machinery.job import JobResult
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.machinery.runstate import Phases
from schemas import cells, fs
from schemas.rundirs import FinetuneDir, RunDir, Workdir, epoch_dir, round_name
from schemas.errors import UserError

PHASES = ("collect", "shard", "relabel", "train")


# What a finetuning run records beside its phases (``Phases``): the round under way and the
# phases done in it, the on-policy transitions and steps so far, and each finished round.
STATE_DEFAULTS = {"round": 0, "online_transitions": 0, "steps_done": 0, "start_step": None,
                  "rounds": []}


def seed_checkpoint(init: str, train_dir: str) -> int:
    """Copy ``init``'s newest checkpoint into the finetune workdir, once; returns its step
    (-1 when the workdir has one already)."""
    from model.checkpoints import CheckpointStore

    return CheckpointStore.copy_newest(init, train_dir, what="--init")


def _counts(directory: str) -> int:
    return int(dataset.read_dataset_manifest(directory)["counts"]["transitions"])


def run_round(cfg, offline: str, objects: str, phase: Phases, p: FinetuneDir) -> None:
    from model import export as exports

    ft, state = cfg.finetune, phase.state
    r = state["round"]
    name = round_name(r)
    episodes_dir = p.round_episodes(r)
    transitions_dir = p.round_transitions(r)
    off_dir = epoch_dir(p.labelled_offline, r)
    on_dir = epoch_dir(p.labelled_online, r)
    latest = exports.latest_export(p.train.exports)
    if latest is None:
        raise UserError(f"{p.train.exports}: no export to collect with")

    def collect_round():
        on_policy = cfg.updated(collect={"policy": latest, "epsilon": ft.epsilon,
                                         "episodes": ft.episodes_per_round, "objects": objects,
                                         "seed": ft.seed + r})
        collect.collect(on_policy, episodes_dir, source=f"online-{name}").require()

    def shard_round():
        shard.shard(cfg, [fs.join(episodes_dir, "*.tfrecord.gz")], transitions_dir,
                    num_shards=max(1, cfg.pipeline.num_shards // 2),
                    seed=cfg.pipeline.shuffle_seed + r).require()
        state["online_transitions"] += _counts(transitions_dir)

    def relabel_round():
        relabel.relabel(cfg, [offline], latest, p.labelled_offline, r).require()
        online_inputs = [p.round_transitions(k) for k in range(r + 1)]
        relabel.relabel(cfg, online_inputs, latest, p.labelled_online, r).require()

    def train_and_keep():
        train_round(cfg, phase, p, off_dir, on_dir)
        # Older epochs' labels are superseded; the episodes and transitions stay on disk.
        for root in (p.labelled_offline, p.labelled_online):
            if r > 0:
                fs.remove(epoch_dir(root, r - 1), recursive=True)
        state["rounds"].append({"round": r, "online_transitions": state["online_transitions"],
                                "steps_done": state["steps_done"],
                                "export": exports.latest_export(p.train.exports)})

    # The phases done are this round's: the list starts empty again with the next round.
    for which, fn in zip(PHASES, (collect_round, shard_round, relabel_round, train_and_keep)):
        phase(which, fn)
    state["round"], state["done"] = r + 1, []
    state.pop("train_until", None)
    phase.save()


def train_round(cfg, phase: Phases, p: FinetuneDir, off_dir: str, on_dir: str) -> None:
    from pipelines.jobs.train import open_trainer

    state = phase.state
    ft = cfg.finetune
    balancer = Balancer(ft.steps_per_transition)
    if "train_until" not in state:
        steps = balancer.steps_for_round(state["online_transitions"], state["steps_done"])
        state["train_until"] = state["start_step"] + state["steps_done"] + steps
        phase.save()
    until = state["train_until"]
    # The input pipeline changes every chunk (new shares, new epochs): never restore it.
    train_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                  checkpoint_input=False))
    step = state["start_step"] + state["steps_done"]
    print(f"finetune: round {state['round']} trains {until - step} steps "
          f"({ft.steps_per_transition:g} per on-policy transition, "
          f"{state['online_transitions']} so far)", flush=True)
    trainer = None
    while step < until:
        share = online_share(step - state["start_step"], ft.ramp_start, ft.ramp_end,
                             ft.ramp_steps)
        end = state["start_step"] + chunk_end(step - state["start_step"],
                                              until - state["start_step"], ft.ramp_steps,
                                              ft.ramp_chunk)
        sources = [(off_dir, 1.0 - share), (on_dir, share)]
        # One trainer for the round: each chunk sets its mix of the same two datasets, not the
        # networks or the traced step. Checkpointed every chunk, exported once, at the round's end.
        if trainer is None:
            trainer = open_trainer(train_cfg, sources, p.train.root)
        else:
            trainer.use_data(sources)
        result = trainer.run(until_step=end, progress=end - step > ft.ramp_chunk,
                             export=end >= until)
        print(f"finetune: step {result.step}/{until}, on-policy share {share:.3f}, "
              f"loss {result.loss:.4f}", flush=True)
        step = result.step
        state["steps_done"] = step - state["start_step"]
        phase.save()
    _export_round_end(train_cfg, p, until)
    prune_chunk_exports(state, p)


def _export_round_end(cfg, p: FinetuneDir, until: int) -> None:
    """The export of the round's last step, written if a kill came between its checkpoint and
    its export (the rerun then has no steps left to train)."""
    from model.export import MANIFEST, export_dir
    from model.train import export_weights

    if not fs.exists(fs.join(export_dir(p.train.exports, until), MANIFEST)):
        export_weights(cfg, p.train.root)


def prune_chunk_exports(state: dict, p: FinetuneDir) -> None:
    """Keep the export finetuning started from, the one each round collected with, and the
    newest; any other is a leftover."""
    from model.export import export_dir, prune_exports

    exports_dir = p.train.exports
    keep = {export_dir(exports_dir, state["start_step"])}
    keep.update(r["export"] for r in state["rounds"] if r.get("export"))
    prune_exports(exports_dir, keep)


def check_cells(cfg, offline: str, manifest: dict, init: str) -> None:
    """Offline data, the offline run's weights and the on-policy data this config collects must
    come from one cell; refused before any round otherwise."""
    from model import export as exports

    current = cfg.robot.cell_identity()
    cell = cells.of_manifest(manifest)
    if cell != current:
        raise UserError(f"finetune: offline dataset {offline} was made by {cell} but on-policy "
                        f"episodes would come from {current} (the robot config); "
                        f"{cells.how_to_match(cell, current)}")
    latest = exports.latest_export(Workdir(init).exports)
    if latest is not None:
        cell = cells.of_manifest(exports.read_export_manifest(latest))
        if cell != current:
            raise UserError(f"finetune: --init {init} was trained on {cell} (export {latest}) "
                            f"but the robot config is {current}; start from a run trained on "
                            "this cell's data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run directory; finetuning writes RUN/finetune/")
    parser.add_argument("--offline", required=True, metavar="DIR",
                        help="offline transition dataset (from qtopt shard)")
    parser.add_argument("--init", required=True, metavar="WORKDIR",
                        help="offline training workdir whose newest checkpoint starts finetuning")
    parser.add_argument("--objects", default="train", help="objects to collect on (train)")
    parser.add_argument("--rounds", type=int, help="override finetune.rounds")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.rounds is not None:
        args.overrides = list(args.overrides) + [f"finetune.rounds={args.rounds}"]
    return finetune(config_from_args(args), args.run, args.offline, args.init,
                    objects=args.objects).status


def finetune(cfg, run_dir: str, offline: str, init: str, *, objects: str = "train") -> JobResult:
    """``cfg.finetune.rounds`` rounds of joint finetuning in ``run_dir/finetune``, starting
    from ``init``'s newest checkpoint, with ``offline`` beside the on-policy data."""
    p = RunDir(run_dir).finetune
    # A clear error now if the offline data is incomplete or of another cell.
    check_cells(cfg, offline, dataset.read_dataset_manifest(offline), init)
    fs.makedirs(p.root)
    # Finetuning checks its inputs itself (check_cells): no configuration identity here.
    phase = Phases(p.state, None, "finetune", STATE_DEFAULTS)
    state = phase.state
    if state["start_step"] is None:
        start = seed_checkpoint(init, p.train.root)
        if start < 0:
            raise UserError(f"{p.train.root} already has checkpoints but {p.state} has no "
                            "start step; remove RUN/finetune to restart")
        from model.export import latest_export

        if latest_export(p.train.exports) is None:
            from model.train import export_weights

            export_weights(cfg, p.train.root)  # the first round collects with the copied weights
        state["start_step"] = start
        phase.save()
    t0 = time.monotonic()
    while state["round"] < cfg.finetune.rounds:
        phase.label = f"finetune: round {state['round']}"
        run_round(cfg, offline, objects, phase, p)
    summary = {"finetune_rounds": state["round"], "online_transitions": state["online_transitions"],
               "finetune_steps": state["steps_done"],
               "seconds": round(time.monotonic() - t0, 1)}
    print(json.dumps(summary), flush=True)
    return JobResult("finetune", p.root, 0, summary)

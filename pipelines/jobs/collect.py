"""``qtopt collect``: run a policy in simulated cells and write the episodes as TFRecord shards.

    qtopt collect --policy scripted --episodes 500 --objects train --out work/episodes/scripted \\
                  --seed 0 --workers 2 [--set robot.image_size=64] [Beam options]

Collection is a Beam pipeline whose elements are blocks of episode indices: each worker keeps one
cell (one robot per core locally, hundreds of workers on Dataflow) and writes one shard per block,
``episodes-s<seed>-<first>-<end>.tfrecord.gz``, published atomically (a killed writer leaves only
a temporary name that ``*.tfrecord.gz`` globs do not match). Episode i of a collection has a seed
and an id that depend only on (--seed, i, --source), so rerunning the same command after a kill
runs exactly the missing indices and the directory ends up with N episodes, none twice.
``_collect.json`` records what the directory holds, and a rerun with a different policy, object
set, seed or robot configuration is refused rather than mixed in. ``_SUCCESS.json`` is written
when the set is complete: the counts, and every shard with its episodes and bytes (what
``qtopt shard`` accounts for). A directory holding more of the collection than ``--episodes``
asks for is refused, so the summary always describes every file there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.machinery import dataset, runner
from pipelines.machinery.job import JobResult, recorded_identity
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.machinery.policies import make_policy, worker_cell_and_policy
from schemas import codec, fs
from schemas.config import CEMConfig, CollectConfig, RobotConfig
from schemas.errors import UserError
from schemas.tfrecord_io import RecordWriter, iter_raw

NAMESPACE = "qtopt.collect"
PLAN = "_collect.json"


# -------------------------------------------------------------------------------- naming

def episode_seed(seed: int, index: int) -> int:
    """The reset seed of episode ``index``: independent streams for every (seed, index)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def episode_name(source: str, seed: int, index: int) -> str:
    return f"{source}-s{seed}-{index:07d}"


def existing_blocks(out: str, seed: int) -> list[tuple[int, int, str]]:
    """(start, end, path) of every published shard of this seed in ``out``."""
    blocks = []
    for path in fs.glob(fs.join(out, "episodes-*.tfrecord.gz")):
        m = dataset.COLLECT_SHARD.match(os.path.basename(path))
        if m and int(m.group(1)) == seed:
            blocks.append((int(m.group(2)), int(m.group(3)), path))
    return sorted(blocks)


def missing_blocks(n: int, done: list[tuple[int, int, str]], per_block: int) -> list[tuple]:
    """Blocks of at most ``per_block`` consecutive indices in [0, n) that no shard covers."""
    covered = [False] * n
    for start, end, _ in done:
        for i in range(max(0, start), min(n, end)):
            covered[i] = True
    blocks, i = [], 0
    while i < n:
        if covered[i]:
            i += 1
            continue
        j = i
        while j < n and not covered[j] and j - i < per_block:
            j += 1
        blocks.append((i, j))
        i = j
    return blocks


# -------------------------------------------------------------------------------- Beam parts

@dataclass(frozen=True)
class CollectPlan:
    """What every collect worker needs: where shards go, the policy and the cell, and what
    the episodes' seeds and ids derive from."""

    out: str
    policy: str                  # scripted, random, or an export directory
    policy_label: str            # as recorded in each episode
    objects: str | tuple         # a split name, or URDF paths
    seed: int
    source: str
    epsilon: float
    scripted_epsilon: float
    robot: RobotConfig
    cem: CEMConfig
    scripted_close_max: float = CollectConfig.scripted_close_max
    scripted_aim_radius: float | None = None     # None: blind aims

    def identity(self) -> dict:
        """What ``_collect.json`` records: a rerun into the same directory must match it."""
        identity = {"policy": self.policy, "epsilon": self.epsilon, "seed": self.seed,
                    "objects": list(self.objects) if isinstance(self.objects, tuple)
                    else self.objects, "source": self.source,
                    "scripted_epsilon": self.scripted_epsilon,
                    "robot": dataclasses.asdict(self.robot)}
        if self.scripted_close_max != CollectConfig.scripted_close_max:
            # Only when changed, so that collections made before the option still resume.
            identity["scripted_close_max"] = self.scripted_close_max
        if self.scripted_aim_radius is not None:
            identity["scripted_aim_radius"] = self.scripted_aim_radius
        return identity


class CollectBlock(beam.DoFn):
    """(start, end) -> one published shard of episodes; one cell per worker."""

    def __init__(self, plan: CollectPlan):
        self.plan = plan

    def setup(self):
        plan = self.plan
        # Not the worker's pid as robot id: an episode's bytes depend only on the plan and its
        # index, whichever worker or runner ran it.
        self.cell, self.policy = worker_cell_and_policy(
            plan.robot, plan.objects, plan.policy, "sim-collect", plan.epsilon, plan.cem,
            plan.scripted_epsilon, plan.scripted_close_max, plan.scripted_aim_radius)
        self.counts = {name: Metrics.counter(NAMESPACE, name) for name in
                       ("episodes", "successes", "steps", "labelled", "labeller_agrees")}
        self.seconds = Metrics.distribution(NAMESPACE, "episode_ms")

    def process(self, block):
        from robot.episode import run_episode

        plan, (start, end) = self.plan, block
        path = fs.join(plan.out, dataset.collect_shard_name(plan.seed, start, end))
        if fs.exists(path):  # a retried bundle: the shard is already published
            return
        with RecordWriter(path) as writer:
            for index in range(start, end):
                t0 = time.perf_counter()
                record = run_episode(
                    self.cell, self.policy, episode_seed(plan.seed, index),
                    source=plan.source, policy_name=plan.policy_label,
                    episode_id_=episode_name(plan.source, plan.seed, index))
                writer.write_record(record)
                outcome = self.cell.outcome
                self.counts["episodes"].inc()
                self.counts["successes"].inc(int(outcome.success))
                self.counts["steps"].inc(int(record["num_steps"]))
                if outcome.labeller != "ground_truth":
                    self.counts["labelled"].inc()
                    self.counts["labeller_agrees"].inc(
                        int(outcome.success == outcome.ground_truth))
                self.seconds.update(int(1000 * (time.perf_counter() - t0)))
        yield path

    def teardown(self):
        if hasattr(self, "cell"):
            self.cell.close()


def build(pipeline, blocks: list[tuple[int, int]], plan: CollectPlan):
    return (pipeline
            | "Blocks" >> beam.Create(blocks)
            # One block per bundle, so every worker gets blocks to run.
            | "Spread" >> beam.Reshuffle()
            | "Collect" >> beam.ParDo(CollectBlock(plan)))


# -------------------------------------------------------------------------------- launcher

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", help="scripted | random | a policy export directory "
                                         "(default: collect.policy)")
    parser.add_argument("--episodes", type=int, metavar="N", help="episodes in the set "
                        "(default: collect.episodes)")
    parser.add_argument("--objects", help="train | test | comma-separated URDF files "
                                          "(default: collect.objects)")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR",
                        help="output directory, local or gs://")
    parser.add_argument("--seed", type=int, help="collection seed (default: collect.seed)")
    parser.add_argument("--workers", type=int, metavar="W", help="local worker processes "
                        "(default: pipeline.direct_num_workers; 0 = one per core)")
    parser.add_argument("--episodes-per-block", type=int, metavar="B",
                        help="episodes per Beam element and shard (default: "
                             "collect.episodes_per_block)")
    parser.add_argument("--source", help="dataset name stored in every episode "
                                         "(default: POLICY-OBJECTS, e.g. scripted-train)")
    parser.add_argument("--epsilon", type=float, help="exploration of a greedy export policy "
                        "(default: collect.epsilon)")
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def _overrides(args) -> list[str]:
    """CLI flags as config overrides, so the config validates them with the same messages."""
    out = []
    for flag, key in (("policy", "policy"), ("episodes", "episodes"), ("objects", "objects"),
                      ("seed", "seed"), ("episodes_per_block", "episodes_per_block"),
                      ("epsilon", "epsilon")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"collect.{key}={json.dumps(value)}")
    return out


def make_plan(cfg, out: str, source: str | None) -> CollectPlan:
    from robot import objects

    c = cfg.collect
    pool = objects.resolve(c.objects)  # fails here, naming the file, before any work
    if c.objects.strip() in objects.SPLITS:
        object_spec, object_label = c.objects.strip(), c.objects.strip()
    else:
        object_spec, object_label = [o.path for o in pool], "custom"
    policy = c.policy
    if policy not in ("scripted", "random"):
        make_policy(policy, cfg.robot, c.epsilon, cfg.cem)  # a clear error now if it cannot load
        policy_label = f"export:{policy.rstrip('/')}"
        default_source = f"{os.path.basename(policy.rstrip('/'))}-{object_label}"
    else:
        policy_label = policy
        if policy == "scripted" and c.scripted_epsilon > 0:
            policy_label = f"scripted+epsilon={c.scripted_epsilon:g}"
        if policy == "scripted" and c.scripted_close_max != CollectConfig.scripted_close_max:
            policy_label += f"+close<={c.scripted_close_max:g}"
        if policy == "scripted" and c.scripted_aim == "object":
            policy_label += f"+aim<={c.scripted_aim_radius:g}"
        default_source = f"{policy}-{object_label}"
    source = source or default_source
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", source):
        raise UserError(f"--source {source!r}: use letters, digits and _ . : - only")
    return CollectPlan(out=out, policy=policy, policy_label=policy_label,
                       objects=object_spec if isinstance(object_spec, str) else tuple(object_spec),
                       seed=c.seed, source=source, epsilon=c.epsilon,
                       scripted_epsilon=c.scripted_epsilon if policy == "scripted" else 0.0,
                       robot=cfg.robot, cem=cfg.cem,
                       scripted_close_max=c.scripted_close_max if policy == "scripted"
                       else CollectConfig.scripted_close_max,
                       scripted_aim_radius=c.scripted_aim_radius
                       if policy == "scripted" and c.scripted_aim == "object" else None)


def _check_plan(out: str, plan: CollectPlan, write: bool = True) -> None:
    """Refuse to mix two different collections in one directory."""
    path = fs.join(out, PLAN)
    identity = plan.identity()
    previous = recorded_identity(path)
    if previous is not None:
        if previous != identity:
            diff = sorted(k for k in identity if previous.get(k) != identity[k])
            raise UserError(f"--out {out} holds a different collection (differs in "
                            f"{', '.join(diff)}); use another directory")
    elif write:
        fs.makedirs(out)
        fs.write_text(path, json.dumps(identity, indent=1, sort_keys=True))


def summarise(out: str, seed: int, n: int) -> dict:
    """Success over the whole set, read back from the published shards' episode contexts."""
    episodes = successes = 0
    ids = set()
    files = {}
    for start, end, path in existing_blocks(out, seed):
        if start >= n:
            continue
        held = 0
        for raw in iter_raw(path):
            header = codec.decode(raw.data, steps=False)
            ids.add(header["episode_id"])
            successes += int(header["success"])
            held += 1
        episodes += held
        files[os.path.basename(path)] = {"records": held, "bytes": fs.size(path)}
    return {"episodes": episodes, "unique_ids": len(ids), "successes": successes,
            "files": files}


def run(args: argparse.Namespace) -> int:
    args.overrides = list(args.overrides) + _overrides(args)
    return collect(config_from_args(args), args.output, source=args.source,
                   workers=args.workers, beam_args=args.beam_args).status


def collect(cfg, output: str, *, source: str | None = None, workers: int | None = None,
            beam_args=()) -> JobResult:
    """``cfg.collect.episodes`` episodes of ``cfg.collect.policy`` into ``output``: the missing
    ones only, so a rerun after a kill completes the set."""
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    out = output.rstrip("/") or output
    plan = make_plan(cfg, out, source)
    n, per_block = cfg.collect.episodes, cfg.collect.episodes_per_block
    workers = workers if workers is not None else cfg.pipeline.direct_num_workers
    options = runner.pipeline_options(list(beam_args), workers, "qtopt-collect")
    dry = runner.is_dry_run(options)
    _check_plan(out, plan, write=not dry)
    if not dry:
        fs.remove_stale_temporaries(out)
    done = existing_blocks(out, plan.seed)
    beyond = max((end for _start, end, _path in done), default=0)
    if beyond > n:
        raise UserError(f"--out {out} already holds episodes up to index {beyond - 1} of this "
                        f"collection; --episodes {n} would describe only part of it (use "
                        f"--episodes {beyond} or more, or another directory)")
    blocks = missing_blocks(n, done, per_block)
    have = n - sum(e - s for s, e in blocks)
    print(f"collect: {plan.policy_label} on {plan.source} -> {out}: {have}/{n} episodes "
          f"present, {len(blocks)} blocks to run", flush=True)
    t0 = time.monotonic()
    counts: dict = {}
    if blocks and not dry:  # the summary describes a complete set; this one is growing
        fs.remove(fs.join(out, dataset.COLLECT_DONE))
    if blocks or dry:
        runner.quiet_beam_logging()
        pipeline = runner.new_pipeline(options)
        build(pipeline, blocks, plan)

        def poll():
            present = sum(min(e, n) - s for s, e, _ in existing_blocks(out, plan.seed)
                          if s < n)
            return present, ""

        with runner.progress("collect", poll if runner.is_local(options) else None, total=n,
                             unit="episodes", every=2.0, initial=have):
            result = runner.run_pipeline(pipeline)
        if runner.is_dry_run(options):
            described = runner.describe_dry_run(pipeline, result)
            print(f"collect: dry run, nothing submitted: {json.dumps(described, sort_keys=True)}",
                  flush=True)
            return JobResult("collect", out, 0, {"dry_run": described})
        counts = runner.counters(result, NAMESPACE)
    elapsed = time.monotonic() - t0
    # A worker lost mid-block (a killed Dask worker) leaves its temporary file; its block ran
    # again elsewhere.
    fs.remove_stale_temporaries(out)
    summary = summarise(out, plan.seed, n)
    if summary["episodes"] != n or summary["unique_ids"] != n:
        raise UserError(f"--out {out}: expected {n} distinct episodes, found "
                        f"{summary['episodes']} ({summary['unique_ids']} distinct ids)")
    from robot.protocols import wilson_interval

    k = summary["successes"]
    lo, hi = wilson_interval(k, n)
    new = int(counts.get("episodes", 0))
    report = {"episodes": n, "new_episodes": new, "successes": k, "success_rate": k / n,
              "success_95ci": [round(lo, 4), round(hi, 4)], "seconds": round(elapsed, 1),
              "episodes_per_s": round(new / elapsed, 3) if new else 0.0,
              "steps_per_episode": round(counts["steps"] / new, 2) if new else None,
              "policy": plan.policy_label, "source": plan.source, "seed": plan.seed}
    report["files"] = summary["files"]
    if counts.get("labelled"):
        report["labeller_agreement"] = round(counts["labeller_agrees"] / counts["labelled"], 4)
        report["labeller_checked"] = int(counts["labelled"])
    fs.write_text(fs.join(out, dataset.COLLECT_DONE), json.dumps(report, indent=1, sort_keys=True))
    line = (f"collect: {n} episodes in {out} ({new} new in {elapsed:.1f} s, "
            f"{report['episodes_per_s']:.2f} episodes/s); success {k}/{n} = {100 * k / n:.1f}% "
            f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    if "labeller_agreement" in report:
        line += (f"; drop-test labeller agrees with ground truth on "
                 f"{100 * report['labeller_agreement']:.1f}% of {report['labeller_checked']}")
    print(line, flush=True)
    return JobResult("collect", out, 0, report)

"""Bellman targets against the data's own discounted returns: is Q overestimating?

    python -m benchmarks.target_vs_return RUN/labelled/epoch-9 \
        [RUN/finetune/labelled/online/epoch-3 ...]

For each labelled dataset (``qtopt relabel``'s output), every transition's target
``r + gamma * V(s')`` is set beside its Monte Carlo return ``G_t = r_t + gamma * G_{t+1}``,
computed from the rewards of its own episode in the same dataset (gamma from the dataset's
manifest). The return is what the policy that collected the data earned; a greedy policy may
earn more, but a mean target far above what any policy seen so far earns is overestimation.
Reported in total, by episode outcome, and by steps to the episode's end (where a target comes
from: 0 is the scored step, whose target is its reward and nothing bootstrapped).

Reads the shards without TensorFlow. Prints one JSON line per dataset.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas.mdp import discounted_returns


def episode_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t for one episode's rewards in step order (the last step is terminal)."""
    return discounted_returns(rewards, gamma).astype(np.float64)


def _stats(target: np.ndarray, ret: np.ndarray) -> dict:
    if len(target) == 0:
        return {"transitions": 0, "mean_target": None, "mean_return": None}
    return {"transitions": int(len(target)), "mean_target": round(float(target.mean()), 4),
            "mean_return": round(float(ret.mean()), 4)}


def compare(rows: dict, gamma: float, max_steps_to_end: int = 5, where: str = "") -> dict:
    """``rows``: episode id -> list of (step, reward, is_terminal, target). Every episode must be
    whole (steps 0..T-1, no terminal step but the last); SystemExit names the first that is
    not. Episodes cut off without a terminal step (targets bootstrap past their end, so their
    return is unknown) are left out and counted. A success is an episode rewarded at its end."""
    targets, returns, to_end, success = [], [], [], []
    unterminated = 0
    for episode_id, steps in rows.items():
        steps = sorted(steps)
        index = [s[0] for s in steps]
        if index != list(range(len(steps))) or any(s[2] for s in steps[:-1]):
            raise SystemExit(f"{where}episode {episode_id}: steps {index[:5]}... are not one "
                             "whole episode (missing steps, or a terminal step before its end)")
        if not steps[-1][2]:
            unterminated += 1
            continue
        reward = np.array([s[1] for s in steps], np.float64)
        targets.append(np.array([s[3] for s in steps], np.float64))
        returns.append(episode_returns(reward, gamma))
        to_end.append(np.arange(len(steps))[::-1])
        success.append(np.full(len(steps), reward[-1] > 0))
    if not targets:
        raise SystemExit(f"{where}no episode with a terminal step")
    target, ret = np.concatenate(targets), np.concatenate(returns)
    k, won = np.concatenate(to_end), np.concatenate(success)
    by_k = []
    for i in range(max_steps_to_end):
        by_k.append({"steps_to_end": str(i), **_stats(target[k == i], ret[k == i])})
    by_k.append({"steps_to_end": f">={max_steps_to_end}",
                 **_stats(target[k >= max_steps_to_end], ret[k >= max_steps_to_end])})
    total = _stats(target, ret)
    return {"episodes": len(targets), "unterminated_episodes": unterminated,
            "successes": int(sum(w[-1] for w in success)), **total,
            "ratio": round(total["mean_target"] / total["mean_return"], 2)
            if total["mean_return"] else None,
            "by_outcome": {"success": _stats(target[won], ret[won]),
                           "failure": _stats(target[~won], ret[~won])},
            "by_steps_to_end": by_k}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", metavar="DIR",
                        help="labelled datasets (qtopt relabel outputs), local or gs://")
    parser.add_argument("--steps-to-end", type=int, default=5,
                        help="report steps to the end 0..N-1 one by one, the rest together (5)")
    args = parser.parse_args(argv)
    if args.steps_to_end < 1:
        raise SystemExit("--steps-to-end must be >= 1")

    from pipelines.machinery import dataset
    from schemas import fs, tfrecord_io
    from schemas.errors import UserError

    for directory in args.datasets:
        try:
            manifest = dataset.read_dataset_manifest(directory)
        except UserError as exc:
            raise SystemExit(str(exc)) from None
        if manifest.get("kind") != "labelled_transition":
            raise SystemExit(f"{directory}: holds {manifest.get('kind')} records, not labelled "
                             "transitions (give a qtopt relabel output)")
        gamma = float(manifest["targets"]["gamma"])
        rows = defaultdict(list)
        for f in manifest["files"]:
            for rec in tfrecord_io.read_records(fs.join(directory, f["name"])):
                rows[rec["episode_id"]].append((int(rec["step"]), float(rec["reward"]),
                                                bool(rec["is_terminal"]), float(rec["target"])))
        out = compare(rows, gamma, args.steps_to_end, where=f"{directory}: ")
        print(json.dumps({"benchmark": "target_vs_return", "dataset": directory,
                          "target_version": manifest.get("target_version"), "gamma": gamma,
                          **out}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

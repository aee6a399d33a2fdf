"""What a policy does, step by step: greedy rollouts on fresh trays, one line each, then one JSON
line of counts.

    python -m benchmarks.rollouts POLICY [--episodes 8] [--objects train] [--preset cpu-long]

POLICY is an export directory (its greedy CEM policy, no exploration), ``scripted`` or
``random``. Each episode prints its seed, S (success) or F, its steps, and per step the
gripper's height above the floor in cm, then ``c<mm>`` when the gripper is closed (the fingers'
opening in mm), ``C`` for a close command and ``O`` for an open, ``>`` for a sideways move of at
least 1 cm. For example ``20 20> 13 5 1C 0c1O`` is: a sideways move at the start height, a
descent, a close 1 cm up that finds nothing (1 mm), then an open.

The JSON line counts successes, closes, the heights of the closes (median, quartiles, cm),
episodes with more than one close (regrasps in place or elsewhere), episodes that never close,
and how far the gripper moved sideways before its first close (median, cm).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import schemas  # noqa: E402,F401  (first: the tfrecord/tensorflow import hook)
from schemas import mdp  # noqa: E402


def trace(episode: dict) -> tuple[str, dict]:
    """(the episode's one-line trace, its counts)."""
    n = int(episode["num_steps"])
    parts, closes, heights, sideways, moved = [], 0, [], 0.0, None
    for t in range(n):
        command = mdp.decode_action(episode["action"][t])
        height = float(episode["observation/height"][t])
        closed = float(episode["observation/gripper_closed"][t]) > 0.5
        opening = float(episode["observation/gripper_opening"][t])
        shift = float(np.hypot(*command.translation[:2]))
        text = f"{height * 100:.0f}"
        if closed:
            text += f"c{opening * 1000:.0f}"
        if command.gripper == "close":
            text += "C"
            closes += 1
            heights.append(height)
            if moved is None:
                moved = sideways
        elif command.gripper == "open":
            text += "O"
        if shift >= 0.01:
            text += ">"
        sideways += shift
        parts.append(text)
    line = f"{'S' if episode['success'] else 'F'} {n:2d}  " + " ".join(parts)
    return line, {"success": bool(episode["success"]), "closes": closes, "heights": heights,
                  "moved_before_close": moved}


def summary(counts: list[dict]) -> dict:
    heights = [h for c in counts for h in c["heights"]]
    moved = [c["moved_before_close"] for c in counts if c["moved_before_close"] is not None]

    def cm(values, q):
        return round(float(np.percentile(values, q)) * 100, 1) if values else None

    return {"episodes": len(counts), "successes": sum(c["success"] for c in counts),
            "closes": sum(c["closes"] for c in counts),
            "close_height_cm": [cm(heights, 25), cm(heights, 50), cm(heights, 75)],
            "regrasps": sum(c["closes"] > 1 for c in counts),
            "never_close": sum(c["closes"] == 0 for c in counts),
            "sideways_before_close_cm": cm(moved, 50)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policy", help="an export directory, scripted or random")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--objects", default="train", help="train | test")
    parser.add_argument("--seed", type=int, default=1000, help="first episode's seed")
    parser.add_argument("--preset", default="cpu-long", help="the cell's preset")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from pipelines.machinery.policies import worker_cell_and_policy
    from robot.episode import run_episode
    from schemas.config import load_config

    cfg = load_config(args.preset, overrides=args.overrides)
    cell, policy = worker_cell_and_policy(cfg.robot, args.objects, args.policy, "rollouts",
                                          epsilon=0.0, cem=cfg.cem)
    counts = []
    try:
        for seed in range(args.seed, args.seed + args.episodes):
            line, count = trace(run_episode(cell, policy, seed, source="rollouts"))
            print(f"{seed} {line}", flush=True)
            counts.append(count)
    finally:
        cell.close()
    print(json.dumps({"policy": args.policy, "objects": args.objects, **summary(counts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

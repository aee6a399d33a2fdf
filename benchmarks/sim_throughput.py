"""Control steps per second of our cell and of pybullet's KukaDiverseObjectEnv, side by side.

Both run in this process on one core, 64x64 images, random actions, resets included (a reset
happens whenever an episode ends, and its time counts). Prints one JSON line:
``{"ours_steps_per_s": ..., "reference_steps_per_s": ..., "ratio": ...}``.

The reference needs ``gym==0.23.1`` (``pip install -e '.[bench]'``); it is the speed and behaviour
yardstick only. Usage: ``python -m benchmarks.sim_throughput [--seconds 30] [--image-size 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings


def ours(seconds: float, image_size: int, seed: int) -> dict:
    from robot.cell import SimCell
    from robot.episode import run_episode
    from robot.policies import RandomPolicy
    from schemas.config import RobotConfig

    config = RobotConfig(image_size=image_size)
    cell = SimCell(config, "train")
    policy = RandomPolicy(config)
    steps = episodes = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        record = run_episode(cell, policy, seed + episodes)
        steps += int(record["num_steps"])
        episodes += 1
    elapsed = time.perf_counter() - start
    cell.close()
    return {"steps": steps, "episodes": episodes, "seconds": elapsed}


def reference(seconds: float, image_size: int, seed: int) -> dict:
    warnings.filterwarnings("ignore")
    import numpy as np
    try:
        from pybullet_envs.bullet.kuka_diverse_object_gym_env import KukaDiverseObjectEnv
    except ImportError as exc:
        raise SystemExit(f"sim_throughput: the reference needs gym==0.23.1 "
                         f"(pip install -e '.[bench]'): {exc}")
    env = KukaDiverseObjectEnv(renders=False, isDiscrete=False, width=image_size,
                               height=image_size)
    env.seed(seed)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    steps = episodes = 0
    start = time.perf_counter()
    env.reset()
    while time.perf_counter() - start < seconds:
        _, _, done, _ = env.step(rng.uniform(low, high))
        steps += 1
        if done:
            episodes += 1
            env.reset()
    elapsed = time.perf_counter() - start
    return {"steps": steps, "episodes": episodes, "seconds": elapsed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_throughput")
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time per simulator")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # pybullet and the reference print banners on stdout; keep stdout for the one JSON line.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        a = ours(args.seconds, args.image_size, args.seed)
        b = reference(args.seconds, args.image_size, args.seed)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    ours_rate = a["steps"] / a["seconds"]
    ref_rate = b["steps"] / b["seconds"]
    print(json.dumps({"ours_steps_per_s": round(ours_rate, 2),
                      "reference_steps_per_s": round(ref_rate, 2),
                      "ratio": round(ours_rate / ref_rate, 2),
                      "image_size": args.image_size,
                      "ours_episodes": a["episodes"], "reference_episodes": b["episodes"],
                      "seconds_each": args.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Control steps per second of our cell and of pybullet's KukaDiverseObjectEnv, side by side.

Both run in this process on one core, 64x64 images, random actions, resets included (a reset
happens whenever an episode ends, and its time counts). The simulators take turns in short rounds
of whole episodes, so all see the same machine load, and time is the process's CPU time, so other
jobs sharing the machine do not count against either. Prints one JSON line:
``{"ours_steps_per_s": ..., "reference_steps_per_s": ..., "ratio": ...}``, the ratio being the
median over pairs of neighbouring rounds (plus wall-clock rates for reference).

The reference needs ``gym==0.23.1`` (``pip install -e '.[bench]'``); it is the speed and behaviour
yardstick only. Usage: ``python -m benchmarks.sim_throughput [--seconds 30] [--image-size 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings


def unsettled_cell(config):
    """The cell as it was before scenes settled at reset: a fixed 50 + 6 per object sub-steps
    of undamped physics, objects left awake (what settling costs, measured side by side)."""
    from robot import tray as T
    from robot.cell import SimCell

    class UnsettledTray(T.Tray):
        def settle(self):
            p = self._p
            for body in self.bodies:
                p.changeDynamics(body, -1, linearDamping=T.BULLET_DAMPING,
                                 angularDamping=T.BULLET_DAMPING)
            for _ in range(50 + 6 * len(self.bodies)):
                p.stepSimulation()

    cell = SimCell(config, "train")
    cell.tray = UnsettledTray(cell._p, cell.config, cell.pool)
    return cell


class Ours:
    def __init__(self, image_size: int, seed: int, settle: bool = True):
        from robot.cell import SimCell
        from robot.policies import RandomPolicy
        from schemas.config import RobotConfig

        config = RobotConfig(image_size=image_size)
        self.cell = SimCell(config, "train") if settle else unsettled_cell(config)
        self.policy = RandomPolicy(config)
        self.seed = seed
        self.episodes = 0
        self._start_episode()

    def _start_episode(self):
        self.observation = self.cell.reset(self.seed + self.episodes)
        self.policy.seed(self.seed + self.episodes)
        self.policy.reset()
        self.t = 0

    def step(self) -> None:
        self.cell.execute_command(self.policy.sample_action(self.observation, self.t))
        self.observation = self.cell.capture_state()
        self.t += 1
        if self.cell.done:
            self.episodes += 1
            self._start_episode()


class Reference:
    def __init__(self, image_size: int, seed: int):
        warnings.filterwarnings("ignore")
        import numpy as np
        try:
            from pybullet_envs.bullet.kuka_diverse_object_gym_env import KukaDiverseObjectEnv
        except ImportError as exc:
            raise SystemExit(f"sim_throughput: the reference needs gym==0.23.1 "
                             f"(pip install -e '.[bench]'): {exc}")
        self.env = KukaDiverseObjectEnv(renders=False, isDiscrete=False, width=image_size,
                                        height=image_size)
        self.env.seed(seed)
        self.rng = np.random.default_rng(seed)
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        self.episodes = 0
        self.env.reset()

    def step(self) -> None:
        _, _, done, _ = self.env.step(self.rng.uniform(self.low, self.high))
        if done:
            self.episodes += 1
            self.env.reset()


def measure(sims: dict, seconds: float, round_seconds: float = 1.0) -> dict:
    """Alternate rounds until every simulator has used ``seconds`` of CPU time. A round is whole
    episodes, resets included, at least ``round_seconds`` long: the reference takes about four
    steps a second and its reset costs as much as several steps, so rounds cut by time alone
    scatter with whether a reset fell inside them. Each round's rate is kept: a pair of
    neighbouring rounds saw nearly the same machine load."""
    stats = {name: {"steps": 0, "cpu": 0.0, "wall": 0.0, "rates": []} for name in sims}
    while any(s["cpu"] < seconds for s in stats.values()):
        for name, sim in sims.items():
            s = stats[name]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            steps = 0
            while True:
                episodes = sim.episodes
                sim.step()
                steps += 1
                if sim.episodes > episodes and time.process_time() - cpu0 >= round_seconds:
                    break
            cpu = time.process_time() - cpu0
            s["steps"] += steps
            s["cpu"] += cpu
            s["wall"] += time.perf_counter() - wall0
            s["rates"].append(steps / cpu)
    return stats


def round_ratios(stats: dict) -> list[float]:
    """ours / reference, round by round (the two rounds of a pair ran back to back)."""
    return [a / b for a, b in zip(stats["ours"]["rates"], stats["reference"]["rates"])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_throughput")
    parser.add_argument("--seconds", type=float, default=30.0, help="CPU seconds per simulator")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # pybullet and the reference print banners on stdout; keep stdout for the one JSON line.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        # The reference drives pybullet's default client (id 0), so it must connect first; our
        # cell names its own clients explicitly.
        reference = Reference(args.image_size, args.seed)
        sims = {"ours": Ours(args.image_size, args.seed), "reference": reference,
                "unsettled": Ours(args.image_size, args.seed, settle=False)}
        stats = measure(sims, args.seconds)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    rate = {name: s["steps"] / s["cpu"] for name, s in stats.items()}
    ratios = round_ratios(stats)
    print(json.dumps({
        "ours_steps_per_s": round(rate["ours"], 2),
        "reference_steps_per_s": round(rate["reference"], 2),
        # The median of per-round ratios: a burst of load on the machine moves one pair of
        # rounds, not the figure.
        "ratio": round(statistics.median(ratios), 2),
        "ratio_of_totals": round(rate["ours"] / rate["reference"], 2),
        "ratio_iqr": [round(q, 2) for q in statistics.quantiles(ratios, n=4)[::2]],
        "rounds": len(ratios),
        "clock": "process CPU time, interleaved rounds of whole episodes, at least 1 s each",
        "ours_wall_steps_per_s": round(stats["ours"]["steps"] / stats["ours"]["wall"], 2),
        "reference_wall_steps_per_s": round(stats["reference"]["steps"]
                                            / stats["reference"]["wall"], 2),
        "image_size": args.image_size,
        "unsettled_steps_per_s": round(rate["unsettled"], 2),
        "settle_cost": round(1.0 - rate["ours"] / rate["unsettled"], 3),
        "ours_episodes": sims["ours"].episodes, "reference_episodes": sims["reference"].episodes,
        "cpu_seconds_each": args.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

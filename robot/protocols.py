"""The paper's two evaluation protocols (section 6.1), over any policy and a simulated cell.

- Grasping with replacement: each robot has its own tray of objects; every attempt is one
  episode, and a grasped object is put back into the tray (here: the same objects are dropped
  in again at new random places before every attempt).
- Bin emptying: one tray of 28 objects, 30 attempts, no resets between them. A grasped object
  leaves the tray; the others are put back where the previous attempt left them (same x, y and
  yaw, dropped in again since the cell rebuilds its world at every reset). Success is reported
  over the first 10, 20 and 30 attempts, which are grasps on increasingly difficult objects.

The functions here return plain per-attempt rows; ``summarise`` and ``first_k`` turn them into
rates with 95% Wilson intervals. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from robot.episode import run_episode

Z95 = 1.959964


@dataclass
class Attempt:
    protocol: str        # "replacement" or "bin_emptying"
    group: int           # robot (replacement) or trial (bin emptying)
    attempt: int         # 0-based within the group
    success: bool
    steps: int
    episode_id: str
    objects_before: int  # objects in the tray when the attempt started
    grasped: str         # id of the object removed after a successful bin-emptying attempt

    def row(self) -> dict:
        return asdict(self)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (well behaved at 0 and n successes)."""
    if n <= 0:
        return (0.0, 1.0)  # no attempts: nothing is known
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(successes: list[bool]) -> dict:
    n, k = len(successes), int(sum(bool(s) for s in successes))
    lo, hi = wilson_interval(k, n)
    return {"attempts": n, "successes": k, "rate": k / n if n else 0.0, "ci95": [lo, hi]}


def first_k(trials: list[list[bool]], ks=(10, 20, 30)) -> dict:
    """Success over the first k attempts of every trial, pooled over trials, for each k.

    A trial with fewer than k attempts contributes the attempts it has (it cannot run short in
    practice: an empty tray still counts its remaining attempts as failures).
    """
    return {str(k): summarise([s for trial in trials for s in trial[:k]]) for k in ks}


def _random_placements(rng: np.random.Generator, objs: list, centre, half: float) -> list:
    out = []
    for obj in objs:
        xy = np.asarray(centre) + rng.uniform(-half, half, 2)
        out.append((obj, (float(xy[0]), float(xy[1])), float(rng.uniform(-math.pi, math.pi))))
    return out


def _sub_seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def with_replacement(cell, policy, robot: int, attempts: int, objects_per_robot: int,
                     pool: list, seed: int, policy_name: str = "", keep_episodes: int = 0):
    """One robot's attempts under the with-replacement protocol.

    Returns (attempt rows, the first ``keep_episodes`` episode records, for rendering).
    """
    from robot.layout import SPAWN_HALF, TRAY_CENTRE

    rng = np.random.default_rng(_sub_seed(seed, 0, robot))
    chosen = rng.choice(len(pool), size=objects_per_robot, replace=objects_per_robot > len(pool))
    objs = [pool[int(i)] for i in chosen]
    rows, kept = [], []
    for a in range(attempts):
        placements = _random_placements(rng, objs, TRAY_CENTRE, SPAWN_HALF)
        episode = run_episode(cell, policy, _sub_seed(seed, 1, robot, a), source="evaluate",
                              policy_name=policy_name, placements=placements,
                              episode_id_=f"replacement-r{robot:02d}-a{a:03d}")
        rows.append(Attempt("replacement", robot, a, bool(episode["success"]),
                            int(episode["num_steps"]), episode["episode_id"], len(objs), ""))
        if len(kept) < keep_episodes:
            kept.append(episode)
    return rows, kept


def bin_emptying(cell, policy, trial: int, num_objects: int, attempts: int, pool: list,
                 seed: int, policy_name: str = "", keep_episodes: int = 0):
    """One bin-emptying trial: ``attempts`` grasps at a tray of ``num_objects`` objects."""
    from robot.layout import SPAWN_HALF, TRAY_CENTRE

    rng = np.random.default_rng(_sub_seed(seed, 2, trial))
    chosen = rng.choice(len(pool), size=num_objects, replace=num_objects > len(pool))
    tray = _random_placements(rng, [pool[int(i)] for i in chosen], TRAY_CENTRE, SPAWN_HALF)
    rows, kept = [], []
    for a in range(attempts):
        if not tray:
            # An empty bin: nothing left to grasp, the remaining attempts fail.
            rows.append(Attempt("bin_emptying", trial, a, False, 0, "", 0, ""))
            continue
        episode = run_episode(cell, policy, _sub_seed(seed, 3, trial, a), source="evaluate",
                              policy_name=policy_name, placements=tray,
                              episode_id_=f"bin-t{trial:02d}-a{a:03d}")
        success = bool(episode["success"])
        state = cell.tray_objects()
        grasped = ""
        if success:
            held = [i for i, entry in enumerate(state) if entry[3]]
            if held:
                grasped = state[held[0]][0].object_id
                del state[held[0]]
        rows.append(Attempt("bin_emptying", trial, a, success, int(episode["num_steps"]),
                            episode["episode_id"], len(tray), grasped))
        tray = [(obj, xy, yaw) for obj, xy, yaw, _held in state]
        if len(kept) < keep_episodes:
            kept.append(episode)
    return rows, kept

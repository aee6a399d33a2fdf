"""How much of the scripted policy's failure is where it aims? Prints one JSON line.

    python -m benchmarks.oracle_aim [--episodes 200] [--objects test] [--seed 7]

Runs appendix B's scripted grasp (``robot.policies.ScriptedGrasp``) twice on the same episode
seeds, so both see the same trays: once as it is (a random (x, y) within 10 cm of the tray
centre), and once aimed by the simulator's ground truth at the centre of a randomly chosen object
(``oracle``). Everything after the aim (descent, retries, close, lift) is the same code. The
oracle's success rate is what a policy with perfect perception would reach with this grasp
motion; the gap between the two is what a learned policy can gain by looking, and the scripted
rate is what it must beat.

For the scripted episodes it also reports how well the gripper's (x, y) distance to the nearest
object centre at the close command predicts success (``distance_auc``, 0.5: not at all): the
signal a vision model must find in the image to beat the scripted policy.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def run(cell, policy, seed: int, aim_at_object: bool, rng: np.random.Generator) -> dict:
    """One episode; returns success and the (x, y) distance to the nearest object at close."""
    from schemas import mdp

    observation = cell.reset(seed)
    policy.seed(seed)
    policy.reset()
    if aim_at_object:
        objects = cell.object_positions()
        target = objects[int(rng.integers(len(objects)))][:2]
        gripper, _ = cell.gripper_pose()
        policy._offset = np.asarray(target - gripper[:2], np.float64)
    distance, step = None, 0
    while not cell.done:
        action = policy.sample_action(observation, step)
        if distance is None and mdp.decode_action(action).gripper == "close":
            gripper, _ = cell.gripper_pose()
            objects = cell.object_positions()
            distance = float(np.min(np.linalg.norm(objects[:, :2] - gripper[:2], axis=1)))
        cell.execute_command(action)
        observation = cell.capture_state()
        step += 1
    return {"success": bool(cell.outcome.success), "distance": distance}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200,
                        help="episodes per policy (default 200)")
    parser.add_argument("--objects", default="test", help="train | test (default test)")
    parser.add_argument("--seed", type=int, default=7, help="first episode seed (default 7)")
    parser.add_argument("--preset", default="demo", help="config preset for the cell (demo)")
    args = parser.parse_args(argv)

    from benchmarks.grasp_probe import auc
    from robot.cell import SimCell
    from robot.protocols import wilson_interval
    from robot.policies import ScriptedGrasp
    from schemas.config import load_config

    config = load_config(args.preset).robot
    cell = SimCell(config, args.objects)
    policy = ScriptedGrasp(config)
    rng = np.random.default_rng(args.seed)
    results = {"scripted": [], "oracle": []}
    t0 = time.perf_counter()
    for i in range(args.episodes):
        seed = args.seed * 1_000_003 + i
        # Alternate the two so that both see the same machine, tray by tray.
        results["scripted"].append(run(cell, policy, seed, False, rng))
        results["oracle"].append(run(cell, policy, seed, True, rng))
    out = {"benchmark": "oracle_aim", "objects": args.objects, "episodes": args.episodes,
           "preset": args.preset}
    for name, rows in results.items():
        k = sum(r["success"] for r in rows)
        lo, hi = wilson_interval(k, len(rows))
        out[name] = {"successes": k, "rate": round(k / len(rows), 3),
                     "interval": [round(lo, 3), round(hi, 3)]}
    closed = [r for r in results["scripted"] if r["distance"] is not None]
    if closed:
        d = np.array([r["distance"] for r in closed])
        s = np.array([float(r["success"]) for r in closed])
        out["distance_auc"] = round(auc(-d, s), 3)
        out["median_distance_cm"] = {
            "success": round(100 * float(np.median(d[s > 0.5])), 1) if s.sum() else None,
            "failure": round(100 * float(np.median(d[s < 0.5])), 1) if (s < 0.5).any() else None}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), flush=True)
    cell.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

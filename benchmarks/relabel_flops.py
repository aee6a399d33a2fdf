"""What one Bellman backup costs: the relabel job's targets per second, the FLOP rate they imply,
and this machine's dense matmul FLOP rate, measured alternately in one run. Prints one JSON line.

    python -m benchmarks.relabel_flops [--preset cpu-long] [--batch 512] [--seconds 20]

Times ``model.targets.TargetComputer`` (what ``qtopt relabel`` runs on each chunk, in one
process over all cores as the local runner does) on random next states, with the preset's
network, CEM and target rule. A target's FLOPs are counted from the network's layers
(``benchmarks.train_speed.layer_macs``): the Polyak tower once per state, its head once per CEM
sample (samples x iterations), then the lagged copy's tower and head once at the argmax (none
for ``single_q``). ``utilisation`` is the achieved rate over a 1024x1024 float32 matmul's; a
low one says the cost is in overheads (CEM's sorting and sampling, small matrices), not in
arithmetic. ``backup_s`` is what relabelling ``--transitions`` transitions takes at that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import schemas  # noqa: E402,F401


def target_flops(net, cem, kind: str) -> dict:
    """FLOPs of one target, split into tower and head parts."""
    from benchmarks.train_speed import layer_macs

    macs = layer_macs(net.model)
    tower = sum(v for k, v in macs.items() if "tower" in k)
    head = sum(macs.values()) - tower
    copies = 1 if kind == "single_q" else 2
    evaluations = cem.samples * cem.iterations + (copies - 1)
    return {"tower": 2 * tower * copies, "head": 2 * head * evaluations}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu-long", help="configuration preset")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="config override, e.g. model.preset=cpu64")
    parser.add_argument("--batch", type=int, default=512, help="states per call")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="timing of each side, split into two alternated halves")
    parser.add_argument("--transitions", type=int, default=67000,
                        help="dataset size for backup_s (default: 5000 episodes' non-terminal "
                             "transitions)")
    args = parser.parse_args(argv)

    from benchmarks.cem_relabel import _batch, _perturb, _rate
    from benchmarks.train_speed import matmul_gflops
    from model.network import InputSpec, QNetwork
    from model.targets import TargetComputer
    from schemas.mdp import bounds_from_config
    from schemas.config import load_config

    cfg = load_config(args.preset, overrides=args.overrides)
    spec = InputSpec(cfg.robot.image_size, cfg.model.state_inputs,
                     translation_range=cfg.robot.max_translation)
    polyak, lagged = (QNetwork(spec, cfg.model.preset, n) for n in ("polyak", "lagged"))
    _perturb([polyak, lagged])
    computer = TargetComputer(polyak, lagged, cfg.cem, cfg.targets,
                              bounds=bounds_from_config(cfg.robot),
                              termination=cfg.robot.termination,
                              gripper_moves=cfg.robot.gripper_moves)
    batch = _batch(args.batch, cfg.robot.image_size)
    half = args.seconds / 2
    rates, matmul = [], []
    for _ in range(2):   # alternate, so drifts in machine load hit both alike
        rates.append(_rate(computer, batch, half))
        matmul.append(matmul_gflops(half))
    rate, peak = sum(rates) / 2, sum(matmul) / 2
    flops = target_flops(polyak, cfg.cem, cfg.targets.kind)
    per_target = sum(flops.values())
    achieved = rate * per_target / 1e9
    print(json.dumps({
        "targets_per_s": round(rate, 1), "mflop_per_target": round(per_target / 1e6, 2),
        "achieved_gflops": round(achieved, 2), "matmul_gflops": round(peak, 1),
        "utilisation": round(achieved / peak, 3),
        "flop_share": {k: round(v / per_target, 3) for k, v in flops.items()},
        "backup_s": round(args.transitions / rate, 1), "transitions": args.transitions,
        "model": cfg.model.preset, "image_size": cfg.robot.image_size, "batch": args.batch,
        "cem": [cfg.cem.samples, cfg.cem.elites, cfg.cem.iterations],
        "target_kind": cfg.targets.kind, "preset": args.preset, "cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

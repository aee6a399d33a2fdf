"""What the cell's camera shows, measured with segmentation masks. Prints one JSON line.

    python -m benchmarks.camera_view [--trays 30] [--preset demo] [--set robot.camera=shoulder]

- ``workspace_fraction``: share of the image whose pixel ray meets the tray floor inside the
  square the gripper can reach (``robot.layout.WORKSPACE_HALF`` around the tray centre).
- ``object_px_median`` / ``object_px_p10``: visible pixels of each object in the tray at step 0
  (gripper at its start pose), over ``--trays`` fixed trays of train objects.
- ``finger_px_low_median``: visible finger pixels with the gripper within 3 cm of the floor, over
  a fixed grid of gripper poses (x, y across the workspace, yaw 0 and 90 degrees) in an empty
  tray; ``finger_visible_fraction``: share of all grid poses, every reachable height, where at
  least 8 finger pixels are visible (not hidden behind the arm or out of frame);
  ``finger_px_min``: the fewest finger pixels over all poses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

LOW = 0.03             # "near the floor", metres above it
VISIBLE_PX = 8         # finger pixels that count as visible
HEIGHTS = (0.005, 0.02, 0.06, 0.12, 0.2)   # up to robot.layout.MAX_HEIGHT
GRID = (-1.0, 0.0, 1.0)   # fractions of the workspace's half-width


def workspace_fraction(cell) -> float:
    """Cast every pixel's ray onto the floor plane and count those landing in the workspace."""
    from robot import layout as C

    size = cell.config.image_size
    view = np.asarray(cell.camera.view, np.float64).reshape(4, 4).T
    proj = np.asarray(cell.camera.proj, np.float64).reshape(4, 4).T
    inv = np.linalg.inv(proj @ view)
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    xs, ys = np.meshgrid(centres, -centres)
    near = np.stack([xs, ys, -np.ones_like(xs), np.ones_like(xs)], -1) @ inv.T
    far = np.stack([xs, ys, np.ones_like(xs), np.ones_like(xs)], -1) @ inv.T
    near, far = near[..., :3] / near[..., 3:], far[..., :3] / far[..., 3:]
    direction = far - near
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (C.TRAY_FLOOR_Z - near[..., 2]) / direction[..., 2]
    hit = near + t[..., None] * direction
    inside = (t > 0) & np.all(np.abs(hit[..., :2] - C.TRAY_CENTRE) <= C.WORKSPACE_HALF, -1)
    return float(inside.mean())


def object_pixels(cell, trays: int, seed: int) -> list[int]:
    counts = []
    for i in range(trays):
        cell.reset(seed + i)
        _, masks = cell.render_with_masks()
        counts += [int(np.sum(masks["objects"] == k)) for k in range(len(cell.object_ids))]
    return counts


def finger_poses(cell) -> list[tuple[float, int]]:
    """(height, finger px) for every pose of the grid, in an empty tray."""
    from robot import layout as C

    out = []
    for yaw in (0.0, math.pi / 2):
        for fx in GRID:
            for fy in GRID:
                cell.reset(0, placements=[])
                x, y = C.TRAY_CENTRE + C.WORKSPACE_HALF * np.array([fx, fy])
                for h in sorted(HEIGHTS, reverse=True):
                    cell.place_gripper((x, y, C.TRAY_FLOOR_Z + h), yaw)
                    _, masks = cell.render_with_masks()
                    out.append((h, int(masks["fingers"].sum())))
    return out


def measure(config, trays: int, seed: int) -> dict:
    from robot.cell import SimCell

    cell = SimCell(config, "train")
    t0 = time.perf_counter()
    objects = object_pixels(cell, trays, seed)
    fingers = finger_poses(cell)
    low = [px for h, px in fingers if h <= LOW]
    return {
        "benchmark": "camera_view", "camera": config.camera, "image_size": config.image_size,
        "workspace_fraction": round(workspace_fraction(cell), 3),
        "object_px_median": float(np.median(objects)),
        "object_px_p10": float(np.percentile(objects, 10)),
        "finger_px_low_median": float(np.median(low)),
        "finger_px_min": int(min(px for _, px in fingers)),
        "finger_visible_fraction": round(float(np.mean([px >= VISIBLE_PX
                                                        for _, px in fingers])), 3),
        "finger_visible_by_height": {
            f"{h:g}": round(float(np.mean([px >= VISIBLE_PX for hh, px in fingers if hh == h])), 3)
            for h in HEIGHTS},
        "trays": trays, "objects": len(objects), "gripper_poses": len(fingers),
        "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.camera_view",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--trays", type=int, default=30, help="trays of objects (default 30)")
    parser.add_argument("--seed", type=int, default=11, help="first tray's seed (default 11)")
    parser.add_argument("--preset", default="demo", help="config preset (default demo)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. robot.camera=shoulder (repeatable)")
    args = parser.parse_args(argv)
    from schemas.config import load_config

    config = load_config(args.preset, overrides=args.set).robot
    # pybullet prints banners on stdout; keep stdout for the one JSON line.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = measure(config, args.trays, args.seed)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

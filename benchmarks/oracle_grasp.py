"""The cell's grasp ceiling: a privileged controller that sees the simulator's truth. Prints one
JSON line.

    python -m benchmarks.oracle_grasp --objects train|test --trays N [--preset demo] [--seed S]
        [--target nearest|clear] [--set KEY=VALUE ...]

The controller reads every object's true pose and collision shape from the cell's pybullet client,
but acts on the cell only as a policy does: ``reset``, ``execute_command`` with actions made by
``schemas.mdp``, ``capture_state``. It re-plans at every step from the current truth:

- target: among the objects within the gripper's reach (over the workspace, not in flight) that
  fit the opening at their narrowest, by default (``--target clear``) the one nearest the tray
  centre that has a yaw, at most 2 cm wider than its narrowest, at which both fingers land clear
  of its neighbours; then the nearest with any such clear yaw; then the nearest that fits; then
  the nearest. ``--target nearest`` skips the clearance test. Nearest-to-centre is the choice a
  policy without preferences would make; the clearance test is what a careful operator adds,
  cheap with the truth in hand. A target is kept while it still fits, so that a plan does not
  hop between objects that are still moving.
- yaw: across the target's narrowest horizontal width (the caliper width of its collision
  vertices projected on the floor, in 2-degree steps: exact for the convex hull, and needs none),
  a turn of a radian costing as much as 1.5 cm of width so that a plan does not flip between two
  near-equal widths.
- moves: over the target at a safe height, turn, descend to grasp height (fingertips 5 mm above
  the target's lowest point, or for a tall target as low as its top lets the palm go), close,
  lift. A descent that stops short (fingers on something) backs off and re-plans without that
  object; a close on nothing (fingers shut) opens and tries again, twice at most per object.

Trays: tray i is the cell's reset with seed ``seed * 1_000_003 + i``, the same trays on every run.
Failures of the unsuccessful trays, by cause: ``too_wide`` (the last target is wider than the
opening at its narrowest), ``slipped`` (the last close caught the object, the fingers were not
shut, and it was not held at the end), ``blocked`` (the last try never reached grasp height over
its target, stopped by another object or out of steps), ``other``. Also ``moving_at_start``: the
share of objects faster than 1 cm/s right after reset, and ``mean_steps`` per tray.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

ANGLES = np.radians(np.arange(0.0, 180.0, 2.0))
DIRECTIONS = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
FIT_MARGIN = 0.006           # opening left free beside a fitting object, for aim error
GRASP_ABOVE_BOTTOM = 0.005   # fingertips this far above the target's lowest point
PALM_CLEARANCE = 0.004       # the palm (on top of the fingers) this far above a tall target
HOVER_CLEARANCE = 0.03       # fingertips this far above every object near the target while turning
ALIGNED_XY = 0.006           # metres, radians: close enough to close the gripper
ALIGNED_YAW = 0.08
NEAR_XY = 0.015              # close enough to start down, correcting on the way
NEAR_YAW = 0.3
LOST_XY = 0.03               # so far off, once down, that the gripper goes back up
LOST_YAW = 0.6
YAW_COST = 0.015             # metres of width one radian of turning is worth
WIDE_SLACK = 0.02            # a grasp this much wider than the narrowest is still a good one
REACH_BOTTOM = 0.1           # an object whose lowest point is higher is in flight
NEIGHBOUR_RADIUS = 0.15      # objects this close to the target are checked for clearance
MOVING = 0.01                # m/s: an object faster than this at step 0 is still moving
SHUT = 0.003                 # metres between the pads: closed on nothing


# ------------------------------------------------------------------------------------- geometry

def _obj_vertices(path: str, cache: dict) -> np.ndarray:
    if path not in cache:
        rows = []
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("v "):
                    rows.append([float(x) for x in line.split()[1:4]])
        cache[path] = np.asarray(rows, np.float64).reshape(-1, 3)
    return cache[path]


def _primitive_points(kind: int, dims, p) -> np.ndarray:
    """Points on a primitive collision shape's hull, shape frame."""
    if kind == p.GEOM_BOX:
        h = np.asarray(dims[:3]) / 2
        return np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * h
    if kind == p.GEOM_SPHERE:
        r = dims[0]
        u = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
        ring = [[math.cos(a), math.sin(a), 0.0] for a in np.linspace(0, 2 * math.pi, 24, False)]
        return r * np.vstack([u, ring])
    # Cylinders and capsules: (length, radius), axis z.
    length, r = dims[0], dims[1]
    half = length / 2 + (r if kind == p.GEOM_CAPSULE else 0.0)
    ring = [[r * math.cos(a), r * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 24, False)]
    return np.array([[x, y, z] for x, y in ring for z in (-half, half)])


def local_points(p, body: int, cache: dict) -> np.ndarray:
    """The body's collision vertices in its base (inertial) frame, scaled as loaded."""
    out = []
    for shape in p.getCollisionShapeData(body, -1):
        kind, dims, filename, pos, orn = shape[2], shape[3], shape[4], shape[5], shape[6]
        if kind == p.GEOM_MESH:
            name = filename.decode() if isinstance(filename, bytes) else filename
            pts = _obj_vertices(name, cache) * np.asarray(dims[:3])
        else:
            pts = _primitive_points(kind, dims, p)
        rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        out.append(pts @ rot.T + np.asarray(pos))
    pts = np.vstack(out) if out else np.zeros((1, 3))
    return pts[np.all(np.isfinite(pts), axis=1)]


def world_points(p, body: int, local: np.ndarray) -> np.ndarray:
    pos, orn = p.getBasePositionAndOrientation(body)
    rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    return local @ rot.T + np.asarray(pos)


def calipers(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Width of the points along every direction of ANGLES, and the middle of each extent."""
    proj = xy @ DIRECTIONS.T
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    return hi - lo, (hi + lo) / 2


def _hull(xy: np.ndarray) -> np.ndarray:
    """Convex hull of 2-D points, counter-clockwise (monotone chain)."""
    pts = sorted(set(map(tuple, np.round(xy, 5))))
    if len(pts) < 3:
        return np.asarray(pts)

    def half(points):
        out = []
        for q in points:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (q[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (q[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(q)
        return out
    lower, upper = half(pts), half(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex polygons (vertex arrays)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        pa, pb = a @ normals.T, b @ normals.T
        if np.any((pa.max(axis=0) < pb.min(axis=0)) | (pb.max(axis=0) < pa.min(axis=0))):
            return False
    return True


@dataclass
class Item:
    """One object as the planner sees it this step."""

    index: int
    xy: np.ndarray              # world points projected on the floor
    bottom: float               # lowest and highest points, metres above the tray floor
    top: float
    centre: np.ndarray          # (x, y) of its base frame
    widths: np.ndarray          # caliper width along each of ANGLES
    middles: np.ndarray
    hull: np.ndarray | None = field(default=None)   # of xy, made when first needed

    @property
    def narrowest(self) -> float:
        return float(self.widths.min())


@dataclass
class Plan:
    index: int
    xy: np.ndarray              # where the grasp point goes
    yaw: float                  # gripper yaw: its fingers close along (-sin yaw, cos yaw)
    grasp_height: float
    hover_height: float
    width: float                # the target's width across the fingers
    narrowest: float
    clear: bool


# ------------------------------------------------------------------------------------- control

class OracleGrasp:
    """The privileged controller; one instance per cell, ``reset`` before every tray."""

    def __init__(self, cell, target: str = "clear"):
        from robot import gripper as cellmod_gripper, layout as cellmod

        self.cell = cell
        self.cfg = cell.config
        self.target = target
        self.floor = cellmod.TRAY_FLOOR_Z
        self.tray_centre = np.asarray(cellmod.TRAY_CENTRE, np.float64)
        self.workspace = cellmod.WORKSPACE_HALF
        self.min_height = cellmod.MIN_HEIGHT
        self.finger_half = cellmod_gripper.FINGER_HALF
        self.finger_length = 2 * cellmod_gripper.FINGER_HALF[2]
        self.opening = 2 * (cellmod_gripper.FINGER_OPEN - cellmod_gripper.FINGER_HALF[1])
        self._mesh_cache: dict = {}

    def reset(self) -> None:
        p = self.cell._p
        self.local = [local_points(p, b, self._mesh_cache) for b in self.cell.tray.bodies]
        self.excluded: set[int] = set()
        self.last_plan: Plan | None = None
        self.last_try = {"reached": False, "blocked": False, "closed_on": False}
        self._descending = None      # (height before, commanded drop) of the last descent step
        self._lifting = False
        self._rehover = False        # after a miss: back up to hover height before going down
        self._misses = 0
        self._low = False            # on the way down over the target

    # -- what the truth says

    def items(self) -> list[Item]:
        p = self.cell._p
        out = []
        for i, (body, local) in enumerate(zip(self.cell.tray.bodies, self.local)):
            pts = world_points(p, body, local)
            widths, middles = calipers(pts[:, :2])
            pos, _ = p.getBasePositionAndOrientation(body)
            out.append(Item(i, pts[:, :2], float(pts[:, 2].min() - self.floor),
                            float(pts[:, 2].max() - self.floor), np.asarray(pos[:2]), widths,
                            middles))
        return out

    def _finger_boxes(self, xy: np.ndarray, yaw: float) -> list[np.ndarray]:
        """Footprints of the two open fingers with the grasp point at ``xy``."""
        axis = np.array([-math.sin(yaw), math.cos(yaw)])     # the fingers' closing axis
        side = np.array([math.cos(yaw), math.sin(yaw)])
        hx, hy = self.finger_half[0] + 0.003, self.finger_half[1] + 0.003
        inner = self.opening / 2 + self.finger_half[1]       # finger centre from grasp point
        boxes = []
        for sign in (-1.0, 1.0):
            c = xy + sign * inner * axis
            boxes.append(np.array([c + sx * hx * side + sy * hy * axis
                                   for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]))
        return boxes

    def _grasp_height(self, item: Item) -> float:
        # Low on the object, but with the palm (above the fingers) clear of a tall one's top.
        low = item.bottom + GRASP_ABOVE_BOTTOM
        tall = item.top - self.finger_length + PALM_CLEARANCE
        return max(low, tall, self.min_height + 0.002)

    def _plan_for(self, item: Item, items: list[Item], yaw_now: float,
                  clear_within: float | None = None) -> Plan:
        """The best grasp of ``item``: its narrowest fitting yaw, or with ``clear_within`` the
        best fitting yaw no wider than that at which both fingers land clear of neighbours."""
        fits = item.widths <= self.opening - FIT_MARGIN
        grasp_h = self._grasp_height(item)
        neighbours = [o for o in items if o.index != item.index and o.top > grasp_h
                      and np.linalg.norm(o.centre - item.centre) < NEIGHBOUR_RADIUS]
        hover = max([item.top] + [o.top for o in neighbours]) + HOVER_CLEARANCE
        # Turning costs a little: of two nearly equal widths, the one nearer the gripper's yaw,
        # or the plan of a tumbling object would flip by 90 degrees from one step to the next.
        turns = np.abs(np.remainder(ANGLES - yaw_now, math.pi) - math.pi / 2)
        cost = item.widths + YAW_COST * turns
        order = np.argsort(np.where(fits, cost, np.inf if fits.any() else item.widths),
                           kind="stable")
        chosen, clear = int(order[0]), False
        if clear_within is not None:
            for k in order:
                if not fits[k]:
                    break
                if item.widths[k] <= clear_within and self._clear(item, neighbours, int(k)):
                    chosen, clear = int(k), True
                    break
        theta = float(ANGLES[chosen])
        # The grasp point: the middle of the object's extent along both gripper axes.
        d, n = DIRECTIONS[chosen], np.array([-DIRECTIONS[chosen][1], DIRECTIONS[chosen][0]])
        proj_n = item.xy @ n
        xy = d * item.middles[chosen] + n * (proj_n.min() + proj_n.max()) / 2
        # Fingers close along the direction theta: gripper yaw theta - pi/2, either way round.
        yaw = yaw_now + math.remainder(theta - math.pi / 2 - yaw_now, math.pi)
        return Plan(item.index, xy, yaw, grasp_h, hover, float(item.widths[chosen]),
                    item.narrowest, clear)

    def _clear(self, item: Item, neighbours: list[Item], k: int) -> bool:
        d, n = DIRECTIONS[k], np.array([-DIRECTIONS[k][1], DIRECTIONS[k][0]])
        proj_n = item.xy @ n
        xy = d * item.middles[k] + n * (proj_n.min() + proj_n.max()) / 2
        yaw = float(ANGLES[k]) - math.pi / 2
        boxes = self._finger_boxes(xy, yaw)
        for o in neighbours:
            if o.hull is None:
                o.hull = _hull(o.xy)
            if len(o.hull) < 3:
                continue
            if any(_overlap(box, o.hull) for box in boxes):
                return False
        return True

    def _reachable(self, item: Item) -> bool:
        """On the tray floor (or on other objects) within the gripper's reach, not in flight."""
        off = np.abs(item.centre - self.tray_centre)
        return bool(np.all(off <= self.workspace + 0.03) and item.bottom < REACH_BOTTOM)

    def plan(self, yaw_now: float) -> Plan:
        items = self.items()
        held = self.last_plan.index if self.last_plan is not None else None
        candidates = [o for o in items if self._reachable(o)] or items
        ranked = sorted((o for o in candidates if o.index not in self.excluded),
                        key=lambda o: np.linalg.norm(o.centre - self.tray_centre))
        if not ranked:          # every object tried: start over
            self.excluded.clear()
            ranked = sorted(candidates, key=lambda o: np.linalg.norm(o.centre - self.tray_centre))
        fitting = [o for o in ranked if o.narrowest <= self.opening - FIT_MARGIN]
        # First a clear grasp across (nearly) the narrowest width, then any clear grasp: one
        # far wider than the narrowest squeezes an object end to end, and it turns and slips.
        tiers = (lambda o: o.narrowest + WIDE_SLACK, lambda o: self.opening)
        # Stay with the current target while it is reachable and fits: a plan that hops
        # between objects as they settle reaches none. A neighbour that moved under a finger
        # shows as a blocked descent, which excludes the target.
        for o in fitting:
            if o.index == held:
                if self.target == "clear":
                    for limit in tiers:
                        plan = self._plan_for(o, items, yaw_now, limit(o))
                        if plan.clear:
                            return plan
                return self._plan_for(o, items, yaw_now)
        if self.target == "clear":
            for limit in tiers:
                for o in fitting:
                    plan = self._plan_for(o, items, yaw_now, limit(o))
                    if plan.clear:
                        return plan
        return self._plan_for((fitting or ranked)[0], items, yaw_now)

    # -- the policy

    def action(self, observation: dict) -> np.ndarray:
        from schemas import mdp

        c = self.cfg
        height = float(observation[mdp.HEIGHT])
        closed = float(observation[mdp.GRIPPER_CLOSED]) > 0.5
        opening = float(observation[mdp.GRIPPER_OPENING])
        pos, yaw = self.cell.gripper_pose()
        if closed:
            if not self._lifting:
                self.last_try["closed_on"] = opening > SHUT
            if opening <= SHUT:
                # Closed on nothing, or lost it in the lift: open (the step holds the pose),
                # rise to hover height and plan again; a second miss gives up on the object.
                self._misses += 1
                if self._misses >= 2 and self.last_plan is not None:
                    self.excluded.add(self.last_plan.index)
                    self._misses = 0
                self._lifting, self._descending, self._rehover = False, None, True
                return mdp.make_action(gripper="open")
            self._lifting = True
            up = min(c.max_translation, 0.06)
            terminate = (c.termination == "learned"
                         and height > max(c.success_height + 0.05, mdp.SCRIPTED_TERMINATION_HEIGHT))
            return mdp.make_action((0.0, 0.0, up), 0.0, None, terminate)

        plan = self.plan(yaw)
        if self.last_plan is None or plan.index != self.last_plan.index:
            self.last_try = {"reached": False, "blocked": False, "closed_on": False}
            self._misses = 0
        self.last_plan = plan
        dxy = plan.xy - pos[:2]
        dyaw = plan.yaw - yaw
        off_xy, off_yaw = float(np.linalg.norm(dxy)), abs(dyaw)
        if self._rehover and height >= plan.hover_height - 0.01:
            self._rehover = False
        if self._descending is not None:
            before, drop = self._descending
            self._descending = None
            if before - height < 0.3 * drop and height > plan.grasp_height + 0.01:
                # Resting on something: back off and plan without this object.
                self.last_try["blocked"] = True
                self.excluded.add(plan.index)
                self._rehover = True
                return mdp.make_action((0.0, 0.0, min(c.max_translation, 0.05)))
        move_xy = np.clip(dxy, -c.max_translation, c.max_translation)
        turn = float(np.clip(dyaw, -c.max_rotation, c.max_rotation))
        # Over the target (with hysteresis: once going down, only a large change of the plan,
        # an object that rolled away, sends the gripper back up).
        over = off_xy < (NEAR_XY if not self._low else LOST_XY) and \
            off_yaw < (NEAR_YAW if not self._low else LOST_YAW)
        if self._rehover or not over:
            self._low = False
            # Move and turn at hover height: come down towards it, or go up to it.
            dz = float(np.clip(plan.hover_height - height, -c.max_translation, c.max_translation))
            return mdp.make_action((move_xy[0], move_xy[1], dz), turn)
        self._low = True
        if height > plan.grasp_height + 0.004:
            drop = min(height - plan.grasp_height, c.max_translation)
            self._descending = (height, drop)
            return mdp.make_action((move_xy[0], move_xy[1], -drop), turn)
        if off_xy > ALIGNED_XY or off_yaw > ALIGNED_YAW:
            return mdp.make_action((move_xy[0], move_xy[1], 0.0), turn)
        self.last_try["reached"] = True
        self._low = False
        return mdp.make_action(gripper="close")


# ------------------------------------------------------------------------------------- the run

def run_tray(cell, oracle: OracleGrasp, seed: int) -> dict:
    observation = cell.reset(seed)
    p = cell._p
    speeds = [float(np.linalg.norm(p.getBaseVelocity(b)[0])) for b in cell.tray.bodies]
    oracle.reset()
    while not cell.done:
        cell.execute_command(oracle.action(observation))
        observation = cell.capture_state()
    success = bool(cell.outcome.success)
    plan, last = oracle.last_plan, oracle.last_try
    cause = None
    if not success:
        if plan is not None and plan.narrowest > oracle.opening:
            cause = "too_wide"
        elif last["closed_on"]:
            cause = "slipped"
        elif plan is None or last["blocked"] or not last["reached"]:
            cause = "blocked"
        else:
            cause = "other"
    return {"success": success, "cause": cause, "speeds": speeds, "steps": cell.steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.oracle_grasp",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--objects", default="test", help="train | test | URDF paths (test)")
    parser.add_argument("--trays", type=int, default=200, help="trays, one grasp each (200)")
    parser.add_argument("--preset", default="demo", help="config preset for the cell (demo)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the trays (default 7)")
    parser.add_argument("--target", choices=("clear", "nearest"), default="clear",
                        help="target choice (see the module docstring; default clear)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="config override, e.g. robot.object_scale=1")
    args = parser.parse_args(argv)
    if args.trays < 1:
        parser.error("--trays must be at least 1")

    from robot.cell import SimCell
    from robot.protocols import wilson_interval
    from schemas.config import load_config
    from schemas.errors import UserError

    # pybullet prints banners on stdout; keep stdout for the one JSON line.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    rows = []
    t0 = time.perf_counter()
    try:
        try:
            config = load_config(args.preset, overrides=args.overrides).robot
            cell = SimCell(config, args.objects)
        except UserError as exc:
            raise SystemExit(f"oracle_grasp: {exc}") from None
        oracle = OracleGrasp(cell, args.target)
        for i in range(args.trays):
            rows.append(run_tray(cell, oracle, args.seed * 1_000_003 + i))
            if (i + 1) % 20 == 0 or i + 1 == args.trays:
                k = sum(r["success"] for r in rows)
                print(f"oracle_grasp: {i + 1}/{args.trays} trays, {k} grasped, "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        cell.close()
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    k = sum(r["success"] for r in rows)
    lo, hi = wilson_interval(k, len(rows))
    speeds = [s for r in rows for s in r["speeds"]]
    failures = {name: sum(r["cause"] == name for r in rows)
                for name in ("too_wide", "blocked", "slipped", "other")}
    print(json.dumps({
        "benchmark": "oracle_grasp", "success": round(k / len(rows), 3),
        "ci95": [round(lo, 3), round(hi, 3)], "trays": len(rows), "objects": args.objects,
        "preset": args.preset, "target": args.target, "object_scale": config.object_scale,
        "failures": failures,
        "moving_at_start": round(float(np.mean(np.asarray(speeds) > MOVING)), 3)
        if speeds else 0.0,
        "mean_steps": round(float(np.mean([r["steps"] for r in rows])), 1),
        "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

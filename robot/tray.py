"""The tray and its objects: the world built at every reset, objects set down on free floor and
settled before step 0, and where they are."""

from __future__ import annotations

import math

import numpy as np
import pybullet

from robot.layout import SPAWN_HALF, TRAY_CENTRE, TRAY_FLOOR_Z, TRAY_HALF
from schemas.errors import UserError

TIME_STEP = 1.0 / 240.0
# Objects are set down just above the floor (or the objects under them) and settle before step 0,
# under heavy damping and in coarse time steps (the settling motion is not part of any episode):
# until every object is slower than SETTLE_SPEED, or SETTLE_MAX_STEPS.
SETTLE_TIME_STEP = 1.0 / 60.0
SETTLE_DAMPING = 0.999
SETTLE_SPEED = 0.005                 # m/s
SETTLE_CHECK = 5                     # settling steps between speed checks
SETTLE_MAX_STEPS = 200
SPREAD_TRIES = 10                    # random spots tried for an object before it goes on a pile
SPREAD_HALF = 0.13                   # ... anywhere on the flat floor within the gripper's reach
DROP_GAP = 0.003                     # m between an object's lowest point and what it is set on
BULLET_DAMPING = 0.04                # bullet's default linear and angular damping
AT_REST = 0.01                       # m/s: a settled object slower than this is put to sleep
TRAY_COLOUR = (0.62, 0.6, 0.56, 1.0)  # plain: the textured floor is pixel noise at 64x64
CACHED = pybullet.URDF_ENABLE_CACHED_GRAPHICS_SHAPES


def _overlap(lo, hi, flo, fhi) -> bool:
    """Whether an axis-aligned box (lo, hi) and a footprint (flo, fhi) overlap on the floor."""
    return lo[0] < fhi[0] and hi[0] > flo[0] and lo[1] < fhi[1] and hi[1] > flo[1]


class Tray:
    """The world's fixed part and the objects in the tray, in the pybullet world ``p``."""

    def __init__(self, p, config, pool: list):
        self._p = p
        self.config = config
        self.pool = pool
        self.body = -1
        self.bodies: list[int] = []
        self.objects: list = []
        self.object_ids: list[str] = []
        self.settle_steps = 0

    def build(self) -> None:
        """Everything but the arm, the gripper and the objects, from scratch. Saved and restored
        states were tried: the broadphase and contact caches they leave behind make an episode
        depend on the ones before it, so every reset rebuilds the world (about 20 ms)."""
        p = self._p
        p.resetSimulation()
        p.setPhysicsEngineParameter(fixedTimeStep=TIME_STEP, numSolverIterations=20,
                                    deterministicOverlappingPairs=1)
        p.setGravity(0, 0, -9.81)
        p.loadURDF("plane.urdf", (0, 0, 0), flags=CACHED)
        self.body = p.loadURDF("tray/traybox.urdf", (*TRAY_CENTRE, 0.0), useFixedBase=True,
                               flags=CACHED)
        p.changeVisualShape(self.body, -1, textureUniqueId=-1, rgbaColor=TRAY_COLOUR)
        self.bodies, self.objects, self.object_ids = [], [], []

    def drop_objects(self, rng: np.random.Generator, placements) -> None:
        p = self._p
        self.bodies, self.object_ids, self.objects = [], [], []
        spread = placements is None
        if placements is None:
            k = int(rng.integers(self.config.min_objects, self.config.max_objects + 1))
            replace = k > len(self.pool)
            chosen = rng.choice(len(self.pool), size=k, replace=replace)
            placements = []
            for i, index in enumerate(chosen):
                xy = TRAY_CENTRE + rng.uniform(-SPAWN_HALF, SPAWN_HALF, 2)
                placements.append((self.pool[int(index)], (float(xy[0]), float(xy[1])),
                                   float(rng.uniform(-math.pi, math.pi))))
        footprints = []
        for obj, xy, yaw in placements:
            orn = p.getQuaternionFromEuler((0.0, 0.0, yaw))
            try:
                body = p.loadURDF(obj.path, (xy[0], xy[1], 1.0), orn, flags=CACHED,
                                  globalScaling=self.config.object_scale)
            except pybullet.error:
                raise UserError(f"object file {obj.path}: pybullet cannot load it") from None
            lo, hi = p.getAABB(body)
            # Random placements look for a free patch of floor first: an object set down on
            # another keeps sliding off it long after the rest are still.
            for _ in range(SPREAD_TRIES if spread else 0):
                if not any(_overlap(lo, hi, flo, fhi) for flo, fhi in footprints):
                    break
                xy = TRAY_CENTRE + rng.uniform(-SPREAD_HALF, SPREAD_HALF, 2)
                p.resetBasePositionAndOrientation(body, (xy[0], xy[1], 1.0), orn)
                lo, hi = p.getAABB(body)
            # Set down on the floor, or on top of the objects already under its footprint: a
            # drop of millimetres leaves little motion to settle.
            base = TRAY_FLOOR_Z
            for flo, fhi in footprints:
                if _overlap(lo, hi, flo, fhi):
                    base = max(base, fhi[2])
            dz = base + DROP_GAP - lo[2]
            p.resetBasePositionAndOrientation(body, (xy[0], xy[1], 1.0 + dz), orn)
            footprints.append(((lo[0], lo[1]), (hi[0], hi[1], hi[2] + dz)))
            p.changeDynamics(body, -1, linearDamping=SETTLE_DAMPING,
                             angularDamping=SETTLE_DAMPING,
                             activationState=p.ACTIVATION_STATE_ENABLE_SLEEPING)
            self.bodies.append(body)
            self.objects.append(obj)
            self.object_ids.append(obj.object_id)
        self.settle()

    def settle(self) -> None:
        """Let the dropped objects come to rest before step 0, then restore the episode's
        physics. Objects at rest sleep (out of the solver until something touches them), as
        bullet would put them after two seconds: the episode's steps get cheaper, nothing moves."""
        p = self._p
        p.setPhysicsEngineParameter(fixedTimeStep=SETTLE_TIME_STEP)
        steps = 0
        while self.bodies and steps < SETTLE_MAX_STEPS:
            for _ in range(SETTLE_CHECK):
                p.stepSimulation()
            steps += SETTLE_CHECK
            if max(self.speeds()) < SETTLE_SPEED:
                break
        self.settle_steps = steps
        p.setPhysicsEngineParameter(fixedTimeStep=TIME_STEP)
        for body, speed in zip(self.bodies, self.speeds()):
            p.changeDynamics(body, -1, linearDamping=BULLET_DAMPING,
                             angularDamping=BULLET_DAMPING)
            if speed < AT_REST:
                p.changeDynamics(body, -1, activationState=p.ACTIVATION_STATE_SLEEP)

    def speeds(self) -> list[float]:
        """Linear speed of every object in the tray, m/s."""
        return [math.hypot(*self._p.getBaseVelocity(b)[0]) for b in self.bodies]

    def held(self, gripper_body: int, success_height: float) -> list[int]:
        """Indices of objects touching the gripper with their centre above ``success_height``."""
        held = []
        for i, body in enumerate(self.bodies):
            pos, _ = self._p.getBasePositionAndOrientation(body)
            if pos[2] - TRAY_FLOOR_Z <= success_height:
                continue
            if self._p.getClosestPoints(body, gripper_body, 0.004):
                held.append(i)
        return held

    def remaining(self, held_at_end: list[int]) -> list[tuple]:
        """(ObjectFile, (x, y), yaw, held) of every object still over the tray (or held at the
        episode's end), usable as ``placements`` for a later reset."""
        held = set(held_at_end)
        out = []
        for i, (obj, body) in enumerate(zip(self.objects, self.bodies)):
            pos, orn = self._p.getBasePositionAndOrientation(body)
            if np.abs(np.asarray(pos[:2]) - TRAY_CENTRE).max() > TRAY_HALF and i not in held:
                continue  # fell out of the tray
            yaw = self._p.getEulerFromQuaternion(orn)[2]
            out.append((obj, (float(pos[0]), float(pos[1])), float(yaw), i in held))
        return out

    def positions(self) -> np.ndarray:
        return np.array([self._p.getBasePositionAndOrientation(b)[0] for b in self.bodies])

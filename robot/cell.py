"""The simulated grasping cell: a KUKA iiwa with a two-finger gripper over a tray, in pybullet.

What is physics and what is not:
- The gripper (palm and two prismatic fingers) is a dynamic body. It is moved by a force-limited
  constraint towards the commanded pose, and its fingers close under a force-limited motor. An
  object is held only by finger contact and friction: there is no automatic grasp, no attachment
  constraint and no height hack.
- The KUKA arm follows the gripper by inverse kinematics (the iiwa's own model, in a second
  pybullet client) at every control step. The camera sees it as one capsule per link; it has
  no collision shapes: simulating its seven links' contacts would cost most of the step time
  and the workspace bounds keep it clear of the tray anyway.

Every reset rebuilds the world from scratch (``resetSimulation``), so an episode depends on its
seed only, never on the episodes run before it in the same process.
"""

from __future__ import annotations

import math
import os

import numpy as np

from schemas.quiet import silenced

with silenced():  # "pybullet build time" on import
    import pybullet
    import pybullet_data
    from pybullet_utils.bullet_client import BulletClient

from robot import camera, objects
from robot.interface import Outcome, Robot
from robot.layout import (MAX_HEIGHT, MIN_HEIGHT, OUT_OF_VIEW, SPAWN_HALF,  # noqa: F401
                          TRAY_CENTRE, TRAY_FLOOR_Z, TRAY_HALF, WORKSPACE_HALF)
from schemas import mdp
from schemas.config import RobotConfig
from schemas.errors import ConfigError, UserError

DATA = pybullet_data.getDataPath()


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

# Gripper geometry: the body frame sits at the grasp point, between the fingertips.
FINGER_HALF = (0.013, 0.007, 0.034)  # half extents x, y (thickness), z (length)
PALM_HALF = (0.02, 0.065, 0.012)
FINGER_OPEN = 0.051                  # finger centre offset: an 8.8 cm opening between the pads
FINGER_CLOSED = FINGER_HALF[1]       # pads meet
assert abs(2 * (FINGER_OPEN - FINGER_CLOSED) - mdp.MAX_OPENING) < 1e-9
GRIPPER_MAX_FORCE = 200.0            # newtons the pose constraint may apply
# A gripper command completes within its control step, as a real gripper's blocking command does:
# the step goes on (pose held) until the fingers stop, at most this many extra sub-steps. Without
# it the next observation caught the fingers half-way (a "closed" gripper 4.8 cm open, which in
# the data means an object is held) and the fingers finished closing during the next action.
FINGER_SETTLE_SUBSTEPS = 48
FINGER_STILL = 0.005                 # m/s: a finger slower than this over a sub-step has stopped
FINGER_AT_TARGET = 0.001             # m: a finger this close to its target has arrived
FLANGE_ABOVE_GRASP = 2 * FINGER_HALF[2] + 2 * PALM_HALF[2] + 0.045

# (radius, colour) of the capsule drawn for each iiwa link, base to flange.
_GREY, _ORANGE = (0.55, 0.57, 0.6, 1.0), (0.95, 0.45, 0.1, 1.0)
ARM_LINKS = ((0.07, _GREY), (0.065, _ORANGE), (0.065, _GREY), (0.06, _ORANGE), (0.06, _GREY),
             (0.055, _ORANGE), (0.05, _GREY), (0.04, _GREY))
ARM_REST = (0.0, 0.6, 0.0, -1.4, 0.0, 1.1, 0.0)   # elbow up, wrist down: where IK starts
CACHED = pybullet.URDF_ENABLE_CACHED_GRAPHICS_SHAPES


def _overlap(lo, hi, flo, fhi) -> bool:
    """Whether an axis-aligned box (lo, hi) and a footprint (flo, fhi) overlap on the floor."""
    return lo[0] < fhi[0] and hi[0] > flo[0] and lo[1] < fhi[1] and hi[1] > flo[1]


class SimCell(Robot):
    """pybullet implementation of ``Robot``; one instance per process or worker."""

    def __init__(self, config: RobotConfig | None = None, object_pool="train",
                 robot_id: str = "sim-cell"):
        self.config = config or RobotConfig()
        self.pool = objects.resolve(object_pool) if isinstance(object_pool, (str, list, tuple)) \
            else list(object_pool)
        if not self.pool:
            raise ConfigError("objects: no objects to put in the tray")
        self.robot_id = robot_id
        with silenced():  # "argv[0]=" on every connection
            self._p = BulletClient(connection_mode=pybullet.DIRECT)
        self._p.setAdditionalSearchPath(DATA)
        # The iiwa model gives the arm's kinematics, in a client of its own that is never reset:
        # loading its meshes at every reset would cost more than the rest of the world.
        with silenced():
            self._ik = BulletClient(connection_mode=pybullet.DIRECT)
        self._arm = self._ik.loadURDF(os.path.join(DATA, "kuka_iiwa/model.urdf"), (0, 0, 0),
                                      useFixedBase=True)
        self._arm_joints = list(range(self._ik.getNumJoints(self._arm)))
        size = self.config.image_size
        cam = camera.PLACEMENTS[self.config.camera]
        self._view = self._p.computeViewMatrix(cam.eye, cam.target, cam.up)
        self._proj = self._p.computeProjectionMatrixFOV(cam.fov_degrees, 1.0, cam.near, cam.far)
        self._size = size
        self._steps = 0
        self._done = True
        self._final_observation = None
        self._reward = 0.0
        self._last_action = mdp.zero_action()
        self._outcome = Outcome()
        self._object_ids: list[str] = []
        self._bodies: list[int] = []
        self._objects: list = []
        self._held_at_end: list[int] = []
        self.finger_settle_substeps = 0   # sub-steps the last gripper command waited for

    # ---------------------------------------------------------------------------- world set-up

    def _build_world(self) -> None:
        """Everything but the objects, from scratch. Saved and restored states were tried: the
        broadphase and contact caches they leave behind make an episode depend on the ones
        before it, so every reset rebuilds the world (about 20 ms)."""
        p = self._p
        p.resetSimulation()
        p.setPhysicsEngineParameter(fixedTimeStep=TIME_STEP, numSolverIterations=20,
                                    deterministicOverlappingPairs=1)
        p.setGravity(0, 0, -9.81)
        p.loadURDF("plane.urdf", (0, 0, 0), flags=CACHED)
        self._tray = p.loadURDF("tray/traybox.urdf", (*TRAY_CENTRE, 0.0), useFixedBase=True,
                                flags=CACHED)
        p.changeVisualShape(self._tray, -1, textureUniqueId=-1, rgbaColor=TRAY_COLOUR)
        # The iiwa's detailed meshes would triple the camera's render time: the camera sees one
        # capsule per link, placed on the kinematic model's link frames after every step.
        for j, q in zip(self._arm_joints, ARM_REST):
            self._ik.resetJointState(self._arm, j, q)
        points = self._arm_points((0.0, 0.0, 1.2))
        self._arm_segments = []
        for (radius, colour), a, b in zip(ARM_LINKS, points[:-1], points[1:]):
            length = max(math.dist(a, b) - radius, 0.01)
            shape = p.createVisualShape(p.GEOM_CAPSULE, radius=radius, length=length,
                                        rgbaColor=colour)
            self._arm_segments.append(p.createMultiBody(0, -1, shape))
        self._gripper = self._make_gripper()

    def _make_gripper(self) -> int:
        p = self._p
        palm_z = 2 * FINGER_HALF[2] + PALM_HALF[2]
        palm_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=PALM_HALF,
                                          collisionFramePosition=(0, 0, palm_z))
        palm_vis = p.createVisualShape(p.GEOM_BOX, halfExtents=PALM_HALF,
                                       visualFramePosition=(0, 0, palm_z),
                                       rgbaColor=(0.35, 0.35, 0.38, 1))
        finger_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=FINGER_HALF)
        finger_vis = p.createVisualShape(p.GEOM_BOX, halfExtents=FINGER_HALF,
                                         rgbaColor=(0.12, 0.12, 0.12, 1))
        body = p.createMultiBody(
            baseMass=0.4, baseCollisionShapeIndex=palm_col, baseVisualShapeIndex=palm_vis,
            # The inertial frame stays at the grasp point: pybullet reports and constrains a
            # base by its inertial frame, and the pose constraint makes the mass layout moot.
            basePosition=self._start_position(), baseInertialFramePosition=(0, 0, 0),
            linkMasses=[0.05, 0.05], linkCollisionShapeIndices=[finger_col, finger_col],
            linkVisualShapeIndices=[finger_vis, finger_vis],
            linkPositions=[(0, 0, FINGER_HALF[2]), (0, 0, FINGER_HALF[2])],
            linkOrientations=[(0, 0, 0, 1)] * 2,
            linkInertialFramePositions=[(0, 0, 0)] * 2,
            linkInertialFrameOrientations=[(0, 0, 0, 1)] * 2,
            linkParentIndices=[0, 0],
            linkJointTypes=[p.JOINT_PRISMATIC] * 2,
            linkJointAxis=[(0, 1, 0), (0, -1, 0)])
        for j in (0, 1):
            p.resetJointState(body, j, FINGER_OPEN)
            # Hard travel limits: an object wider than the opening cannot spread the fingers and
            # wedge itself between them; the gripper lands on it instead.
            p.changeDynamics(body, j, lateralFriction=1.0, spinningFriction=0.002,
                             jointLowerLimit=FINGER_CLOSED, jointUpperLimit=FINGER_OPEN,
                             jointLimitForce=500.0)
        p.changeDynamics(body, -1, lateralFriction=0.6)
        self._pose_constraint = p.createConstraint(
            body, -1, -1, -1, p.JOINT_FIXED, (0, 0, 0), (0, 0, 0), self._start_position())
        return body

    def _start_position(self) -> tuple:
        return (float(TRAY_CENTRE[0] + mdp.START_OFFSET[0]),
                float(TRAY_CENTRE[1] + mdp.START_OFFSET[1]), TRAY_FLOOR_Z + self.config.start_height)

    def _drop_objects(self, rng: np.random.Generator, placements) -> None:
        p = self._p
        self._bodies, self._object_ids, self._objects = [], [], []
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
            self._bodies.append(body)
            self._objects.append(obj)
            self._object_ids.append(obj.object_id)
        self._settle_objects()

    def _settle_objects(self) -> None:
        """Let the dropped objects come to rest before step 0, then restore the episode's
        physics. Objects at rest sleep (out of the solver until something touches them), as
        bullet would put them after two seconds: the episode's steps get cheaper, nothing moves."""
        p = self._p
        p.setPhysicsEngineParameter(fixedTimeStep=SETTLE_TIME_STEP)
        steps = 0
        while self._bodies and steps < SETTLE_MAX_STEPS:
            for _ in range(SETTLE_CHECK):
                p.stepSimulation()
            steps += SETTLE_CHECK
            if max(self.object_speeds()) < SETTLE_SPEED:
                break
        self.settle_steps = steps
        p.setPhysicsEngineParameter(fixedTimeStep=TIME_STEP)
        for body, speed in zip(self._bodies, self.object_speeds()):
            p.changeDynamics(body, -1, linearDamping=BULLET_DAMPING,
                             angularDamping=BULLET_DAMPING)
            if speed < AT_REST:
                p.changeDynamics(body, -1, activationState=p.ACTIVATION_STATE_SLEEP)

    def object_speeds(self) -> list[float]:
        """Linear speed of every object in the tray, m/s."""
        return [math.hypot(*self._p.getBaseVelocity(b)[0]) for b in self._bodies]

    # ---------------------------------------------------------------------------- Robot API

    def reset(self, seed: int, placements=None) -> dict:
        """A new episode. ``placements`` (list of (ObjectFile, (x, y), yaw)) replaces the random
        choice of objects, for tests and demonstrations; an empty list leaves the tray empty."""
        rng = np.random.default_rng(seed)
        self._build_world()
        self._set_fingers(False)
        self._position = np.array(self._start_position(), dtype=np.float64)
        self._yaw = 0.0
        self._closed = False
        self._hold_pose()
        self._drop_objects(rng, placements)
        self._steps = 0
        self._done = False
        self._final_observation = None
        self._held_at_end = []
        self._reward = 0.0
        self._last_action = mdp.zero_action()
        self._outcome = Outcome(labeller=self.config.success_labeller)
        self._update_arm()
        return self.capture_state()

    def capture_state(self) -> dict:
        if self._done and self._final_observation is not None:
            return self._final_observation
        return {mdp.IMAGE: self.render(),
                mdp.GRIPPER_CLOSED: np.float32(1.0 if self._closed else 0.0),
                mdp.GRIPPER_OPENING: np.float32(self.gripper_opening()),
                mdp.HEIGHT: np.float32(self.gripper_height())}

    def execute_command(self, action) -> None:
        if self._done:
            raise RuntimeError("execute_command after the episode ended; call reset first")
        recorded = mdp.check_action(action).copy()
        if not self.config.gripper_moves:
            recorded = mdp.gripper_or_move(recorded, self._closed)
        command = mdp.decode_action(recorded)
        if self.config.termination == "scripted":
            terminate = mdp.scripted_termination(self._closed, self.gripper_height(),
                                                 float(command.translation[2]))
        else:
            terminate = command.terminate
        recorded[7] = float(terminate)
        self._move(command)
        self._update_arm()
        self._steps += 1
        self._last_action = recorded
        if terminate:
            self._finish("action" if self.config.termination == "learned" else "scripted")
        elif self._steps >= self.config.max_steps:
            self._finish("step_limit")
        else:
            self._reward = mdp.step_reward(False, False, self.config.step_reward)

    def receive_reward(self) -> float:
        return self._reward

    @property
    def done(self) -> bool:
        return self._done

    @property
    def last_action(self) -> np.ndarray:
        return self._last_action

    @property
    def outcome(self) -> Outcome:
        return self._outcome

    @property
    def object_ids(self) -> list[str]:
        return list(self._object_ids)

    @property
    def steps(self) -> int:
        return self._steps

    def close(self) -> None:
        if self._p is not None:
            self._p.disconnect()
            self._ik.disconnect()
            self._p = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: pybullet may already be gone
            pass

    # ---------------------------------------------------------------------------- motion

    def _move(self, command: mdp.Command) -> None:
        cfg = self.config
        start = self._position.copy()
        step = np.clip(command.translation, -cfg.max_translation, cfg.max_translation)
        target = start + step
        target[:2] = np.clip(target[:2], TRAY_CENTRE - WORKSPACE_HALF,
                             TRAY_CENTRE + WORKSPACE_HALF)
        target[2] = np.clip(target[2], TRAY_FLOOR_Z + MIN_HEIGHT, TRAY_FLOOR_Z + MAX_HEIGHT)
        yaw0 = self._yaw
        dyaw = float(np.clip(command.yaw, -cfg.max_rotation, cfg.max_rotation))
        gripper_was = self._closed
        if command.gripper is not None:
            self._set_fingers(command.gripper == "close")
        n = cfg.action_repeat
        # The pose target moves along a smooth ramp in the first two thirds of the control step
        # and holds for the rest, so the gripper arrives and settles before the next image.
        ramp = max(1, (2 * n) // 3)
        for i in range(n):
            s = min(1.0, (i + 1) / ramp)
            s = s * s * (3.0 - 2.0 * s)
            self._position = start + s * (target - start)
            self._yaw = yaw0 + s * dyaw
            self._hold_pose()
            self._p.stepSimulation()
        if command.gripper is not None and gripper_was != self._closed:
            self._settle_fingers()
        self._yaw = math.remainder(self._yaw, 2 * math.pi)
        self._position = target

    def _settle_fingers(self) -> None:
        """Hold the pose until each finger has reached its target or stopped (closed on an
        object), at most FINGER_SETTLE_SUBSTEPS sub-steps. Judged by position: the motors creep
        the last fraction of a millimetre for dozens of sub-steps and report velocity all along."""
        target = FINGER_CLOSED if self._closed else FINGER_OPEN
        last = self._finger_positions()
        self.finger_settle_substeps = 0
        while self.finger_settle_substeps < FINGER_SETTLE_SUBSTEPS:
            self._p.stepSimulation()
            self.finger_settle_substeps += 1
            now = self._finger_positions()
            if all(abs(x - target) < FINGER_AT_TARGET or abs(x - x0) < FINGER_STILL * TIME_STEP
                   for x, x0 in zip(now, last)):
                break
            last = now

    def _finger_positions(self) -> tuple[float, float]:
        return tuple(self._p.getJointState(self._gripper, j)[0] for j in (0, 1))

    def glide(self, position, speed: float = 0.6) -> None:
        """Move the gripper to ``position`` (world frame) at about ``speed`` m/s, outside the
        MDP: the labeller's moves, which ignore the workspace bounds. Slow enough that a held
        object stays held."""
        start, target = self._position.copy(), np.asarray(position, np.float64)
        substeps = max(20, int(np.linalg.norm(target - start) / (speed * TIME_STEP)))
        for i in range(substeps):
            s = (i + 1) / substeps
            self._position = start + (s * s * (3.0 - 2.0 * s)) * (target - start)
            self._hold_pose()
            self._p.stepSimulation()
        self._update_arm()

    def wait(self, substeps: int) -> None:
        for _ in range(substeps):
            self._p.stepSimulation()

    def open_gripper(self) -> None:
        self._set_fingers(False)

    def _hold_pose(self) -> None:
        orn = self._p.getQuaternionFromEuler((0.0, 0.0, self._yaw))
        self._p.changeConstraint(self._pose_constraint, tuple(self._position), orn,
                                 maxForce=GRIPPER_MAX_FORCE)

    def _set_fingers(self, close: bool) -> None:
        self._closed = close
        target = FINGER_CLOSED if close else FINGER_OPEN
        for j in (0, 1):
            self._p.setJointMotorControl2(self._gripper, j, pybullet.POSITION_CONTROL,
                                          targetPosition=target, force=self.config.grip_force,
                                          maxVelocity=0.5, positionGain=0.3)

    def _update_arm(self) -> None:
        p, ik = self._p, self._ik
        pos, orn = p.getBasePositionAndOrientation(self._gripper)
        _, _, yaw = p.getEulerFromQuaternion(orn)
        flange = (pos[0], pos[1], pos[2] + FLANGE_ABOVE_GRASP)
        down = p.getQuaternionFromEuler((0.0, math.pi, yaw))
        # IK starts from the kinematic model's current joints, which only this episode's steps
        # (from the rest pose set at reset) have moved: the arm's pose is deterministic too.
        joints = ik.calculateInverseKinematics(self._arm, 6, flange, down, maxNumIterations=20)
        for j, q in zip(self._arm_joints, joints):
            ik.resetJointState(self._arm, j, q)
        # Capsule i spans the origins of frames i and i + 1; pybullet capsules lie along z.
        points = self._arm_points((pos[0], pos[1], pos[2] + 2 * FINGER_HALF[2]
                                   + 2 * PALM_HALF[2]))
        for body, a, b in zip(self._arm_segments, points[:-1], points[1:]):
            mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2)
            p.resetBasePositionAndOrientation(body, mid, _z_to(b[0] - a[0], b[1] - a[1],
                                                               b[2] - a[2]))

    def _arm_points(self, palm_top) -> list[np.ndarray]:
        """The arm's base, its seven link frames and the palm it carries, world frame."""
        states = self._ik.getLinkStates(self._arm, self._arm_joints)
        return [(0.0, 0.0, 0.0)] + [st[4] for st in states] + [tuple(palm_top)]

    # ---------------------------------------------------------------------------- sensing

    def gripper_height(self) -> float:
        pos, _ = self._p.getBasePositionAndOrientation(self._gripper)
        return float(pos[2] - TRAY_FLOOR_Z)

    def gripper_opening(self) -> float:
        """Distance between the finger pads, metres: what a real gripper's encoder reports."""
        travel = sum(self._p.getJointState(self._gripper, j)[0] for j in (0, 1))
        return max(0.0, float(travel - 2 * FINGER_CLOSED))

    def gripper_pose(self) -> tuple[np.ndarray, float]:
        pos, orn = self._p.getBasePositionAndOrientation(self._gripper)
        return np.array(pos), float(self._p.getEulerFromQuaternion(orn)[2])

    def render(self) -> np.ndarray:
        _, _, rgba, _, _ = self._p.getCameraImage(
            self._size, self._size, self._view, self._proj, renderer=pybullet.ER_TINY_RENDERER,
            flags=pybullet.ER_NO_SEGMENTATION_MASK, shadow=0)
        return np.asarray(rgba, np.uint8).reshape(self._size, self._size, 4)[:, :, :3].copy()

    def render_with_masks(self) -> tuple[np.ndarray, dict]:
        """The camera image and, per pixel, which object (index into ``object_ids``, -1: none)
        and whether a finger is seen there: for measuring what the camera shows."""
        _, _, rgba, _, seg = self._p.getCameraImage(
            self._size, self._size, self._view, self._proj, renderer=pybullet.ER_TINY_RENDERER,
            flags=pybullet.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX, shadow=0)
        seg = np.asarray(seg, np.int64).reshape(self._size, self._size)
        body, link = np.where(seg >= 0, seg & ((1 << 24) - 1), -1), (seg >> 24) - 1
        objects = np.full(seg.shape, -1, np.int64)
        for i, b in enumerate(self._bodies):
            objects[body == b] = i
        fingers = (body == self._gripper) & (link >= 0)
        image = np.asarray(rgba, np.uint8).reshape(self._size, self._size, 4)[:, :, :3].copy()
        return image, {"objects": objects, "fingers": fingers}

    def place_gripper(self, position, yaw: float = 0.0, substeps: int = 60) -> None:
        """Hold the gripper at ``position`` (world frame) and ``yaw``, outside the MDP and its
        bounds (benchmarks and calibration)."""
        self._position = np.asarray(position, np.float64)
        self._yaw = float(yaw)
        self._hold_pose()
        self.wait(substeps)
        self._update_arm()

    def held_objects(self) -> list[int]:
        """Indices of objects touching the gripper with their centre above the success height."""
        held = []
        for i, body in enumerate(self._bodies):
            pos, _ = self._p.getBasePositionAndOrientation(body)
            if pos[2] - TRAY_FLOOR_Z <= self.config.success_height:
                continue
            if self._p.getClosestPoints(body, self._gripper, 0.004):
                held.append(i)
        return held

    def tray_objects(self) -> list[tuple]:
        """(ObjectFile, (x, y), yaw, held) of every object still over the tray, usable as
        ``placements`` for a later reset (bin emptying). ``held`` is the end-of-episode verdict
        (held above the success height), whatever the labeller did with the object since."""
        held = set(self._held_at_end)
        out = []
        for i, (obj, body) in enumerate(zip(self._objects, self._bodies)):
            pos, orn = self._p.getBasePositionAndOrientation(body)
            if np.abs(np.asarray(pos[:2]) - TRAY_CENTRE).max() > TRAY_HALF and i not in held:
                continue  # fell out of the tray
            yaw = self._p.getEulerFromQuaternion(orn)[2]
            out.append((obj, (float(pos[0]), float(pos[1])), float(yaw), i in held))
        return out

    def object_positions(self) -> np.ndarray:
        return np.array([self._p.getBasePositionAndOrientation(b)[0] for b in self._bodies])

    # ---------------------------------------------------------------------------- the end

    def _finish(self, how: str) -> None:
        self._held_at_end = self.held_objects()
        truth = bool(self._held_at_end)
        # The episode's last observation is the scene as the policy left it, before the
        # labeller's drop test moves anything.
        self._final_observation = self.capture_state()
        success = truth
        if self.config.success_labeller == "image_subtraction":
            from robot.labeller import drop_test
            success = drop_test(self)
        self._outcome = Outcome(success=success, ground_truth=truth,
                                labeller=self.config.success_labeller, terminated_by=how)
        self._reward = mdp.step_reward(True, success, self.config.step_reward)
        self._done = True


def _z_to(dx: float, dy: float, dz: float) -> tuple:
    """Quaternion turning the z axis onto the direction (dx, dy, dz)."""
    norm = math.sqrt(dx * dx + dy * dy + dz * dz) or 1e-9
    dx, dy, dz = dx / norm, dy / norm, dz / norm
    sin = math.hypot(dx, dy)      # |z x d|, the axis being (-dy, dx, 0) / sin
    if sin < 1e-9:
        return (0.0, 0.0, 0.0, 1.0) if dz > 0 else (1.0, 0.0, 0.0, 0.0)
    half = math.atan2(sin, dz) / 2
    k = math.sin(half) / sin
    return (-dy * k, dx * k, 0.0, math.cos(half))

"""The two-finger gripper: a dynamic body (palm and two prismatic fingers) held at its commanded
pose by a force-limited constraint, its fingers driven by a force-limited motor. An object is
held by finger contact and friction only."""

from __future__ import annotations

import numpy as np
import pybullet

from robot.layout import TRAY_FLOOR_Z
from schemas import mdp

# Geometry: the body frame sits at the grasp point, between the fingertips.
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


class Gripper:
    """The gripper in a pybullet world: built at every reset, then posed and closed."""

    def __init__(self, p, grip_force: float, time_step: float):
        self._p = p
        self.grip_force = grip_force
        self.time_step = time_step
        self.body = -1
        self.position = np.zeros(3)
        self.yaw = 0.0
        self.closed = False
        self.settle_substeps = 0   # sub-steps the last gripper command waited for

    def build(self, start_position: tuple) -> int:
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
            basePosition=start_position, baseInertialFramePosition=(0, 0, 0),
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
            body, -1, -1, -1, p.JOINT_FIXED, (0, 0, 0), (0, 0, 0), start_position)
        self.body = body
        return body

    def hold_pose(self) -> None:
        orn = self._p.getQuaternionFromEuler((0.0, 0.0, self.yaw))
        self._p.changeConstraint(self._pose_constraint, tuple(self.position), orn,
                                 maxForce=GRIPPER_MAX_FORCE)

    def set_fingers(self, close: bool) -> None:
        self.closed = close
        target = FINGER_CLOSED if close else FINGER_OPEN
        for j in (0, 1):
            self._p.setJointMotorControl2(self.body, j, pybullet.POSITION_CONTROL,
                                          targetPosition=target, force=self.grip_force,
                                          maxVelocity=0.5, positionGain=0.3)

    def settle_fingers(self) -> None:
        """Hold the pose until each finger has reached its target or stopped (closed on an
        object), at most FINGER_SETTLE_SUBSTEPS sub-steps. Judged by position: the motors creep
        the last fraction of a millimetre for dozens of sub-steps and report velocity all along."""
        target = FINGER_CLOSED if self.closed else FINGER_OPEN
        last = self.finger_positions()
        self.settle_substeps = 0
        while self.settle_substeps < FINGER_SETTLE_SUBSTEPS:
            self._p.stepSimulation()
            self.settle_substeps += 1
            now = self.finger_positions()
            if all(abs(x - target) < FINGER_AT_TARGET or
                   abs(x - x0) < FINGER_STILL * self.time_step for x, x0 in zip(now, last)):
                break
            last = now

    def finger_positions(self) -> tuple[float, float]:
        return tuple(self._p.getJointState(self.body, j)[0] for j in (0, 1))

    def height(self) -> float:
        pos, _ = self._p.getBasePositionAndOrientation(self.body)
        return float(pos[2] - TRAY_FLOOR_Z)

    def opening(self) -> float:
        """Distance between the finger pads, metres: what a real gripper's encoder reports."""
        travel = sum(self._p.getJointState(self.body, j)[0] for j in (0, 1))
        return max(0.0, float(travel - 2 * FINGER_CLOSED))

    def pose(self) -> tuple[np.ndarray, float]:
        pos, orn = self._p.getBasePositionAndOrientation(self.body)
        return np.array(pos), float(self._p.getEulerFromQuaternion(orn)[2])

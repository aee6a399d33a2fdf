"""The KUKA iiwa, following the gripper by inverse kinematics (the iiwa's own model, in a pybullet
client of its own) at every control step. The camera sees it as one capsule per link; it has no
collision shapes: simulating its seven links' contacts would cost most of the step time and the
workspace bounds keep it clear of the tray anyway."""

from __future__ import annotations

import math
import os

import numpy as np
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from robot.gripper import FINGER_HALF, PALM_HALF
from schemas.quiet import silenced

# (radius, colour) of the capsule drawn for each iiwa link, base to flange.
_GREY, _ORANGE = (0.55, 0.57, 0.6, 1.0), (0.95, 0.45, 0.1, 1.0)
ARM_LINKS = ((0.07, _GREY), (0.065, _ORANGE), (0.065, _GREY), (0.06, _ORANGE), (0.06, _GREY),
             (0.055, _ORANGE), (0.05, _GREY), (0.04, _GREY))
ARM_REST = (0.0, 0.6, 0.0, -1.4, 0.0, 1.1, 0.0)   # elbow up, wrist down: where IK starts
FLANGE_ABOVE_GRASP = 2 * FINGER_HALF[2] + 2 * PALM_HALF[2] + 0.045


class Arm:
    """The kinematic model, loaded once (its meshes at every reset would cost more than the rest
    of the world), and the capsules it poses in the cell's world."""

    def __init__(self, client_type: int):
        with silenced():  # "argv[0]=" on every connection
            self._ik = BulletClient(connection_mode=client_type)
        self._arm = self._ik.loadURDF(
            os.path.join(pybullet_data.getDataPath(), "kuka_iiwa/model.urdf"), (0, 0, 0),
            useFixedBase=True)
        self._joints = list(range(self._ik.getNumJoints(self._arm)))
        self._segments: list[int] = []

    def build(self, p) -> None:
        """Back to the rest pose, and one capsule per link in the (just reset) world ``p``."""
        for j, q in zip(self._joints, ARM_REST):
            self._ik.resetJointState(self._arm, j, q)
        points = self._points((0.0, 0.0, 1.2))
        self._segments = []
        for (radius, colour), a, b in zip(ARM_LINKS, points[:-1], points[1:]):
            length = max(math.dist(a, b) - radius, 0.01)
            shape = p.createVisualShape(p.GEOM_CAPSULE, radius=radius, length=length,
                                        rgbaColor=colour)
            self._segments.append(p.createMultiBody(0, -1, shape))

    def follow(self, p, gripper_body: int) -> None:
        """Pose the arm over the gripper as it now stands in ``p``."""
        ik = self._ik
        pos, orn = p.getBasePositionAndOrientation(gripper_body)
        _, _, yaw = p.getEulerFromQuaternion(orn)
        flange = (pos[0], pos[1], pos[2] + FLANGE_ABOVE_GRASP)
        down = p.getQuaternionFromEuler((0.0, math.pi, yaw))
        # IK starts from the kinematic model's current joints, which only this episode's steps
        # (from the rest pose set at reset) have moved: the arm's pose is deterministic too.
        joints = ik.calculateInverseKinematics(self._arm, 6, flange, down, maxNumIterations=20)
        for j, q in zip(self._joints, joints):
            ik.resetJointState(self._arm, j, q)
        # Capsule i spans the origins of frames i and i + 1; pybullet capsules lie along z.
        points = self._points((pos[0], pos[1], pos[2] + 2 * FINGER_HALF[2]
                               + 2 * PALM_HALF[2]))
        for body, a, b in zip(self._segments, points[:-1], points[1:]):
            mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2)
            p.resetBasePositionAndOrientation(body, mid, _z_to(b[0] - a[0], b[1] - a[1],
                                                               b[2] - a[2]))

    def _points(self, palm_top) -> list[np.ndarray]:
        """The arm's base, its seven link frames and the palm it carries, world frame."""
        states = self._ik.getLinkStates(self._arm, self._joints)
        return [(0.0, 0.0, 0.0)] + [st[4] for st in states] + [tuple(palm_top)]

    def close(self) -> None:
        self._ik.disconnect()


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

"""The simulated grasping cell: a KUKA iiwa with a two-finger gripper over a tray, in pybullet.

What is physics and what is not:
- The gripper (palm and two prismatic fingers, ``robot.gripper``) is a dynamic body. It is moved
  by a force-limited constraint towards the commanded pose, and its fingers close under a
  force-limited motor. An object is held only by finger contact and friction: there is no
  automatic grasp, no attachment constraint and no height hack.
- The KUKA arm (``robot.arm``) follows the gripper by inverse kinematics and has no collision
  shapes; the camera (``robot.camera``) sees it as one capsule per link.
- The tray and its objects (``robot.tray``) are rebuilt at every reset (``resetSimulation``), so
  an episode depends on its seed only, never on the episodes run before it in the same process.

``SimCell`` puts them together as algorithm 1's ``Robot``: it decodes and executes commands,
moves the gripper through each control step, decides when the episode ends and scores it.
"""

from __future__ import annotations

import math

import numpy as np

from schemas.quiet import silenced

with silenced():  # "pybullet build time" on import
    import pybullet
    import pybullet_data
    from pybullet_utils.bullet_client import BulletClient

from robot import camera, objects
from robot.arm import Arm
from robot.gripper import Gripper
from robot.interface import Outcome, Robot
from robot.layout import (MAX_HEIGHT, MIN_HEIGHT, TRAY_CENTRE, TRAY_FLOOR_Z,
                          WORKSPACE_HALF)
from robot.tray import TIME_STEP, Tray
from schemas import mdp
from schemas.config import RobotConfig
from schemas.errors import ConfigError

DATA = pybullet_data.getDataPath()


class SimCell(Robot):
    """pybullet implementation of ``Robot``; one instance per process or worker."""

    def __init__(self, config: RobotConfig | None = None, object_pool="train",
                 robot_id: str = "sim-cell"):
        self.config = config or RobotConfig()
        pool = objects.resolve(object_pool) if isinstance(object_pool, (str, list, tuple)) \
            else list(object_pool)
        if not pool:
            raise ConfigError("objects: no objects to put in the tray")
        self.pool = pool
        self.robot_id = robot_id
        with silenced():  # "argv[0]=" on every connection
            self._p = BulletClient(connection_mode=pybullet.DIRECT)
        self._p.setAdditionalSearchPath(DATA)
        self.arm = Arm(pybullet.DIRECT)
        self.camera = camera.Camera(self._p, camera.PLACEMENTS[self.config.camera],
                                    self.config.image_size)
        self.tray = Tray(self._p, self.config, pool)
        self.gripper = Gripper(self._p, self.config.grip_force, TIME_STEP)
        self._steps = 0
        self._done = True
        self._final_observation = None
        self._reward = 0.0
        self._last_action = mdp.zero_action()
        self._outcome = Outcome()
        self._held_at_end: list[int] = []

    def _start_position(self) -> tuple:
        return (float(TRAY_CENTRE[0] + mdp.START_OFFSET[0]),
                float(TRAY_CENTRE[1] + mdp.START_OFFSET[1]),
                TRAY_FLOOR_Z + self.config.start_height)

    # ---------------------------------------------------------------------------- Robot API

    def reset(self, seed: int, placements=None) -> dict:
        """A new episode. ``placements`` (list of (ObjectFile, (x, y), yaw)) replaces the random
        choice of objects, for tests and demonstrations; an empty list leaves the tray empty."""
        rng = np.random.default_rng(seed)
        self.tray.build()
        self.arm.build(self._p)
        self.gripper.build(self._start_position())
        self.gripper.set_fingers(False)
        self.gripper.position = np.array(self._start_position(), dtype=np.float64)
        self.gripper.yaw = 0.0
        self.gripper.closed = False
        self.gripper.hold_pose()
        self.tray.drop_objects(rng, placements)
        self._steps = 0
        self._done = False
        self._final_observation = None
        self._held_at_end = []
        self._reward = 0.0
        self._last_action = mdp.zero_action()
        self._outcome = Outcome(labeller=self.config.success_labeller)
        self.arm.follow(self._p, self.gripper.body)
        return self.capture_state()

    def capture_state(self) -> dict:
        if self._done and self._final_observation is not None:
            return self._final_observation
        return {mdp.IMAGE: self.render(),
                mdp.GRIPPER_CLOSED: np.float32(1.0 if self.gripper.closed else 0.0),
                mdp.GRIPPER_OPENING: np.float32(self.gripper_opening()),
                mdp.HEIGHT: np.float32(self.gripper_height())}

    def execute_command(self, action) -> None:
        if self._done:
            raise RuntimeError("execute_command after the episode ended; call reset first")
        recorded = mdp.check_action(action).copy()
        if not self.config.gripper_moves:
            recorded = mdp.gripper_or_move(recorded, self.gripper.closed)
        command = mdp.decode_action(recorded)
        if self.config.termination == "scripted":
            terminate = mdp.scripted_termination(self.gripper.closed, self.gripper_height(),
                                                 float(command.translation[2]))
        else:
            terminate = command.terminate
        recorded[mdp.TERMINATE] = float(terminate)
        self._move(command)
        self.arm.follow(self._p, self.gripper.body)
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
        return list(self.tray.object_ids)

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def settle_steps(self) -> int:
        """Settling steps the objects took before step 0 of this episode."""
        return self.tray.settle_steps

    @property
    def finger_settle_substeps(self) -> int:
        """Sub-steps the last gripper command waited for the fingers."""
        return self.gripper.settle_substeps

    def close(self) -> None:
        if self._p is not None:
            self._p.disconnect()
            self.arm.close()
            self._p = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: pybullet may already be gone
            pass

    # ---------------------------------------------------------------------------- motion

    def _move(self, command: mdp.Command) -> None:
        cfg, g = self.config, self.gripper
        start = g.position.copy()
        step = np.clip(command.translation, -cfg.max_translation, cfg.max_translation)
        target = start + step
        target[:2] = np.clip(target[:2], TRAY_CENTRE - WORKSPACE_HALF,
                             TRAY_CENTRE + WORKSPACE_HALF)
        target[2] = np.clip(target[2], TRAY_FLOOR_Z + MIN_HEIGHT, TRAY_FLOOR_Z + MAX_HEIGHT)
        yaw0 = g.yaw
        dyaw = float(np.clip(command.yaw, -cfg.max_rotation, cfg.max_rotation))
        gripper_was = g.closed
        if command.gripper is not None:
            g.set_fingers(command.gripper == "close")
        n = cfg.action_repeat
        # The pose target moves along a smooth ramp in the first two thirds of the control step
        # and holds for the rest, so the gripper arrives and settles before the next image.
        ramp = max(1, (2 * n) // 3)
        for i in range(n):
            s = min(1.0, (i + 1) / ramp)
            s = s * s * (3.0 - 2.0 * s)
            g.position = start + s * (target - start)
            g.yaw = yaw0 + s * dyaw
            g.hold_pose()
            self._p.stepSimulation()
        if command.gripper is not None and gripper_was != g.closed:
            g.settle_fingers()
        g.yaw = math.remainder(g.yaw, 2 * math.pi)
        g.position = target

    def glide(self, position, speed: float = 0.6) -> None:
        """Move the gripper to ``position`` (world frame) at about ``speed`` m/s, outside the
        MDP: the labeller's moves, which ignore the workspace bounds. Slow enough that a held
        object stays held."""
        g = self.gripper
        start, target = g.position.copy(), np.asarray(position, np.float64)
        substeps = max(20, int(np.linalg.norm(target - start) / (speed * TIME_STEP)))
        for i in range(substeps):
            s = (i + 1) / substeps
            g.position = start + (s * s * (3.0 - 2.0 * s)) * (target - start)
            g.hold_pose()
            self._p.stepSimulation()
        self.arm.follow(self._p, g.body)

    def wait(self, substeps: int) -> None:
        for _ in range(substeps):
            self._p.stepSimulation()

    def open_gripper(self) -> None:
        self.gripper.set_fingers(False)

    def place_gripper(self, position, yaw: float = 0.0, substeps: int = 60) -> None:
        """Hold the gripper at ``position`` (world frame) and ``yaw``, outside the MDP and its
        bounds (benchmarks and calibration)."""
        self.gripper.position = np.asarray(position, np.float64)
        self.gripper.yaw = float(yaw)
        self.gripper.hold_pose()
        self.wait(substeps)
        self.arm.follow(self._p, self.gripper.body)

    # ---------------------------------------------------------------------------- sensing

    def gripper_height(self) -> float:
        return self.gripper.height()

    def gripper_opening(self) -> float:
        """Distance between the finger pads, metres: what a real gripper's encoder reports."""
        return self.gripper.opening()

    def gripper_pose(self) -> tuple[np.ndarray, float]:
        return self.gripper.pose()

    def render(self) -> np.ndarray:
        return self.camera.render()

    def render_with_masks(self) -> tuple[np.ndarray, dict]:
        """The camera image and, per pixel, which object (index into ``object_ids``, -1: none)
        and whether a finger is seen there: for measuring what the camera shows."""
        return self.camera.render_with_masks(self.tray.bodies, self.gripper.body)

    def object_speeds(self) -> list[float]:
        """Linear speed of every object in the tray, m/s."""
        return self.tray.speeds()

    def held_objects(self) -> list[int]:
        """Indices of objects touching the gripper with their centre above the success height."""
        return self.tray.held(self.gripper.body, self.config.success_height)

    def tray_objects(self) -> list[tuple]:
        """(ObjectFile, (x, y), yaw, held) of every object still over the tray, usable as
        ``placements`` for a later reset (bin emptying). ``held`` is the end-of-episode verdict
        (held above the success height), whatever the labeller did with the object since."""
        return self.tray.remaining(self._held_at_end)

    def object_positions(self) -> np.ndarray:
        return self.tray.positions()

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

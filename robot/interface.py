"""The robot as the control loop sees it (paper algorithm 1).

A real-robot driver implements this same interface; the simulated cell is one implementation.
Algorithm 1 per step: ``s = robot.capture_state()``, ``a = policy(s)``,
``robot.execute_command(a)``, ``r = robot.receive_reward()``, until ``robot.done``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass
class Outcome:
    """How an episode ended, as far as the robot knows."""

    success: bool = False           # the verdict the reward used
    ground_truth: bool | None = None  # the simulator's own verdict, where there is a simulator
    labeller: str = "ground_truth"
    terminated_by: str = ""         # "action", "scripted" or "step_limit"
    info: dict = field(default_factory=dict)


class Robot(abc.ABC):
    """One grasping cell: a tray of objects, an arm with a two-finger gripper, a camera."""

    robot_id: str = "robot"

    @abc.abstractmethod
    def reset(self, seed: int, placements=None) -> dict:
        """Start a new episode (new objects in the tray); returns the first observation.

        ``placements``: ``[(object, (x, y), yaw), ...]`` to put in the tray instead of a random
        choice, as ``tray_objects`` returns them (the evaluation protocols' trays); a driver that
        cannot place objects raises NotImplementedError when it is given."""

    @abc.abstractmethod
    def capture_state(self) -> dict:
        """The observation dict: image, gripper closed, height above the tray floor."""

    @abc.abstractmethod
    def execute_command(self, action) -> None:
        """Carry out one action (float32[8]); decides whether the episode ends here."""

    @abc.abstractmethod
    def receive_reward(self) -> float:
        """Reward for the last executed command."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """The episode has ended (terminate action, scripted termination, or step limit)."""

    @property
    @abc.abstractmethod
    def last_action(self):
        """The last command as executed and recorded (e.g. with a scripted terminate filled in)."""

    @property
    @abc.abstractmethod
    def outcome(self) -> Outcome:
        """How the episode ended; meaningful once ``done``."""

    @property
    @abc.abstractmethod
    def object_ids(self) -> list[str]:
        """Objects in the tray at the last reset."""

    @property
    def cell_identity(self) -> str:
        """The cell's configuration identity, recorded in every episode so that data and
        policies of different cells are never mixed: ``RobotConfig.cell_identity`` of the
        robot's ``config``. A driver not configured by a RobotConfig defines its own."""
        config = getattr(self, "config", None)
        if config is None:
            raise NotImplementedError(f"{type(self).__name__} has no RobotConfig: define "
                                      "cell_identity")
        return config.cell_identity()

    def close(self) -> None:
        """Release the simulator or hardware."""

    # What only some uses need; a driver without them raises NotImplementedError, naming them.

    def tray_objects(self) -> list[tuple]:
        """``(object, (x, y), yaw, held)`` of every object over the tray after an episode
        (``object`` has an ``object_id``, as ``robot.objects.ObjectFile``),
        ``held`` the end-of-episode verdict: bin emptying (``robot.protocols``) puts the rest
        back with ``reset(seed, placements)``."""
        raise NotImplementedError(f"{type(self).__name__}: no tray_objects (bin emptying)")

    # The drop test's motions (``robot.labeller``, appendix D.3), outside the MDP's bounds.

    def gripper_pose(self) -> tuple:
        """(position [3] in the world frame, yaw) of the gripper."""
        raise NotImplementedError(f"{type(self).__name__}: no gripper_pose (drop test)")

    def glide(self, position) -> None:
        """Move the gripper to ``position`` slowly enough that a held object stays held."""
        raise NotImplementedError(f"{type(self).__name__}: no glide (drop test)")

    def wait(self, substeps: int) -> None:
        """Let the scene run for ``substeps`` control substeps with the gripper held still."""
        raise NotImplementedError(f"{type(self).__name__}: no wait (drop test)")

    def open_gripper(self) -> None:
        """Open the fingers, letting go of whatever they hold."""
        raise NotImplementedError(f"{type(self).__name__}: no open_gripper (drop test)")

    def render(self):
        """The camera image now, uint8 [H, W, 3], as ``capture_state`` would show it."""
        raise NotImplementedError(f"{type(self).__name__}: no render (drop test)")

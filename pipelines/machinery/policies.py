"""Policies by the name a command is given: the robot's own (``scripted``, ``random``) or a
policy export (the model's greedy CEM policy), which is why this lives above both packages."""

from __future__ import annotations

import os

from robot.policies import EpsilonGreedy, RandomPolicy, ScriptedGrasp
from schemas import fs
from schemas.config import CollectConfig, RobotConfig
from schemas.errors import UserError


def make_policy(name: str, config: RobotConfig | None = None, epsilon: float = 0.2,
                cem_config=None, scripted_epsilon: float = 0.0,
                scripted_close_max: float = CollectConfig.scripted_close_max,
                scripted_aim_radius: float | None = None, world=None):
    """``scripted``, ``random``, or a policy export directory (the model's greedy CEM policy over
    the export's Polyak copy, ``model.policy.load_policy``, wrapped in epsilon-greedy exploration
    unless epsilon is 0). The scripted policy is wrapped the same way with ``scripted_epsilon``
    (0: not at all), closes at most ``scripted_close_max`` above the floor and, given
    ``scripted_aim_radius``, aims within it of an object of ``world`` (a simulated cell).
    TensorFlow is imported only for an export."""
    config = config or RobotConfig()
    if name == "scripted":
        scripted = ScriptedGrasp(config, close_height=(0.0, float(scripted_close_max)),
                                 aim_radius=scripted_aim_radius, world=world)
        if scripted_epsilon > 0:
            return EpsilonGreedy(scripted, scripted_epsilon, config=config)
        return scripted
    if name == "random":
        return RandomPolicy(config)
    if not (fs.is_remote(name) or os.path.isdir(name)):
        raise UserError(f"policy {name!r}: not scripted, random, or an export directory")
    from model.policy import load_policy

    greedy = load_policy(name, cem_config=cem_config)
    greedy.check_fits(config)
    return EpsilonGreedy(greedy, epsilon, config=config) if epsilon > 0 else greedy


def worker_cell_and_policy(robot: RobotConfig, objects, policy: str, robot_id: str,
                           epsilon: float, cem=None, scripted_epsilon: float = 0.0,
                           scripted_close_max: float = CollectConfig.scripted_close_max,
                           scripted_aim_radius: float | None = None):
    """What a collect or evaluate worker holds: a simulated cell of ``robot`` with ``objects``
    (a split name or URDF paths), and ``policy`` for it."""
    from robot.cell import SimCell

    cell = SimCell(robot, objects if isinstance(objects, str) else list(objects),
                   robot_id=robot_id)
    return cell, make_policy(policy, robot, epsilon, cem, scripted_epsilon, scripted_close_max,
                             scripted_aim_radius, world=cell)

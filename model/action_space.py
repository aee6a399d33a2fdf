"""Bounds and layout of the 8-number action, TensorFlow-free.

Layout (appendix D.2, ``schemas.specs.ACTION_LAYOUT``):
``(t_x, t_y, t_z, sin, cos, g_close, g_open, terminate)``. Translation is metres per step; (sin,
cos) encode the yaw change of one step; the gripper bits are one-hot, or both 0 for "no gripper
command" (which the scripted and random policies in robot/ send on most steps).

The per-step limits come from one place, ``schemas.config.RobotConfig`` (``max_translation``,
``max_rotation``), which the simulated cell clips to. CEM clips its samples to the same bounds;
an export records the bounds it was trained with, and relabelling and the policies use those.
"""

from __future__ import annotations

import math

import numpy as np

from schemas.config import RobotConfig
from schemas.specs import ACTION_DIM

# Dimensions CEM treats as a Gaussian, the gripper pair, and the terminate bit.
CONTINUOUS = (0, 1, 2, 3, 4)
GRIPPER = (5, 6)          # (close, open)
TERMINATE = 7


def action_bounds(max_translation: float | None = None, max_rotation: float | None = None):
    """(low, high) float32[8] for the robot's per-step limits (RobotConfig defaults if None)."""
    defaults = RobotConfig()
    t = defaults.max_translation if max_translation is None else float(max_translation)
    r = defaults.max_rotation if max_rotation is None else float(max_rotation)
    r = min(r, math.pi)
    # Yaw in [-r, r]: sin spans [-sin r, sin r] (up to +-1), cos spans [cos r, 1].
    s = 1.0 if r >= math.pi / 2 else math.sin(r)
    low = np.array([-t, -t, -t, -s, math.cos(r), 0.0, 0.0, 0.0], np.float32)
    high = np.array([t, t, t, s, 1.0, 1.0, 1.0, 1.0], np.float32)
    return low, high


def bounds_from_config(robot_config) -> tuple:
    return action_bounds(robot_config.max_translation, robot_config.max_rotation)


ACTION_LOW, ACTION_HIGH = action_bounds()
assert ACTION_LOW.shape == (ACTION_DIM,)

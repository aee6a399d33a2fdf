"""Bounds and layout of the 8-number action, TensorFlow-free.

Layout (appendix D.2, ``schemas.specs.ACTION_LAYOUT``):
``(t_x, t_y, t_z, sin, cos, g_close, g_open, terminate)``.

CEM clips its samples to ``ACTION_LOW``/``ACTION_HIGH``. These live here until robot/ publishes
its workspace and per-step translation limits in a TF-free module; then this module should import
them from there so that the bounds are defined once.
"""

from __future__ import annotations

import numpy as np

from schemas.specs import ACTION_DIM

MAX_TRANSLATION = 0.05  # metres per step per axis

# Dimensions CEM treats as a Gaussian, the one-hot gripper pair, and the terminate bit.
CONTINUOUS = (0, 1, 2, 3, 4)
GRIPPER = (5, 6)          # (close, open), exactly one is 1
TERMINATE = 7

ACTION_LOW = np.array([-MAX_TRANSLATION] * 3 + [-1.0, -1.0] + [0.0, 0.0, 0.0], np.float32)
ACTION_HIGH = np.array([MAX_TRANSLATION] * 3 + [1.0, 1.0] + [1.0, 1.0, 1.0], np.float32)

assert ACTION_LOW.shape == (ACTION_DIM,)

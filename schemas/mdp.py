"""The grasping MDP's rules (paper section 5, appendix D), free of any simulator and of
TensorFlow: what the cell (``robot``) and the learner (``model``) must agree on.

Action layout (appendix D.2): ``(t_x, t_y, t_z, sin, cos, g_close, g_open, e)``. Observations are
dicts keyed exactly as the episode spec's step fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.config import RobotConfig
from schemas.errors import UserError
from schemas.specs import ACTION_DIM, ACTION_LAYOUT, EPISODE, STATE_SCALARS

# The observation's keys: the episode spec's step fields (``schemas.specs``), by name.
IMAGE = "observation/image"
GRIPPER_CLOSED = f"observation/{STATE_SCALARS[0]}"
GRIPPER_OPENING = f"observation/{STATE_SCALARS[1]}"
HEIGHT = f"observation/{STATE_SCALARS[2]}"
OBSERVATION_KEYS = (IMAGE, GRIPPER_CLOSED, GRIPPER_OPENING, HEIGHT)
assert set(OBSERVATION_KEYS) == {f.name for f in EPISODE.step_fields
                                 if f.name.startswith("observation/")}
# The gripper's widest opening between the finger pads and about its start height (metres):
# the ranges the network scales the state scalars by (``model.network.STATE_RANGES``).
MAX_OPENING = 0.088
HEIGHT_RANGE = 0.25

# Where each part of the action lies, by the spec's names (appendix D.2).
TRANSLATION = slice(ACTION_LAYOUT.index("translation_x"), ACTION_LAYOUT.index("translation_z") + 1)
ROTATION = slice(ACTION_LAYOUT.index("rotation_sin"), ACTION_LAYOUT.index("rotation_cos") + 1)
CLOSE, OPEN = ACTION_LAYOUT.index("gripper_close"), ACTION_LAYOUT.index("gripper_open")
TERMINATE = ACTION_LAYOUT.index("terminate")
# What CEM treats as a Gaussian (translation and rotation), the gripper pair.
CONTINUOUS = tuple(range(TRANSLATION.start, ROTATION.stop))
GRIPPER = (CLOSE, OPEN)

# Algorithm 2: the heuristic ends the episode once a closed gripper is above this height (metres
# above the tray floor) and still being commanded upwards.
SCRIPTED_TERMINATION_HEIGHT = 0.13
# Where the gripper starts, relative to the tray centre (x towards the arm's base): at the
# workspace's edge on the arm's side, so that neither it nor the arm hides the objects at step 0.
START_OFFSET = (-0.17, 0.0)


@dataclass(frozen=True)
class Command:
    """An action decoded into what the cell executes."""

    translation: np.ndarray     # metres, world frame, before workspace clipping
    yaw: float                  # radians, change of the gripper's vertical rotation
    gripper: str | None         # "close", "open", or None to leave it as it is
    terminate: bool


def zero_action() -> np.ndarray:
    return np.zeros(ACTION_DIM, np.float32)


def make_action(translation=(0.0, 0.0, 0.0), yaw: float = 0.0, gripper: str | None = None,
                terminate: bool = False) -> np.ndarray:
    a = zero_action()
    a[TRANSLATION] = translation
    a[ROTATION] = (math.sin(yaw), math.cos(yaw))
    if gripper == "close":
        a[CLOSE] = 1.0
    elif gripper == "open":
        a[OPEN] = 1.0
    elif gripper is not None:
        raise ValueError(f"gripper must be 'close', 'open' or None, got {gripper!r}")
    a[TERMINATE] = float(terminate)
    return a


def check_action(action) -> np.ndarray:
    """The action as float32[8], or a UserError saying what is wrong with it."""
    try:
        a = np.asarray(action, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(f"action: expected {ACTION_DIM} numbers, got {action!r}") from None
    if a.shape != (ACTION_DIM,):
        raise UserError(f"action: expected shape ({ACTION_DIM},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UserError(f"action: contains NaN or infinite values: {a.tolist()}")
    return a


def gripper_or_move(action, gripper_closed: bool) -> np.ndarray:
    """The action as a cell with ``robot.gripper_moves=false`` executes and records it, given
    whether the gripper was closed before it: a step either works the gripper or moves it. A
    command that changes the gripper (closes an open one, opens a closed one) holds the pose, so
    the step carries no translation or rotation; a command the gripper already obeys is no
    command at all, so the step is its move alone."""
    a = check_action(action).copy()
    gripper = decode_action(a).gripper
    if gripper is not None and (gripper == "close") != bool(gripper_closed):
        a[TRANSLATION] = 0.0
        a[ROTATION] = (0.0, 1.0)
    elif gripper is not None:
        a[[CLOSE, OPEN]] = 0.0
    return a


def decode_action(action) -> Command:
    a = check_action(action)
    sin, cos = (float(v) for v in a[ROTATION])
    # (0, 0) encodes no rotation, as does the zero action of a record's last step.
    yaw = math.atan2(sin, cos) if (sin != 0.0 or cos != 0.0) else 0.0
    gripper = None
    if a[CLOSE] > 0.5 or a[OPEN] > 0.5:
        gripper = "close" if a[CLOSE] >= a[OPEN] else "open"
    return Command(a[TRANSLATION].astype(np.float64), yaw, gripper, bool(a[TERMINATE] > 0.5))


def scripted_termination(gripper_closed: bool, height: float, translation_z: float) -> bool:
    """Algorithm 2: closed, above the termination height, and the next action goes up."""
    return bool(gripper_closed and height > SCRIPTED_TERMINATION_HEIGHT and translation_z > 0.0)


def step_reward(done: bool, success: bool, step_penalty: float) -> float:
    """-0.05 for every step before the end; 1 or 0 for the last one, by grasp success."""
    if not done:
        return float(step_penalty)
    return 1.0 if success else 0.0


def discounted_returns(rewards, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} for one episode's rewards in step order, float32[T].

    Every end of an episode is scored (the step limit's too), so nothing follows the last
    reward. The return is what the policy that acted earned from step t: a lower bound of the
    value of the best policy from there (exact for the one that acted)."""
    r = np.asarray(rewards, np.float64).reshape(-1)
    out = np.zeros(len(r), np.float64)
    g = 0.0
    for t in range(len(r) - 1, -1, -1):
        g = r[t] + gamma * g
        out[t] = g
    return out.astype(np.float32)


# ---------------------------------------------------------------- action bounds (for CEM)
# Translation is metres per step; (sin, cos) encode one step's yaw change; the gripper bits are
# one-hot, or both 0 for "no gripper command". The per-step limits come from
# ``RobotConfig.max_translation``/``max_rotation``, which the cell clips to; CEM clips its samples
# to the same bounds, and an export records the bounds it was trained with.

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

"""The cell as a Gymnasium environment, registered as ``qtopt/Grasping-v0``.

``gymnasium.make("robot.gym_env:qtopt/Grasping-v0")`` imports this module and makes the
environment; keyword arguments go to ``GraspingEnv``. Observations are the episode spec's
observation dict; actions are the 8 numbers of appendix D.2 in physical units (metres, radians
as sin/cos, one-hot gripper, terminate). Every episode end is a scored grasp (terminate action,
scripted termination or the step limit), so it is reported as ``terminated``; ``truncated`` is
never set.
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

from schemas import mdp
from robot.cell import SimCell
from robot.gripper import FINGER_CLOSED, FINGER_OPEN
from robot.layout import MAX_HEIGHT
from schemas.config import RobotConfig

ENV_ID = "qtopt/Grasping-v0"


class GraspingEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, config: RobotConfig | None = None, objects="train",
                 render_mode: str | None = None, **config_overrides):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if config_overrides:
            import dataclasses
            config = dataclasses.replace(config or RobotConfig(), **config_overrides)
        self.config = config or RobotConfig()
        self.render_mode = render_mode
        self.cell = SimCell(self.config, objects, robot_id="gym")
        size = self.config.image_size
        self.observation_space = spaces.Dict({
            mdp.IMAGE: spaces.Box(0, 255, (size, size, 3), np.uint8),
            mdp.GRIPPER_CLOSED: spaces.Box(0.0, 1.0, (), np.float32),
            mdp.GRIPPER_OPENING: spaces.Box(0.0, 2 * (FINGER_OPEN - FINGER_CLOSED), (),
                                           np.float32),
            mdp.HEIGHT: spaces.Box(-0.1, MAX_HEIGHT + 0.2, (), np.float32),
        })
        t = self.config.max_translation
        self.action_space = spaces.Box(
            low=np.array([-t, -t, -t, -1, -1, 0, 0, 0], np.float32),
            high=np.array([t, t, t, 1, 1, 1, 1, 1], np.float32), dtype=np.float32)
        self._observation = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._observation = self._clip(self.cell.reset(episode_seed))
        return self._observation, {"episode_seed": episode_seed,
                                   "object_ids": self.cell.object_ids}

    def step(self, action):
        self.cell.execute_command(action)
        self._observation = self._clip(self.cell.capture_state())
        reward = float(self.cell.receive_reward())
        done = self.cell.done
        info = {"steps": self.cell.steps}
        if done:
            outcome = self.cell.outcome
            info.update(success=outcome.success, ground_truth=outcome.ground_truth,
                        terminated_by=outcome.terminated_by)
        return self._observation, reward, done, False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self._observation[mdp.IMAGE].copy() if self._observation is not None \
                else self.cell.render()
        return None

    def close(self):
        self.cell.close()

    def _clip(self, observation: dict) -> dict:
        # A gripper squeezed against the floor can report a height a hair outside its bounds.
        space = self.observation_space[mdp.HEIGHT]
        opening = self.observation_space[mdp.GRIPPER_OPENING]
        # Scalars as 0-d arrays: what a Box of shape () holds.
        return {mdp.IMAGE: observation[mdp.IMAGE],
                mdp.GRIPPER_CLOSED: np.array(observation[mdp.GRIPPER_CLOSED], np.float32),
                mdp.GRIPPER_OPENING: np.array(np.clip(observation[mdp.GRIPPER_OPENING],
                                                      opening.low, opening.high), np.float32),
                mdp.HEIGHT: np.array(np.clip(observation[mdp.HEIGHT], space.low, space.high),
                                     np.float32)}


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="robot.gym_env:GraspingEnv")

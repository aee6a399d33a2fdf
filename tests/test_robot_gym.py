"""The Gymnasium environment over the cell."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
from gymnasium.utils.env_checker import check_env

from schemas import mdp


def test_the_registered_environment_passes_the_gymnasium_checker():
    env = gymnasium.make("robot.gym_env:qtopt/Grasping-v0", image_size=32, max_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures here
        check_env(env.unwrapped)
    env.close()


def test_episodes_end_scored_and_seeded_resets_repeat():
    env = gymnasium.make("robot.gym_env:qtopt/Grasping-v0", image_size=32, max_steps=3,
                         render_mode="rgb_array")
    first, info = env.reset(seed=4)
    again, info_again = env.reset(seed=4)
    assert np.array_equal(first[mdp.IMAGE], again[mdp.IMAGE])
    assert info["object_ids"] == info_again["object_ids"]
    rewards, done = [], False
    while not done:
        _, reward, terminated, truncated, info = env.step(mdp.make_action((0.0, 0.0, -0.05)))
        rewards.append(reward)
        done = terminated or truncated
    assert terminated and not truncated
    assert rewards == [-0.05, -0.05, 0.0] and info["terminated_by"] == "step_limit"
    assert env.render().shape == (32, 32, 3)
    env.close()

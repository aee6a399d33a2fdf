"""One episode of algorithm 1 with any Robot and any policy, as an episode record."""

from __future__ import annotations

import numpy as np

from schemas import mdp
from robot.interface import Robot
from schemas.codec import new_record


def episode_id(source: str, seed: int) -> str:
    """Deterministic: the same source and seed always name the same episode."""
    return f"{source}-{int(seed):010d}"


def run_episode(robot: Robot, policy, seed: int, *, source: str = "sim",
                policy_name: str | None = None, episode_id_: str | None = None,
                **reset_kwargs) -> dict:
    """Reset the robot and the policy with ``seed``, run until the robot says the episode is
    over, and return the episode record (RLDS steps: T actions, T + 1 steps).

    Every episode ends in a scored grasp (the terminate action, the scripted termination or the
    step limit, which the paper also scores), so the last step is always terminal: nothing is
    bootstrapped past it.
    """
    observation = robot.reset(seed, **reset_kwargs)
    if hasattr(policy, "seed"):
        policy.seed(seed)
    policy.reset()
    observations, actions, rewards = [observation], [], []
    step = 0
    while not robot.done:
        action = mdp.check_action(policy.sample_action(observation, step))
        robot.execute_command(action)
        actions.append(np.asarray(robot.last_action, np.float32))
        rewards.append(np.float32(robot.receive_reward()))
        observation = robot.capture_state()
        observations.append(observation)
        step += 1
    n = len(actions)
    image_shape = observations[0][mdp.IMAGE].shape
    return new_record(
        "episode", image_shape,
        episode_id=episode_id_ or episode_id(source, seed),
        source=source,
        policy=policy_name or getattr(policy, "name", type(policy).__name__),
        robot_id=getattr(robot, "robot_id", "robot"),
        cell=robot.cell_identity,
        object_ids=list(robot.object_ids),
        seed=np.int64(seed),
        success=bool(robot.outcome.success),
        num_steps=np.int64(n),
        **{key: [o[key] for o in observations] for key in mdp.OBSERVATION_KEYS},
        action=actions + [mdp.zero_action()],
        reward=rewards + [np.float32(0.0)],
        discount=[np.float32(1.0)] * n + [np.float32(0.0)],
        is_first=[t == 0 for t in range(n + 1)],
        is_last=[t == n for t in range(n + 1)],
        is_terminal=[t == n for t in range(n + 1)],
    )

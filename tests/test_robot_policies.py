"""Policies: bounds, composition with epsilon-greedy, and run_episode's records."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import mdp
from robot.cell import SimCell
from robot.episode import episode_id, run_episode
from pipelines.machinery.policies import make_policy
from robot.policies import EpsilonGreedy, Policy, RandomPolicy, ScriptedGrasp
from schemas import codec
from schemas.config import RobotConfig
from schemas.errors import UserError

CONFIG = RobotConfig(image_size=32)


def _observation(closed: float = 0.0, height: float = 0.25) -> dict:
    return {mdp.IMAGE: np.zeros((32, 32, 3), np.uint8),
            mdp.GRIPPER_CLOSED: np.float32(closed), mdp.HEIGHT: np.float32(height)}


class AlwaysUp(Policy):
    """A deterministic greedy stand-in with the model policy's interface."""

    name = "always_up"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def sample_action(self, observation, step):
        self.calls += 1
        return mdp.make_action((0.0, 0.0, 0.01))


def test_random_policy_stays_within_the_action_limits():
    policy = RandomPolicy(CONFIG, rng=0)
    actions = np.array([policy.sample_action(_observation(), t) for t in range(500)])
    assert actions.shape == (500, 8) and actions.dtype == np.float32
    assert np.abs(actions[:, :3]).max() <= CONFIG.max_translation + 1e-6
    assert np.allclose(actions[:, 3] ** 2 + actions[:, 4] ** 2, 1.0, atol=1e-5)
    assert not (actions[:, 5] * actions[:, 6]).any()  # never both gripper commands
    assert 0 < actions[:, 7].mean() < 0.15


def test_epsilon_zero_is_the_greedy_policy_and_one_is_all_exploration():
    greedy = AlwaysUp()
    assert np.array_equal(EpsilonGreedy(greedy, 0.0, rng=1).sample_action(_observation(), 0),
                          mdp.make_action((0.0, 0.0, 0.01)))
    noisy = EpsilonGreedy(AlwaysUp(), 1.0, rng=1, config=CONFIG)
    actions = [noisy.sample_action(_observation(), t) for t in range(50)]
    assert not any(np.array_equal(a, mdp.make_action((0.0, 0.0, 0.01))) for a in actions)


def test_epsilon_greedy_explores_with_the_papers_mixture():
    policy = EpsilonGreedy(AlwaysUp(), 0.2, rng=3, config=CONFIG)
    n = 20000
    kinds = {"greedy": 0, "pose": 0, "toggle": 0, "terminate": 0}
    for t in range(n):
        a = policy.sample_action(_observation(closed=1.0), t)
        if np.array_equal(a, mdp.make_action((0.0, 0.0, 0.01))):
            kinds["greedy"] += 1
        elif a[7] == 1.0:
            kinds["terminate"] += 1
        elif a[6] == 1.0:          # gripper was closed: the toggle opens it
            assert a[5] == 0.0 and not a[:3].any()
            kinds["toggle"] += 1
        else:
            assert not a[5:].any() and a[:3].any()
            kinds["pose"] += 1
    random = n - kinds["greedy"]
    assert abs(random / n - 0.2) < 0.01
    assert abs(kinds["pose"] / random - 0.75) < 0.025
    assert abs(kinds["toggle"] / random - 0.17) < 0.02
    assert abs(kinds["terminate"] / random - 0.08) < 0.015
    assert policy.greedy.calls == n  # the wrapped policy saw every observation


def test_a_toggle_closes_an_open_gripper():
    policy = EpsilonGreedy(AlwaysUp(), 1.0, rng=0, config=CONFIG)
    toggles = [policy.random_action(_observation(closed=0.0)) for _ in range(300)]
    assert any(a[5] == 1.0 for a in toggles)
    assert not any(a[6] == 1.0 for a in toggles)


def test_epsilon_greedy_refuses_what_is_not_a_policy():
    with pytest.raises(TypeError, match="reset"):
        EpsilonGreedy(object())
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(AlwaysUp(), 1.5)


def test_epsilon_greedy_wraps_the_scripted_policy_in_a_real_episode():
    cell = SimCell(CONFIG, "train")
    policy = EpsilonGreedy(ScriptedGrasp(CONFIG), 0.2, config=CONFIG)
    a = run_episode(cell, policy, 5)
    b = run_episode(cell, policy, 5)
    assert a["num_steps"] == b["num_steps"]
    assert all(np.array_equal(x, y) for x, y in zip(a["action"], b["action"]))


def test_scripted_policy_descends_closes_and_ascends():
    cell = SimCell(CONFIG, "train")
    # An empty tray: nothing to land on, so no retries, just the four phases.
    record = run_episode(cell, ScriptedGrasp(CONFIG), 11, placements=[])
    heights = np.asarray(record["observation/height"])
    closed = np.asarray(record["observation/gripper_closed"])
    t_close = int(np.argmax(closed > 0.5))
    assert 0 < t_close < len(closed) - 1 and closed[t_close:].all()
    assert heights[t_close] < 0.15 < heights[-1]      # closed low, ended high
    assert record["action"][-2][7] == 1.0               # it asked to terminate
    assert int(record["num_steps"]) <= CONFIG.max_steps


def test_run_episode_gives_a_valid_deterministic_record():
    cell = SimCell(CONFIG, "train")
    record = run_episode(cell, RandomPolicy(CONFIG), 3, source="unit")
    decoded = codec.decode(codec.encode(record))
    n = int(decoded["num_steps"])
    assert decoded["episode_id"] == episode_id("unit", 3) == "unit-0000000003"
    assert decoded["policy"] == "random" and decoded["source"] == "unit"
    assert decoded["observation/image"].shape == (n + 1, 32, 32, 3)
    assert decoded["is_terminal"].tolist() == [False] * n + [True]
    assert decoded["discount"].tolist() == [1.0] * n + [0.0]
    assert not decoded["action"][-1].any() and decoded["reward"][-1] == 0.0
    assert decoded["object_ids"] == cell.object_ids
    again = run_episode(SimCell(CONFIG, "train"), RandomPolicy(CONFIG), 3, source="unit")
    assert codec.encode(again) == codec.encode(record)


def test_make_policy_names_what_it_cannot_make(tmp_path):
    assert isinstance(make_policy("scripted", CONFIG), ScriptedGrasp)
    assert isinstance(make_policy("random", CONFIG), RandomPolicy)
    with pytest.raises(UserError, match="not scripted, random, or an export directory"):
        make_policy(str(tmp_path / "nowhere"), CONFIG)


def test_make_policy_wraps_the_scripted_policy_in_exploration_when_asked():
    noisy = make_policy("scripted", CONFIG, scripted_epsilon=0.3)
    assert isinstance(noisy, EpsilonGreedy) and isinstance(noisy.greedy, ScriptedGrasp)
    assert noisy.epsilon == 0.3


class Recorder(Policy):
    """Draws one uniform number per step from its own stream and returns it as t_x."""

    def sample_action(self, observation, step):
        return mdp.make_action((float(self.rng.random()) * 0.01, 0.0, 0.0))


def test_exploration_coin_flips_do_not_repeat_the_wrapped_policys_draws():
    # Seeded per episode, both streams start from the episode seed; had they the same salt, the
    # coin that decides to explore would equal the wrapped policy's own draw at every step.
    policy = EpsilonGreedy(Recorder(), 0.5, config=CONFIG)
    policy.seed(12)
    inner = Recorder()
    inner.seed(12)
    wrapped_draws = [inner.rng.random() for _ in range(200)]
    policy.seed(12)
    coins = [policy.rng.random() for _ in range(200)]
    assert not np.allclose(coins, wrapped_draws)
    assert abs(np.corrcoef(coins, wrapped_draws)[0, 1]) < 0.2


@pytest.mark.parametrize("close_max", [0.02, 0.07])
def test_scripted_close_max_sets_the_heights_the_scripted_policy_closes_at(close_max):
    # Over an empty tray nothing stops the descent: every close is where the policy chose.
    cell = SimCell(CONFIG, "train")
    heights = []
    for seed in range(6):
        policy = make_policy("scripted", CONFIG, scripted_close_max=close_max)
        policy.seed(seed)
        record = run_episode(cell, policy, seed, source="unit", placements=[])
        closes = [t for t, a in enumerate(record["action"])
                  if mdp.decode_action(a).gripper == "close"]
        assert closes, f"seed {seed}: the scripted policy never closed"
        heights.append(float(record["observation/height"][closes[0]]))
    assert max(heights) <= close_max + 0.01
    if close_max > 0.05:
        # The draws spread over the range, not only its low end.
        assert max(heights) > 0.03


@pytest.mark.parametrize("radius", [0.0, 0.06])
def test_scripted_aim_at_objects_closes_within_the_radius_of_one(radius):
    # Free of epsilon and retries' shifts, the close is where the aim put the gripper.
    config = RobotConfig(image_size=32)
    cell = SimCell(config, "train")
    distances, blind = [], []
    for seed in range(6):
        for aimed in (True, False):
            policy = make_policy("scripted", config, scripted_aim_radius=radius if aimed
                                 else None, world=cell)
            policy.retries = 0
            policy.seed(seed)
            observation, step = cell.reset(seed), 0
            policy.reset()
            while not cell.done:
                action = policy.sample_action(observation, step)
                if mdp.decode_action(action).gripper == "close":
                    gripper, _ = cell.gripper_pose()
                    objects = cell.object_positions()
                    d = float(np.min(np.linalg.norm(objects[:, :2] - gripper[:2], axis=1)))
                    (distances if aimed else blind).append(d)
                    break
                cell.execute_command(action)
                observation, step = cell.capture_state(), step + 1
    assert len(distances) == 6 and len(blind) == 6
    # Objects move as the fingers land among them (one may be pushed away): five of six closes
    # within 1.5 cm of the radius.
    assert sorted(distances)[4] <= radius + 0.015, distances
    assert np.median(distances) < np.median(blind), (distances, blind)


def test_scripted_aim_needs_a_world_that_knows_the_objects():
    with pytest.raises(ValueError, match="aim_radius needs a world"):
        ScriptedGrasp(CONFIG, aim_radius=0.05)

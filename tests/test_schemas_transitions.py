"""The episode-to-transition rule (``schemas.transitions``) on small episodes worked by hand:
terminal flags, observations paired across steps, and the discounted return from each step."""

from __future__ import annotations

import numpy as np
import pytest

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas import codec, fake
from schemas.mdp import discounted_returns
from schemas.transitions import encoded_transitions, episode_transitions


def _episode(rewards, limit_reached=False):
    """A decoded episode of len(rewards) actions with the given rewards."""
    n = len(rewards)
    episode = fake.fake_record("episode", 11, image_size=8, num_steps=n)
    episode["reward"] = np.array(list(rewards) + [0.0], np.float32)
    terminal = np.zeros(n + 1, bool)
    terminal[-1] = True
    episode["is_terminal"] = terminal
    episode["success"] = bool(rewards[-1] > 0.5)
    return codec.decode(codec.encode(episode))


def test_returns_by_hand():
    np.testing.assert_allclose(discounted_returns([0.0, 0.0, 1.0], 0.9), [0.81, 0.9, 1.0],
                               rtol=1e-6)
    # The paper's step penalty: G2 = 1, G1 = -0.05 + 0.9, G0 = -0.05 + 0.9 * 0.85.
    np.testing.assert_allclose(discounted_returns([-0.05, -0.05, 1.0], 0.9),
                               [0.715, 0.85, 1.0], rtol=1e-6)
    assert discounted_returns([], 0.9).shape == (0,)


@pytest.mark.parametrize("rewards,gamma,expected", [
    ((0.0, 0.0, 0.0, 1.0), 0.9, (0.729, 0.81, 0.9, 1.0)),          # a success
    ((0.0, 0.0, 1.0), 0.5, (0.25, 0.5, 1.0)),                     # another discount
    # Cut off by the step limit, unsuccessful: scored like any end, so every return is 0 (a
    # lower bound of what a better policy earns from the same states).
    ((0.0,) * 5, 0.9, (0.0,) * 5),
    ((-0.05, -0.05, 0.0), 0.9, (-0.095, -0.05, 0.0)),             # a failure with penalties
])
def test_transitions_of_an_episode(rewards, gamma, expected):
    episode = _episode(rewards)
    got = episode_transitions(episode, gamma)
    assert [t["step"] for t in got] == list(range(len(rewards)))
    assert [t["is_terminal"] for t in got] == [False] * (len(rewards) - 1) + [True]
    np.testing.assert_allclose([t["return_to_go"] for t in got], expected, rtol=1e-5,
                               atol=1e-7)
    for t, tr in enumerate(got):
        np.testing.assert_array_equal(tr["observation/image"],
                                      episode["observation/image"][t])
        np.testing.assert_array_equal(tr["next_observation/image"],
                                      episode["observation/image"][t + 1])
        assert tr["reward"] == pytest.approx(rewards[t])
    decoded = [codec.decode(b) for b in encoded_transitions(episode, gamma)]
    np.testing.assert_allclose([d["return_to_go"] for d in decoded], expected, rtol=1e-5,
                               atol=1e-7)


def test_an_older_transition_reads_with_a_zero_return():
    from schemas import example_proto

    record = fake.fake_record("transition", 3, image_size=8)
    msg = example_proto.Example.FromString(codec.encode(record))
    msg.features.feature["schema_version"].int64_list.value[0] = 3
    del msg.features.feature["return_to_go"]
    assert codec.decode(msg.SerializeToString())["return_to_go"] == 0.0

"""CEM: finds known maximisers (continuous and discrete), respects bounds, and its factorised
scoring gives the same Q as running the whole network on tiled copies of each image."""

import numpy as np
import pytest

import schemas  # noqa: F401  (import hook before TensorFlow)

tf = pytest.importorskip("tensorflow")

from schemas.mdp import ACTION_HIGH, ACTION_LOW  # noqa: E402
from model.cem import cem_maximize  # noqa: E402
from model.network import InputSpec, QNetwork  # noqa: E402

B = 8
# Per state: the global peak's translation and yaw, and which gripper/terminate values pay.
RNG = np.random.default_rng(3)
PEAK = RNG.uniform(-0.035, 0.035, (B, 3)).astype(np.float32)
DECOY = -PEAK                                  # a lower second mode on the other side
YAW = RNG.uniform(-0.4, 0.4, B).astype(np.float32)   # within the per-step rotation limit
WANT_GRIPPER = np.arange(B) % 3                 # close (1, 0), open (0, 1), no command (0, 0)
GRIPPER_BITS = np.array([[1, 0], [0, 1], [0, 0]], np.float32)[WANT_GRIPPER]
WANT_TERMINATE = (np.arange(B) // 2 % 2).astype(np.float32)


def multimodal(actions):
    """Sum of a global peak and a lower decoy peak in translation, a yaw term, and bonuses."""
    t = actions[..., :3]
    d_peak = tf.reduce_sum(tf.square(t - PEAK[:, None]), -1)
    d_decoy = tf.reduce_sum(tf.square(t - DECOY[:, None]), -1)
    value = 1.0 * tf.exp(-d_peak / (2 * 0.02 ** 2)) + 0.6 * tf.exp(-d_decoy / (2 * 0.02 ** 2))
    value -= 0.2 * (tf.square(actions[..., 3] - np.sin(YAW)[:, None])
                    + tf.square(actions[..., 4] - np.cos(YAW)[:, None]))
    value += 0.3 * tf.cast(tf.reduce_all(tf.equal(actions[..., 5:7], GRIPPER_BITS[:, None]), -1),
                           tf.float32)
    value += 0.3 * tf.cast(tf.equal(actions[..., 7], WANT_TERMINATE[:, None]), tf.float32)
    return value


def test_finds_the_global_maximiser_of_a_multimodal_function():
    best, score = cem_maximize(multimodal, B, tf.constant([1, 2], tf.int64),
                               samples=512, elites=20, iterations=6)
    best = best.numpy()
    np.testing.assert_allclose(best[:, :3], PEAK, atol=0.006)     # the peak, not the decoy
    np.testing.assert_allclose(best[:, 3], np.sin(YAW), atol=0.1)
    np.testing.assert_allclose(best[:, 4], np.cos(YAW), atol=0.1)
    np.testing.assert_array_equal(best[:, 5:7], GRIPPER_BITS)
    np.testing.assert_array_equal(best[:, 7], WANT_TERMINATE)
    np.testing.assert_allclose(score.numpy(), multimodal(best[:, None])[:, 0].numpy(), rtol=1e-6)


def test_paper_settings_beat_random_search_with_the_same_budget():
    seed = tf.constant([7, 0], tf.int64)
    best, score = cem_maximize(multimodal, B, seed)           # N=64, M=6, 2 iterations
    right = np.all(best.numpy()[:, 5:7] == GRIPPER_BITS, 1) & (best.numpy()[:, 7] == WANT_TERMINATE)
    assert right.mean() >= 0.75
    # Random search over 128 samples (the same number of evaluations): one CEM iteration.
    _, random_score = cem_maximize(multimodal, B, seed, samples=128, elites=6, iterations=1)
    assert score.numpy().mean() > random_score.numpy().mean()


@pytest.mark.parametrize("noop", [True, False])
def test_samples_respect_bounds_and_discrete_encoding(noop):
    seen = []

    def record(actions):
        seen.append(actions)
        weights = np.r_[1.0 / (ACTION_HIGH[:5] - ACTION_LOW[:5]), 0.0, 0.0, 1.0]
        return tf.reduce_sum(actions * weights.astype(np.float32), -1)

    best, _ = cem_maximize(record, 4, tf.constant([0, 1], tf.int64), gripper_noop=noop)
    for actions in seen:
        a = actions.numpy()
        assert a.shape == (4, 64, 8)
        assert np.all(a >= ACTION_LOW) and np.all(a <= ACTION_HIGH)
        gripper_sum = a[..., 5] + a[..., 6]
        assert set(np.unique(a[..., 5:7])) <= {0.0, 1.0} and np.all(gripper_sum <= 1)
        assert np.any(gripper_sum == 0) == noop
        assert set(np.unique(a[..., 7])) <= {0.0, 1.0}
    # A linear score is maximised at the upper bounds; clipped samples pile up there.
    position = (best.numpy()[:, :5] - ACTION_LOW[:5]) / (ACTION_HIGH[:5] - ACTION_LOW[:5])
    assert position.mean() > 0.75
    np.testing.assert_array_equal(best.numpy()[:, 7], 1.0)


def test_same_seed_same_actions_other_seed_other_actions():
    a1, _ = cem_maximize(multimodal, B, tf.constant([5, 5], tf.int64))
    a2, _ = cem_maximize(multimodal, B, tf.constant([5, 5], tf.int64))
    a3, _ = cem_maximize(multimodal, B, tf.constant([5, 6], tf.int64))
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    assert not np.array_equal(a1.numpy(), a3.numpy())


@pytest.mark.parametrize("state_inputs", ["image", "image+gripper+height",
                                          "image+gripper+height+opening"])
def test_factorised_q_equals_the_whole_network_on_tiled_copies(state_inputs):
    net = QNetwork(InputSpec(16, state_inputs), "tiny")
    rng = np.random.default_rng(0)
    # Move batch-norm statistics away from their initial values so they matter.
    for v in net.variables:
        v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype(np.float32) *
                 (1.0 if "moving_variance" not in v.path else 0.0))
    b, n = 3, 5
    images = rng.integers(0, 255, (b, 16, 16, 3), dtype=np.uint8)
    gripper = rng.integers(0, 2, b).astype(np.float32)
    height = rng.uniform(0, 0.3, b).astype(np.float32)
    opening = rng.uniform(0, 0.088, b).astype(np.float32)
    # Actions within the robot's bounds, as CEM and the data give them.
    actions = rng.uniform(ACTION_LOW, ACTION_HIGH, (b, n, 8)).astype(np.float32)
    batch = {"observation/image": images, "observation/gripper_closed": gripper,
             "observation/gripper_opening": opening, "observation/height": height}
    factorised = net.q_samples(net.features(images), net.state_vector(batch), actions).numpy()
    logits = net.logits({"observation/image": np.repeat(images, n, 0),
                         "observation/gripper_closed": np.repeat(gripper, n),
                         "observation/gripper_opening": np.repeat(opening, n),
                         "observation/height": np.repeat(height, n),
                         "action": actions.reshape(-1, 8)}).numpy().reshape(b, n)
    naive = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(factorised, naive, rtol=1e-5, atol=1e-6)
    # The actions do change Q, so the comparison means something. Measured on the logits: the
    # perturbed weights can push Q towards 1, where the sigmoid hides differences.
    assert (logits.std(axis=1) > 1e-2).all()


def test_gripper_rule_makes_every_sample_the_action_the_cell_would_execute():
    from schemas.mdp import gripper_or_move

    # A score that pays for closing while lifting: free sampling finds it in every state.
    seen = []

    def pays_to_close_and_lift(actions):
        seen.append(actions.numpy())
        return actions[..., 5] + 20.0 * actions[..., 2]

    seed = tf.constant([5, 6], tf.int64)
    free, _ = cem_maximize(pays_to_close_and_lift, B, seed)
    assert (free.numpy()[:, 5] == 1).all() and (free.numpy()[:, 2] > 0).all()
    seen.clear()
    closed = (np.arange(B) % 2).astype(np.float32)
    ruled, _ = cem_maximize(pays_to_close_and_lift, B, seed, gripper_rule=tf.constant(closed))
    kinds = set()
    for i in range(B):
        samples = np.concatenate([s[i] for s in seen])
        for a in samples:
            np.testing.assert_array_equal(a, gripper_or_move(a, bool(closed[i])))
            kinds.add((bool(closed[i]), a[5] > 0.5, a[6] > 0.5, bool(np.any(a[:3] != 0))))
    # Open grippers close in place; closed ones open in place; moves are sampled as before.
    assert {(False, True, False, False), (True, False, True, False), (False, False, False, True),
            (True, False, False, True)} <= kinds
    # Lifting (score up to 20 x 0.08) now beats closing in place (score 1).
    assert (ruled.numpy()[:, 5] == 0).all() and (ruled.numpy()[:, 2] > 0.05).all()


def test_scripted_termination_sets_the_terminate_bit_by_algorithm_2():
    from schemas.mdp import scripted_termination

    # A score that pays for terminating everywhere: free sampling would set the bit in every state.
    seen = []

    def pays_to_terminate(actions):
        seen.append(actions.numpy())
        return actions[..., 7] + 0.1 * actions[..., 2]

    closed = np.array([0, 1, 1, 1], np.float32)
    height = np.array([0.2, 0.2, 0.05, 0.14], np.float32)
    best, _ = cem_maximize(pays_to_terminate, 4, tf.constant([3, 4], tf.int64),
                           terminate_rule=(tf.constant(closed), tf.constant(height)))
    for actions in seen + [best.numpy()[:, None]]:
        for i in range(4):
            want = [scripted_termination(bool(closed[i]), float(height[i]), float(tz))
                    for tz in actions[i, :, 2]]
            np.testing.assert_array_equal(actions[i, :, 7], np.float32(want))
    # Closed and high: the bit is earned by going up, which the score then prefers.
    np.testing.assert_array_equal(best.numpy()[:, 7], [0, 1, 0, 1])
    free, _ = cem_maximize(pays_to_terminate, 4, tf.constant([3, 4], tf.int64))
    np.testing.assert_array_equal(free.numpy()[:, 7], 1.0)

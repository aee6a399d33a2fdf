"""The Q-network's shape: figure 13's layout at the paper preset, the state-input ablation, and Q
in [0, 1]."""

import numpy as np
import pytest

import schemas  # noqa: F401

keras = pytest.importorskip("keras")

import tensorflow as tf  # noqa: E402

from model.network import InputSpec, QNetwork  # noqa: E402


def _convs(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def test_paper_preset_matches_figure_13():
    net = QNetwork(InputSpec(472), "paper")
    assert len(_convs(net.tower)) == 7 and len(_convs(net.head)) == 9
    assert 1.1e6 < net.count_params() < 1.3e6                  # "over 1.2M parameters"
    bn = [la for la in net.model.layers + net.tower.layers + net.head.layers
          if isinstance(la, keras.layers.BatchNormalization)]
    assert len(bn) >= 16 + 2                                   # after every conv and dense
    assert tuple(net.tower.output.shape[1:3]) == (27, 27)


@pytest.mark.parametrize("state_inputs, extra", [("image", 0), ("image+gripper", 1),
                                                 ("image+gripper+height", 2),
                                                 ("image+gripper+height+opening", 3)])
def test_state_input_ablation(state_inputs, extra):
    net = QNetwork(InputSpec(32, state_inputs), "tiny")
    assert net.head.inputs[1].shape[-1] == 8 + extra
    names = set(net.spec.input_names)
    assert ("observation/gripper_closed" in names) == (extra >= 1)
    assert ("observation/height" in names) == (extra >= 2)
    assert ("observation/gripper_opening" in names) == (extra >= 3)
    rng = np.random.default_rng(0)
    batch = {"observation/image": rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8),
             "observation/gripper_closed": np.ones(5, np.float32),
             "observation/gripper_opening": np.full(5, 0.03, np.float32),
             "observation/height": np.full(5, 0.2, np.float32),
             "action": rng.normal(0, 1, (5, 8)).astype(np.float32)}
    q = net.q(batch).numpy()
    assert q.shape == (5,) and np.all((q >= 0) & (q <= 1))


def _macs(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w = layer.output.shape[1:3]
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


@pytest.mark.parametrize("preset, size, factor", [("cpu64", 64, 40), ("paper", 472, 20)])
def test_tower_dominates_the_per_sample_head(preset, size, factor):
    """What makes the factorised CEM pay: 2 x 64 head evaluations per state cost little more
    than the tower's one. Naive CEM costs 128 (T + H), factorised T + 128 H."""
    net = QNetwork(InputSpec(size), preset)
    assert _macs(net.tower) > factor * _macs(net.head)


def _auc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def _learn_from_opening(spec, steps=150):
    """Supervised: is the opening above 3 cm? Images and actions are noise."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    net = QNetwork(spec, "tiny")

    def batch(n):
        opening = rng.uniform(0.0, 0.088, n).astype(np.float32)
        action = np.concatenate([rng.uniform(-0.08, 0.08, (n, 3)), rng.uniform(-1, 1, (n, 2)),
                                 rng.integers(0, 2, (n, 3))], 1).astype(np.float32)
        return ({"observation/image": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
                 "observation/gripper_closed": np.ones(n, np.float32),
                 "observation/gripper_opening": opening,
                 "observation/height": rng.uniform(0.0, 0.3, n).astype(np.float32),
                 "action": action}, (opening > 0.03).astype(np.float32))

    optimizer = keras.optimizers.Adam(1e-3)
    weights = net.model.trainable_variables

    @tf.function
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=labels, logits=net.logits(inputs, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))

    for _ in range(steps):
        step(*batch(64))
    held, labels = batch(512)
    return _auc(net.q(held).numpy(), labels > 0.5)


def test_the_opening_reaches_the_head_and_is_learned():
    assert _learn_from_opening(InputSpec(16), steps=500) > 0.95


def test_head_inputs_are_scaled_to_unit_range():
    # Adam moves every weight by about the learning rate per step whatever its input's scale: an
    # input spanning 0.088 m (the opening) would need weights 10x those of a 0/1 bit to weigh as
    # much. The head sees every action and state component at about unit range.
    spec = InputSpec(16, translation_range=0.05)
    net = QNetwork(spec, "tiny")
    scale = net.head.get_layer("action_state_scale")
    extremes = np.array([[0.05, -0.05, 0.05, 1, -1, 1, 1, 1, 1, 0.25, 0.088]], np.float32)
    np.testing.assert_allclose(scale(extremes).numpy(), [[1, -1, 1, 1, -1, 1, 1, 1, 1, 1, 1]],
                               rtol=1e-6)
    assert spec.input_scale[:3] == (20.0, 20.0, 20.0)


def test_exports_from_before_input_scaling_keep_raw_inputs():
    old = InputSpec.from_dict({"image_size": 16, "state_inputs": "image+gripper+height",
                               "action_dim": 8})
    assert old.translation_range is None and set(old.input_scale) == {1.0}
    assert InputSpec.from_dict(InputSpec(16).to_dict()) == InputSpec(16)


@pytest.mark.parametrize("initial_q", [0.5, 0.05])
def test_untrained_network_starts_at_initial_q(initial_q):
    net = QNetwork(InputSpec(16), "tiny", initial_q=initial_q)
    rng = np.random.default_rng(4)
    q = net.q({"observation/image": rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8),
               "observation/gripper_closed": rng.integers(0, 2, 8).astype(np.float32),
               "observation/gripper_opening": rng.uniform(0, 0.088, 8).astype(np.float32),
               "observation/height": rng.uniform(0, 0.3, 8).astype(np.float32),
               "action": rng.uniform(-0.05, 0.05, (8, 8)).astype(np.float32)}).numpy()
    np.testing.assert_allclose(q, initial_q, atol=0.01 * initial_q + 1e-3)
    with pytest.raises(schemas.UserError, match="model.initial_q"):
        QNetwork(InputSpec(16), "tiny", initial_q=1.0)

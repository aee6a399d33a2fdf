"""The Q-network's shape: figure 13's layout at the paper preset, the state-input ablation, and Q
in [0, 1]."""

import numpy as np
import pytest

import schemas  # noqa: F401

keras = pytest.importorskip("keras")

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

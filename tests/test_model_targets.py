"""Bellman targets: a hand-computed example, terminals, the clipped minimum, and the wiring of
compute_targets (CEM argmax under the Polyak copy, evaluated by both copies)."""

import numpy as np
import pytest

import schemas  # noqa: F401

tf = pytest.importorskip("tensorflow")

from model.network import InputSpec, QNetwork  # noqa: E402
from model.targets import bellman_targets, compute_targets  # noqa: E402
from schemas.config import CEMConfig, TargetConfig  # noqa: E402

REWARD = np.array([-0.05, 1.0, -0.05, 0.0], np.float32)
TERMINAL = np.array([False, True, False, True])
Q_POLYAK = np.array([0.8, 0.9, 0.3, 0.5], np.float32)
Q_LAGGED = np.array([0.6, 0.95, 0.4, 0.2], np.float32)


@pytest.mark.parametrize("kind, expected", [
    # -0.05 + 0.9 * min(0.8, 0.6); terminal: r only; -0.05 + 0.9 * min(0.3, 0.4); terminal.
    ("clipped_double_q", [0.49, 1.0, 0.22, 0.0]),
    ("double_q", [-0.05 + 0.9 * 0.6, 1.0, -0.05 + 0.9 * 0.4, 0.0]),
    ("single_q", [-0.05 + 0.9 * 0.8, 1.0, -0.05 + 0.9 * 0.3, 0.0]),
])
def test_hand_computed_targets(kind, expected):
    got = bellman_targets(REWARD, TERMINAL, Q_POLYAK, Q_LAGGED, 0.9, kind).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown target kind"):
        bellman_targets(REWARD, TERMINAL, Q_POLYAK, Q_LAGGED, 0.9, "triple_q")


def _nets(offset_lagged: float):
    polyak = QNetwork(InputSpec(16), "tiny", "polyak")
    lagged = QNetwork(InputSpec(16), "tiny", "lagged")
    rng = np.random.default_rng(1)
    for p, lg in zip(polyak.variables, lagged.variables):
        noise = rng.normal(0, 0.2, p.shape).astype(np.float32)
        if "moving_variance" in p.path:
            noise = np.abs(noise)
        p.assign(p.numpy() + noise)
        lg.assign(p.numpy() + (offset_lagged if p.path == "logit/bias" else 0.0))
    return polyak, lagged


def _batch(n=6):
    rng = np.random.default_rng(2)
    return {
        "next_observation/image": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        "next_observation/gripper_closed": rng.integers(0, 2, n).astype(np.float32),
        "next_observation/gripper_opening": rng.uniform(0, 0.088, n).astype(np.float32),
        "next_observation/height": rng.uniform(0, 0.3, n).astype(np.float32),
        "reward": np.where(np.arange(n) % 3 == 0, 1.0, -0.05).astype(np.float32),
        "is_terminal": np.arange(n) % 3 == 0,
    }


def _q(net, batch, action):
    return net.q({"observation/image": batch["next_observation/image"],
                  "observation/gripper_closed": batch["next_observation/gripper_closed"],
                  "observation/gripper_opening": batch["next_observation/gripper_opening"],
                  "observation/height": batch["next_observation/height"],
                  "action": action}).numpy()


@pytest.mark.parametrize("offset, lower", [(-3.0, "lagged"), (3.0, "polyak")])
def test_compute_targets_takes_the_min_of_both_copies_at_the_polyak_argmax(offset, lower):
    polyak, lagged = _nets(offset)
    batch = _batch()
    cem, targets = CEMConfig(), TargetConfig()
    target, next_action = compute_targets((polyak, lagged), batch, cem, targets, seed=4)
    assert target.shape == (6,) and next_action.shape == (6, 8)

    q1, q2 = _q(polyak, batch, next_action), _q(lagged, batch, next_action)
    assert np.all(q2 < q1) if lower == "lagged" else np.all(q1 < q2)
    not_terminal = ~batch["is_terminal"]
    expected = batch["reward"] + 0.9 * not_terminal * np.minimum(q1, q2)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(target[batch["is_terminal"]], 1.0)

    # The action is CEM's best under the Polyak copy: no better than it among random actions.
    rng = np.random.default_rng(0)
    for _ in range(3):
        other = next_action.copy()
        other[:, :3] = rng.uniform(-0.05, 0.05, (6, 3))
        assert np.mean(_q(polyak, batch, other) <= q1 + 1e-6) > 0.5

    again, _ = compute_targets((polyak, lagged), batch, cem, targets, seed=4)
    np.testing.assert_array_equal(again, target)      # same seed, same CEM samples


def test_single_and_double_q_use_one_copy():
    polyak, lagged = _nets(-3.0)
    batch = _batch()
    _, a = compute_targets((polyak, lagged), batch, CEMConfig(), TargetConfig(), seed=1)
    q1, q2 = _q(polyak, batch, a), _q(lagged, batch, a)
    nt = ~batch["is_terminal"]
    for kind, v in (("single_q", q1), ("double_q", q2)):
        t, a2 = compute_targets((polyak, lagged), batch, CEMConfig(), TargetConfig(kind=kind),
                                seed=1)
        np.testing.assert_array_equal(a2, a)
        np.testing.assert_allclose(t, batch["reward"] + 0.9 * nt * v, rtol=1e-5, atol=1e-6)


def test_image_size_mismatch_is_a_clear_error():
    polyak, lagged = _nets(0.0)
    batch = _batch()
    batch["next_observation/image"] = np.zeros((6, 32, 32, 3), np.uint8)
    with pytest.raises(schemas.UserError, match=r"images are \(32, 32, 3\).*\(16, 16, 3\)"):
        compute_targets((polyak, lagged), batch, CEMConfig(), TargetConfig())


def test_targets_follow_the_exports_gripper_step_rule(tmp_path):
    from model.export import load_export, write_export
    from schemas.mdp import gripper_or_move

    polyak, lagged = _nets(0.0)
    nets = {"online": polyak, "polyak": polyak, "lagged": lagged}
    batch = _batch(64)
    moved = 0
    for moves in (True, False):
        export = load_export(write_export(str(tmp_path / f"exports-{moves}"), 3, nets,
                                          gripper_moves=moves))
        assert export.gripper_moves is moves
        _, next_action = compute_targets(export, batch, CEMConfig(), TargetConfig(), seed=2)
        executed = [np.array_equal(a, gripper_or_move(a, bool(closed)))
                    for a, closed in zip(next_action, batch["next_observation/gripper_closed"])]
        if moves:
            moved = len(executed) - sum(executed)
        else:
            assert all(executed)
    assert moved > 0    # with the paper's rule, the argmax's gripper commands do carry moves
    # A network that reads no gripper state still needs it for the rule.
    image_only = QNetwork(InputSpec(16, "image"), "tiny", "polyak")
    export = load_export(write_export(str(tmp_path / "image-only"), 3, {
        "online": image_only, "polyak": image_only, "lagged": image_only}, gripper_moves=False))
    del batch["next_observation/gripper_closed"]
    with pytest.raises(schemas.UserError, match="no 'next_observation/gripper_closed'.*"
                                                "robot.gripper_moves=false"):
        compute_targets(export, batch, CEMConfig(), TargetConfig(), seed=2)


def test_scripted_termination_targets_use_the_rule_for_the_terminate_bit(tmp_path):
    from model.export import load_export, write_export
    from schemas.mdp import scripted_termination

    polyak, lagged = _nets(0.0)
    path = write_export(str(tmp_path / "exports"), 3, {"online": polyak, "polyak": polyak,
                                                       "lagged": lagged},
                        termination="scripted")
    export = load_export(path)
    assert export.termination == "scripted"
    batch = _batch(12)
    target, next_action = compute_targets(export, batch, CEMConfig(), TargetConfig(), seed=2)
    want = [scripted_termination(bool(c), float(h), float(tz)) for c, h, tz in zip(
        batch["next_observation/gripper_closed"], batch["next_observation/height"],
        next_action[:, 2])]
    np.testing.assert_array_equal(next_action[:, 7], np.float32(want))
    q = np.minimum(_q(export.polyak, batch, next_action), _q(export.lagged, batch, next_action))
    np.testing.assert_allclose(target, batch["reward"] + 0.9 * ~batch["is_terminal"] * q,
                               rtol=1e-5, atol=1e-6)
    # A network that reads no height still needs it for the rule.
    image_only = QNetwork(InputSpec(16, "image"), "tiny", "polyak")
    path = write_export(str(tmp_path / "exports2"), 3, {"online": image_only, "polyak": image_only,
                                                        "lagged": image_only},
                        termination="scripted")
    del batch["next_observation/height"]
    with pytest.raises(schemas.UserError, match="no 'next_observation/height'.*scripted termina"):
        compute_targets(load_export(path), batch, CEMConfig(), TargetConfig(), seed=2)

"""The greedy CEM policy over a trained export: robot/'s interface, the right greedy choice,
epsilon-greedy wrapping, reproducible samples, and clear errors for mismatched observations."""

import numpy as np
import pytest

import schemas  # noqa: F401

pytest.importorskip("tensorflow")

from model_testlib import SIZE, write_shards  # noqa: E402

from schemas.mdp import action_bounds  # noqa: E402
from model.policy import GreedyCEMPolicy, load_policy  # noqa: E402
from model.train import train_until  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    pattern = write_shards(root / "labelled", 64, 4)
    config = load_config("demo", overrides=[
        "model.preset=tiny", f"robot.image_size={SIZE}", "train.batch_size=32",
        "train.optimizer=adam", "train.learning_rate=0.01", "train.shuffle_buffer=128",
        "robot.max_translation=0.03", "targets.polyak=0.9"])
    train_until(config, [(pattern, 1.0)], str(root / "work"), until_step=250, progress=False)
    return str(root / "work" / "exports")


def _observation(value, rng):
    return {"observation/image": np.clip(value + rng.integers(-10, 10, (SIZE, SIZE, 3)), 0,
                                         255).astype(np.uint8),
            "observation/gripper_closed": np.float32(0.0),
            "observation/gripper_opening": np.float32(0.088),
            "observation/height": np.float32(0.1)}


def test_greedy_policy_closes_on_an_object_and_stays_in_bounds(exports):
    policy = GreedyCEMPolicy.from_export(exports, seed=1)
    policy.reset()
    rng = np.random.default_rng(0)
    low, high = action_bounds(max_translation=0.03)      # the bounds the export was trained with
    closes = 0
    for step in range(10):
        a = policy.sample_action(_observation(200, rng), step)
        assert a.shape == (8,) and a.dtype == np.float32
        assert np.all(a >= low) and np.all(a <= high)
        closes += int(a[5] == 1.0 and a[6] == 0.0)
    assert closes >= 9                    # closing on a bright (object) image is what pays


def test_epsilon_greedy_wraps_the_greedy_policy(exports):
    from robot.policies import EpsilonGreedy

    rng = np.random.default_rng(0)
    obs = _observation(200, rng)
    greedy = load_policy(exports, seed=5)
    reference = GreedyCEMPolicy.from_export(exports, seed=5)
    never = EpsilonGreedy(greedy, epsilon=0.0, rng=0)
    never.reset()
    for step in range(3):
        np.testing.assert_array_equal(never.sample_action(obs, step),
                                      reference.sample_action(obs, step))
    always = EpsilonGreedy(load_policy(exports, seed=5), epsilon=1.0, rng=0)
    randoms = [always.sample_action(obs, s) for s in range(20)]
    assert sum(a[5] == 1.0 for a in randoms) < 15     # random actions, not the greedy close


def test_same_seed_same_actions(exports):
    rng = np.random.default_rng(0)
    # A closed gripper: the close this export favours is then no command (robot.gripper_moves is
    # false in the demo preset), so its best actions are moves, where fresh draws show. With an
    # open gripper every step is the same close in place, whatever CEM drew.
    obs = dict(_observation(120, rng), **{"observation/gripper_closed": np.float32(1.0)})
    a, b = GreedyCEMPolicy.from_export(exports), GreedyCEMPolicy.from_export(exports)
    a.seed(7)
    b.seed(7)
    seq_a = [a.sample_action(obs, s) for s in range(3)]
    seq_b = [b.sample_action(obs, s) for s in range(3)]
    np.testing.assert_array_equal(seq_a, seq_b)
    assert not np.array_equal(seq_a[0], seq_a[1])   # a fresh CEM draw every step


def test_observation_that_does_not_match_the_export(exports):
    policy = GreedyCEMPolicy.from_export(exports)
    obs = _observation(100, np.random.default_rng(0))
    with pytest.raises(UserError, match=r"export .*export-000000250.*images are \(32, 32, 3\)"):
        policy.sample_action(dict(obs, **{"observation/image": np.zeros((32, 32, 3), np.uint8)}),
                             0)
    del obs["observation/height"]
    with pytest.raises(UserError, match=r"no 'observation/height'"):
        policy.sample_action(obs, 0)


def test_evaluate_refuses_an_export_that_does_not_fit_the_cell(exports, tmp_path):
    from pipelines.cli import invoke

    out = tmp_path / "eval"
    # The export was trained at SIZE pixels with 0.03 m moves; the demo cell renders 64 pixels.
    with pytest.raises(UserError, match=rf"export-000000250.*trained on {SIZE}x{SIZE} images "
                                        r"but the cell renders 64x64 \(robot.image_size\)"):
        invoke(["evaluate", "--policy", exports, "--objects", "test", "--out", str(out)])
    with pytest.raises(UserError, match=r"action bounds up to translation 0.03 m.*allows 0.08 m"):
        invoke(["evaluate", "--policy", exports, "--objects", "test", "--out", str(out),
                "--set", f"robot.image_size={SIZE}"])
    # Trained under the demo preset's scripted termination.
    with pytest.raises(UserError, match=r"trained with robot.termination=scripted but the cell "
                                        r"uses learned"):
        invoke(["evaluate", "--policy", exports, "--objects", "test", "--out", str(out),
                "--set", f"robot.image_size={SIZE}", "--set", "robot.max_translation=0.03",
                "--set", "robot.termination=learned"])
    assert not out.exists() or not any(out.rglob("*.json"))   # refused before any robot ran


def test_greedy_policy_follows_the_exports_gripper_step_rule(tmp_path):
    from model.export import write_export
    from model.network import InputSpec, QNetwork
    from schemas.mdp import gripper_or_move
    from schemas.config import RobotConfig

    net = QNetwork(InputSpec(SIZE, "image"), "tiny", "polyak")   # reads no gripper state
    path = write_export(str(tmp_path / "exports"), 1, {"online": net, "polyak": net,
                                                       "lagged": net}, gripper_moves=False)
    policy = GreedyCEMPolicy.from_export(path, seed=3)
    assert policy.gripper_moves is False
    rng = np.random.default_rng(2)
    batch = {k: np.stack([v] * 32) for k, v in _observation(120, rng).items()}
    batch["observation/gripper_closed"] = (np.arange(32) % 2).astype(np.float32)
    actions = policy.sample_actions(batch)
    assert ((actions[:, 5] > 0.5) | (actions[:, 6] > 0.5)).any()
    for a, closed in zip(actions, batch["observation/gripper_closed"]):
        np.testing.assert_array_equal(a, gripper_or_move(a, bool(closed)))
    del batch["observation/gripper_closed"]
    with pytest.raises(UserError, match="no 'observation/gripper_closed'.*gripper_moves=false"):
        policy.sample_actions(batch)
    config = dict(image_size=SIZE, max_translation=0.08)
    policy.check_fits(RobotConfig(**config, gripper_moves=False))
    with pytest.raises(UserError, match=r"trained with robot.gripper_moves=false but the cell "
                                        r"uses true; use --set robot.gripper_moves=false"):
        policy.check_fits(RobotConfig(**config))


def test_greedy_policy_under_scripted_termination_follows_algorithm_2(exports):
    from schemas.mdp import scripted_termination

    policy = GreedyCEMPolicy.from_export(exports)
    assert policy.termination == "scripted"     # trained under the demo preset, which uses it
    rng = np.random.default_rng(5)
    for closed, height in ((0.0, 0.2), (1.0, 0.05), (1.0, 0.2), (1.0, 0.2)):
        obs = dict(_observation(120, rng), **{"observation/gripper_closed": np.float32(closed),
                                              "observation/height": np.float32(height)})
        a = policy.sample_action(obs, 0)
        assert a[7] == float(scripted_termination(bool(closed), height, float(a[2])))


def test_evaluate_refuses_an_export_of_another_cell(exports, tmp_path):
    import json
    import shutil

    from model.export import latest_export
    from pipelines.cli import invoke
    from schemas.config import RobotConfig

    path = latest_export(exports)
    trained = RobotConfig(image_size=SIZE).cell_identity()
    # The trainer records the cell of its robot config, which its data came from.
    assert json.loads(open(f"{path}/manifest.json").read())["cell"] == trained
    fits = ["--set", f"robot.image_size={SIZE}", "--set", "robot.max_translation=0.03"]
    out = tmp_path / "eval"
    other = RobotConfig(image_size=SIZE, camera="shoulder", object_scale=1.0).cell_identity()
    with pytest.raises(UserError) as err:
        invoke(["evaluate", "--policy", exports, "--objects", "test", "--out", str(out), *fits,
                "--set", "robot.camera=shoulder", "--set", "robot.object_scale=1"])
    assert str(err.value) == (
        f"export {path}: trained on images of {trained} but this cell is {other}; use --set "
        f"robot.camera=workspace --set robot.object_scale=0.8, or use an export trained on "
        f"{other}")
    # An export written before cells had identities was trained on the old cell.
    old = tmp_path / "old" / "export-000000250"
    shutil.copytree(path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["cell"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"export-000000250: has no cell identity: it was trained "
                                        r"on the cell as it was before identities \(cell-v1 .*"
                                        r"train an export on episodes collected by this cell"):
        invoke(["evaluate", "--policy", str(old), "--objects", "test", "--out", str(out), *fits])
    assert not out.exists() or not any(out.rglob("*.json"))   # refused before any robot ran

"""The trainer on real labelled shards: it learns, stops on NaN without touching the last good
checkpoint, refuses bad shards and checkpoints by name, and the Polyak/lag copies are exact."""

import math
import re
import os
import shutil

import numpy as np
import pytest

import schemas  # noqa: F401

tf = pytest.importorskip("tensorflow")

from model_testlib import SIZE, ordering_records, write_raw, write_shards  # noqa: E402

from model import data  # noqa: E402
from model.copies import TargetCopies  # noqa: E402
from model.export import load_export  # noqa: E402
from model.network import InputSpec, QNetwork  # noqa: E402
from model.train import NonFiniteLoss, Trainer, train_until  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.errors import RecordError, UserError  # noqa: E402


def _config(*overrides):
    return load_config("demo", overrides=[
        "model.preset=tiny", f"robot.image_size={SIZE}", "train.batch_size=32",
        "train.shuffle_buffer=128", "train.checkpoint_every=10", "train.log_every=10",
        "train.optimizer=adam", "train.learning_rate=0.01", "targets.lag_steps=20",
        *overrides])


def _q(net, image_value, close):
    n = 8
    action = np.zeros((n, 8), np.float32)
    action[:, 5:7] = (1.0, 0.0) if close else (0.0, 1.0)
    rng = np.random.default_rng(0)
    return float(np.mean(net.q({
        "observation/image": np.clip(image_value + rng.integers(-10, 10, (n, SIZE, SIZE, 3)),
                                     0, 255).astype(np.uint8),
        "observation/gripper_closed": np.zeros(n, np.float32),
        "observation/gripper_opening": np.full(n, 0.088, np.float32),
        "observation/height": np.full(n, 0.1, np.float32), "action": action}).numpy()))


def test_tiny_offline_training_learns_the_ordering_of_q(tmp_path):
    pattern = write_shards(tmp_path / "labelled", 64, 4)
    result = train_until(_config(), [(pattern, 1.0)], str(tmp_path / "work"), until_step=300,
                   progress=False)
    assert result.step == 300 and result.start_step == 0
    export = load_export(str(tmp_path / "work" / "exports"))
    assert export.step == 300
    # The Polyak copy (rate 0.99) trails the online weights, so it is held to a looser margin.
    for net, margin in ((export.online, 0.3), (export.polyak, 0.15)):
        good = _q(net, 200, close=True)
        assert good > _q(net, 200, close=False) + margin
        assert good > _q(net, 40, close=True) + margin
    tags = set()
    for events in (tmp_path / "work" / "logs").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(v.tag for v in event.summary.value)
    assert {"loss", "mean_q", "mean_target", "steps_per_s"} <= tags


def test_polyak_and_lag_updates_are_exact():
    spec = InputSpec(SIZE)
    online, polyak, lagged = (QNetwork(spec, "tiny", n) for n in ("online", "polyak", "lagged"))
    rate, lag = 0.7, 3
    copies = TargetCopies(online, polyak, lagged, rate, lag)
    copies.reset()
    rng = np.random.default_rng(0)
    history = [[v.numpy() for v in online.variables]]        # theta_1 after step 0
    expected = history[0]
    for step in range(1, 12):
        for v in online.variables:
            v.assign(rng.normal(0, 1, v.shape).astype(np.float32))
        copies.polyak_update()
        copies.after_step(step)
        expected = [rate * e + (1 - rate) * v.numpy() for e, v in zip(expected, online.variables)]
        history.append(expected)
        for got, want in zip(polyak.variables, expected):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        lag_from = max(0, lag * (step // lag - 1))
        for got, want in zip(lagged.variables, history[lag_from]):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_without_overwriting_the_last_good_checkpoint(tmp_path):
    good = write_shards(tmp_path / "good", 32, 2)
    work = str(tmp_path / "work")
    train_until(_config(), [(good, 1.0)], work, until_step=20, progress=False)
    ckpt_dir = os.path.join(work, "checkpoints")
    before = {n: os.path.getmtime(os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir)}

    def nan_target(i, example):
        if i > 0:  # the first record is checked before training starts; the rest are not
            example.features.feature["target"].float_list.value[:] = [math.nan]

    write_raw(tmp_path / "bad" / "shard-00000.tfrecord.gz", ordering_records(64, 9), nan_target)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 21.*ckpt-20"):
        train_until(_config(), [(str(tmp_path / "bad" / "*.gz"), 1.0)], work, until_step=40,
              progress=False)
    after = {n: os.path.getmtime(os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir)}
    assert after == before
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-20")
    assert sorted(os.listdir(os.path.join(work, "exports"))) == ["export-000000020"]


def test_missing_or_half_written_checkpoint_names_the_file(tmp_path):
    pattern = write_shards(tmp_path / "labelled", 32, 2)
    work = str(tmp_path / "work")
    train_until(_config(), [(pattern, 1.0)], work, until_step=20, progress=False)
    ckpt = os.path.join(work, "checkpoints", "ckpt-20")
    shutil.move(ckpt + ".index", str(tmp_path / "index"))
    with pytest.raises(UserError, match=r"ckpt-20: checkpoint is missing or half-written"):
        train_until(_config(), [(pattern, 1.0)], work, until_step=30, progress=False)
    shutil.move(str(tmp_path / "index"), ckpt + ".index")
    data_file = ckpt + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    with pytest.raises(UserError, match=r"ckpt-20: cannot restore checkpoint"):
        train_until(_config(), [(pattern, 1.0)], work, until_step=30, progress=False)


def _version(bad_indices):
    def edit(i, example):
        if i in bad_indices:
            example.features.feature["schema_version"].int64_list.value[:] = [99]
    return edit


def test_shards_of_an_unknown_schema_version_name_the_file(tmp_path):
    first_bad = tmp_path / "a" / "shard-00000.tfrecord.gz"
    write_raw(first_bad, ordering_records(8, 0), _version({0}))
    with pytest.raises(RecordError, match=r"shard-00000.tfrecord.gz, record 0: schema version 99"):
        data.make_dataset([(str(first_bad), 1.0)], InputSpec(SIZE), 4)

    later_bad = tmp_path / "b" / "shard-00007.tfrecord.gz"
    write_raw(later_bad, ordering_records(64, 0), _version(set(range(1, 64))))
    with pytest.raises(UserError, match=r"training input at step 1: .*schema version.*"
                                        r"shard-00007.tfrecord.gz"):
        train_until(_config("train.batch_size=8"), [(str(later_bad), 1.0)], str(tmp_path / "w"),
              until_step=5, progress=False)


def test_transitions_without_targets_are_refused(tmp_path):
    from schemas.fake import fake_records
    from schemas.tfrecord_io import write_records

    path = tmp_path / "shard-00000.tfrecord.gz"
    write_records(str(path), fake_records("transition", 4, image_size=SIZE))
    with pytest.raises(UserError, match=r"shard-00000.tfrecord.gz: holds transition records"):
        Trainer(_config(), [(str(path), 1.0)], str(tmp_path / "w"))


def test_weighted_mixing_and_training_only_augmentation(tmp_path):
    rng = np.random.default_rng(0)
    from model_testlib import labelled

    for name, target in (("zeros", 0.0), ("ones", 1.0)):
        write_raw(tmp_path / name / "shard-00000.tfrecord.gz",
                  [labelled(rng, 120, True, target) for _ in range(64)])
    mix = [(str(tmp_path / "zeros" / "*.gz"), 3.0), (str(tmp_path / "ones" / "*.gz"), 1.0)]
    ds = data.make_dataset(mix, InputSpec(SIZE), 64, seed=1, augment=False)
    targets = np.concatenate([t.numpy() for _, t in ds.take(20)])
    assert abs(targets.mean() - 0.25) < 0.05

    plain = data.make_dataset([mix[1]], InputSpec(SIZE), 64, training=False)
    images, _ = next(iter(plain))
    jittered = data.augment_images(images["observation/image"], tf.constant([0, 1], tf.int64),
                                   crop_pad=2)
    assert jittered.dtype == tf.uint8 and jittered.shape == images["observation/image"].shape
    assert not np.array_equal(jittered.numpy(), images["observation/image"].numpy())
    # Evaluation input is the records' own pixels: no augmentation outside training.
    from schemas.tfrecord_io import read_records
    first = next(read_records(str(tmp_path / "ones" / "shard-00000.tfrecord.gz")))
    np.testing.assert_array_equal(images["observation/image"].numpy()[0],
                                  first["observation/image"])


def test_random_crop_is_an_exact_shift():
    # 64 px, as the presets train on: bilinear crops there read a neighbouring pixel now and then.
    size, pad = 64, 4
    image = np.random.default_rng(1).integers(0, 256, (1, size, size, 3), np.uint8)
    padded = np.pad(image[0], ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    windows = {padded[y:y + size, x:x + size].tobytes()
               for y in range(2 * pad + 1) for x in range(2 * pad + 1)}
    batch = tf.constant(np.repeat(image, 256, 0))
    crops = data.random_crop(batch, tf.constant([3, 4], tf.int64), pad).numpy()
    # Every crop a window, those at the padded edges included (offset 2 * pad).
    assert all(c.tobytes() in windows for c in crops)
    assert len({c.tobytes() for c in crops}) > 40
    corner = padded[2 * pad:, 2 * pad:].tobytes()
    assert any(c.tobytes() == corner for c in crops)


def test_compiled_augmentation_is_exact_and_repeatable():
    image = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(1, 12, 12, 3)
    padded = np.pad(image[0], ((4, 4), (4, 4), (0, 0)), mode="symmetric")
    windows = {padded[y:y + 12, x:x + 12].tobytes() for y in range(9) for x in range(9)}
    compiled_crop = tf.function(data.random_crop, jit_compile=True)
    crops = compiled_crop(tf.constant(np.repeat(image, 64, 0)), tf.constant([3, 4], tf.int64),
                          4).numpy()
    assert all(c.tobytes() in windows for c in crops)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), np.uint8))
    seed = tf.constant([5, 6], tf.int64)
    once = data.compiled_augment_images(images, seed, 4).numpy()
    assert once.dtype == np.uint8 and once.shape == images.shape
    # XLA draws its own random stream: the same seed gives the same images, another seed others.
    np.testing.assert_array_equal(once, data.compiled_augment_images(images, seed, 4).numpy())
    other = data.compiled_augment_images(images, tf.constant([5, 7], tf.int64), 4).numpy()
    assert not np.array_equal(once, other)


def test_dataset_directories_must_be_complete(tmp_path):
    directory = tmp_path / "epoch-0"
    write_shards(directory, 8, 2)
    with pytest.raises(UserError, match=r"epoch-0: no manifest.json"):
        data.expand([(str(directory), 1.0)])
    (directory / "manifest.json").write_text("{}")
    files, weight = data.expand([(str(directory), 2.0)])[0]
    assert [os.path.basename(f) for f in files] == ["shard-00000.tfrecord.gz",
                                                    "shard-00001.tfrecord.gz"] and weight == 2.0
    with pytest.raises(UserError, match=r"nothing\*: no labelled shards match"):
        data.expand([(str(tmp_path / "nothing*"), 1.0)])


def test_losses():
    from model.train import loss_fn

    logits = tf.constant([-2.0, 0.0, 3.0])
    target = tf.constant([0.1, 0.5, -0.05])
    q = tf.sigmoid(logits).numpy()
    t = target.numpy()
    c = np.clip(t, 0.0, 1.0)   # cross entropy's labels are clipped to [0, 1]
    expected_ce = np.mean(-c * np.log(q) - (1 - c) * np.log(1 - q))
    np.testing.assert_allclose(loss_fn("cross_entropy")(logits, target).numpy(), expected_ce,
                               rtol=1e-5)
    np.testing.assert_allclose(loss_fn("squared_error")(logits, target).numpy(),
                               np.mean((q - t) ** 2), rtol=1e-5)


def test_cross_entropy_is_bounded_for_targets_below_zero():
    # A step-penalty target (-0.05 + gamma * V, V near 0) must not make the loss fall without
    # bound as the logit goes to -inf: Q would be driven to -inf logits instead of settling at 0.
    from model.train import loss_fn

    ce = loss_fn("cross_entropy")
    target = tf.constant([-0.05])
    losses = [float(ce(tf.constant([x]), target)) for x in (-5.0, -30.0, -300.0)]
    assert min(losses) >= 0.0
    logit = tf.Variable([-30.0])
    with tf.GradientTape() as tape:
        loss = ce(logit, target)
    assert abs(float(tape.gradient(loss, logit)[0])) < 1e-6


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    from pipelines.cli import main

    status = main(["train", "--data", str(tmp_path / "none*"), "--workdir", str(tmp_path / "w"),
                   "--set", "model.preset=tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith("qtopt train: error: ") and "none*: no labelled shards" in err[-1]


def test_runs_without_input_checkpoints_do_not_replay_the_same_batches(tmp_path):
    """Finetuning trains in short chunks over the same files with checkpoint_input off: each
    chunk must read on, not start the same shuffled stream again."""
    from model_testlib import SIZE, write_shards

    from model.train import Trainer

    pattern = write_shards(tmp_path / "labelled", 64, 2)
    cfg = load_config("demo", overrides=[
        "model.preset=tiny", f"robot.image_size={SIZE}", "train.batch_size=8",
        "train.shuffle_buffer=32", "train.checkpoint_every=5", "train.checkpoint_input=false"])

    def first_targets(workdir):
        trainer = Trainer(cfg, [(pattern, 1.0)], str(workdir))
        trainer.restore()
        return next(trainer.iterator)[0]["observation/image"].numpy(), trainer

    fresh, trainer = first_targets(tmp_path / "a")
    again, _ = first_targets(tmp_path / "b")
    np.testing.assert_array_equal(fresh, again)          # same seed, same data: same stream
    trainer.run(until_step=5, progress=False)
    resumed, _ = first_targets(tmp_path / "a")          # from the step-5 checkpoint
    assert not np.array_equal(resumed, fresh)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_of_a_resumed_run_counts_only_its_own_steps():
    import io

    from model.train import StepProgress

    clock, out = _Clock(), io.StringIO()
    bar = StepProgress(19000, 20000, stream=out, every=10, clock=clock)
    clock.t = 30.0                       # the first step: tracing, not counted
    bar.update(19001, 0.5, 0.1)
    assert out.getvalue() == ""
    for step in range(19002, 19102):     # 100 steps at 10 per second
        clock.t += 0.1
        bar.update(step, 0.5, 0.1)
    lines = out.getvalue().splitlines()
    assert lines == ["train: step 19101/20000 (96%), 10.0 steps/s, ETA 90 s, loss 0.5000, "
                     "mean_q 0.100"]
    for step in range(19102, 20001):
        clock.t += 0.05                  # faster now: 20 per second
        bar.update(step, 0.25, 0.2)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("train: step 20000/20000 (100%), ") and last.endswith(
        "ETA 0 s, loss 0.2500, mean_q 0.200")
    assert len(out.getvalue().splitlines()) == 1 + 4 + 1   # every 10 s, and the last step


def test_resumed_training_prints_its_progress(tmp_path, capsys):
    pattern = write_shards(tmp_path / "labelled", 32, 2)
    work = str(tmp_path / "work")
    train_until(_config(), [(pattern, 1.0)], work, until_step=10, progress=False)
    assert capsys.readouterr().out == ""
    train_until(_config(), [(pattern, 1.0)], work, until_step=20)
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("train: step 20/20 (100%), ") and "loss " in out[-1]


def test_training_keeps_cells_apart_and_its_export_names_the_cell(tmp_path):
    import json

    from schemas.config import RobotConfig
    from schemas.specs import CELL_BEFORE_IDENTITIES

    current = RobotConfig(image_size=SIZE).cell_identity()
    other = RobotConfig(image_size=SIZE, object_scale=1.0).cell_identity()
    dirs = {}
    for name, manifest in (("here", {"cell": current}), ("there", {"cell": other}),
                           ("old", {})):  # a dataset published before cells had identities
        dirs[name] = str(tmp_path / name)
        write_shards(tmp_path / name, 16, 1)
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
    work = str(tmp_path / "work")
    with pytest.raises(UserError) as err:
        train_until(_config(), [(dirs["here"], 0.5), (dirs["there"], 0.5)], work, until_step=1,
              progress=False)
    assert str(err.value).startswith(
        f"training would mix data of different cells: {current} ({dirs['here']}) and {other} "
        f"({dirs['there']}); ")
    with pytest.raises(UserError) as err:
        train_until(_config(), [(dirs["there"], 1.0)], work, until_step=1, progress=False)
    assert str(err.value) == (f"training data {dirs['there']} was made by {other} but the robot "
                              f"config is {current}; use --set robot.object_scale=1")
    with pytest.raises(UserError, match=rf"made by {re.escape(CELL_BEFORE_IDENTITIES)} but .*"
                                        r"the cell itself has changed since"):
        train_until(_config(), [(dirs["old"], 1.0)], work, until_step=1, progress=False)
    assert not os.path.exists(os.path.join(work, "exports"))
    # The robot config of that cell trains on its data, and the export says which cell it was.
    train_until(_config("robot.object_scale=1"), [(dirs["there"], 1.0)], work, until_step=2,
          progress=False)
    assert load_export(os.path.join(work, "exports")).cell == other


def _sampled_q(net, image_value, samples=32):
    """Mean Q over actions drawn as CEM's first iteration draws them, at bright/dark states."""
    from model.cem import first_draw

    n = 8
    rng = np.random.default_rng(1)
    image = np.clip(image_value + rng.integers(-10, 10, (n, SIZE, SIZE, 3)), 0, 255).astype(
        np.uint8)
    state = np.tile(np.array([[0.0, 0.088 / 0.088, 0.1 / 0.25]], np.float32), (n, 1))
    actions = first_draw(n, tf.constant([3, 0], tf.int64), samples)
    features = net.features(image)
    state = net.state_vector({"observation/image": image,
                              "observation/gripper_closed": np.zeros(n, np.float32),
                              "observation/gripper_opening": np.full(n, 0.088, np.float32),
                              "observation/height": np.full(n, 0.1, np.float32)})
    return float(np.mean(net.q_samples(features, state, actions).numpy()))


def test_the_conservative_term_lowers_q_of_actions_the_data_lacks(tmp_path):
    """The fake data's actions are one-hot close or open with a random pose; the first draw's
    samples mostly carry no gripper command at all. With the term, their Q falls below the
    recorded actions' while the ordering the targets teach holds."""
    pattern = write_shards(tmp_path / "labelled", 64, 4)
    nets = {}
    for weight in (0.0, 1.0):
        work = tmp_path / f"work-{weight}"
        # The gap the term opens grows with training: 500 steps leave it clear of the margin.
        train_until(_config(f"train.conservative={weight}", "train.deterministic=true"),
              [(pattern, 1.0)], str(work), until_step=500, progress=False)
        nets[weight] = load_export(str(work / "exports")).online
    plain, conservative = nets[0.0], nets[1.0]
    assert _q(conservative, 200, close=True) > _q(conservative, 200, close=False) + 0.3
    gap = {w: _q(net, 200, close=True) - _sampled_q(net, 200) for w, net in nets.items()}
    assert gap[1.0] > gap[0.0] + 0.1, gap


def test_one_training_call_exports_a_curve(tmp_path):
    from model.export import complete_exports, export_step

    pattern = write_shards(tmp_path / "labelled", 32, 2)
    train_until(_config("train.export_every=20"), [(pattern, 1.0)], str(tmp_path / "work"),
          until_step=50, progress=False)
    exports = complete_exports(str(tmp_path / "work" / "exports"))
    assert [export_step(p) for p in exports] == [20, 40, 50]
    weights = [load_export(p).online.model.get_weights()[0] for p in exports]
    assert not np.array_equal(weights[0], weights[1])


def test_learning_rate_decays_by_the_optimizer_step_across_a_resume(tmp_path):
    pattern = write_shards(tmp_path / "labelled", 64, 2)
    cfg = _config("train.decay_steps=20", "train.decay_floor=0.1")
    work = str(tmp_path / "work")
    trainer = Trainer(cfg, [(pattern, 1.0)], work)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.01)
    trainer.run(until_step=10, progress=False)
    # Half-way along the cosine: 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 of the initial rate.
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.01 * 0.55, rel=1e-4)
    resumed = Trainer(cfg, [(pattern, 1.0)], work)
    resumed.run(until_step=25, progress=False)
    assert float(resumed.optimizer.learning_rate) == pytest.approx(0.001, rel=1e-4)
    constant = Trainer(_config(), [(pattern, 1.0)], str(tmp_path / "constant"))
    constant.run(until_step=10, progress=False)
    assert float(constant.optimizer.learning_rate) == pytest.approx(0.01)


def test_one_trainer_takes_new_data_between_runs_and_exports_when_asked(tmp_path):
    from model_testlib import labelled

    rng = np.random.default_rng(0)
    for name, target in (("zeros", 0.0), ("ones", 1.0)):
        write_raw(tmp_path / name / "shard-00000.tfrecord.gz",
                  [labelled(rng, 120, True, target) for _ in range(64)])
    cfg = _config("train.checkpoint_input=false")
    work = tmp_path / "work"
    trainer = Trainer(cfg, [(str(tmp_path / "zeros" / "*.gz"), 1.0)], str(work))
    first = trainer.run(until_step=10, progress=False, export=False)
    assert first.export_path is None and not (work / "exports").exists()
    trainer.use_data([(str(tmp_path / "ones" / "*.gz"), 1.0)])
    _, target = next(trainer.iterator)
    assert np.all(target.numpy() == 1.0)
    second = trainer.run(until_step=20, progress=False)
    assert (second.start_step, second.step) == (10, 20)
    assert load_export(str(work / "exports")).step == 20
    # A trainer whose input position is checkpointed cannot swap its input.
    kept = Trainer(_config(), [(str(tmp_path / "zeros" / "*.gz"), 1.0)], str(tmp_path / "w2"))
    with pytest.raises(UserError, match="checkpoint_input"):
        kept.use_data([(str(tmp_path / "ones" / "*.gz"), 1.0)])


def test_a_new_mix_of_the_same_datasets_keeps_the_pipeline_and_follows_the_weights(tmp_path):
    from model_testlib import labelled

    rng = np.random.default_rng(0)
    for name, target in (("zeros", 0.0), ("ones", 1.0)):
        write_raw(tmp_path / name / "shard-00000.tfrecord.gz",
                  [labelled(rng, 120, True, target) for _ in range(64)])
    zeros, ones = str(tmp_path / "zeros" / "*.gz"), str(tmp_path / "ones" / "*.gz")
    cfg = _config("train.checkpoint_input=false", "train.shuffle_buffer=8")
    trainer = Trainer(cfg, [(zeros, 0.9), (ones, 0.1)], str(tmp_path / "work"))
    pipeline, iterator = trainer.input_dataset, trainer.iterator

    def share_of_ones(batches: int) -> float:
        return float(np.mean([next(trainer.iterator)[1].numpy().mean()
                              for _ in range(batches)]))

    assert share_of_ones(30) < 0.2
    trainer.use_data([(zeros, 0.1), (ones, 0.9)])
    assert trainer.input_dataset is pipeline and trainer.iterator is iterator
    share_of_ones(5)                    # what the shuffle buffer and prefetch still held
    assert share_of_ones(30) > 0.8
    # Other files: a new pipeline.
    trainer.use_data([(ones, 1.0)])
    assert trainer.input_dataset is not pipeline

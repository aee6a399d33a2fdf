"""The diagnostic benchmarks' own arithmetic and their runs on real records on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines_testlib import make_export, write_episodes


def test_close_height_bands_count_rate_and_auc():
    from benchmarks.close_height import band_table

    height = np.array([0.01, 0.02, 0.05, 0.06, 0.10, 0.20], np.float32)
    success = np.array([1, 0, 1, 0, 0, 0], np.float32)
    q = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5], np.float32)
    rows = band_table(height, success, [0.03, 0.08], q)
    assert [r["height_cm"] for r in rows] == ["0-3", "3-8", "8-", "all"]
    assert [r["grasps"] for r in rows] == [2, 2, 2, 6]
    assert [r["success"] for r in rows] == [0.5, 0.5, 0.0, 0.333]
    # Within 0-3 cm the Q ranks the success first, within 3-8 cm last; the 8- band has no
    # success to rank. Over all six: 5 of the 8 (success, failure) pairs are in order.
    assert [r["auc"] for r in rows] == [1.0, 0.0, None, 0.625]
    assert rows[0]["mean_q"] == 0.5
    assert "auc" not in band_table(height, success, [0.03])[0]


def test_close_height_runs_on_episode_files_with_an_export(tmp_path, capsys):
    from benchmarks.close_height import main
    from schemas import mdp
    from schemas.tfrecord_io import read_records

    paths = write_episodes(tmp_path / "eps", files=2, per_file=4, seed=3)
    exports = tmp_path / "exports"
    make_export(exports)
    assert main([str(tmp_path / "eps" / "*.tfrecord.gz"), "--export", str(exports)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    closing = [ep for p in paths for ep in read_records(str(p))
               if any(mdp.decode_action(a).gripper == "close" for a in ep["action"])]
    assert closing, "the fake episodes should close the gripper somewhere"
    assert out["grasps"] == len(closing)
    assert out["bands"][-1]["grasps"] == len(closing)
    assert sum(b["grasps"] for b in out["bands"][:-1]) == len(closing)
    assert out["export"].endswith("export-000000100")
    assert all(b["mean_q"] is None or 0.0 < b["mean_q"] < 1.0 for b in out["bands"])


def test_close_height_names_what_is_wrong(tmp_path):
    from benchmarks.close_height import main

    with pytest.raises(SystemExit, match="no episode files match"):
        main([str(tmp_path / "none-*.tfrecord.gz")])
    write_episodes(tmp_path / "eps", files=1, per_file=1)
    with pytest.raises(SystemExit, match="--edges"):
        main([str(tmp_path / "eps" / "*.tfrecord.gz"), "--edges", "3cm"])


def test_finetune_chunks_trains_both_sides_and_reports_their_ratio(capsys):
    from benchmarks.finetune_chunks import main

    assert main(["--steps", "6", "--chunk", "2", "--repeats", "1", "--records", "32",
                 "--set", "model.preset=tiny", "--set", "robot.image_size=32",
                 "--set", "train.batch_size=8", "--set", "train.shuffle_buffer=16"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["chunked_steps_per_s"] > 0 and out["single_steps_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["chunked_steps_per_s"] / out["single_steps_per_s"],
                                         rel=0.02)
    assert (out["steps"], out["chunk"], out["model"]) == (6, 2, "tiny")
    with pytest.raises(SystemExit, match="--share"):
        main(["--share", "1.5"])


# Real episodes of a small-image demo cell: the probe's replay needs the cell that wrote them.
PROBE_CELL = ["robot.image_size=32"]


@pytest.fixture(scope="module")
def cell_episodes(tmp_path_factory):
    """Ten scripted episodes (exploring, so closes vary) collected by the cell, in one file."""
    from robot.cell import SimCell
    from robot.episode import run_episode
    from pipelines.machinery.policies import make_policy
    from schemas.config import load_config
    from schemas.tfrecord_io import RecordWriter

    config = load_config("demo", overrides=PROBE_CELL).robot
    cell = SimCell(config, "train")
    policy = make_policy("scripted", config, scripted_epsilon=0.2)
    path = tmp_path_factory.mktemp("cell-episodes") / "ep.tfrecord.gz"
    try:
        records = [run_episode(cell, policy, seed) for seed in range(10)]
    finally:
        cell.close()
    with RecordWriter(str(path)) as writer:
        for record in records:
            writer.write_record(record)
    return path, records


def test_grasp_probe_folds_split_every_episode_once():
    from benchmarks.grasp_probe import fold_splits

    splits = fold_splits(10, 3, np.random.default_rng(0))
    assert [len(held) for _, held in splits] == [4, 3, 3]
    assert sorted(np.concatenate([held for _, held in splits])) == list(range(10))
    for train, held in splits:
        assert sorted(np.concatenate([train, held])) == list(range(10))
    # One fold: the single held-out fifth the probe used before folds, same permutation.
    (train, held), = fold_splits(10, 1, np.random.default_rng(0))
    assert list(held) == list(np.random.default_rng(0).permutation(10)[:2]) and len(train) == 8


def test_grasp_probe_privileged_predictor_ranks_by_a_band():
    from benchmarks.grasp_probe import auc, fit_logistic

    # Success in a band of the second feature: the squares make it learnable.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (np.abs(x[:, 1]) < 0.7).astype(np.float64)
    score = fit_logistic(x[:300], y[:300])
    assert auc(score(x[300:]), y[300:]) > 0.95


def test_grasp_probe_replay_reproduces_recorded_closes(cell_episodes):
    from benchmarks.grasp_probe import probe_states, replay_close
    from robot.cell import SimCell
    from schemas.config import load_config

    path, records = cell_episodes
    data = probe_states([str(path)], "close", replay=True)
    assert len(data["replay"]) >= 2
    cell = SimCell(load_config("demo", overrides=PROBE_CELL).robot, "train")
    try:
        for record in data["replay"][:3]:
            features, check = replay_close(cell, record)
            assert check["match"], check
            assert check["height_error"] < 1e-3 and check["image_error"] == 0.0
            distance, top, height, offset = features
            assert height == pytest.approx(float(record["height"]), abs=1e-3)
            assert 0.0 <= distance < 0.5 and 0.0 < top < 0.2 and 0.0 <= offset <= np.pi / 2
        # Another seed builds another tray: the replay says so.
        _, check = replay_close(cell, {**data["replay"][0], "seed": data["replay"][0]["seed"] + 1})
        assert not check["match"] and not check["same_objects"]
    finally:
        cell.close()


def test_grasp_probe_reports_image_and_privileged_auc_over_folds(cell_episodes, capsys):
    from benchmarks.grasp_probe import main
    from schemas.mdp import decode_action

    path, records = cell_episodes
    assert main([str(path), "--steps", "4", "--eval-every", "2", "--folds", "2",
                 "--set", "model.preset=tiny", "--set", "train.learning_rate=0.0003",
                 "--set", "train.batch_size=4", *[a for kv in PROBE_CELL for a in ("--set", kv)]
                 ]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["model"], out["learning_rate"], out["batch_size"]) == ("tiny", 0.0003, 4)
    assert [c["step"] for c in out["curve"]] == [2, 4]
    closing = [r for r in records if any(decode_action(a).gripper == "close"
                                         for a in r["action"])]
    assert out["episodes"] == out["held_out"] == len(closing) and out["folds"] == 2
    assert out["successes"] == sum(r["success"] for r in closing)
    assert len(out["holdout_auc_folds"]) == len(out["privileged_auc_folds"]) == 2
    assert len(out["curve"][-1]["holdout_auc_folds"]) == 2
    assert "holdout_auc" in out and "privileged_auc" in out
    assert out["replay_mismatches"] == 0 and out["replay_max_height_error_mm"] == 0.0
    assert out["privileged_features"] == ["distance", "object_top", "gripper_height",
                                           "yaw_offset"]


def test_grasp_probe_counts_replay_mismatches_of_another_cell(tmp_path, capsys):
    from benchmarks.grasp_probe import main

    # Fake episodes: their seeds and actions were never run in a cell, so no replay matches.
    write_episodes(tmp_path / "eps", files=2, per_file=8, seed=5)
    assert main([str(tmp_path / "eps" / "*.tfrecord.gz"), "--steps", "2", "--folds", "1",
                 "--set", "model.preset=tiny", "--set", "train.batch_size=4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["folds"] == 1 and out["held_out"] == out["episodes"] // 5
    assert out["replay_mismatches"] == out["episodes"] > 0


def test_target_vs_return_arithmetic():
    from benchmarks.target_vs_return import compare, episode_returns

    np.testing.assert_allclose(episode_returns(np.array([0.0, 0.0, 1.0]), 0.5), [0.25, 0.5, 1.0])
    # Episode a succeeds at its third step, b fails at its second (steps given out of order).
    rows = {"a": [(2, 1.0, True, 1.0), (0, 0.0, False, 0.45), (1, 0.0, False, 0.5)],
            "b": [(1, 0.0, True, 0.0), (0, 0.0, False, 0.3)]}
    out = compare(rows, gamma=0.5, max_steps_to_end=2)
    assert (out["episodes"], out["successes"], out["transitions"]) == (2, 1, 5)
    assert out["mean_return"] == pytest.approx((0.25 + 0.5 + 1.0) / 5)
    assert out["mean_target"] == pytest.approx((1.0 + 0.45 + 0.5 + 0.0 + 0.3) / 5)
    assert out["ratio"] == pytest.approx(2.25 / 1.75, abs=0.01)
    assert out["by_outcome"]["failure"] == {"transitions": 2, "mean_target": 0.15,
                                            "mean_return": 0.0}
    assert [(k["steps_to_end"], k["transitions"], k["mean_target"], k["mean_return"])
            for k in out["by_steps_to_end"]] == [("0", 2, 0.5, 0.5), ("1", 2, 0.4, 0.25),
                                                 (">=2", 1, 0.45, 0.25)]
    # An episode cut off without a terminal step has no known return: left out, counted.
    cut = compare({**rows, "d": [(0, 0.0, False, 0.9)]}, gamma=0.5, max_steps_to_end=2)
    assert (cut["episodes"], cut["unterminated_episodes"]) == (2, 1)
    assert cut["mean_target"] == out["mean_target"]
    with pytest.raises(SystemExit, match="episode b: steps"):
        compare({"b": [(1, 0.0, True, 0.0)]}, gamma=0.5)
    with pytest.raises(SystemExit, match="episode c: steps"):
        compare({"c": [(0, 0.0, True, 0.0), (1, 1.0, True, 1.0)]}, gamma=0.5)
    with pytest.raises(SystemExit, match="no episode with a terminal step"):
        compare({"d": [(0, 0.0, False, 0.9)]}, gamma=0.5)


def test_target_vs_return_on_a_real_relabel_output(tmp_path, capsys):
    from benchmarks.target_vs_return import main
    from pipelines_testlib import IN_PROCESS, qtopt, read_all

    write_episodes(tmp_path / "episodes", files=2, per_file=3, seed=3)
    assert qtopt("shard", "-i", f"{tmp_path}/episodes/*.gz", "-o", tmp_path / "transitions",
                 "--num-shards", 2, *IN_PROCESS) == 0
    export = make_export(tmp_path / "exports", step=100, seed=0)
    assert qtopt("relabel", "-i", tmp_path / "transitions", "-e", export,
                 "-o", tmp_path / "labelled", "--epoch", 0, *IN_PROCESS) == 0
    labelled = tmp_path / "labelled" / "epoch-0"
    assert main([str(labelled)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = read_all(labelled)
    by_episode = {}
    for r in records:
        by_episode.setdefault(r["episode_id"], []).append(r)
    ended = [rs for rs in by_episode.values() if any(r["is_terminal"] for r in rs)]
    kept = [r for rs in ended for r in rs]
    assert 0 < len(ended) and len(by_episode) == 6
    assert (out["episodes"], out["unterminated_episodes"]) == (len(ended), 6 - len(ended))
    assert out["transitions"] == len(kept)
    assert out["mean_target"] == pytest.approx(np.mean([r["target"] for r in kept]), abs=1e-4)
    scored = out["by_steps_to_end"][0]   # the scored step: its target is its reward
    assert scored["transitions"] == len(ended)
    assert scored["mean_target"] == pytest.approx(scored["mean_return"], abs=1e-4)
    with pytest.raises(SystemExit, match="not labelled transitions"):
        main([str(tmp_path / "transitions")])


def test_oracle_grasp_geometry():
    import math

    from benchmarks.oracle_grasp import ANGLES, _hull, _overlap, calipers

    # A 2 x 6 cm rectangle turned by 30 degrees: 2 cm across at 30 degrees, 6 cm at 120.
    turn = math.radians(30)
    rot = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    corners = np.array([[-0.01, -0.03], [0.01, -0.03], [0.01, 0.03], [-0.01, 0.03]]) @ rot.T
    widths, middles = calipers(corners + [0.6, 0.0])
    assert widths.min() == pytest.approx(0.02)
    assert math.degrees(ANGLES[int(np.argmin(widths))]) == pytest.approx(30)
    assert widths.max() == pytest.approx(math.hypot(0.02, 0.06), abs=1e-3)
    assert middles[0] == pytest.approx(0.6)
    hull = _hull(np.vstack([corners, [[0.0, 0.0], [0.005, 0.01]]]))
    assert len(hull) == 4
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    assert _overlap(square, square + 0.5) and not _overlap(square, square + [1.5, 0.0])


def test_oracle_grasp_prints_one_line_with_its_figures(capfd):
    from benchmarks.oracle_grasp import main

    assert main(["--objects", "test", "--trays", "3", "--seed", "2"]) == 0
    captured = capfd.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, "pybullet's banners must not reach stdout"
    out = json.loads(lines[0])
    assert {"benchmark", "success", "ci95", "trays", "objects", "preset", "object_scale",
            "failures", "moving_at_start", "seconds"} <= set(out)
    assert (out["benchmark"], out["trays"], out["objects"]) == ("oracle_grasp", 3, "test")
    assert out["object_scale"] == 0.8 and out["preset"] == "demo"
    lo, hi = out["ci95"]
    assert 0.0 < lo <= out["success"] <= hi <= 1.0, "the privileged grasp should hold something"
    assert set(out["failures"]) == {"too_wide", "blocked", "slipped", "other"}
    assert sum(out["failures"].values()) == round(3 * (1 - out["success"]))
    assert 0.0 <= out["moving_at_start"] <= 1.0
    assert "3/3 trays" in captured.err


def test_oracle_grasp_names_bad_objects(tmp_path):
    from benchmarks.oracle_grasp import main

    with pytest.raises(SystemExit, match=f"{tmp_path}: is a directory"):
        main(["--objects", str(tmp_path), "--trays", "1"])


def test_camera_view_measures_the_workspace_camera_against_the_wide_one(capfd):
    from benchmarks import camera_view

    lines = {}
    for camera in ("workspace", "shoulder"):
        assert camera_view.main(["--trays", "2", "--set", f"robot.camera={camera}"]) == 0
        out = capfd.readouterr().out.strip().splitlines()
        assert len(out) == 1
        lines[camera] = json.loads(out[0])
    near, wide = lines["workspace"], lines["shoulder"]
    for line in (near, wide):
        assert 0.0 < line["workspace_fraction"] < 1.0
        assert line["object_px_p10"] <= line["object_px_median"]
        assert 0.0 <= line["finger_visible_fraction"] <= 1.0
        assert line["gripper_poses"] == 2 * 9 * len(camera_view.HEIGHTS)
    # The framed camera shows the workspace, the objects and the fingers larger.
    assert near["workspace_fraction"] > 2 * wide["workspace_fraction"]
    assert near["object_px_median"] > 2 * wide["object_px_median"]
    assert near["finger_px_low_median"] > wide["finger_px_low_median"]
    assert near["finger_px_min"] > wide["finger_px_min"]   # the wide view all but loses them


def test_train_speed_counts_flops_of_the_configured_network(capfd):
    import keras

    from benchmarks import train_speed

    # Multiply-accumulates per example, nested models included.
    inner_in = keras.Input((8, 8, 2))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, padding="same", name="c")(inner_in),
                        name="tower")
    x = keras.Input((8, 8, 2))
    y = keras.layers.Dense(5, name="d")(keras.layers.Flatten()(inner(x)))
    macs = train_speed.layer_macs(keras.Model(x, y))
    assert macs == {"tower/c": 8 * 8 * 4 * 3 * 3 * 2, "d": 8 * 8 * 4 * 5}

    sets = ["--set", "model.preset=tiny", "--set", "robot.image_size=32",
            "--set", "train.batch_size=8"]
    assert train_speed.main(["--seconds", "1", *sets]) == 0
    line = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert line["steps_per_s"] > 0 and line["matmul_gflops"] > 0 and line["gflop_per_step"] > 0
    assert abs(sum(line["flop_share"].values()) - 1.0) < 0.01
    assert line["flop_share"]["tower_convs"] > line["flop_share"]["dense"]
    assert 0 < line["utilisation"] == pytest.approx(line["achieved_gflops"]
                                                    / line["matmul_gflops"], abs=0.01)


def test_relabel_flops_counts_a_target_and_reports_its_rate(capfd):
    from benchmarks import relabel_flops
    from model.network import InputSpec, QNetwork
    from schemas.config import CEMConfig

    net = QNetwork(InputSpec(32), "tiny", "polyak")
    cem = CEMConfig(samples=16, elites=2, iterations=3)
    double, single = (relabel_flops.target_flops(net, cem, k)
                      for k in ("clipped_double_q", "single_q"))
    # Two towers and one more head call with the lagged copy; the head once per CEM sample.
    assert double["tower"] == 2 * single["tower"] > 0
    assert double["head"] * 48 == single["head"] * 49

    sets = ["--set", "model.preset=tiny", "--set", "robot.image_size=32"]
    assert relabel_flops.main(["--seconds", "1", "--batch", "16", *sets]) == 0
    line = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert line["targets_per_s"] > 0 and line["matmul_gflops"] > 0
    assert line["backup_s"] == pytest.approx(line["transitions"] / line["targets_per_s"], rel=0.01)
    assert 0 < line["utilisation"] == pytest.approx(line["achieved_gflops"]
                                                    / line["matmul_gflops"], abs=0.01)


def test_pipelines_benchmark_shard_side_reports_its_ratio(tmp_path, capsys):
    from benchmarks.pipelines import main
    from pipelines_testlib import manifest

    assert main(["--episodes", "6", "--image-size", "16", "--only", "shard",
                 "--workdir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Seconds are printed to 0.01 s, and the tiny baseline takes a few hundredths.
    assert out["shard_ratio"] == pytest.approx(out["baseline_s"] / out["shard_s"], rel=0.25)
    assert out["shard_mb_per_s"] > 0 and "beam_per_s" not in out
    assert manifest(tmp_path / "transitions")["counts"]["transitions"] == 6 * 10


def test_offline_levers_trains_relabels_and_evaluates_from_episodes(cell_episodes, tmp_path,
                                                                    capsys):
    """The in-memory ablation loop: episodes in, floor targets from the relabel maths, a
    curve point evaluated on the cell; the targets never fall below the episodes' returns."""
    from benchmarks.offline_levers import load_episodes, main

    path, records = cell_episodes
    data = load_episodes([str(path.parent)])
    assert data.episodes == 10 and len(data.obs) == sum(int(r["num_steps"]) for r in records)
    returns = data.returns(0.9)
    assert returns[data.terminal].tolist() == data.reward[data.terminal].tolist()
    out = tmp_path / "abl"
    assert main(["--episodes", str(path.parent), "--out", str(out), "--preset", "demo",
                 "--steps", "4", "--relabel-every", "2", "--eval-every", "4",
                 *sum((["--set", o] for o in PROBE_CELL + [
                     "model.preset=tiny", "train.batch_size=8", "targets.returns=floor",
                     "evaluate.robots=1", "evaluate.curve_attempts=2"]), [])]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x.get("step") for x in lines[1:]] == [2, 4]
    assert lines[-1]["attempts"] == 2 and 0.0 <= lines[-1]["success"] <= 1.0
    assert lines[-1]["mean_target"] >= float(np.mean(returns)) - 1e-4
    assert len((out / "curve.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit, match="exists"):
        main(["--episodes", str(path.parent), "--out", str(out)])


def test_rollouts_trace_reads_heights_closes_and_moves():
    from benchmarks.rollouts import summary, trace
    from schemas import mdp

    actions = [mdp.make_action((0.03, 0.0, 0.0)), mdp.make_action((0.0, 0.0, -0.08)),
               mdp.make_action(gripper="close"), mdp.make_action(gripper="open"),
               mdp.zero_action()]
    episode = {"num_steps": 4, "success": False, "action": actions,
               "observation/height": [0.2, 0.2, 0.12, 0.118, 0.118],
               "observation/gripper_closed": [0, 0, 0, 1, 0],
               "observation/gripper_opening": [0.08, 0.08, 0.08, 0.001, 0.08]}
    line, count = trace(episode)
    assert line == "F  4  20> 20 12C 12c1O"
    assert count["heights"] == [0.12] and count["moved_before_close"] == pytest.approx(0.03)
    out = summary([count, {**count, "closes": 0, "heights": [], "moved_before_close": None,
                           "success": True}])
    assert (out["successes"], out["closes"], out["never_close"], out["regrasps"]) == (1, 1, 1, 0)
    assert out["close_height_cm"][1] == 12.0 and out["sideways_before_close_cm"] == 3.0


def test_rollouts_of_the_scripted_policy_close_every_episode(capsys):
    from benchmarks.rollouts import main

    assert main(["scripted", "--episodes", "2", "--set", "robot.image_size=32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("1000 ")
    out = json.loads(lines[-1])
    assert out["episodes"] == 2 and out["never_close"] == 0 and out["closes"] >= 2

"""Every phase by hand: the commands the demo chains, run one at a time on a fresh workdir."""

from __future__ import annotations

import pytest

from pipelines_testlib import IMAGE, IN_PROCESS, manifest, qtopt, write_episodes

TINY = ["--set", "model.preset=tiny", "--set", f"robot.image_size={IMAGE}",
        "--set", "train.batch_size=4", "--set", "train.shuffle_buffer=8",
        "--set", "cem.samples=8", "--set", "cem.elites=2"]


@pytest.fixture(scope="module")
def transitions(tmp_path_factory):
    root = tmp_path_factory.mktemp("by-hand")
    write_episodes(root / "episodes", files=2, per_file=3, steps=3, seed=11)
    assert qtopt("shard", "-i", f"{root}/episodes/*", "-o", root / "transitions",
                 "--num-shards", 2, *IN_PROCESS) == 0
    return root


def test_an_epoch_by_hand_from_the_untrained_export(transitions, tmp_path, capsys):
    ds, work, labelled = transitions / "transitions", tmp_path / "train", tmp_path / "labelled"
    # Epoch 0's targets come from the untrained network: train without data only exports.
    assert qtopt("train", "--workdir", work, "--until-step", 0, *TINY) == 0
    first = work / "exports" / "export-000000000"
    assert (first / "manifest.json").exists()
    assert f"nothing to train; export {first}" in capsys.readouterr().out
    assert qtopt("relabel", "-i", ds, "-e", work / "exports", "-o", labelled, "--epoch", 0,
                 *TINY, *IN_PROCESS) == 0
    assert manifest(labelled / "epoch-0")["export_step"] == 0
    assert qtopt("train", "--data", labelled / "epoch-0", "--workdir", work, "--until-step", 3,
                 "--no-progress", *TINY) == 0
    assert (work / "exports" / "export-000000003" / "manifest.json").exists()
    capsys.readouterr()
    # Rerun when done: it says so, with no NaN loss, and rewrites nothing.
    before = (work / "exports" / "export-000000003" / "manifest.json").read_bytes()
    assert qtopt("train", "--data", labelled / "epoch-0", "--workdir", work, "--until-step", 3,
                 "--no-progress", *TINY) == 0
    out = capsys.readouterr().out
    assert f"train: {work} is at step 3 (target 3): nothing to train" in out
    assert "nan" not in out.lower()
    assert (work / "exports" / "export-000000003" / "manifest.json").read_bytes() == before
    # --steps counts from the checkpoint.
    assert qtopt("train", "--data", labelled / "epoch-0", "--workdir", work, "--steps", 2,
                 "--no-progress", *TINY) == 0
    assert "step 5: loss" in capsys.readouterr().out
    # Without data nothing can be trained past the checkpoint.
    assert qtopt("train", "--workdir", work, "--steps", 1, *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"qtopt train: error: --data: needed to train {work} from step 5 to 6 "
                   "(without it, train only exports: --until-step 0, or --steps 0)")
    assert qtopt("train", "--workdir", work, "--until-step", -1, *TINY) == 2
    assert "--until-step must be >= 0, got -1" in capsys.readouterr().err

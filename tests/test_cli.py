"""The qtopt command line, run as a real subprocess as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from schemas import fake, specs, tfrecord_io

QTOPT = [sys.executable, "-m", "pipelines.cli"]


def qtopt(*args, check_status=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(QTOPT + list(args), capture_output=True, text=True, env=env,
                          timeout=120)
    if check_status is not None:
        assert proc.returncode == check_status, proc.stderr
    return proc


def test_help_lists_the_commands():
    out = qtopt("--help", check_status=0).stdout
    for command in ("inspect", "config"):
        assert command in out


def test_inspect_describes_a_file_without_tensorflow(tmp_path):
    path = str(tmp_path / "ep.tfrecord.gz")
    recs = fake.fake_records("episode", 3, seed=2, image_size=16, num_steps=4)
    tfrecord_io.write_records(path, recs)
    out = qtopt("inspect", "--json", path, check_status=0).stdout
    info = json.loads(out)
    assert info["kind"] == "episode" and info["schema_version"] == specs.SCHEMA_VERSION == 4 and info["records"] == 3
    assert info["fields"]["observation/image"] == "uint8[5, 16, 16, 3]"
    assert info["fields"]["action"] == "float32[5, 8]"
    assert info["record"]["episode_id"] == recs[0]["episode_id"]
    # The command must not have needed TensorFlow: run it with TensorFlow made unimportable.
    code = ("import sys; sys.modules['tensorflow'] = None; from pipelines.cli import main; "
            f"sys.exit(main(['inspect', {path!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"kind episode, schema version {specs.SCHEMA_VERSION}, 3 records" in proc.stdout


def test_inspect_bad_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "broken.tfrecord.gz"
    tfrecord_io.write_records(str(path), fake.fake_records("transition", 30, image_size=32))
    path.write_bytes(path.read_bytes()[:3000])
    proc = qtopt("inspect", str(path), check_status=2)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "record" in lines[0]


def test_inspect_missing_file(tmp_path):
    proc = qtopt("inspect", str(tmp_path / "nothing-*.gz"), check_status=2)
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_config_show_and_errors():
    out = qtopt("config", "show", "paper", "--set", "train.batch_size=64", check_status=0).stdout
    assert "image_size: 472" in out and "batch_size: 64" in out
    proc = qtopt("config", "show", "demo", "--set", "train.bogus=1", check_status=2)
    assert proc.stderr.strip() == "qtopt config: error: unknown config key 'train.bogus'"
    proc = qtopt("config", "show", "nope", check_status=2)
    assert "unknown preset 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_errors_exit_2():
    assert qtopt("frobnicate").returncode == 2
    assert qtopt(check_status=2).stdout.startswith("usage")


def test_every_command_help_ends_with_examples_and_names_options_alike(capsys):
    import pytest

    from pipelines.cli import COMMANDS, main

    writes_to = {"collect", "shard", "subsample", "relabel", "evaluate", "train", "render",
                 "export"}
    reads_from = {"shard", "subsample", "relabel", "train", "study"}
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        help_text = capsys.readouterr().out
        examples = help_text.split("examples:\n", 1)
        assert len(examples) == 2, f"qtopt {name} --help has no examples"
        first = examples[1].splitlines()[0].strip()
        assert first.startswith(f"qtopt {name}"), (name, first)
        if name in writes_to:
            assert "-o " in help_text and "--output" in help_text, name
        if name in reads_from:
            assert "-i " in help_text and "--input" in help_text, name
        if name in ("finetune", "demo", "curve", "study"):
            assert "--run" in help_text, name


def test_commands_are_quiet_unless_verbose(tmp_path):
    sets = ["--set", "robot.image_size=32", "--set", "collect.episodes_per_block=1"]
    train = qtopt("train", "--workdir", str(tmp_path / "w"), "--until-step", "0", "--set",
                  "model.preset=tiny", *sets, check_status=0)
    assert "export-000000000" in train.stdout
    assert "oneDNN" not in train.stderr and "absl" not in train.stderr, train.stderr
    collect = qtopt("collect", "--policy", "scripted", "--episodes", "1", "-o",
                    str(tmp_path / "e"), *sets, check_status=0)
    chatter = collect.stdout + collect.stderr
    assert "argv[0]=" not in chatter and "pybullet build time" not in chatter, chatter
    assert "collect: 1 episodes in" in collect.stdout
    # The same command with --verbose lets pybullet's own lines through.
    loud = qtopt("collect", "--policy", "scripted", "--episodes", "1", "-o",
                 str(tmp_path / "e2"), *sets, "--verbose", check_status=0)
    assert "argv[0]=" in loud.stdout + loud.stderr

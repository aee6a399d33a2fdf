"""Configs: presets, YAML files and command-line overrides, validated with named errors."""

from __future__ import annotations

import pytest

from schemas.config import Config, RobotConfig, load_config, parse_override, preset_names
from schemas.errors import ConfigError


def test_presets_exist_and_differ_where_the_paper_says():
    assert {"demo", "paper"} <= set(preset_names())
    demo, paper = load_config("demo"), load_config("paper")
    assert demo.robot.image_size == 64 and paper.robot.image_size == 472
    assert paper.model.preset == "paper"
    assert (paper.train.learning_rate, paper.train.momentum, paper.train.batch_size) == \
        (1e-4, 0.9, 32)
    assert (paper.cem.samples, paper.cem.elites, paper.cem.iterations) == (64, 6, 2)
    assert (paper.targets.gamma, paper.targets.polyak, paper.targets.lag_steps) == \
        (0.9, 0.9999, 6000)


def test_overrides_apply_in_order(tmp_path):
    f = tmp_path / "over.yaml"
    f.write_text("train:\n  batch_size: 16\nrobot:\n  max_steps: 10\n")
    cfg = load_config("demo", [str(f)], ["train.batch_size=8", "robot.termination=scripted"])
    assert cfg.train.batch_size == 8 and cfg.robot.max_steps == 10
    assert cfg.robot.termination == "scripted"
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.bogus=1", "unknown config key 'train.bogus'"),
    ("trian.batch_size=1", "unknown config key 'trian' (did you mean train?)"),
    ("robot.image_size=8", "robot.image_size: must be >= 16, got 8"),
    ("robot.max_steps=-1", "robot.max_steps: must be >= 1, got -1"),
    ("robot.min_objects=0", "robot.min_objects: must be >= 1, got 0"),
    ("train.batch_size=big", "train.batch_size: expected an integer, got 'big'"),
    ("targets.kind=triple_q", "targets.kind: must be one of"),
    ("train.augment=maybe", "train.augment: expected true or false"),
    ("robot.min_objects=20", "robot.min_objects (20) must not exceed robot.max_objects (10)"),
    ("noequals", "expected KEY=VALUE"),
])
def test_bad_values_name_the_option(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=[override])
    assert message in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; presets: cpu-long, demo, paper"):
        load_config("nope")


def test_bad_yaml_file_is_named(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config file .*broken\.yaml: not valid YAML"):
        load_config("demo", [str(f)])
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config("demo", [str(tmp_path / "missing.yaml")])


def test_construction_validates_directly():
    with pytest.raises(ConfigError, match="robot.image_size: must be <= 472"):
        RobotConfig(image_size=1000)
    assert parse_override("a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; options must not.
    from schemas.config import load_config

    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  learning_rate: 1e-4\n  l2: 5E-5\n")
    cfg = load_config("demo", [str(path)])
    assert cfg.train.learning_rate == 1e-4 and cfg.train.l2 == 5e-5
    cfg = load_config("demo", overrides=["train.learning_rate=1e-3", "train.l2=+7e-05"])
    assert cfg.train.learning_rate == 1e-3 and cfg.train.l2 == 7e-5
    # Still a string where one is meant, and still refused where a number is not one.
    assert load_config("demo", overrides=["collect.objects=1e3x"]).collect.objects == "1e3x"
    with pytest.raises(ConfigError, match="train.learning_rate: expected a number"):
        load_config("demo", overrides=["train.learning_rate=fast"])


def test_config_options_shows_a_presets_values_allowed_values_and_meanings(capsys):
    from pipelines.cli import main

    def rows(*argv) -> dict:
        assert main(["config", "options", *argv]) == 0
        lines = capsys.readouterr().out.splitlines()[1:]
        return {line.split()[0]: line for line in lines}

    demo, long = rows(), rows("--preset", "cpu-long")
    assert len(demo) == len(long) == len(Config().to_dict()["train"]) + sum(
        len(v) for k, v in Config().to_dict().items() if k != "train")
    assert demo["model.preset"].split()[1] == "cpu64"
    assert long["model.preset"].split()[1] == "fast64"
    assert "clipped_double_q | double_q | single_q" in demo["targets.kind"]
    assert "16 to 472" in demo["robot.image_size"]
    # Every option says what it means (the text after the allowed values).
    from schemas.config import describe_options

    assert all(doc for _name, _value, doc, _allowed in describe_options())
    assert main(["config", "options", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err

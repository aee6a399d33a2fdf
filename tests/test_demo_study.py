"""``qtopt demo`` and ``qtopt study dataset-size`` end to end at toy size, with real physics, Beam
and training: the demo's table, its run directory and its resume; the study's nested subsets,
table and plot."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import invoke
from schemas.errors import UserError


def fs_basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]

SETS = ["robot.image_size=32", "model.preset=tiny", "train.batch_size=8", "train.steps=3",
        "train.epochs=2", "train.shuffle_buffer=16", "collect.episodes=6",
        "collect.episodes_per_block=3", "pipeline.num_shards=2", "pipeline.direct_num_workers=1",
        "finetune.rounds=2", "finetune.episodes_per_round=2", "finetune.steps_per_transition=0.2",
        "finetune.ramp_steps=10", "finetune.ramp_chunk=5", "finetune.select=train",
        "cem.samples=16", "cem.elites=4", "evaluate.robots=1", "evaluate.attempts=2",
        "evaluate.curve_attempts=2", "collect.explore_episodes=2",
        "evaluate.bin_trials=0"]
ARGS = [a for s in SETS for a in ("--set", s)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A toy demo of one finetuning round, then the same run asked for two."""
    run = tmp_path_factory.mktemp("demo") / "run"
    invoke(["demo", "--run", str(run), *ARGS, "--set", "finetune.rounds=1"])
    one = json.loads((run / "results.json").read_text())
    state = json.loads((run / "demo-state.json").read_text())
    invoke(["demo", "--run", str(run), *ARGS])
    return run, one, state


def test_a_demo_of_one_finetuning_round_reports_it_and_grows_to_two(demo_run):
    run, one, first_state = demo_run
    # One round: its export is the finetuned row, whatever finetune.select says.
    assert [r["policy"] for r in one] == ["scripted", "offline QT-Opt", "finetuned QT-Opt"]
    assert one[-1]["rounds"] == 1 and one[-1]["round"] == 0
    assert first_state["config"]["finetune"]["rounds"] == 1
    # Asked for two rounds, the run went on: the first round was not collected again, the
    # scripted and offline rows were not evaluated again.
    ft_state = json.loads((run / "finetune" / "state.json").read_text())
    assert [r["round"] for r in ft_state["rounds"]] == [0, 1]
    assert ft_state["rounds"][0]["export"].endswith(one[-1]["export"])
    state = json.loads((run / "demo-state.json").read_text())
    assert state["config"]["finetune"]["rounds"] == 2
    for name in ("collect", "evaluate-scripted", "evaluate-offline", "train-1"):
        assert state["seconds"][name] == first_state["seconds"][name]
    rows = json.loads((run / "results.json").read_text())
    assert rows[:2] == one[:2] and rows[-1]["rounds"] == 2
    # Fewer rounds than the run holds is another configuration: refused, naming the state file.
    with pytest.raises(UserError, match="demo-state.json: this run was made with another"):
        invoke(["demo", "--run", str(run), *ARGS, "--set", "finetune.rounds=1"])


def test_demo_writes_the_table_under_one_run_directory(demo_run, capsys):
    demo_run = demo_run[0]
    rows = json.loads((demo_run / "results.json").read_text())
    assert [r["policy"] for r in rows] == ["scripted", "offline QT-Opt", "finetuned QT-Opt"]
    state = json.loads((demo_run / "demo-state.json").read_text())
    # train.epochs=2: two relabel/train epochs, each a phase.
    assert {"relabel-0", "train-0", "relabel-1", "train-1"} <= set(state["done"])
    assert "relabel-2" not in state["done"]
    episodes = json.loads((demo_run / "transitions" / "scripted" / "manifest.json").read_text())
    # collect.explore_episodes=2: random-policy episodes beside the six scripted ones.
    sources = episodes["counts"]["by_source"]
    assert sources["explore-train"]["episodes"] == 2 and sources["scripted-train"]["episodes"] == 6
    # The learning curve: every offline export past step 0 and both rounds' exports, on train
    # objects. finetune.select=train: the finetuned row is the better round export there,
    # counting the grasps of the rounds it trained on.
    assert "curve" in state["done"]
    points = json.loads((demo_run / "learning_curve.json").read_text())
    ft_state = json.loads((demo_run / "finetune" / "state.json").read_text())
    offline = [p for p in points if p["phase"] == "offline"]
    assert [p["step"] for p in offline] == [3, 6]
    finetune = [p for p in points if p["phase"] == "finetune"]
    assert [p["step"] for p in finetune] == [int(r["export"].rsplit("-", 1)[1])
                                             for r in ft_state["rounds"]]
    each = json.loads((demo_run / "eval" / "curve" / "each.json").read_text())
    assert each["objects"] == "train" and len(each["exports"]) == len(points)
    assert all(p["attempts"] == 2 for p in points)   # evaluate.curve_attempts=2, one robot
    chosen = rows[-1]["round"]
    assert finetune[chosen]["export"].endswith(rows[-1]["export"])
    assert finetune[chosen]["rate"] == max(p["rate"] for p in finetune)
    assert all(finetune[chosen]["rate"] > p["rate"] for p in finetune[chosen + 1:])
    assert (demo_run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (demo_run / "learning_curve.csv").read_text().startswith("phase,round,step,grasps")
    finetuned = json.loads((demo_run / "eval" / f"finetuned-{rows[-1]['export']}"
                            / "result.json").read_text())
    assert finetuned["policy"].endswith(rows[-1]["export"])
    online = [json.loads((demo_run / "finetune" / "transitions" / f"round-{r:03d}" /
                          "manifest.json").read_text())["counts"]["episodes"] for r in (0, 1)]
    assert [p["grasps"] for p in finetune] == [episodes["counts"]["episodes"] + sum(online[:k + 1])
                                               for k in range(2)]
    assert all(p["grasps"] == episodes["counts"]["episodes"] for p in offline)
    assert [r["grasps"] for r in rows] == [0, episodes["counts"]["episodes"],
                                           episodes["counts"]["episodes"]
                                           + sum(online[:chosen + 1])]
    for r in rows:
        assert r["attempts"] == 2 and 0.0 <= r["ci95"][0] <= r["rate"] <= r["ci95"][1] <= 1.0
    table = (demo_run / "results.md").read_text()
    assert table.startswith("| policy | success on test objects |")
    assert all(f"| {r['policy']} | {100 * r['rate']:.1f}% |" in table for r in rows)
    # A rerun has every phase done: it only prints the same table.
    capsys.readouterr()
    invoke(["demo", "--run", str(demo_run), *ARGS])
    out = capsys.readouterr().out
    assert "collect already done" in out and "--- " not in out
    assert table.strip() in out
    # Another configuration in the same run directory is refused, naming the state file.
    with pytest.raises(UserError, match="demo-state.json: this run was made with another"):
        invoke(["demo", "--run", str(demo_run), *ARGS, "--set", "train.steps=4"])
    # ... but not another choice of the finetuned row: the last round's export, evaluated in a
    # directory of its own, the other choice's evaluation left as it was.
    invoke(["demo", "--run", str(demo_run), *ARGS, "--set", "finetune.select=last"])
    last = json.loads((demo_run / "results.json").read_text())[-1]
    assert last["select"] == "last" and last["round"] == 1
    assert last["export"] == fs_basename(ft_state["rounds"][1]["export"])
    assert json.loads((demo_run / "eval" / f"finetuned-{last['export']}" / "result.json")
                      .read_text())["policy"].endswith(last["export"])
    assert (demo_run / "eval" / f"finetuned-{rows[-1]['export']}" / "result.json").exists()


def test_a_run_goes_on_after_an_option_was_added_at_its_default():
    from pipelines.machinery.runstate import same_config
    from schemas.config import Config

    current = Config().to_dict()
    older = json.loads(json.dumps(current))
    del older["finetune"]["select"]                  # recorded before the option existed
    assert same_config(older, current)
    assert same_config(current, current)
    changed = json.loads(json.dumps(current))
    changed["finetune"]["select"] = "train"          # a reporting option: may differ
    assert same_config(older, changed) and same_config(current, changed)
    del older["collect"]["explore_episodes"]          # recorded before the option existed
    assert same_config(older, current)
    changed["collect"]["explore_episodes"] = 5       # the new option away from its default
    assert not same_config(older, changed)
    assert not same_config(current, changed)
    extra = json.loads(json.dumps(current))
    extra["finetune"]["gone"] = 1                    # an option the code no longer has
    assert not same_config(extra, current)


def test_study_trains_and_evaluates_nested_subsets(demo_run, tmp_path):
    run = tmp_path / "study"
    demo_run = demo_run[0]
    invoke(["study", "dataset-size", "--transitions", str(demo_run / "transitions" / "scripted"),
            "--fractions", "0.5,1", "--run", str(run), "--epochs", "1", *ARGS])
    rows = json.loads((run / "results.json").read_text())
    assert [r["fraction"] for r in rows] == [0.5, 1.0]
    assert rows[0]["grasps"] < rows[1]["grasps"] == 8
    assert all(r["attempts"] == 2 for r in rows)
    assert (run / "success_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 50% |" in (run / "results.md").read_text()
    # The half is drawn from the whole: every episode it kept is in the full dataset.
    half = _episode_ids(run / "fraction-0.5" / "transitions")
    whole = _episode_ids(demo_run / "transitions" / "scripted")
    assert half and half < whole and len(half) == rows[0]["grasps"]


def _episode_ids(directory) -> set:
    from schemas.tfrecord_io import read_records

    return {r["episode_id"] for f in sorted(directory.glob("shard-*.tfrecord.gz"))
            for r in read_records(str(f))}


def test_exploration_episodes_take_their_own_policy_seed_and_close_heights():
    from pipelines.jobs.collect import make_plan
    from pipelines.flows.demo import explore_config
    from schemas.config import load_config

    cfg = load_config("demo", overrides=["collect.explore_policy=scripted",
                                         "collect.explore_episodes=7",
                                         "collect.explore_close_max=0.06", "collect.seed=3"])
    explore = explore_config(cfg).collect
    assert (explore.policy, explore.episodes, explore.seed) == ("scripted", 7, 4)
    assert explore.scripted_close_max == 0.06 and cfg.collect.scripted_close_max == 0.02
    plan = make_plan(explore_config(cfg), "unused", "explore-train")
    assert plan.identity()["scripted_close_max"] == 0.06
    assert plan.policy_label.endswith("+close<=0.06")


def test_phases_defaults_are_copied_for_each_run(tmp_path):
    from pipelines.machinery.runstate import Phases

    defaults = {"rounds": []}
    first = Phases(str(tmp_path / "a.json"), None, "a", defaults)
    first.state["rounds"].append(0)
    second = Phases(str(tmp_path / "b.json"), None, "b", defaults)
    assert second.state["rounds"] == [] and defaults == {"rounds": []}

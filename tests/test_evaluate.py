"""Evaluation protocols: bookkeeping of bin emptying and first-k rates, and the qtopt evaluate
job end to end with real physics."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipelines.cli import invoke
from robot import protocols
from robot.cell import SimCell
from pipelines.machinery.policies import make_policy
from robot.policies import ScriptedGrasp
from schemas.config import RobotConfig
from schemas.errors import UserError


def test_first_k_uses_the_first_attempts_of_every_trial():
    t1 = [True] * 5 + [False] * 25           # 5 early successes
    t2 = [False] * 10 + [True] * 10 + [False] * 10
    fk = protocols.first_k([t1, t2], (10, 20, 30))
    assert fk["10"]["attempts"] == 20 and fk["10"]["successes"] == 5
    assert fk["20"]["attempts"] == 40 and fk["20"]["successes"] == 15
    assert fk["30"]["attempts"] == 60 and fk["30"]["successes"] == 15
    lo, hi = fk["10"]["ci95"]
    assert lo < 0.25 < hi


def test_wilson_interval_is_sane():
    assert protocols.wilson_interval(0, 10)[0] == 0.0
    lo, hi = protocols.wilson_interval(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)


@pytest.fixture(scope="module")
def cell():
    c = SimCell(RobotConfig(), "test")
    yield c
    c.close()


class AimedGrasp(ScriptedGrasp):
    """The scripted grasp aimed by the simulator's truth at a random object in the tray (4 of 10
    here), so that the bookkeeping below sees successes however the plain scripted policy's
    random aim falls: it scored 0 of 10 at this seed once a gripper change moved its draws."""

    def __init__(self, cell):
        super().__init__(cell.config)
        self.cell = cell

    def sample_action(self, observation, step):
        if self._start_height is None:
            gripper, _ = self.cell.gripper_pose()
            objects = self.cell.object_positions()[:, :2]
            target = objects[int(self.rng.integers(len(objects)))]
            self._offset = np.asarray(target - gripper[:2], np.float64)
        return super().sample_action(observation, step)


def test_bin_emptying_removes_grasped_objects(cell):
    policy = AimedGrasp(cell)
    rows, _ = protocols.bin_emptying(cell, policy, trial=0, num_objects=12, attempts=10,
                                     pool=cell.pool, seed=7)
    assert len(rows) == 10 and sum(r.success for r in rows) >= 2
    before = rows[0].objects_before
    assert before == 12
    for prev, row in zip(rows, rows[1:]):
        # A success takes exactly one object out of the tray; a failure takes none.
        assert row.objects_before == prev.objects_before - int(prev.success)
    grasped = [r.grasped for r in rows if r.success]
    assert all(grasped) and len(set(grasped)) == len(grasped)
    assert [r.attempt for r in rows] == list(range(10))
    # The cell now holds what is left (plus the last attempt's object, if it succeeded).
    left = len(cell.tray_objects())
    assert left == before - sum(r.success for r in rows[:-1])


def test_with_replacement_puts_the_same_objects_back(cell):
    policy = make_policy("scripted", cell.config)
    rows, kept = protocols.with_replacement(cell, policy, robot=1, attempts=3,
                                            objects_per_robot=4, pool=cell.pool, seed=3,
                                            keep_episodes=2)
    assert [r.objects_before for r in rows] == [4, 4, 4]
    assert len(kept) == 2
    assert sorted(kept[0]["object_ids"]) == sorted(kept[1]["object_ids"])


def test_evaluate_job_writes_result_report_and_plot(tmp_path):
    out = tmp_path / "eval"
    sets = ["--set", "evaluate.robots=2", "--set", "evaluate.attempts=3",
            "--set", "evaluate.bin_trials=1", "--set", "evaluate.bin_objects=6",
            "--set", "evaluate.bin_attempts=4", "--set", "evaluate.gifs=1"]
    invoke(["evaluate", "--policy", "scripted", "--objects", "test", "--out", str(out),
            "--workers", "2", *sets])
    result = json.loads((out / "result.json").read_text())
    assert result["replacement"]["attempts"] == 6
    assert result["bin_emptying"]["trials"] == 1
    assert result["bin_emptying"]["first_k"]["10"]["attempts"] == 4
    assert (out / "report.md").read_text().startswith("# Evaluation: scripted")
    assert (out / "success.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "gifs").glob("*.gif"))) == 2
    # A rerun has nothing left to run and gives the same numbers.
    invoke(["evaluate", "--policy", "scripted", "--objects", "test", "--out", str(out), *sets])
    again = json.loads((out / "result.json").read_text())
    assert again["replacement"] == result["replacement"]
    # Other settings in the same directory are refused.
    with pytest.raises(UserError, match="other settings"):
        invoke(["evaluate", "--policy", "scripted", "--objects", "test", "--out", str(out)])


def test_evaluate_refuses_bad_objects_and_policies(tmp_path):
    with pytest.raises(UserError, match="nope.urdf"):
        invoke(["evaluate", "--policy", "scripted", "--objects", str(tmp_path / "nope.urdf"),
                "--out", str(tmp_path / "e")])
    with pytest.raises(UserError, match="policy"):
        invoke(["evaluate", "--policy", str(tmp_path / "missing-export"), "--out",
                str(tmp_path / "e2")])


def _exports(directory, steps) -> list[str]:
    pytest.importorskip("tensorflow")
    from model.export import write_export
    from model.network import InputSpec, QNetwork

    paths = []
    for k, step in enumerate(steps):
        tf_nets = {name: QNetwork(InputSpec(16, "image+gripper+height"), "tiny",
                                  f"{name}{k}") for name in ("online", "polyak", "lagged")}
        paths.append(write_export(str(directory), step, tf_nets, termination="scripted",
                                  gripper_moves=False))
    return paths


EACH = ["--set", "robot.image_size=16", "--set", "robot.max_steps=3", "--set", "cem.samples=8",
        "--set", "cem.elites=2", "--set", "evaluate.robots=2", "--set", "evaluate.attempts=2",
        "--set", "evaluate.bin_trials=0", "--workers", "1"]


def test_evaluate_each_ranks_every_export_and_picks_the_best(tmp_path):
    exports = tmp_path / "exports"
    paths = _exports(exports, [10, 20])
    (exports / "export-000000030").mkdir()       # half-written: no manifest, not a candidate
    out = tmp_path / "each"
    invoke(["evaluate", "--each", "--policy", str(exports), "--objects", "train",
            "--out", str(out), *EACH])
    each = json.loads((out / "each.json").read_text())
    assert [r["step"] for r in each["exports"]] == [10, 20]
    for row, path in zip(each["exports"], paths):
        # Each row is that export's own evaluation, written beside the others.
        result = json.loads((out / row["name"] / "result.json").read_text())
        assert result["policy"] == f"export:{path.rstrip('/')}"
        assert row["rate"] == result["replacement"]["rate"] and row["attempts"] == 4
    best = max(each["exports"], key=lambda r: (r["rate"], r["step"]))
    assert each["best"] == best["export"]
    assert f"| {best['name']} (best) |" in (out / "each.md").read_text()
    # A comma-separated list evaluates just those, in its order; one listed twice is refused.
    out2 = tmp_path / "each2"
    invoke(["evaluate", "--each", "--policy", paths[1] + "," + paths[0], "--objects", "train",
            "--out", str(out2), *EACH])
    assert [r["step"] for r in json.loads((out2 / "each.json").read_text())["exports"]] == [20,
                                                                                          10]
    with pytest.raises(UserError, match="export-000000010.*listed twice"):
        invoke(["evaluate", "--each", "--policy", paths[0] + "," + paths[0], "--out",
                str(tmp_path / "each3"), *EACH])


def test_best_export_is_the_highest_rate_and_a_tie_goes_to_the_later():
    from pipelines.jobs.evaluate import best_of

    rows = [{"rate": 0.2, "step": 10}, {"rate": 0.3, "step": 20}, {"rate": 0.3, "step": 30},
            {"rate": 0.1, "step": 40}]
    assert best_of(rows) is rows[2]
    assert best_of(rows[:2] + rows[3:]) is rows[1]


def test_evaluate_each_refuses_a_directory_without_exports(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--each needs an exports/ directory"):
        invoke(["evaluate", "--each", "--policy", str(tmp_path / "empty"), "--out",
                str(tmp_path / "e")])
    with pytest.raises(UserError, match="no such export"):
        invoke(["evaluate", "--each", "--policy", f"{tmp_path}/a,{tmp_path}/b", "--out",
                str(tmp_path / "e")])


# The robots run in this process: these tests are about bookkeeping, not the runner.
ONE_PROCESS = ["--direct_running_mode=in_memory"]


def test_an_evaluation_names_its_export_and_refuses_another(tmp_path):
    exports = tmp_path / "exports"
    (first,) = _exports(exports, [10])
    out = tmp_path / "eval"
    invoke(["evaluate", "--policy", str(exports), "--objects", "train", "--out", str(out),
            *EACH, *ONE_PROCESS])
    result = json.loads((out / "result.json").read_text())
    manifest_sha = hashlib.sha256((exports / "export-000000010" / "manifest.json")
                                  .read_bytes()).hexdigest()
    assert result["export"] == {"path": first, "step": 10, "sha256": manifest_sha}
    assert result["policy"] == f"export:{first}"
    assert f"Export: {first}, step 10, manifest SHA-256 {manifest_sha}." in \
        (out / "report.md").read_text()
    # A newer export in the same exports/ directory is another policy: refused, not reused.
    (second,) = _exports(exports, [20])
    with pytest.raises(UserError, match=r"holds an evaluation of export .*export-000000010 "
                                        r"\(step 10, sha256 [0-9a-f]{12}\), not "
                                        r".*export-000000020 \(step 20"):
        invoke(["evaluate", "--policy", str(exports), "--objects", "train", "--out", str(out),
                *EACH, *ONE_PROCESS])
    assert json.loads((out / "result.json").read_text()) == result
    # --each on one export directory evaluates that one.
    each = tmp_path / "each"
    invoke(["evaluate", "--each", "--policy", second, "--objects", "train", "--out", str(each),
            *EACH, *ONE_PROCESS])
    rows = json.loads((each / "each.json").read_text())["exports"]
    assert [r["step"] for r in rows] == [20]


def test_the_success_plot_writes_counts_and_shows_a_zero_bar():
    from pipelines.jobs.evaluate import success_figure

    result = {"policy": "scripted",
              "replacement": {"attempts": 200, "successes": 0, "rate": 0.0,
                              "ci95": [0.0, 0.0188]},
              "bin_emptying": {"first_k": {"10": {"attempts": 50, "successes": 20, "rate": 0.4,
                                                  "ci95": [0.276, 0.538]}}}}
    fig = success_figure(result)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0/200\n0.0%", "20/50\n40.0%"]
    zero, forty = ax.patches[:2]
    assert zero.get_height() == 0.0 and zero.get_linewidth() > 0
    assert zero.get_edgecolor()[3] > 0          # an outline that shows at the axis
    assert abs(forty.get_height() - 40.0) < 1e-9

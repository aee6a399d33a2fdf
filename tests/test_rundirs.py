"""The run layout's one owner: names in, paths out, and no job or flow spelling them itself."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.rundirs import (RunDir, Workdir, attempts_file, epoch_dir, epoch_of, export_dir,
                             round_name, step_in_name)


def test_steps_are_read_from_every_kind_of_name():
    assert step_in_name("ckpt-40") == 40
    assert step_in_name("/w/checkpoints/input-abc/input-7") == 7
    assert step_in_name(export_dir("gs://b/w/exports", 1234)) == 1234
    assert step_in_name("gs://b/w/exports/export-000001234/") == 1234
    assert step_in_name("checkpoint") is None and step_in_name("ckpt-40.index") is None


def test_epochs_and_rounds():
    assert epoch_dir("gs://b/labelled", 3) == "gs://b/labelled/epoch-3"
    assert epoch_of("gs://b/labelled/epoch-12/") == 12
    assert epoch_of("/x/epoch-1b") is None and epoch_of("/x/epochs") is None
    assert round_name(7) == "round-007"


def test_a_run_directorys_paths():
    run = RunDir("runs/demo/")
    assert run.train.exports == "runs/demo/train/exports"
    assert run.train.checkpoint_index == "runs/demo/train/checkpoints/checkpoint"
    assert run.finetune.state == "runs/demo/finetune/state.json"
    assert run.finetune.train.root == "runs/demo/finetune/train"
    assert run.finetune.round_transitions(2) == "runs/demo/finetune/transitions/round-002"
    assert run.episodes("explore-train") == "runs/demo/episodes/explore-train"
    assert run.eval("curve") == "runs/demo/eval/curve"
    assert Workdir("gs://b/w").logs == "gs://b/w/logs"
    assert attempts_file("out", "replacement", 3) == "out/attempts/replacement-003.json"


def test_no_job_or_flow_spells_the_layout_itself():
    repo = Path(__file__).resolve().parent.parent
    # A directory name as an argument ("exports", "checkpoints") or a numbered one (epoch-K).
    spelled = re.compile(r"""["'](exports|checkpoints)["']\s*[,)]|f?["'](epoch|round)-""")
    found = []
    modules = sorted((repo / "pipelines").rglob("*.py")) + sorted((repo / "model").glob("*.py"))
    for path in modules:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if spelled.search(code) and "json" not in code and "add_argument" not in code:
                found.append(f"{path.relative_to(repo)}:{n}: {line.strip()}")
    assert found == []

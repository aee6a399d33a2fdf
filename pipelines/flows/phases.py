"""What the long jobs (demo, study) share: named phases recorded as they complete, so a killed
run resumes at the next one, and the offline Bellman updater's relabel/train epochs."""

from __future__ import annotations

import json
import time

from pipelines.jobs.relabel import relabel
from pipelines.jobs.train import train
from schemas import fs
from schemas.rundirs import Workdir, epoch_dir
from schemas.config import Config
from schemas.errors import UserError


def initial_export(cfg, workdir: str) -> str:
    """Export the untrained network (step 0) so that epoch 0 has targets to relabel with."""
    from model.export import latest_export
    from model.train import export_weights

    return latest_export(Workdir(workdir).exports) or export_weights(cfg, workdir)


def train_offline(cfg, phase, transitions: str, labelled: str, train_dir: str,
                  epochs: int) -> None:
    """Batch epochs of the Bellman updater: relabel with the newest export, then train
    ``train.steps`` more steps. Each step is a phase, so a killed run resumes at the next one."""
    exports = Workdir(train_dir).exports
    phase("initial-export", lambda: initial_export(cfg, train_dir))
    for k in range(epochs):
        phase(f"relabel-{k}", lambda k=k: relabel(cfg, [transitions], exports, labelled,
                                                  k).require())
        phase(f"train-{k}", lambda k=k: train(cfg, [(epoch_dir(labelled, k), 1.0)],
                                              train_dir,
                                              until_step=(k + 1) * cfg.train.steps).require())
        if k > 0:  # superseded labels; the transitions stay
            fs.remove(epoch_dir(labelled, k - 1), recursive=True)


class Phases:
    """Named steps of a long job, recorded in a JSON state file as each one completes."""

    def __init__(self, path: str, config: dict, label: str):
        self.path, self.label = path, label
        self.state = json.loads(fs.read_text(path)) if fs.exists(path) else {"done": []}
        stored = self.state.get("config")
        if stored is not None and not same_config(stored, config):
            raise UserError(f"{path}: this run was made with another configuration; use "
                            "another run directory or remove it")
        self.state["config"] = config

    def __call__(self, name: str, fn) -> None:
        if name in self.state["done"]:
            print(f"{self.label}: {name} already done", flush=True)
            return
        start = time.monotonic()
        print(f"{self.label}: --- {name} ---", flush=True)
        fn()
        self.state["done"].append(name)
        self.state.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
        fs.write_text(self.path, json.dumps(self.state, indent=1, sort_keys=True))


# Options that only choose what the table reports, not how anything is made: a finished run
# may be asked again under another value (each finetuned export is evaluated in its own directory).
REPORTING_OPTIONS = {("finetune", "select")}
# Options a finished run may be asked again under a larger value: more finetuning rounds go on
# from the rounds done (finetuning resumes), and the curve and table are brought up to date.
GROWING_OPTIONS = {("finetune", "rounds")}


def same_config(stored: dict, current: dict) -> bool:
    """Whether a run recorded with ``stored`` may go on under ``current``: equal, except that
    an option added to the code since (missing from ``stored``) may hold its default, which
    keeps the old behaviour, that REPORTING_OPTIONS may differ and GROWING_OPTIONS grow."""
    defaults = Config().to_dict()

    def same(a, b, d, path=()) -> bool:
        if path in REPORTING_OPTIONS:
            return True
        if path in GROWING_OPTIONS and a is not None and b is not None:
            return b >= a
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return a == b
        for key in b:
            if key not in a:
                if (path + (key,) not in REPORTING_OPTIONS and
                        (not isinstance(d, dict) or key not in d or b[key] != d[key])):
                    return False
            elif not same(a[key], b[key], d.get(key) if isinstance(d, dict) else None,
                          path + (key,)):
                return False
        return set(a) <= set(b)

    return same(stored, current, defaults)


def resolve_epochs(epochs: int | None, cfg) -> int:
    """``--epochs``, else ``train.epochs``; refused below 1 (demo and study)."""
    epochs = cfg.train.epochs if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    return epochs

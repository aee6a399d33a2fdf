"""Where a run keeps what: the one owner of the names inside a training workdir, a run directory
(``qtopt demo``, ``finetune``, ``curve``) and an evaluation's output. Jobs and flows ask here
for a path instead of spelling ``"exports"`` or ``f"epoch-{k}"`` themselves, so the layout can
change in one place::

    RUN/                             RunDir
      episodes/<source>/             a collection (``qtopt collect``)
      transitions/<name>/            a dataset (``qtopt shard``)
      labelled/epoch-K/              relabelled epoch K (``qtopt relabel``)
      train/                         Workdir: checkpoints/, exports/export-<step>/, logs/
      finetune/                      FinetuneDir: state.json, train/ (a Workdir), episodes/,
                                     transitions/round-RRR/, labelled/{offline,online}/epoch-R/
      eval/<name>/attempts/          an evaluation's attempt groups (eval/curve: the curve's)
"""

from __future__ import annotations

import re

from schemas import fs

EXPORTS, CHECKPOINTS, LOGS = "exports", "checkpoints", "logs"
CHECKPOINT_INDEX = "checkpoint"     # TensorFlow's own name for the index of a checkpoint dir
STATE = "state.json"
ATTEMPTS = "attempts"
_STEP = re.compile(r"-(\d+)$")


def step_in_name(name: str) -> int | None:
    """The step a checkpoint, input checkpoint or export is named by (``ckpt-40``,
    ``input-40``, ``export-000000040``, from a path or its last part); None for other names."""
    m = _STEP.search(str(name).rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def export_dir(exports: str, step: int) -> str:
    """A policy export of ``step`` in a workdir's ``exports`` directory."""
    return fs.join(exports, f"export-{int(step):09d}")


def epoch_dir(root: str, epoch: int) -> str:
    return fs.join(root, f"epoch-{int(epoch)}")


def epoch_of(path: str) -> int | None:
    """K of an ``epoch-K`` directory; None for any other name."""
    m = re.fullmatch(r"epoch-(\d+)", fs.basename(str(path).rstrip("/")))
    return int(m.group(1)) if m else None


def round_name(r: int) -> str:
    return f"round-{int(r):03d}"


def attempts_dir(out: str) -> str:
    return fs.join(out, ATTEMPTS)


def attempts_file(out: str, protocol: str, group: int) -> str:
    return fs.join(out, ATTEMPTS, f"{protocol}-{int(group):03d}.json")


class Workdir:
    """A training workdir (``qtopt train --workdir``)."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")

    @property
    def checkpoints(self) -> str:
        return fs.join(self.root, CHECKPOINTS)

    @property
    def checkpoint_index(self) -> str:
        return fs.join(self.root, CHECKPOINTS, CHECKPOINT_INDEX)

    @property
    def exports(self) -> str:
        return fs.join(self.root, EXPORTS)

    @property
    def logs(self) -> str:
        return fs.join(self.root, LOGS)


class FinetuneDir:
    """``RUN/finetune``: joint finetuning's rounds."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        self.state = fs.join(self.root, STATE)
        self.train = Workdir(fs.join(self.root, "train"))
        self.episodes = fs.join(self.root, "episodes")
        self.transitions = fs.join(self.root, "transitions")
        self.labelled_offline = fs.join(self.root, "labelled", "offline")
        self.labelled_online = fs.join(self.root, "labelled", "online")

    def round_episodes(self, r: int) -> str:
        return fs.join(self.episodes, round_name(r))

    def round_transitions(self, r: int) -> str:
        return fs.join(self.transitions, round_name(r))


class RunDir:
    """A run directory (``qtopt demo --run``, ``qtopt finetune --run``, ``qtopt curve --run``)."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        self.train = Workdir(fs.join(self.root, "train"))
        self.finetune = FinetuneDir(fs.join(self.root, "finetune"))
        self.labelled = fs.join(self.root, "labelled")

    def episodes(self, source: str) -> str:
        return fs.join(self.root, "episodes", source)

    def transitions(self, name: str) -> str:
        return fs.join(self.root, "transitions", name)

    def eval(self, name: str) -> str:
        return fs.join(self.root, "eval", name)

    def file(self, name: str) -> str:
        """A file of the run's own (its phase record, its table)."""
        return fs.join(self.root, name)

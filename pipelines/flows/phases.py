"""What the long jobs (demo, study) share: the offline Bellman updater's relabel/train epochs,
each a phase of the run (``pipelines.machinery.runstate.Phases``)."""

from __future__ import annotations

from pipelines.jobs.relabel import relabel
from pipelines.jobs.train import train
from schemas import fs
from schemas.errors import UserError
from schemas.rundirs import Workdir, epoch_dir


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


def resolve_epochs(epochs: int | None, cfg) -> int:
    """``--epochs``, else ``train.epochs``; refused below 1 (demo and study)."""
    epochs = cfg.train.epochs if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    return epochs

"""A training run's checkpoints and logs in its workdir, local or remote (``gs://``, any fsspec
URL). TensorFlow only ever writes local files: for a remote workdir they are staged under
``schemas.fs.staging_root()`` and every checkpoint is copied up as soon as it is saved, files
first and indexes last, so a copy cut short leaves the remote index naming the previous, complete
checkpoint. The input pipeline's position is a checkpoint of its own, kept apart under a name
derived from the shards and input settings.

Under a ``tf.distribute`` strategy only the chief keeps the checkpoints; the other workers
restore the chief's, save into a scratch directory (TensorFlow's multi-worker pattern) and keep
only their own input position."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import weakref

import tensorflow as tf

from schemas import fs
from schemas.errors import UserError
from schemas.rundirs import CHECKPOINT_INDEX, CHECKPOINTS, LOGS, Workdir, step_in_name


class CheckpointStore:
    """Where ``checkpoint`` is saved and restored from, for one worker of a run in ``workdir``."""

    def __init__(self, checkpoint: tf.train.Checkpoint, workdir: str, keep: int,
                 input_subdir: str, chief: bool = True, staging_dir: str | None = None):
        """``staging_dir``: local directory for a remote workdir's checkpoints and logs (default:
        a fresh one under the staging root, removed with the store)."""
        self.checkpoint, self.keep, self.chief = checkpoint, keep, chief
        self.workdir = str(workdir)
        # checkpoint_dir / logs_dir name the workdir's own (maybe remote) directories in
        # messages; TensorFlow only ever sees the local ones.
        workdir_ = Workdir(self.workdir)
        self.checkpoint_dir, self.logs_dir = workdir_.checkpoints, workdir_.logs
        self.remote = fs.is_remote(self.workdir)
        if self.remote:
            if staging_dir is None:
                base = fs.staging_root()
                os.makedirs(base, exist_ok=True)
                staging_dir = tempfile.mkdtemp(prefix="train-", dir=base)
                weakref.finalize(self, shutil.rmtree, staging_dir, True)
            self.local_checkpoint_dir = os.path.join(staging_dir, CHECKPOINTS)
            self.local_logs_dir = os.path.join(staging_dir, LOGS)
            self._pushed_logs: dict[str, int] = {}
            # Before the managers exist: they read the index when built.
            _pull_newest(self.checkpoint_dir, self.local_checkpoint_dir, input_subdir)
        else:
            self.local_checkpoint_dir, self.local_logs_dir = self.checkpoint_dir, self.logs_dir
        self.input_subdir = input_subdir
        # Only the chief manages the checkpoints; the other workers restore the chief's.
        self.manager = None if not chief else tf.train.CheckpointManager(
            checkpoint, self.local_checkpoint_dir, max_to_keep=keep, checkpoint_name="ckpt")
        self.input_manager = None

    def keep_input(self, iterator) -> None:
        """Checkpoint the input pipeline's ``iterator`` with every checkpoint: a killed run over
        the same data resumes at the very batch it stopped at, a new epoch's data from its
        beginning."""
        self.input_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(input=iterator),
            os.path.join(self.local_checkpoint_dir, self.input_subdir) if self.remote
            else fs.join(self.checkpoint_dir, self.input_subdir),
            max_to_keep=self.keep, checkpoint_name="input")

    def latest(self) -> str | None:
        """The newest checkpoint this run resumes from (workers other than the chief save
        elsewhere: theirs is the chief's)."""
        if self.chief:
            return self.manager.latest_checkpoint
        return tf.train.latest_checkpoint(self.local_checkpoint_dir)

    def restore(self) -> int:
        """Restore the newest checkpoint, if any, and the input position saved with it;
        returns the step reached (0 without a checkpoint)."""
        latest = self.latest()
        if latest is None:
            if fs.glob(fs.join(self.checkpoint_dir, "ckpt-*")):
                raise UserError(f"{self.checkpoint_dir}: checkpoint files but no 'checkpoint' "
                                "index (half-written?); move them away to start afresh")
            return 0
        # A remote checkpoint was downloaded with whatever files it had, so the local copy is
        # checked and the remote name reported.
        shown = self.shown(latest)
        missing = [s for s in (".index",) if not fs.exists(latest + s)]
        if missing or not fs.glob(latest + ".data-*"):
            raise UserError(f"{shown}: checkpoint is missing or half-written (no "
                            f"{'.index' if missing else '.data-*'} file)")
        self._restore(self.checkpoint, latest, shown)
        step = int(self.checkpoint.step.numpy())
        if self.input_manager is not None:
            input_ckpt = fs.join(self.input_manager.directory, f"input-{step}")
            if fs.exists(input_ckpt + ".index"):
                self._restore(self.input_manager.checkpoint, input_ckpt, self.shown(input_ckpt))
        return step

    def shown(self, local_path: str) -> str:
        """How a local checkpoint file is named to the user: its place in the workdir."""
        if not self.remote:
            return local_path
        rel = os.path.relpath(local_path, self.local_checkpoint_dir).replace(os.sep, "/")
        return fs.join(self.checkpoint_dir, rel)

    @staticmethod
    def _restore(checkpoint, path: str, shown: str | None = None) -> None:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0][:300]
            raise UserError(f"{shown or path}: cannot restore checkpoint ({reason})") from None

    def save(self, step: int, barrier=None) -> str:
        """Save the checkpoint (and input position) of ``step``; returns its name. ``barrier``
        (under a strategy) returns once every worker's input position is saved."""
        if self.input_manager is not None:  # first: the main checkpoint's index commits both
            self.input_manager.save(checkpoint_number=step)
            if self.remote and not self.chief:
                self._push_checkpoint(None, step)
        if barrier is not None:
            # Every worker's input position is saved before the chief's index names the step.
            barrier(step)
        if not self.chief:
            # TensorFlow's multi-worker pattern: every worker saves (saving may need them all),
            # the others than the chief into a directory of their own, removed at once.
            scratch = tempfile.mkdtemp(prefix="qtopt-worker-checkpoint-")
            try:
                self.checkpoint.write(os.path.join(scratch, f"ckpt-{step}"))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return self.shown(os.path.join(self.local_checkpoint_dir, f"ckpt-{step}"))
        path = self.manager.save(checkpoint_number=step)
        if self.remote:
            self._push_checkpoint(path)
            return self.shown(path)
        return path

    def _push_checkpoint(self, path: str | None, input_step: int | None = None) -> None:
        """Copy the checkpoint just saved at local ``path`` to the remote workdir; with
        ``path`` None, only the input position saved at ``input_step`` (a worker other than
        the chief)."""
        if path is None:
            if input_step is None or self.input_manager is None:
                return
            managers = [self.input_manager]
            uploads = sorted(glob.glob(os.path.join(self.input_manager.directory,
                                                    f"input-{input_step}.*")))
            uploads.append(os.path.join(self.input_manager.directory, CHECKPOINT_INDEX))
            for local in uploads:
                _upload(local, self.shown(local))
            self._prune_remote(managers, ("input",))
            return
        managers = [self.manager] + ([self.input_manager] if self.input_manager else [])
        # Files first, then the input index, then the main index: a copy cut short leaves the
        # remote index naming the previous, complete checkpoint.
        step = step_in_name(path)
        uploads = sorted(glob.glob(path + ".*"))
        if self.input_manager is not None:
            uploads += sorted(glob.glob(os.path.join(self.input_manager.directory,
                                                     f"input-{step}.*")))
        uploads += [os.path.join(m.directory, CHECKPOINT_INDEX) for m in reversed(managers)]
        for local in uploads:
            _upload(local, self.shown(local))
        self._prune_remote(managers, ("ckpt", "input"))

    def _prune_remote(self, managers, prefixes) -> None:
        # Prune what the managers dropped, as TensorFlow does locally; the files of
        # checkpoints still listed stay even where this run never downloaded them.
        for m, prefix in zip(managers, prefixes):
            keep = {os.path.basename(p) for p in m.checkpoints}
            for remote in fs.glob(self.shown(os.path.join(m.directory, f"{prefix}-*"))):
                if remote.rsplit("/", 1)[-1].split(".", 1)[0] not in keep:
                    fs.remove(remote)

    @staticmethod
    def copy_newest(src_workdir: str, dst_workdir: str, what: str = "source") -> int:
        """Copy ``src_workdir``'s newest checkpoint into ``dst_workdir``, whose training then
        starts from it: once (-1 when ``dst_workdir`` has a checkpoint already), else its step.
        The index is written last, so a copy cut short is not taken for a checkpoint."""
        src, dst = Workdir(src_workdir), Workdir(dst_workdir)
        if fs.exists(dst.checkpoint_index):
            return -1
        if not fs.exists(src.checkpoint_index):
            raise UserError(f"{what} {src_workdir}: no {CHECKPOINT_INDEX} index under "
                            f"{src.checkpoints} (train it first)")
        text = fs.read_text(src.checkpoint_index)
        name = text.splitlines()[0].split('"')[1].replace("\\", "/").rsplit("/", 1)[-1]
        files = fs.glob(fs.join(src.checkpoints, name + ".*"))
        if not files:
            raise UserError(f"{src.checkpoints}: checkpoint {name} named in the index has no "
                            "files")
        for path in files:
            fs.write_bytes(fs.join(dst.checkpoints, fs.basename(path)), fs.read_bytes(path))
        fs.write_text(dst.checkpoint_index,
                      f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
        return step_in_name(name)

    def push_logs(self) -> None:
        """Copy event files that grew since the last push (they are only ever appended to)."""
        if not self.remote or not os.path.isdir(self.local_logs_dir):
            return
        for root, _, names in os.walk(self.local_logs_dir):
            for name in sorted(names):
                local = os.path.join(root, name)
                n = os.path.getsize(local)
                if self._pushed_logs.get(local) != n:
                    rel = os.path.relpath(local, self.local_logs_dir).replace(os.sep, "/")
                    _upload(local, fs.join(self.logs_dir, rel))
                    self._pushed_logs[local] = n


def _pull_newest(remote_dir: str, local_dir: str, input_subdir: str) -> None:
    """Download the checkpoint the remote index names (and its input position) into
    ``local_dir``, with the indexes; files missing remotely stay missing, for ``restore``."""
    shutil.rmtree(local_dir, ignore_errors=True)
    os.makedirs(local_dir)
    index = fs.join(remote_dir, CHECKPOINT_INDEX)
    if not fs.exists(index):
        return
    _download(index, os.path.join(local_dir, CHECKPOINT_INDEX))
    state = tf.train.get_checkpoint_state(local_dir)
    if state is None or not state.model_checkpoint_path:
        return
    name = state.model_checkpoint_path.replace("\\", "/").rsplit("/", 1)[-1]
    for remote in fs.glob(fs.join(remote_dir, name + ".*")):
        _download(remote, os.path.join(local_dir, remote.rsplit("/", 1)[-1]))
    input_remote = fs.join(remote_dir, input_subdir)
    if fs.exists(fs.join(input_remote, CHECKPOINT_INDEX)):
        input_local = os.path.join(local_dir, input_subdir)
        os.makedirs(input_local)
        _download(fs.join(input_remote, CHECKPOINT_INDEX),
                  os.path.join(input_local, CHECKPOINT_INDEX))
        step = step_in_name(name)
        for remote in fs.glob(fs.join(input_remote, f"input-{step}.*")):
            _download(remote, os.path.join(input_local, remote.rsplit("/", 1)[-1]))


def _download(remote: str, local: str) -> None:
    with fs.open_file(remote, "rb") as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def _upload(local: str, remote: str) -> None:
    with open(local, "rb") as src, fs.atomic_write(remote, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)

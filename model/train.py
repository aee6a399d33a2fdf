"""The trainer: minimise D(Q_theta(s, a), target) over labelled shards (section 4.1, appendix E).

Targets were computed by the relabel job with an earlier export; training only fits Q to them
and keeps the two target copies (``model.copies``) moving, then exports all three.

    workdir/checkpoints/   tf.train checkpoints: step, weights, optimizer, copies, input position
    workdir/exports/export-<step>/{online,polyak,lagged}/   see model.export
    workdir/logs/          TensorBoard: loss, mean Q, mean target, steps/s

``train`` runs until the global step reaches ``until_step`` (default ``train.steps``), resuming
from the newest checkpoint in ``workdir``; a killed run rerun with the same arguments continues
from its last checkpoint. A non-finite loss stops training at once with an error naming the step;
nothing is saved after it, so the last good checkpoint stays the newest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import keras
import tensorflow as tf

from model import data
from model.action_space import bounds_from_config
from model.copies import TargetCopies
from model.export import write_export
from model.network import InputSpec, QNetwork
from schemas import fs
from schemas.errors import UserError


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; training stopped without saving."""


@dataclass
class TrainResult:
    step: int
    start_step: int
    export_path: str | None
    loss: float
    steps_per_s: float


def loss_fn(kind: str):
    if kind == "cross_entropy":
        # Targets may dip below 0 by the step penalty; the gradient still pulls Q towards them.
        return lambda logits, target: tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))
    if kind == "squared_error":
        return lambda logits, target: tf.reduce_mean(tf.square(tf.sigmoid(logits) - target))
    raise UserError(f"train.loss: unknown loss {kind!r}")


def make_optimizer(cfg):
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate)
    raise UserError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}")


class Trainer:
    """Networks, optimizer, input and checkpoint of one training run; ``run`` trains."""

    def __init__(self, config, datasets, workdir: str, input_dataset=None):
        self.config = config
        cfg = config.train
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(cfg.seed)
        self.workdir = str(workdir)
        self.spec = InputSpec(config.robot.image_size, config.model.state_inputs)
        self.online = QNetwork(self.spec, config.model.preset, "online")
        self.polyak = QNetwork(self.spec, config.model.preset, "polyak")
        self.lagged = QNetwork(self.spec, config.model.preset, "lagged")
        self.copies = TargetCopies(self.online, self.polyak, self.lagged, config.targets.polyak,
                                   config.targets.lag_steps)
        self.copies.reset()
        self.optimizer = make_optimizer(cfg)
        self.trainable = self.online.model.trainable_variables
        self.optimizer.build(self.trainable)
        self.kernels = [v for v in self.trainable if v.path.endswith("kernel")]
        self.loss = loss_fn(cfg.loss)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

        input_key = "in-memory"
        if input_dataset is None:
            expanded = data.expand(datasets)
            input_key = _fingerprint(expanded, cfg)
            input_dataset = data.from_files(
                expanded, self.spec, cfg.batch_size, training=True, seed=cfg.seed,
                shuffle_buffer=cfg.shuffle_buffer, augment=cfg.augment, crop_pad=cfg.crop_pad)
        self.input_dataset = input_dataset
        self.iterator = iter(input_dataset)

        self.checkpoint = tf.train.Checkpoint(
            step=self.step, online=self.online.model, polyak=self.polyak.model,
            lagged=self.lagged.model, snapshot=self.copies.snapshot, optimizer=self.optimizer)
        self.checkpoint_dir = fs.join(self.workdir, "checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir,
                                                  max_to_keep=cfg.keep_checkpoints,
                                                  checkpoint_name="ckpt")
        # The input position is only meaningful for the same shards and input settings, so it is
        # kept apart, under a name derived from them: a new epoch's data starts from its beginning
        # while a killed run over the same data resumes at the very batch it stopped at.
        self.input_manager = None
        if cfg.checkpoint_input:
            self.input_manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(input=self.iterator),
                fs.join(self.checkpoint_dir, f"input-{input_key}"),
                max_to_keep=cfg.keep_checkpoints, checkpoint_name="input")
        self.train_step = tf.function(self._train_step)

    # -- one gradient step

    def _train_step(self, inputs, target):
        with tf.GradientTape() as tape:
            logits = self.online.logits(inputs, training=True)
            data_loss = self.loss(logits, target)
            l2 = self.config.train.l2 * tf.add_n([tf.nn.l2_loss(k) for k in self.kernels])
            loss = data_loss + l2
        grads = tape.gradient(loss, self.trainable)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(tf.linalg.global_norm(grads))

        def apply():
            self.optimizer.apply(grads, self.trainable)
            self.copies.polyak_update()
            self.step.assign_add(1)
            return tf.constant(True)

        # A non-finite step applies no update, so weights, optimizer state and target copies stay
        # those of the last good step (the loop stops right after it and saves nothing).
        tf.cond(finite, apply, lambda: tf.constant(False))
        return {"loss": data_loss, "finite": finite, "mean_q": tf.reduce_mean(tf.sigmoid(logits)),
                "mean_target": tf.reduce_mean(target)}

    # -- checkpoints

    def restore(self) -> int:
        """Resume from the newest checkpoint, if any; returns the step reached."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            if fs.glob(fs.join(self.checkpoint_dir, "ckpt-*")):
                raise UserError(f"{self.checkpoint_dir}: checkpoint files but no 'checkpoint' "
                                "index (half-written?); move them away to start afresh")
            return 0
        missing = [s for s in (".index",) if not fs.exists(latest + s)]
        if missing or not fs.glob(latest + ".data-*"):
            raise UserError(f"{latest}: checkpoint is missing or half-written (no "
                            f"{'.index' if missing else '.data-*'} file)")
        self._restore(self.checkpoint, latest)
        step = int(self.step.numpy())
        if self.input_manager is not None:
            input_ckpt = fs.join(self.input_manager.directory, f"input-{step}")
            if fs.exists(input_ckpt + ".index"):
                self._restore(self.input_manager.checkpoint, input_ckpt)
        return step

    @staticmethod
    def _restore(checkpoint, path: str) -> None:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0][:300]
            raise UserError(f"{path}: cannot restore checkpoint ({reason})") from None

    def save(self) -> str:
        step = int(self.step.numpy())
        if self.input_manager is not None:  # first: the main checkpoint's index commits both
            self.input_manager.save(checkpoint_number=step)
        return self.manager.save(checkpoint_number=step)

    def export(self) -> str:
        return write_export(fs.join(self.workdir, "exports"), int(self.step.numpy()),
                            {"online": self.online, "polyak": self.polyak,
                             "lagged": self.lagged},
                            extra={"config": self.config.to_dict()},
                            bounds=bounds_from_config(self.config.robot))

    # -- the loop

    def run(self, until_step: int | None = None, progress: bool = True) -> TrainResult:
        cfg = self.config.train
        until = cfg.steps if until_step is None else int(until_step)
        start = self.restore()
        step = start
        writer = tf.summary.create_file_writer(fs.join(self.workdir, "logs"))
        bar = keras.utils.Progbar(until, unit_name="step") if progress and until > start else None
        if bar is not None:
            bar.update(start)
        loss, t0, last_log, last_log_time = float("nan"), time.perf_counter(), step, None
        last_saved = start
        while step < until:
            try:
                inputs, target = next(self.iterator)
            except tf.errors.InvalidArgumentError as exc:
                raise UserError(f"training input at step {step + 1}: "
                                f"{_op_message(exc)}") from None
            out = self.train_step(inputs, target)
            if not bool(out["finite"]):
                raise NonFiniteLoss(
                    f"non-finite loss at step {step + 1}: training stopped; newest checkpoint "
                    f"{self.manager.latest_checkpoint or '(none)'} left as it was")
            step += 1
            self.copies.after_step(step)
            loss = float(out["loss"])
            if last_log_time is None:
                last_log_time = time.perf_counter()  # the first step includes tracing
                last_log = step
            if step % cfg.log_every == 0 or step == until:
                now = time.perf_counter()
                rate = (step - last_log) / max(now - last_log_time, 1e-9) if step > last_log \
                    else 0.0
                with writer.as_default(step=step):
                    _scalar("loss", loss)
                    _scalar("mean_q", out["mean_q"])
                    _scalar("mean_target", out["mean_target"])
                    _scalar("steps_per_s", rate)
                last_log, last_log_time = step, now
            if step % cfg.checkpoint_every == 0:
                self.save()
                last_saved = step
            if bar is not None:
                bar.update(step, values=[("loss", loss), ("mean_q", float(out["mean_q"]))])
        writer.flush()
        elapsed = time.perf_counter() - t0
        if step != last_saved:
            self.save()
        export_path = self.export()
        return TrainResult(step, start, export_path, loss,
                           (step - start) / elapsed if step > start else 0.0)


def _fingerprint(expanded, cfg) -> str:
    """Short hash of the shards and the input settings that shape the batch sequence."""
    key = json.dumps([expanded, cfg.batch_size, cfg.shuffle_buffer, cfg.seed, cfg.augment,
                      cfg.crop_pad])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _scalar(name: str, value) -> None:
    """A TensorBoard scalar without the tensorboard package (tf.summary.scalar needs it)."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    tf.summary.write(name, tf.cast(value, tf.float32), metadata=meta)


def _op_message(exc: tf.errors.OpError) -> str:
    text = exc.message if hasattr(exc, "message") else str(exc)
    if "assertion failed:" in text:  # our own in-graph checks: keep their message only
        text = text.split("assertion failed:", 1)[1].replace("] [", " ").strip(" []")
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2])[:400]


def train(config, datasets, workdir: str, until_step: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train on ``datasets`` (``[(glob, weight), ...]``) in ``workdir`` until ``until_step``."""
    return Trainer(config, datasets, workdir).run(until_step, progress)

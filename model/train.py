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

A remote ``workdir`` (``gs://`` or any fsspec URL) is reached only through ``schemas.fs``, never
through TensorFlow's own file systems (its GCS client has no endpoint setting, so it cannot reach
an emulator). Checkpoints and logs are written to a local staging directory as usual; each
completed checkpoint is then copied up, its files first and the ``checkpoint`` index last, so the
remote index only ever names complete checkpoints. A run starts by downloading the checkpoint the
remote index names. Remote shards are staged by ``model.data``.

Under a ``tf.distribute`` strategy (``model.distribute``) the same loop runs on every worker: each
reads its own part of the data, every replica computes its share of the global batch's loss, and
the chief alone writes checkpoints, logs and exports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass

import keras
import tensorflow as tf

from model import data
from schemas.mdp import GRIPPER_CLOSED, HEIGHT, bounds_from_config
from model.checkpoints import CheckpointStore
from model.copies import TargetCopies
from model.export import weights_digest, write_export
from model.cem import first_draw
from model.network import ACTION, IMAGE, InputSpec, QNetwork
from schemas import cells, fs
from schemas.errors import UserError
from schemas.rundirs import Workdir, step_in_name


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; training stopped without saving."""


@dataclass
class TrainResult:
    step: int
    start_step: int
    export_path: str | None
    loss: float
    steps_per_s: float
    until_step: int | None = None
    digest: str | None = None   # under a strategy: weights_digest of the three copies

    @property
    def trained(self) -> int:
        """Steps this run trained (0 when the workdir was already at its target)."""
        return self.step - self.start_step


class StepProgress:
    """Training progress for a person: ``train: step S/U (P%), R steps/s, ETA T, loss, mean_q``.

    Rates and the ETA count only the steps this run trained (a resumed run starts at its
    checkpoint's step) and start after the first step, which includes tracing. On a terminal
    the line is redrawn in place once a second; into a file or pipe a new line is written every
    ``every`` seconds (10 by default), so logs stay short."""

    def __init__(self, start: int, until: int, stream=None, every: float | None = None,
                 clock=time.monotonic):
        self.start, self.until = int(start), int(until)
        self.stream = sys.stdout if stream is None else stream
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.inplace = bool(isatty)
        self.every = (1.0 if self.inplace else 10.0) if every is None else float(every)
        self.clock = clock
        self.t_first = None      # time and step of the first step done (after tracing)
        self.first_step = self.start
        self.last_print = None

    def rate(self, step: int) -> float:
        """Steps per second since the first step of this run (0 until there is a measure)."""
        if self.t_first is None or step <= self.first_step:
            return 0.0
        return (step - self.first_step) / max(self.clock() - self.t_first, 1e-9)

    def line(self, step: int, loss: float, mean_q: float) -> str:
        total = max(self.until, 1)
        rate = self.rate(step)
        eta = f"{(self.until - step) / rate:.0f} s" if rate > 0 else "?"
        return (f"train: step {step}/{self.until} ({100 * step / total:.0f}%), "
                f"{rate:.1f} steps/s, ETA {eta}, loss {loss:.4f}, mean_q {mean_q:.3f}")

    def update(self, step: int, loss: float, mean_q: float) -> None:
        now = self.clock()
        done = step >= self.until
        first = self.t_first is None
        if first:   # the first step includes tracing: measure from its end
            self.t_first, self.first_step, self.last_print = now, step, now
        if not done and (first or now - self.last_print < self.every):
            return
        self.last_print = now
        text = self.line(step, loss, mean_q)
        if self.inplace:
            self.stream.write("\r" + text + ("\n" if done else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# The step loop's parts, each called after every step and once at the end (as tf-agents'
# Learner calls its triggers): what to do and at which interval lives in the part, not the loop.

class LogPart:
    """TensorBoard scalars every ``every`` steps and at the last one (into ``logs_dir``; None:
    a worker other than the chief, which logs nothing). The rate leaves out the first step,
    which includes tracing."""

    def __init__(self, logs_dir: str | None, every: int, until: int):
        self.writer = tf.summary.create_file_writer(logs_dir) if logs_dir else \
            tf.summary.create_noop_writer()
        self.every, self.until = every, until
        self.last_step, self.last_time = None, None

    def after_step(self, step: int, out: dict) -> None:
        if self.last_time is None:
            self.last_step, self.last_time = step, time.perf_counter()
        if step % self.every and step != self.until:
            return
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9) \
            if step > self.last_step else 0.0
        with self.writer.as_default(step=step):
            _scalar("loss", float(out["loss"]))
            _scalar("mean_q", out["mean_q"])
            _scalar("mean_target", out["mean_target"])
            _scalar("steps_per_s", rate)
        self.last_step, self.last_time = step, now

    def close(self, step: int) -> None:
        self.writer.flush()


class CheckpointPart:
    """A checkpoint every ``every`` steps and at the end (unless the last step was saved); a
    remote workdir's logs are pushed with each."""

    def __init__(self, trainer, every: int, start: int, logs: LogPart):
        self.trainer, self.every, self.last_saved, self.logs = trainer, every, start, logs

    def after_step(self, step: int, out: dict) -> None:
        if step % self.every:
            return
        self.trainer.save()
        self.last_saved = step
        if self.trainer.store.remote:
            self.logs.writer.flush()
            self.trainer.store.push_logs()

    def close(self, step: int) -> None:
        if step != self.last_saved:
            self.trainer.save()
        self.trainer.store.push_logs()


class ExportPart:
    """An export every ``every`` steps before the last (0: none); the last step's export is
    the run's own (``Trainer.run(export=...)``)."""

    def __init__(self, trainer, every: int, until: int):
        self.trainer, self.every, self.until = trainer, every, until

    def after_step(self, step: int, out: dict) -> None:
        if self.every and step % self.every == 0 and step < self.until:
            self.trainer.export()

    def close(self, step: int) -> None:
        pass


class ProgressPart:
    """The progress line (``StepProgress``)."""

    def __init__(self, bar: StepProgress):
        self.bar = bar

    def after_step(self, step: int, out: dict) -> None:
        self.bar.update(step, float(out["loss"]), float(out["mean_q"]))

    def close(self, step: int) -> None:
        pass


def loss_fn(kind: str):
    if kind == "cross_entropy":
        # Targets dip below 0 by the step penalty (r = -0.05 + gamma * V with V near 0). Cross
        # entropy is a divergence only for labels in [0, 1]: with a label t < 0 it falls without
        # bound as the logit goes to -inf (its gradient never drops below -t), so those logits
        # would diverge. A sigmoid cannot go below 0 anyway, so the label is clipped to [0, 1].
        return lambda logits, target: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.clip_by_value(target, 0.0, 1.0), logits=logits))
    if kind == "squared_error":
        return lambda logits, target: tf.reduce_mean(tf.square(tf.sigmoid(logits) - target))
    raise UserError(f"train.loss: unknown loss {kind!r}")


def make_optimizer(cfg):
    rate = cfg.learning_rate
    if cfg.decay_steps:
        # A function of the optimizer's own step count, so a resumed run decays on from there.
        rate = keras.optimizers.schedules.CosineDecay(rate, cfg.decay_steps,
                                                      alpha=cfg.decay_floor)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    raise UserError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}")


def check_cell(robot_config, found: dict) -> None:
    """Refuse training data of several cells, or of another cell than the robot config's: the
    export says it was trained on the config's cell, and policies run only there."""
    cell = cells.one_cell(found, "training")
    current = robot_config.cell_identity()
    if cell is not None and cell != current:
        raise UserError(f"training data {found[cell]} was made by {cell} but the robot "
                        f"config is {current}; {cells.how_to_match(cell, current)}")


class Trainer:
    """Networks, optimizer, input and checkpoint of one training run; ``run`` trains."""

    def __init__(self, config, datasets, workdir: str, input_dataset=None,
                 staging_dir: str | None = None, distribution=None):
        """``staging_dir``: local directory for a remote workdir's checkpoints and logs
        (``model.checkpoints``). ``distribution``: a ``model.distribute.Distribution`` to train
        under (None: no ``tf.distribute`` strategy at all)."""
        self.config = config
        cfg = config.train
        self.distribution = distribution
        self.chief = distribution is None or distribution.chief
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(cfg.seed)
        self.workdir = str(workdir)
        self.spec = InputSpec(config.robot.image_size, config.model.state_inputs,
                              translation_range=config.robot.max_translation)
        self._build_networks()
        self.expanded = None if input_dataset is not None else data.expand(datasets)
        self._mix = None
        self._part = self._worker_part()
        batch_size, shard = self._part
        if self.expanded is not None:
            check_cell(config.robot, data.dataset_cells(self.expanded))
        self.checkpoint = tf.train.Checkpoint(
            step=self.step, online=self.online.model, polyak=self.polyak.model,
            lagged=self.lagged.model, snapshot=self.copies.snapshot, optimizer=self.optimizer)
        # Each worker's input position is its own, kept under a name of its data and settings.
        input_key = "in-memory" if self.expanded is None else _fingerprint(
            self.expanded, cfg, None if distribution is None else [batch_size, shard])
        self.store = CheckpointStore(self.checkpoint, self.workdir, cfg.keep_checkpoints,
                                     f"input-{input_key}", self.chief, staging_dir)
        # Built once the newest checkpoint is known: its step may seed the stream.
        if self.expanded is not None:
            input_dataset = self._input_from_files()
        self.input_dataset = input_dataset
        self.iterator = iter(input_dataset)
        if cfg.checkpoint_input:
            self.store.keep_input(self.iterator)
        # The step the weights in memory were last saved at or restored from: a further run
        # from there need not read the checkpoint back.
        self._synced_step = None
        # XLA fuses the small convolutions' batch norms and activations: 1.5x the steps per
        # second of fast64 on 2 CPU cores. Strategies keep the plain graph (collectives); off,
        # jit_compile is left unset (None), the graph as it was before the option.
        self.train_step = tf.function(self._train_step, jit_compile=cfg.jit_compile or None) \
            if distribution is None else tf.function(self._distributed_step)
        if distribution is not None:
            self._gather = tf.function(self._gather_fn)

    def _input_from_files(self):
        cfg = self.config.train
        batch_size, shard = self._part
        # The mix of several datasets is read from a variable, so that a new mix of the same
        # files (finetuning's next chunk) is an assignment, not a new pipeline to build and fill.
        self._mix = None if len(self.expanded) < 2 else tf.Variable(
            [w for _, w in self.expanded], dtype=tf.float32, trainable=False)
        return data.from_files(
            self.expanded, self.spec, batch_size, training=True,
            seed=_input_seed(cfg, self.store.latest()),
            shuffle_buffer=cfg.shuffle_buffer, augment=cfg.augment, crop_pad=cfg.crop_pad,
            shard=shard, compile_augment=cfg.jit_compile, weights=self._mix)

    def use_data(self, datasets) -> None:
        """Train the next ``run`` on ``datasets`` (``[(glob, weight), ...]``) instead, keeping
        the networks, the optimizer and the traced step: finetuning's chunks, each with its own
        on-policy share. Only for runs whose input position is not checkpointed."""
        if self.config.train.checkpoint_input or self.distribution is not None:
            raise UserError("use_data: only for a single-process trainer with "
                            "train.checkpoint_input off (the input changes between runs)")
        expanded = data.expand(datasets)
        if self._mix is not None and [f for f, _ in expanded] == [f for f, _ in self.expanded]:
            self._mix.assign([w for _, w in expanded])   # the same files in a new mix
            self.expanded = expanded
            return
        check_cell(self.config.robot, data.dataset_cells(expanded))
        self.expanded = expanded
        self.input_dataset = self._input_from_files()
        self.iterator = iter(self.input_dataset)

    def _build_networks(self) -> None:
        """The online, Polyak and lagged networks, the optimizer and the step counter; under a
        strategy every variable is mirrored on all replicas."""
        config, cfg = self.config, self.config.train
        q0, sync = config.model.initial_q, self.distribution is not None
        scope = self.distribution.strategy.scope() if sync else contextlib.nullcontext()
        with scope:
            self.online = QNetwork(self.spec, config.model.preset, "online", initial_q=q0,
                                   sync_batch_norm=sync)
            self.polyak = QNetwork(self.spec, config.model.preset, "polyak", initial_q=q0,
                                   sync_batch_norm=sync)
            self.lagged = QNetwork(self.spec, config.model.preset, "lagged", initial_q=q0,
                                   sync_batch_norm=sync)
            self.copies = TargetCopies(self.online, self.polyak, self.lagged,
                                       config.targets.polyak, config.targets.lag_steps)
            self.copies.reset()
            self.optimizer = make_optimizer(cfg)
            self.trainable = self.online.model.trainable_variables
            self.optimizer.build(self.trainable)
            self.kernels = [v for v in self.trainable if v.path.endswith("kernel")]
            self.loss = loss_fn(cfg.loss)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    def _worker_part(self) -> tuple[int, tuple | None]:
        """This worker's batch size and (shard, shards) of the data. Under a strategy each
        worker builds its own pipeline over its part rather than use tf.distribute's
        distributed datasets, whose iterators cannot be checkpointed: so every worker's input
        position resumes as one process's does."""
        d = self.distribution
        if d is None:
            return self.config.train.batch_size, None
        return (_worker_batch_size(self.config.train.batch_size, d),
                (d.worker, d.workers) if d.workers > 1 else None)

    # -- one gradient step

    def _train_step(self, inputs, target):
        # Under a strategy this runs on every replica, on its part of the global batch.
        replica = None if self.distribution is None else tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            weight = self.config.train.conservative
            if weight > 0:
                logits, conservative = self._conservative_logits(inputs)
            else:
                logits = self.online.logits(inputs, training=True)
            data_loss = self.loss(logits, target)
            l2 = self.config.train.l2 * tf.add_n([tf.nn.l2_loss(k) for k in self.kernels])
            loss = data_loss + l2
            if weight > 0:
                loss = loss + weight * conservative
            if replica is not None:  # the optimizer sums the replicas' gradients
                loss = loss / replica.num_replicas_in_sync
        grads = tape.gradient(loss, self.trainable)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(tf.linalg.global_norm(grads))
        if replica is not None:  # every replica applies the step, or none does
            bad = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                                     tf.cast(tf.logical_not(finite), tf.float32))
            finite = tf.equal(bad, 0.0)

        # A non-finite step applies no update, so weights, optimizer state and target copies stay
        # those of the last good step (the loop stops right after it and saves nothing).
        if replica is None:
            tf.cond(finite, lambda: self._apply(grads), lambda: tf.constant(False))
        else:
            replica.merge_call(self._apply_if_finite, args=(finite, grads))
        out = {"loss": data_loss, "finite": finite, "mean_q": tf.reduce_mean(tf.sigmoid(logits)),
               "mean_target": tf.reduce_mean(target)}
        if replica is not None:  # replicas' parts are equal in size: the global batch's means
            for key in ("loss", "mean_q", "mean_target"):
                out[key] = replica.all_reduce(tf.distribute.ReduceOp.MEAN, out[key])
        return out

    def _conservative_logits(self, inputs):
        """(logits of the recorded actions [B], the conservative term): the mean cross-entropy
        of picking each state's recorded action among it and K actions drawn as CEM starts
        its search. Without it, CEM's maximum lands where no data constrains Q (the
        translation bounds, the ceiling). One head call scores all K + 1 actions so that batch
        normalisation sees them alike."""
        cfg, net = self.config, self.online
        k = cfg.train.conservative_samples
        image = inputs[IMAGE]
        b = tf.shape(image)[0]
        features = net.tower(image, training=True)
        state = net.state_vector(inputs, "observation")
        closed = inputs.get(GRIPPER_CLOSED)
        if closed is None:
            closed = tf.zeros((b,), tf.float32)
        terminate_rule = None
        if cfg.robot.termination == "scripted":
            terminate_rule = (closed, inputs.get(HEIGHT, tf.zeros((b,), tf.float32)))
        low, high = bounds_from_config(cfg.robot)
        seed = tf.stack([tf.constant(cfg.train.seed, tf.int64), self.step])
        drawn = first_draw(b, seed, k, low, high, cfg.cem.gripper_noop, terminate_rule,
                           None if cfg.robot.gripper_moves else closed)
        actions = tf.concat([tf.cast(inputs[ACTION], tf.float32)[:, None], drawn], 1)
        logits = net.head([tf.repeat(features, k + 1, axis=0),
                           tf.concat([tf.reshape(actions, (-1, actions.shape[-1])),
                                      tf.repeat(state, k + 1, axis=0)], -1)], training=True)
        logits = tf.reshape(logits, (-1, k + 1))
        picked = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.zeros((b,), tf.int32), logits)
        return logits[:, 0], tf.reduce_mean(picked)

    def _apply(self, grads):
        self.optimizer.apply(grads, self.trainable)
        self.copies.polyak_update()
        self.step.assign_add(1)
        return tf.constant(True)

    def _apply_if_finite(self, distribution, finite, grads):
        """``_apply`` on every replica if ``finite``. The condition is taken in cross-replica
        context, as Keras's LossScaleOptimizer does: a branch that synchronises replicas (the
        optimizer sums gradients) cannot run under a condition inside a replica."""
        finite = distribution.experimental_local_results(finite)[0]  # the same on every replica

        def apply_all():
            distribution.extended.call_for_each_replica(self._apply, args=(grads,))
            return tf.constant(True)

        tf.cond(finite, apply_all, lambda: tf.constant(False))

    def _distributed_step(self, inputs, target):
        """One step on every replica; ``inputs, target`` is this worker's part of the batch."""
        strategy = self.distribution.strategy
        n = self.distribution.local_replicas
        args = (inputs, target)
        if n > 1:  # this worker's devices each take an equal slice
            flat = [tf.split(t, n) for t in tf.nest.flatten(args)]
            args = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.nest.pack_sequence_as(
                    (inputs, target), [parts[ctx.replica_id_in_sync_group % n]
                                       for parts in flat]))
        out = strategy.run(self._train_step, args=args)
        return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}

    def _gather_fn(self, values):
        """``values`` [k] of every replica, stacked [replicas, k]; a barrier too."""
        strategy = self.distribution.strategy

        def gather():
            return tf.distribute.get_replica_context().all_gather(values[None], axis=0)

        return strategy.experimental_local_results(strategy.run(gather))[0]

    def _check_agreement(self, start: int, until: int) -> None:
        """All workers must resume at one step and train to one step, or their collectives
        would wait for each other forever; every worker sees all values, so all stop alike."""
        seen = self._gather(tf.constant([start, until], tf.int64)).numpy()
        if (seen != seen[0]).any():
            starts = sorted({int(v) for v in seen[:, 0]})
            untils = sorted({int(v) for v in seen[:, 1]})
            if len(starts) > 1:
                raise UserError(f"{self.store.checkpoint_dir}: workers resumed at different steps "
                                f"{starts}: every worker must reach the same --workdir (a shared "
                                "file system or gs://)")
            raise UserError(f"workers train to different steps {untils}: give every worker the "
                            "same --until-step / --steps and config")

    # -- checkpoints (model.checkpoints keeps them)

    def restore(self) -> int:
        """Resume from the newest checkpoint, if any; returns the step reached."""
        step = int(self.step.numpy())
        if self._synced_step == step and self.store.latest() is not None:
            return step   # this trainer wrote or read that checkpoint and trained no further
        step = self.store.restore()
        self._synced_step = step
        return step

    def save(self) -> str:
        barrier = None
        if self.distribution is not None:
            def barrier(step):
                self._gather(tf.constant([step], tf.int64))
        path = self.store.save(int(self.step.numpy()), barrier)
        self._synced_step = int(self.step.numpy())
        return path

    def _damaged_input(self, step: int, exc) -> UserError:
        found = data.find_damaged(self.expanded) if self.expanded else None
        if found is None:
            return UserError(f"training input at step {step}: {_op_message(exc)}")
        return UserError(f"{found} (training input at step {step}; nothing saved after "
                         "the last checkpoint)")

    def export_if_missing(self) -> str | None:
        """The complete export of the current step, written only if it is not there yet (by the
        chief alone: None elsewhere)."""
        from model.export import MANIFEST, export_dir

        if not self.chief:
            return None
        path = export_dir(Workdir(self.workdir).exports, int(self.step.numpy()))
        return path if fs.exists(fs.join(path, MANIFEST)) else self.export()

    def export(self) -> str | None:
        if not self.chief:  # the weights are the chief's
            return None
        return write_export(Workdir(self.workdir).exports, int(self.step.numpy()),
                            {"online": self.online, "polyak": self.polyak,
                             "lagged": self.lagged},
                            extra={"config": self.config.to_dict()},
                            bounds=bounds_from_config(self.config.robot),
                            termination=self.config.robot.termination,
                            gripper_moves=self.config.robot.gripper_moves,
                            cell=self.config.robot.cell_identity())

    # -- the loop

    def run(self, until_step: int | None = None, progress: bool = True,
            steps: int | None = None, export: bool = True) -> TrainResult:
        """Train until the global step reaches ``until_step`` (default ``train.steps``), or
        ``steps`` more than the workdir's checkpoint. A workdir already there trains nothing
        and only writes its export if that is missing. ``export=False``: checkpoint but write
        no export (a chunk that more chunks follow). Under a strategy, a worker that stops
        (killed, unreachable) stops the others with an error; all resume when rerun."""
        if self.distribution is None:
            return self._run(until_step, progress, steps, export)
        try:
            return self._run(until_step, progress, steps, export)
        except _LOST_WORKER as exc:
            text = exc.message if hasattr(exc, "message") else str(exc)
            tasks = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", text)))
            lost = ", ".join(tasks) if tasks else f"another worker ({_op_message(exc)})"
            raise UserError(f"{self.distribution.describe()}: lost contact with {lost} after "
                            f"step {int(self.step.numpy())}; nothing saved after the last "
                            "checkpoint: rerun the same command on every worker to resume") \
                from None

    def _run(self, until_step, progress, steps, export=True) -> TrainResult:
        cfg = self.config.train
        start = self.restore()
        until = (start + int(steps) if steps is not None else
                 cfg.steps if until_step is None else int(until_step))
        if self.distribution is not None:
            self._check_agreement(start, until)
        if until <= start:
            return TrainResult(start, start, self.export_if_missing() if export else None,
                               float("nan"), 0.0, until, self._digest())
        logs = LogPart(self.store.local_logs_dir if self.chief else None, cfg.log_every, until)
        parts = [logs, CheckpointPart(self, cfg.checkpoint_every, start, logs),
                 ExportPart(self, cfg.export_every, until)]
        if progress:
            parts.append(ProgressPart(StepProgress(start, until)))
        step, loss, t0 = start, float("nan"), time.perf_counter()
        while step < until:
            out = self.train_step(*self._next_batch(step))
            if not bool(out["finite"]):
                latest = self.store.latest()
                raise NonFiniteLoss(
                    f"non-finite loss at step {step + 1}: training stopped; newest checkpoint "
                    f"{self.store.shown(latest) if latest else '(none)'} left as it was")
            step += 1
            self.copies.after_step(step)
            loss = float(out["loss"])
            for part in parts:
                part.after_step(step, out)
        elapsed = time.perf_counter() - t0
        for part in parts:
            part.close(step)
        export_path = self.export() if export else None
        return TrainResult(step, start, export_path, loss,
                           (step - start) / elapsed if step > start else 0.0, until,
                           self._digest())

    def _next_batch(self, step: int):
        """The input of step ``step + 1``; a bad or damaged record is a UserError naming it."""
        try:
            return next(self.iterator)
        except tf.errors.InvalidArgumentError as exc:
            raise UserError(f"training input at step {step + 1}: "
                            f"{_op_message(exc)}") from None
        except tf.errors.DataLossError as exc:  # a damaged shard: TensorFlow names no file
            raise self._damaged_input(step + 1, exc) from None

    def _digest(self) -> str | None:
        """Under a strategy, what each worker holds, for comparing workers (None otherwise)."""
        if self.distribution is None:
            return None
        return weights_digest({"online": self.online, "polyak": self.polyak,
                               "lagged": self.lagged})


# What a collective raises when a peer is gone (killed, restarted, unreachable).
_LOST_WORKER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError)


def _worker_batch_size(batch_size: int, distribution) -> int:
    """This worker's part of the global batch ``batch_size``: equal parts per replica."""
    replicas = distribution.replicas
    if batch_size % replicas:
        raise UserError(f"train.batch_size {batch_size} does not split into equal parts for "
                        f"the {replicas} replicas ({distribution.describe()}); make it a "
                        f"multiple of {replicas}")
    return batch_size // replicas * distribution.local_replicas


def _fingerprint(expanded, cfg, part=None) -> str:
    """Short hash of the shards and the input settings that shape the batch sequence (``part``:
    a worker's batch size and shard, under a strategy)."""
    key = [expanded, cfg.batch_size, cfg.shuffle_buffer, cfg.seed, cfg.augment, cfg.crop_pad]
    key = json.dumps(key if part is None else key + [part])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _input_seed(cfg, latest_checkpoint: str | None) -> int:
    """The input stream's seed. With input checkpoints it is ``train.seed``: a resumed run
    rebuilds the very stream its input checkpoint was taken from, wherever the files lie. Without
    them the step the run resumes at is mixed in: short runs over the same files (finetuning's
    chunks) would otherwise replay the same first batches every time."""
    seed = cfg.seed
    if not cfg.checkpoint_input and latest_checkpoint:
        seed += step_in_name(latest_checkpoint) * 7919
    return seed % (1 << 31)


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


def export_weights(config, workdir: str) -> str:
    """Export the weights of ``workdir``'s newest checkpoint, or of the untrained network (step 0)
    when it has none, without reading any training data. The input position is never restored:
    there is no input."""
    import dataclasses

    config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                   checkpoint_input=False))
    trainer = Trainer(config, [], workdir, input_dataset=iter(()))
    trainer.restore()
    return trainer.export()


def export_only(config, workdir: str, until_step: int | None = None,
                steps: int | None = None) -> TrainResult:
    """``qtopt train`` without ``--data``: the export of ``workdir``'s newest checkpoint, or of
    the untrained network at step 0 (what epoch 0 relabels with), written if missing. Refused
    when the target step lies beyond the checkpoint: that needs data."""
    import dataclasses

    config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                   checkpoint_input=False))
    trainer = Trainer(config, [], workdir, input_dataset=iter(()))
    start = trainer.restore()
    until = (start + int(steps) if steps is not None else
             config.train.steps if until_step is None else int(until_step))
    if until > start:
        raise UserError(f"--data: needed to train {workdir} from step {start} to {until} "
                        "(without it, train only exports: --until-step 0, or --steps 0)")
    return TrainResult(start, start, trainer.export_if_missing(), float("nan"), 0.0, until)


def train_until(config, datasets, workdir: str, until_step: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train on ``datasets`` (``[(glob, weight), ...]``) in ``workdir`` until ``until_step``."""
    return Trainer(config, datasets, workdir).run(until_step, progress)

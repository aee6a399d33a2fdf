"""Offline QT-Opt in one process, for ablations of the target rule and the trainer's levers.

    python -m benchmarks.offline_levers --episodes runs/d5k/episodes/scripted0 \\
        --episodes runs/d5k/episodes/explore1 --out runs/abl/NAME --preset cpu-long \\
        --steps 12000 --relabel-every 1500 --eval-every 3000 [--set targets.returns=floor ...]

The pipeline's own parts: the trainer (``model.train.Trainer``, so ``train.conservative`` and every
other training option apply), the target maths (``model.targets.compute_targets``, with
``targets.returns``), the MDP's returns (``schemas.mdp.discounted_returns``) and the evaluation job
(``pipelines.jobs.evaluate``, greedy, on train objects). Only the data path differs: the episodes
are held in memory and batches drawn from them, so a relabelling costs its CEM alone and no shard is
written. An ablation here costs minutes; what wins is then run through ``qtopt demo``.

Prints one JSON line per evaluated export (step, success, interval, seconds so far, mean target)
and appends it to ``OUT/curve.jsonl``. Rerunning with the same ``--out`` refuses; choose another.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import schemas  # noqa: E402,F401  (first: the tfrecord/tensorflow import hook)
from schemas.mdp import discounted_returns  # noqa: E402
from schemas.specs import STATE_SCALARS  # noqa: E402
from schemas.transitions import terminal_flags  # noqa: E402


@dataclasses.dataclass
class Data:
    """Every step's observation once; transitions index into it (s' is the next row)."""

    images: np.ndarray        # uint8 [S, H, W, 3]
    scalars: np.ndarray       # float32 [S, len(STATE_SCALARS)]
    obs: np.ndarray           # int64 [N]: row of s
    action: np.ndarray        # float32 [N, 8]
    reward: np.ndarray        # float32 [N]
    terminal: np.ndarray      # bool [N]
    episode_success: np.ndarray  # bool [N]
    episode_start: np.ndarray  # int64 [episodes + 1]: each episode's first transition, then N
    episodes: int

    def returns(self, gamma: float) -> np.ndarray:
        """Each transition's ``return_to_go``, as shard writes it (``schemas.transitions``)."""
        out = np.zeros(len(self.reward), np.float32)
        for a, b in zip(self.episode_start[:-1], self.episode_start[1:]):
            out[a:b] = discounted_returns(self.reward[a:b], gamma)
        return out


def load_episodes(directories: list[str]) -> Data:
    from pipelines.machinery.records import read_episodes

    images, scalars, obs, action, reward, terminal, success = [], [], [], [], [], [], []
    starts, rows = [0], 0
    for directory in directories:
        files = sorted(glob.glob(os.path.join(directory, "*.tfrecord*")))
        if not files:
            raise SystemExit(f"{directory}: no episode files")
        for path in files:
            for episode, _, letter in read_episodes(path):
                if episode is None:
                    raise SystemExit(f"{path}: {letter}")
                n = int(episode["num_steps"])
                images.append(np.asarray(episode["observation/image"], np.uint8))
                scalars.append(np.stack([np.asarray(episode[f"observation/{name}"], np.float32)
                                         for name in STATE_SCALARS], -1))
                obs.append(rows + np.arange(n))
                action.append(np.asarray(episode["action"], np.float32)[:n])
                reward.append(np.asarray(episode["reward"], np.float32)[:n])
                terminal.append(np.asarray(terminal_flags(episode), bool))
                success.append(np.full(n, bool(episode["success"])))
                rows += n + 1
                starts.append(starts[-1] + n)
    return Data(np.concatenate(images), np.concatenate(scalars), np.concatenate(obs),
                np.concatenate(action), np.concatenate(reward), np.concatenate(terminal),
                np.concatenate(success), np.asarray(starts, np.int64), len(starts) - 1)


def relabelled(cfg, export_path: str, data: Data, returns: np.ndarray,
               chunk: int = 512) -> np.ndarray:
    """Every transition's target by the relabel job's maths (``targets.kind`` and
    ``targets.returns``); a terminal transition's is its reward, computed without CEM."""
    from model.export import load_export
    from model.targets import compute_targets, with_returns

    export = load_export(export_path, copies=("polyak", "lagged"))
    out = with_returns(cfg.targets.returns, data.reward.astype(np.float32), returns)
    todo = np.flatnonzero(~data.terminal)
    for k, start in enumerate(range(0, len(todo), chunk)):
        idx = todo[start:start + chunk]
        nxt = data.obs[idx] + 1
        batch = {"next_observation/image": data.images[nxt], "reward": data.reward[idx],
                 "is_terminal": data.terminal[idx], "return_to_go": returns[idx]}
        for j, name in enumerate(STATE_SCALARS):
            batch[f"next_observation/{name}"] = data.scalars[nxt, j]
        target, _ = compute_targets(export, batch, cfg.cem, cfg.targets, seed=k)
        out[idx] = target
    return out


def make_input(cfg, data: Data, holder: dict, seed: int):
    """Batches (inputs, target) drawn uniformly from the transitions; the target array is read
    from ``holder`` at every draw, so a relabelling takes effect at once."""
    import tensorflow as tf

    from model.data import augment_images, compiled_augment_images
    from model.network import InputSpec

    spec = InputSpec(cfg.robot.image_size, cfg.model.state_inputs,
                     translation_range=cfg.robot.max_translation)
    b = cfg.train.batch_size
    rng = np.random.default_rng(seed)
    size = cfg.robot.image_size

    def draw():
        while True:
            idx = rng.integers(0, len(data.obs), b)
            o = data.obs[idx]
            inputs = {"observation/image": data.images[o], "action": data.action[idx]}
            for j, name in enumerate(STATE_SCALARS):
                inputs[f"observation/{name}"] = data.scalars[o, j]
            yield {k: inputs[k] for k in spec.input_names}, holder["target"][idx]

    signature = ({k: tf.TensorSpec((b, size, size, 3), tf.uint8) if k == "observation/image"
                  else tf.TensorSpec((b, 8) if k == "action" else (b,), tf.float32)
                  for k in spec.input_names}, tf.TensorSpec((b,), tf.float32))
    ds = tf.data.Dataset.from_generator(draw, output_signature=signature)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))

    def augment(pair, index):
        inputs, target = pair
        if cfg.train.augment:
            inputs = dict(inputs)
            fn = compiled_augment_images if cfg.train.jit_compile else augment_images
            inputs["observation/image"] = fn(
                inputs["observation/image"], tf.stack([tf.constant(seed, tf.int64), index]),
                cfg.train.crop_pad)
        return inputs, target

    return ds.map(augment, num_parallel_calls=2).prefetch(4)


def evaluate(cfg, export_path: str, out: str) -> dict:
    from pipelines.jobs.evaluate import evaluate_policy

    ev = dataclasses.replace(cfg.evaluate, attempts=cfg.evaluate.curve_attempts, bin_trials=0,
                             gifs=0)
    result = evaluate_policy(dataclasses.replace(cfg, evaluate=ev), export_path, "train", out,
                             None, [])
    return result["replacement"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", action="append", required=True, metavar="DIR",
                        help="a collection's output directory; may be repeated")
    parser.add_argument("--out", required=True, help="directory for checkpoints, exports and "
                                                     "evaluations (must not exist)")
    parser.add_argument("--preset", default="cpu-long")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--relabel-every", type=int, default=1500,
                        help="gradient steps between relabellings (Bellman rules only)")
    parser.add_argument("--eval-every", type=int, default=3000)
    parser.add_argument("--eval-from", type=int, default=0, help="first step evaluated")
    args = parser.parse_args(argv)

    from schemas.config import load_config

    cfg = load_config(args.preset, overrides=args.overrides)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_input=False))
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out}: exists; give each ablation its own --out")
    os.makedirs(args.out)
    with open(os.path.join(args.out, "args.json"), "w") as f:
        json.dump({"argv": vars(args), "config": cfg.to_dict()}, f, indent=1)

    t0 = time.monotonic()
    data = load_episodes(args.episodes)
    rule = cfg.targets.returns
    returns = data.returns(cfg.targets.gamma)
    print(json.dumps({"episodes": data.episodes, "transitions": len(data.obs),
                      "successes": int(np.sum(data.episode_success[data.episode_start[:-1]])),
                      "load_s": round(time.monotonic() - t0, 1)}), flush=True)

    from model.train import Trainer

    holder = {"target": returns.copy()}
    trainer = Trainer(cfg, [], os.path.join(args.out, "train"),
                      input_dataset=make_input(cfg, data, holder, cfg.train.seed))
    export = trainer.export()
    relabel_s = 0.0

    def relabel(export_path):
        nonlocal relabel_s
        if rule == "only":
            return
        t = time.monotonic()
        holder["target"] = relabelled(cfg, export_path, data, returns)
        relabel_s += time.monotonic() - t

    relabel(export)
    marks = sorted(set(list(range(args.relabel_every, args.steps + 1, args.relabel_every))
                       + list(range(args.eval_every, args.steps + 1, args.eval_every))
                       + [args.steps]))
    for step in marks:
        result = trainer.run(until_step=step, progress=False)
        export = result.export_path
        target = holder["target"]
        line = {"step": step, "train_s": round(time.monotonic() - t0 - relabel_s, 1),
                "relabel_s": round(relabel_s, 1), "loss": round(float(result.loss), 4),
                "mean_target": round(float(np.mean(target)), 4),
                "mean_target_success": round(float(np.mean(target[data.episode_success])), 4)
                if data.episode_success.any() else None}
        if step % args.eval_every == 0 and step >= args.eval_from:
            t = time.monotonic()
            r = evaluate(cfg, export, os.path.join(args.out, "eval", f"step-{step:06d}"))
            line.update(success=r["rate"], ci95=r["ci95"], attempts=r["attempts"],
                        eval_s=round(time.monotonic() - t, 1))
            t0 += time.monotonic() - t   # evaluation time is not training time
        print(json.dumps(line), flush=True)
        with open(os.path.join(args.out, "curve.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        if step % args.relabel_every == 0 and step < args.steps:
            relabel(export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

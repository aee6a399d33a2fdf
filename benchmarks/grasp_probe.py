"""Can the Q-network see whether a grasp will succeed? A supervised probe. Prints one JSON line.

    python -m benchmarks.grasp_probe "runs/demo/episodes/scripted-train/*.tfrecord.gz" \\
        [--state close|final] [--steps 800] [--no-augment] [--preset demo] [--set K=V]

Q-learning can only carry reward back from states whose outcome the network can tell apart. This
takes one state per episode (``close``: the step where the gripper is first told to close;
``final``: the last step, where the episode is scored), labels it with the episode's success and
trains the configured network (``model.preset``, same inputs, the action taken as its action
input) to predict that label with the trainer's augmentation, Adam at ``train.learning_rate``
and ``train.batch_size``. A fifth of the episodes (by a fixed permutation) are held out.
``holdout_auc`` near 0.5 means the images and state scalars do not show the outcome at this data
size, and bootstrapped targets will be flat whatever the number of relabel epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas.specs import STATE_SCALARS  # noqa: E402


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels > 0.5], scores[labels < 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def probe_states(paths: list[str], state: str) -> dict:
    """One (image, gripper, height, action, success) per episode, at the chosen step."""
    from robot import mdp
    from schemas.tfrecord_io import read_records

    cols = {k: [] for k in ("image",) + STATE_SCALARS + ("action", "success")}
    for path in paths:
        for ep in read_records(path):
            n = int(ep["num_steps"])
            if state == "final":
                t = n - 1
            else:
                closes = [i for i in range(n)
                          if mdp.decode_action(ep["action"][i]).gripper == "close"]
                if not closes:
                    continue
                t = closes[0]
            for name in ("image",) + STATE_SCALARS:
                cols[name].append(ep[f"observation/{name}"][t])
            cols["action"].append(ep["action"][t])
            cols["success"].append(float(ep["success"]))
    return {k: np.asarray(v, np.uint8 if k == "image" else np.float32) for k, v in cols.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("episodes", nargs="+", help="episode files or globs (local)")
    parser.add_argument("--state", choices=("close", "final"), default="close",
                        help="the step probed: first close command (default) or the last step")
    parser.add_argument("--steps", type=int, default=800, help="gradient steps (default 800)")
    parser.add_argument("--eval-every", type=int, default=200,
                        help="steps between AUC measurements (default 200)")
    parser.add_argument("--no-augment", action="store_true",
                        help="train without the trainer's crop and colour jitter")
    parser.add_argument("--preset", default="demo",
                        help="config preset giving the network, batch, learning rate (demo)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE",
                        help="config override, e.g. train.learning_rate=0.0003 (repeatable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="held-out split, initial weights and batches (default 0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import glob

    import tensorflow as tf

    from model.data import augment_images
    from model.network import build
    from schemas.config import load_config

    paths = sorted({p for pattern in args.episodes for p in glob.glob(pattern)})
    if not paths:
        raise SystemExit(f"no episode files match {args.episodes}")
    data = probe_states(paths, args.state)
    n = len(data["success"])
    cfg = load_config(args.preset, overrides=args.overrides)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(n)
    held, train = order[: n // 5], order[n // 5:]
    tf.keras.utils.set_random_seed(args.seed)
    net = build(cfg.model, data["image"].shape[1],
                translation_range=cfg.robot.max_translation)
    weights = net.model.trainable_variables
    optimizer = tf.keras.optimizers.Adam(cfg.train.learning_rate)

    def inputs(ix, step=None):
        image = tf.constant(data["image"][ix])
        if step is not None and not args.no_augment:
            image = augment_images(image, tf.constant([step, args.seed], tf.int64),
                                   cfg.train.crop_pad)
        return {"observation/image": image, "action": tf.constant(data["action"][ix]),
                **{f"observation/{name}": tf.constant(data[name][ix]) for name in STATE_SCALARS}}

    @tf.function
    def step_fn(batch, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=labels, logits=net.logits(batch, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return loss

    def scores(ix):
        return np.concatenate([net.q(inputs(ix[i:i + 256])).numpy().reshape(-1)
                               for i in range(0, len(ix), 256)])

    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = rng.choice(train, cfg.train.batch_size)
        step_fn(inputs(batch, step), tf.constant(data["success"][batch]))
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step,
                          "train_auc": round(auc(scores(train), data["success"][train]), 3),
                          "holdout_auc": round(auc(scores(held), data["success"][held]), 3)})
    print(json.dumps({"benchmark": "grasp_probe", "state": args.state, "episodes": n,
                      "successes": int(data["success"].sum()), "held_out": len(held),
                      "image_size": int(data["image"].shape[1]), "model": cfg.model.preset,
                      "augment": not args.no_augment, "steps": args.steps,
                      "learning_rate": cfg.train.learning_rate,
                      "batch_size": cfg.train.batch_size, "curve": curve,
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

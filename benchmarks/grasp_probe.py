"""Can the Q-network see whether a grasp will succeed? A supervised probe. Prints one JSON line.

    python -m benchmarks.grasp_probe "runs/demo/episodes/scripted-train/*.tfrecord.gz" \\
        [--state close|final] [--steps 800] [--folds 5] [--no-augment] [--no-privileged] \\
        [--objects train] [--preset demo] [--set K=V]

Q-learning can only carry reward back from states whose outcome the network can tell apart. This
takes one state per episode (``close``: the step where the gripper is first told to close;
``final``: the last step, where the episode is scored), labels it with the episode's success and
trains the configured network (``model.preset``, same inputs, the action taken as its action
input) to predict that label with the trainer's augmentation, Adam at ``train.learning_rate``
and ``train.batch_size``. The episodes are split by a fixed permutation into ``--folds`` folds,
each held out once from a fresh network; ``holdout_auc`` is the mean of the folds' held-out AUCs
at the last step (``holdout_auc_folds``). ``--folds 1`` holds out a fifth instead, as one split.
``holdout_auc`` near 0.5 means the images and state scalars do not show the outcome at this data
size, and bootstrapped targets will be flat whatever the number of relabel epochs.

``privileged_auc`` (``--state close`` only) is what the true geometry of the same closes
predicts, on the same folds: each episode is replayed in the cell from its seed and actions up
to its first close (the world is rebuilt at every reset, so seed and actions determine it; the
cell is built from the preset and ``--set`` overrides and the ``--objects`` pool, which must be
those the episodes were collected with). The features, where the close sends the gripper (its
position plus the close step's commanded move, none with ``robot.gripper_moves=false``):

- ``distance``: horizontal distance from the grasp point to the nearest object's centre (base);
- ``object_top``: that object's highest point above the tray floor, from its collision mesh's
  vertices in the world frame (bullet's AABB of a tilted mesh bounds its rotated box, loose);
- ``gripper_height``: the grasp point's height above the floor;
- ``yaw_offset``: the angle, 0 to pi/2, between the fingers' closing direction and the
  object's narrowest horizontal axis (the direction of least horizontal width of its vertices).

The predictor on them is a logistic regression on the standardised features, their squares and
pairwise products (L2 penalty ``PRIVILEGED_L2``), fitted to convergence by Newton's method: it
does not depend on ``--steps``. A replayed close whose gripper height or opening differs from
the record's by more than ``REPLAY_TOLERANCE``, whose gripper state, objects or image differ, or
whose record names another cell, counts in ``replay_mismatches``; its features still count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas.specs import STATE_SCALARS  # noqa: E402

PRIVILEGED_FEATURES = ("distance", "object_top", "gripper_height", "yaw_offset")
PRIVILEGED_L2 = 1.0
REPLAY_TOLERANCE = 0.001      # metres, gripper height and opening
IMAGE_TOLERANCE = 1.0         # mean absolute difference, 0-255: the renderer is deterministic


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels > 0.5], scores[labels < 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def probe_states(paths: list[str], state: str, replay: bool = False) -> dict:
    """One (image, gripper, height, action, success) per episode, at the chosen step; with
    ``replay``, also what replaying it needs (``"replay"``: seed, object ids, cell, the actions
    up to and including that step, the recorded observation there)."""
    from schemas import mdp
    from schemas.tfrecord_io import read_records

    cols = {k: [] for k in ("image",) + STATE_SCALARS + ("action", "success")}
    replays = []
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
            if replay:
                replays.append({"seed": int(ep["seed"]), "object_ids": list(ep["object_ids"]),
                                "cell": ep.get("cell"), "actions": ep["action"][:t + 1],
                                **{name: ep[f"observation/{name}"][t]
                                   for name in ("image",) + STATE_SCALARS}})
    data = {k: np.asarray(v, np.uint8 if k == "image" else np.float32) for k, v in cols.items()}
    if replay:
        data["replay"] = replays
    return data


def fold_splits(n: int, folds: int, rng: np.random.Generator) -> list[tuple]:
    """(train, held) index arrays: ``folds`` folds of one permutation, each held out once; one
    fold holds out the permutation's first fifth."""
    order = rng.permutation(n)
    if folds == 1:
        return [(order[n // 5:], order[: n // 5])]
    parts = np.array_split(order, folds)
    return [(np.concatenate(parts[:k] + parts[k + 1:]), parts[k]) for k in range(folds)]


# ------------------------------------------------------------------------------ privileged side

def _object_vertices(cell, body: int, cache: dict, key) -> np.ndarray:
    """The object's collision-mesh vertices, world frame; its AABB's corners when pybullet has
    no mesh for it (primitive shapes)."""
    p = cell._p
    if key not in cache:
        try:
            count, vertices = p.getMeshData(body, -1)
            cache[key] = np.asarray(vertices, np.float64).reshape(-1, 3) if count else None
        except Exception:  # pybullet.error: no mesh data for this shape
            cache[key] = None
    local = cache[key]
    if local is None:
        lo, hi = p.getAABB(body)
        return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                         for z in (lo[2], hi[2])])
    pos, orn = p.getBasePositionAndOrientation(body)
    rotation = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    return local @ rotation.T + np.asarray(pos)


def _narrowest_axis(points_xy: np.ndarray) -> float:
    """Direction (radians, modulo pi) along which the points' horizontal extent is least."""
    angles = np.radians(np.arange(0.0, 180.0, 2.0))
    extent = points_xy @ np.stack([np.cos(angles), np.sin(angles)])
    return float(angles[np.argmin(extent.max(0) - extent.min(0))])


def privileged_features(cell, close_action, mesh_cache: dict | None = None) -> np.ndarray:
    """PRIVILEGED_FEATURES of the cell's present state, for ``close_action`` sent next."""
    from robot import layout as cellmod
    from schemas import mdp

    cfg, p = cell.config, cell._p
    mesh_cache = {} if mesh_cache is None else mesh_cache
    position, yaw = cell.gripper_pose()
    command = mdp.decode_action(close_action)
    grasp = position + np.clip(command.translation, -cfg.max_translation, cfg.max_translation)
    grasp[:2] = np.clip(grasp[:2], cellmod.TRAY_CENTRE - cellmod.WORKSPACE_HALF,
                        cellmod.TRAY_CENTRE + cellmod.WORKSPACE_HALF)
    grasp[2] = np.clip(grasp[2], cellmod.TRAY_FLOOR_Z + cellmod.MIN_HEIGHT,
                       cellmod.TRAY_FLOOR_Z + cellmod.MAX_HEIGHT)
    yaw += float(np.clip(command.yaw, -cfg.max_rotation, cfg.max_rotation))
    height = float(grasp[2] - cellmod.TRAY_FLOOR_Z)
    if not cell.tray.bodies:
        return np.array([1.0, 0.0, height, 0.0])
    centres = np.array([p.getBasePositionAndOrientation(b)[0] for b in cell.tray.bodies])
    gaps = np.hypot(*(centres[:, :2] - grasp[:2]).T)
    i = int(np.argmin(gaps))
    vertices = _object_vertices(cell, cell.tray.bodies[i], mesh_cache, cell.object_ids[i])
    # The fingers slide along the gripper frame's y axis.
    closing = yaw + math.pi / 2
    offset = abs(math.remainder(closing - _narrowest_axis(vertices[:, :2]), math.pi))
    return np.array([gaps[i], vertices[:, 2].max() - cellmod.TRAY_FLOOR_Z, height, offset])


def replay_close(cell, record: dict, mesh_cache: dict | None = None) -> tuple[np.ndarray, dict]:
    """Replay one ``probe_states(..., replay=True)`` record up to its probed step: the
    privileged features there and how the replayed observation compares with the recorded."""
    from schemas import mdp

    cell.reset(record["seed"])
    for action in record["actions"][:-1]:
        cell.execute_command(action)
    observation = cell.capture_state()
    check = {
        "height_error": abs(float(observation[mdp.HEIGHT]) - float(record["height"])),
        "opening_error": abs(float(observation[mdp.GRIPPER_OPENING])
                             - float(record["gripper_opening"])),
        "image_error": float(np.abs(observation[mdp.IMAGE].astype(np.float32)
                                    - record["image"].astype(np.float32)).mean())
        if observation[mdp.IMAGE].shape == record["image"].shape else math.inf,
        "same_gripper": float(observation[mdp.GRIPPER_CLOSED]) == float(record["gripper_closed"]),
        "same_objects": cell.object_ids == [str(o) for o in record["object_ids"]],
        "same_cell": record["cell"] in (None, cell.cell_identity),
    }
    check["match"] = bool(check["height_error"] <= REPLAY_TOLERANCE
                          and check["opening_error"] <= REPLAY_TOLERANCE
                          and check["image_error"] <= IMAGE_TOLERANCE and check["same_gripper"]
                          and check["same_objects"] and check["same_cell"])
    return privileged_features(cell, record["actions"][-1], mesh_cache), check


def replay_all(records: list[dict], robot_config, objects: str) -> tuple[np.ndarray, dict]:
    """Privileged features of every record, and a summary of the replay checks."""
    from robot.cell import SimCell
    from schemas.errors import UserError

    # pybullet prints banners on stdout; keep stdout for the one JSON line.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    features, mismatches, worst, cache, t0 = [], 0, 0.0, {}, time.perf_counter()
    try:
        try:
            cell = SimCell(robot_config, objects, robot_id="grasp-probe-replay")
        except UserError as exc:
            raise SystemExit(f"grasp_probe: {exc}") from None
        for i, record in enumerate(records):
            row, check = replay_close(cell, record, cache)
            features.append(row)
            mismatches += not check["match"]
            worst = max(worst, check["height_error"])
            if (i + 1) % 100 == 0 or i + 1 == len(records):
                print(f"grasp_probe: replayed {i + 1}/{len(records)} closes, {mismatches} "
                      f"mismatches, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                      flush=True)
        cell.close()
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    return (np.asarray(features, np.float64).reshape(-1, len(PRIVILEGED_FEATURES)),
            {"replay_mismatches": mismatches,
             "replay_max_height_error_mm": round(1000 * worst, 3)})


def quadratic(x: np.ndarray) -> np.ndarray:
    """A bias, the columns, their squares and pairwise products."""
    i, j = np.triu_indices(x.shape[1])
    return np.concatenate([np.ones((len(x), 1)), x, x[:, i] * x[:, j]], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = PRIVILEGED_L2,
                 iterations: int = 50):
    """Logistic regression on ``quadratic`` of the standardised ``x`` (statistics of this
    training set), by Newton's method; returns the scoring function (logits)."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = quadratic((x - mean) / std)
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0                    # not the bias
    for _ in range(iterations):
        prob = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (prob - y) + penalty * w
        hessian = (z * (prob * (1 - prob))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return lambda x_new: quadratic((x_new - mean) / std) @ w


def _mean(values: list[float]) -> float | None:
    """Mean over the folds whose AUC is defined (both outcomes held out), rounded."""
    defined = [v for v in values if not math.isnan(v)]
    return round(float(np.mean(defined)), 3) if defined else None


def _rounded(values: list[float]) -> list:
    return [None if math.isnan(v) else round(v, 3) for v in values]


# ------------------------------------------------------------------------------ the image probe

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("episodes", nargs="+", help="episode files or globs (local)")
    parser.add_argument("--state", choices=("close", "final"), default="close",
                        help="the step probed: first close command (default) or the last step")
    parser.add_argument("--steps", type=int, default=800, help="gradient steps (default 800)")
    parser.add_argument("--eval-every", type=int, default=200,
                        help="steps between AUC measurements (default 200)")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds, each held out once (default 5; 1: one "
                        "held-out fifth)")
    parser.add_argument("--no-augment", action="store_true",
                        help="train without the trainer's crop and colour jitter")
    parser.add_argument("--no-privileged", action="store_true",
                        help="skip the replay and the privileged-feature predictor")
    parser.add_argument("--objects", default="train",
                        help="object pool the episodes were collected with, for the replay "
                        "(default train)")
    parser.add_argument("--preset", default="demo",
                        help="config preset giving the network, batch, learning rate and the "
                        "cell the episodes came from (demo)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE",
                        help="config override, e.g. train.learning_rate=0.0003 (repeatable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="folds, initial weights and batches (default 0)")
    args = parser.parse_args(argv)
    if args.folds < 1:
        raise SystemExit(f"--folds: at least 1, got {args.folds}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import glob

    import tensorflow as tf

    from model.data import augment_images
    from model.network import build
    from schemas.config import load_config

    paths = sorted({p for pattern in args.episodes for p in glob.glob(pattern)})
    if not paths:
        raise SystemExit(f"no episode files match {args.episodes}")
    privileged = args.state == "close" and not args.no_privileged
    data = probe_states(paths, args.state, replay=privileged)
    n = len(data["success"])
    if n < 2 * args.folds:
        raise SystemExit(f"{n} probed episodes: too few for {args.folds} folds")
    cfg = load_config(args.preset, overrides=args.overrides)
    rng = np.random.default_rng(args.seed)
    splits = fold_splits(n, args.folds, rng)
    labels = data["success"]

    def inputs(ix, step=None):
        image = tf.constant(data["image"][ix])
        if step is not None and not args.no_augment:
            image = augment_images(image, tf.constant([step, args.seed], tf.int64),
                                   cfg.train.crop_pad)
        return {"observation/image": image, "action": tf.constant(data["action"][ix]),
                **{f"observation/{name}": tf.constant(data[name][ix]) for name in STATE_SCALARS}}

    def probe_fold(fold, train, held):
        """The image probe on one fold: its curve of (step, train AUC, held-out AUC)."""
        tf.keras.utils.set_random_seed(args.seed)
        net = build(cfg.model, data["image"].shape[1],
                    translation_range=cfg.robot.max_translation)
        weights = net.model.trainable_variables
        optimizer = tf.keras.optimizers.Adam(cfg.train.learning_rate)

        @tf.function
        def step_fn(batch, batch_labels):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                    labels=batch_labels, logits=net.logits(batch, training=True)))
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
            return loss

        def scores(ix):
            return np.concatenate([net.q(inputs(ix[i:i + 256])).numpy().reshape(-1)
                                   for i in range(0, len(ix), 256)])

        curve = []
        for step in range(1, args.steps + 1):
            batch = rng.choice(train, cfg.train.batch_size)
            step_fn(inputs(batch, step), tf.constant(labels[batch]))
            if step % args.eval_every == 0 or step == args.steps:
                curve.append((step, auc(scores(train), labels[train]),
                              auc(scores(held), labels[held])))
                print(f"grasp_probe: fold {fold + 1}/{len(splits)} step {step}: train AUC "
                      f"{curve[-1][1]:.3f}, held-out {curve[-1][2]:.3f}", file=sys.stderr,
                      flush=True)
        return curve

    t0 = time.perf_counter()
    out = {}
    if privileged:
        features, summary = replay_all(data["replay"], cfg.robot, args.objects)
        folds_auc = [auc(fit_logistic(features[train], labels[train])(features[held]),
                         labels[held]) for train, held in splits]
        out = {"privileged_auc": _mean(folds_auc), "privileged_auc_folds": _rounded(folds_auc),
               **summary, "privileged_features": list(PRIVILEGED_FEATURES),
               "privileged_feature_means": [round(float(v), 4) for v in features.mean(0)]}
    curves = [probe_fold(k, train, held) for k, (train, held) in enumerate(splits)]
    final = [c[-1][2] for c in curves]
    curve = [{"step": points[0][0],
              "train_auc": _mean([p[1] for p in points]),
              "holdout_auc": _mean([p[2] for p in points]),
              "holdout_auc_folds": _rounded([p[2] for p in points])}
             for points in zip(*curves)]
    print(json.dumps({"benchmark": "grasp_probe", "state": args.state, "episodes": n,
                      "successes": int(labels.sum()), "folds": len(splits),
                      "held_out": sum(len(held) for _, held in splits),
                      "holdout_auc": _mean(final), "holdout_auc_folds": _rounded(final),
                      **out,
                      "image_size": int(data["image"].shape[1]), "model": cfg.model.preset,
                      "augment": not args.no_augment, "steps": args.steps,
                      "learning_rate": cfg.train.learning_rate,
                      "batch_size": cfg.train.batch_size, "curve": curve,
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

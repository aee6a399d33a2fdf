"""Bellman targets per second: factorised CEM against naive CEM, same network, same batch.

Factorised (``model.targets.TargetComputer``, what relabelling runs): the image tower once per
state, only the post-merge layers for each of CEM's samples. Naive: the whole network on 64 tiled
copies of each image at every CEM iteration. Both compute the full clipped double-Q target
(CEM under the Polyak copy, then the lagged copy at the argmax) and are timed alternately in one
process. Then the factorised path alone at the paper preset (472x472), per core. TensorFlow runs
on ``--threads`` cores (default 1, as one Beam relabel worker per core does).

Prints one JSON line: ``factorized_per_s``, ``naive_per_s``, ``ratio`` (CPU preset) and
``paper_scale_per_s_per_core``, plus the settings. The paper's Bellman updaters labelled about
1,300 transitions per second on about 14,000 cores: about 0.09 per core.

Usage: ``python -m benchmarks.cem_relabel [--seconds 20] [--batch 32] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import schemas  # noqa: E402,F401


def _batch(n: int, size: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"next_observation/image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
            "next_observation/gripper_closed": rng.integers(0, 2, n).astype(np.float32),
            "next_observation/gripper_opening": rng.uniform(0, 0.088, n).astype(np.float32),
            "next_observation/height": rng.uniform(0, 0.3, n).astype(np.float32),
            "reward": np.full(n, -0.05, np.float32), "is_terminal": np.zeros(n, bool)}


def naive_computer(polyak, lagged, cem, targets):
    """The same targets with the whole network run on every sample."""
    import tensorflow as tf

    from schemas.mdp import ACTION_HIGH, ACTION_LOW
    from model.cem import cem_maximize
    from model.targets import bellman_targets
    from schemas.specs import STATE_SCALARS

    def whole_q(net, image, scalars, actions):
        n = tf.shape(actions)[1]
        q = net.q({"observation/image": tf.repeat(image, n, 0),
                   **{f"observation/{k}": tf.repeat(v, n, 0) for k, v in scalars.items()},
                   "action": tf.reshape(actions, (-1, 8))})
        return tf.reshape(q, (-1, n))

    @tf.function(reduce_retracing=True)
    def compute(batch, seed):
        image = batch["next_observation/image"]
        scalars = {k: batch[f"next_observation/{k}"] for k in STATE_SCALARS}
        action, q1 = cem_maximize(lambda a: whole_q(polyak, image, scalars, a),
                                  tf.shape(image)[0], seed, cem.samples, cem.elites,
                                  cem.iterations, ACTION_LOW, ACTION_HIGH, cem.gripper_noop)
        q2 = whole_q(lagged, image, scalars, action[:, None])[:, 0]
        return bellman_targets(batch["reward"], batch["is_terminal"], q1, q2, targets.gamma,
                               targets.kind), action

    def call(batch, seed=0):
        feed = {k: tf.constant(v) for k, v in batch.items()}
        t, a = compute(feed, tf.constant([seed, 0x5EED], tf.int64))   # TargetComputer's seeds
        return t.numpy(), a.numpy()

    return call


def _perturb(nets, seed: int = 0) -> None:
    """Move freshly initialised weights (Q = 0.5 everywhere) so that Q depends on its inputs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for net in nets:
        for v in net.variables:
            noise = rng.normal(0, 0.1, v.shape).astype(np.float32)
            v.assign(v.numpy() + (np.abs(noise) if "moving_variance" in v.path else noise))


def _rate(fn, batch, seconds: float) -> float:
    n = len(batch["reward"])
    fn(batch, 0)                                   # trace and warm up
    calls, start = 0, time.perf_counter()
    while True:
        fn(batch, calls + 1)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return calls * n / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per measurement")
    parser.add_argument("--batch", type=int, default=32, help="states per call, CPU preset")
    parser.add_argument("--paper-batch", type=int, default=1,
                        help="states per call, paper (1 keeps the 64 samples' maps in cache)")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow threads (default 1: one relabel worker per core, as "
                             "Beam runs them)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from model.network import InputSpec, QNetwork
    from model.targets import TargetComputer
    from schemas.config import CEMConfig, TargetConfig

    cem, targets = CEMConfig(), TargetConfig()
    polyak, lagged = (QNetwork(InputSpec(64), "cpu64", n) for n in ("polyak", "lagged"))
    _perturb([polyak, lagged])
    factorized = TargetComputer(polyak, lagged, cem, targets)
    naive = naive_computer(polyak, lagged, cem, targets)
    batch = _batch(args.batch, 64)

    # Same samples, same answers: the comparison is between two ways of computing one thing.
    t_f, a_f = factorized(batch, 3)
    t_n, a_n = naive(batch, 3)
    max_target_diff = float(abs(t_f - t_n).max())
    assert float(t_f.std()) > 0 and (a_f == a_n).all(), "the two paths disagree"

    # Alternate the two so that drifts in machine load hit both alike.
    half = args.seconds / 2
    f_rates, n_rates = [], []
    for _ in range(2):
        f_rates.append(_rate(factorized, batch, half))
        n_rates.append(_rate(naive, batch, half))
    f_rate, n_rate = sum(f_rates) / 2, sum(n_rates) / 2

    cores = args.threads
    out = {"factorized_per_s": round(f_rate, 2), "naive_per_s": round(n_rate, 2),
           "ratio": round(f_rate / n_rate, 2), "preset": "cpu64", "image_size": 64,
           "batch": args.batch, "cem": [cem.samples, cem.elites, cem.iterations],
           "max_target_diff": max_target_diff, "cores": cores}
    if not args.skip_paper:
        p_polyak, p_lagged = (QNetwork(InputSpec(472), "paper", n) for n in ("polyak", "lagged"))
        paper = TargetComputer(p_polyak, p_lagged, cem, targets)
        p_rate = _rate(paper, _batch(args.paper_batch, 472), args.seconds)
        out.update({"paper_scale_per_s": round(p_rate, 3),
                    "paper_scale_per_s_per_core": round(p_rate / cores, 3),
                    "paper_params": p_polyak.count_params(), "paper_batch": args.paper_batch,
                    "paper_reference_per_s_per_core": round(1300 / 14000, 3)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

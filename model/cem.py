"""Batched cross-entropy method over actions (section 4.2): argmax_a Q(s, a) for many states at once.

Every state in the batch runs its own CEM, side by side in the same tensors: sample N actions per
state, score them, keep the M best (elites), refit the sampling distribution to the elites, repeat.
The continuous dimensions (translation, sin/cos) are drawn from a diagonal Gaussian; the gripper
pair from a two-way categorical (close or open, one-hot) and the terminate bit from a Bernoulli,
each refit to the elites' frequencies. Samples are clipped to the action bounds.

The function is pure TensorFlow with stateless random numbers, so the same seed gives the same
actions, and it runs inside a ``tf.function``. ``score_fn`` decides how actions are scored; the
factorised scorer (``QNetwork.q_samples`` on features computed once per state) is what makes
relabelling cheap.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from model.action_space import ACTION_HIGH, ACTION_LOW, CONTINUOUS, GRIPPER, TERMINATE

# Elite spreads never collapse below this fraction of the bound range, so the second iteration
# still explores around a mean that six elites happened to agree on.
MIN_STD_FRACTION = 1e-3


def cem_maximize(score_fn: Callable[[tf.Tensor], tf.Tensor], batch_size, seed,
                 samples: int = 64, elites: int = 6, iterations: int = 2,
                 low: np.ndarray = ACTION_LOW, high: np.ndarray = ACTION_HIGH):
    """Best action per state and its score: ([B, 8], [B]).

    ``score_fn`` maps actions [B, N, 8] to scores [B, N]. ``seed`` is a shape-[2] integer tensor
    (``tf.random`` stateless seed). The result is the best sample seen over all iterations.
    """
    low = tf.constant(low, tf.float32)
    high = tf.constant(high, tf.float32)
    cont = list(CONTINUOUS)
    c_low, c_high = tf.gather(low, cont), tf.gather(high, cont)
    b = batch_size

    mean = tf.tile(((c_low + c_high) / 2)[None], (b, 1))
    std = tf.tile(((c_high - c_low) / 2)[None], (b, 1))
    min_std = (c_high - c_low) * MIN_STD_FRACTION
    p_close = tf.fill((b,), 0.5)
    p_terminate = tf.fill((b,), 0.5)

    best_action = tf.zeros((b, low.shape[0]), tf.float32)
    best_score = tf.fill((b,), -np.inf)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3 * iterations)
    for it in range(iterations):
        noise = tf.random.stateless_normal((b, samples, len(cont)), seeds[3 * it])
        continuous = tf.clip_by_value(mean[:, None] + std[:, None] * noise, c_low, c_high)
        close = tf.cast(tf.random.stateless_uniform((b, samples), seeds[3 * it + 1])
                        < p_close[:, None], tf.float32)
        terminate = tf.cast(tf.random.stateless_uniform((b, samples), seeds[3 * it + 2])
                            < p_terminate[:, None], tf.float32)
        actions = _assemble(continuous, close, terminate)

        scores = score_fn(actions)
        top = tf.math.top_k(scores, k=elites)
        elite = tf.gather(actions, top.indices, batch_dims=1)          # [B, M, 8]

        elite_cont = tf.gather(elite, cont, axis=-1)
        mean = tf.reduce_mean(elite_cont, 1)
        std = tf.maximum(tf.math.reduce_std(elite_cont, 1), min_std)
        p_close = tf.reduce_mean(elite[:, :, GRIPPER[0]], 1)
        p_terminate = tf.reduce_mean(elite[:, :, TERMINATE], 1)

        better = top.values[:, 0] > best_score
        best_score = tf.where(better, top.values[:, 0], best_score)
        best_action = tf.where(better[:, None], elite[:, 0], best_action)
    return best_action, best_score


def _assemble(continuous, close, terminate):
    """[t_x, t_y, t_z, sin, cos] + one-hot (close, open) + terminate, in the spec's layout."""
    assert list(CONTINUOUS) == [0, 1, 2, 3, 4] and GRIPPER == (5, 6) and TERMINATE == 7
    return tf.concat([continuous, close[..., None], 1.0 - close[..., None], terminate[..., None]],
                     -1)


def seed_tensor(seed: int, counter: int = 0) -> tf.Tensor:
    """A stateless seed from a user seed and a call counter."""
    return tf.constant([seed, counter], tf.int64)

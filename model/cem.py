"""Batched cross-entropy method over actions (section 4.2): argmax_a Q(s, a) for many states at once.

Every state in the batch runs its own CEM, side by side in the same tensors: sample N actions per
state, score them, keep the M best (elites), refit the sampling distribution to the elites, repeat.
The continuous dimensions (translation, sin/cos) are drawn from a diagonal Gaussian; the gripper
pair from a categorical over close (1, 0), open (0, 1) and, with ``gripper_noop``, no command
(0, 0); the terminate bit from a Bernoulli. The discrete distributions are refit to the elites'
frequencies, as the Gaussian is to their mean and spread. Samples are clipped to the bounds.

Under the scripted termination (algorithm 2, ``robot.termination=scripted``) the terminate bit is
not the policy's to choose: the cell ends the episode when the gripper is closed, above the
termination height and commanded upwards, and records that decision as the bit. ``terminate_rule``
(the state's gripper closed flag and height) makes CEM set the bit the same way, so Q is only
asked about actions the data can contain; sampled freely, the bit is an unseen input at every
state where the rule says 0, and its extrapolated values inflate every bootstrapped target.

Likewise, when a step either works the gripper or moves it (``robot.gripper_moves=false``,
``schemas.mdp.gripper_or_move``), ``gripper_rule`` (the states' gripper closed flag) makes
every sample the action the cell would execute and record: a command that changes the gripper
loses its move, a command the gripper already obeys is dropped. Q is then never asked about a
close-and-lift, or a close of a closed gripper, which the data cannot hold.

The function is pure TensorFlow with stateless random numbers, so the same seed gives the same
actions, and it runs inside a ``tf.function``. ``score_fn`` decides how actions are scored; the
factorised scorer (``QNetwork.q_samples`` on features computed once per state) is what makes
relabelling cheap.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from schemas.mdp import ACTION_HIGH, ACTION_LOW, CONTINUOUS, GRIPPER, TERMINATE
from schemas.mdp import SCRIPTED_TERMINATION_HEIGHT

# Elite spreads never collapse below this fraction of the bound range, so the second iteration
# still explores around a mean that six elites happened to agree on.
MIN_STD_FRACTION = 1e-3


def cem_maximize(score_fn: Callable[[tf.Tensor], tf.Tensor], batch_size, seed,
                 samples: int = 64, elites: int = 6, iterations: int = 2,
                 low: np.ndarray = ACTION_LOW, high: np.ndarray = ACTION_HIGH,
                 gripper_noop: bool = True, terminate_rule=None, gripper_rule=None):
    """Best action per state and its score: ([B, 8], [B]).

    ``score_fn`` maps actions [B, N, 8] to scores [B, N]. ``seed`` is a shape-[2] integer tensor
    (``tf.random`` stateless seed). The result is the best sample seen over all iterations.
    ``terminate_rule``: None (the terminate bit is sampled, learned termination) or a pair
    (gripper_closed [B], height [B]) of the states, for the scripted termination.
    ``gripper_rule``: None (a gripper command may come with a move) or the states' gripper
    closed flags [B], for ``robot.gripper_moves=false``.
    """
    b = batch_size
    c_low, c_high, mean, std, p_gripper, p_terminate = _initial(b, low, high, gripper_noop)
    cont = list(CONTINUOUS)
    min_std = (c_high - c_low) * MIN_STD_FRACTION

    best_action = tf.zeros((b, len(low)), tf.float32)
    best_score = tf.fill((b,), -np.inf)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3 * iterations)
    for it in range(iterations):
        actions = _draw(seeds[3 * it:3 * it + 3], samples, mean, std, p_gripper, p_terminate,
                        c_low, c_high, terminate_rule, gripper_rule)
        scores = score_fn(actions)
        top = tf.math.top_k(scores, k=elites)
        elite = tf.gather(actions, top.indices, batch_dims=1)          # [B, M, 8]

        elite_cont = tf.gather(elite, cont, axis=-1)
        mean = tf.reduce_mean(elite_cont, 1)
        std = tf.maximum(tf.math.reduce_std(elite_cont, 1), min_std)
        close_e, open_e = elite[:, :, GRIPPER[0]], elite[:, :, GRIPPER[1]]
        p_gripper = tf.stack([tf.reduce_mean(close_e, 1), tf.reduce_mean(open_e, 1),
                              tf.reduce_mean((1.0 - close_e) * (1.0 - open_e), 1)], 1)
        p_terminate = tf.reduce_mean(elite[:, :, TERMINATE], 1)

        better = top.values[:, 0] > best_score
        best_score = tf.where(better, top.values[:, 0], best_score)
        best_action = tf.where(better[:, None], elite[:, 0], best_action)
    return best_action, best_score


def _initial(b, low, high, gripper_noop):
    """The first iteration's distribution for ``b`` states: the continuous bounds, mean
    mid-box, std half the range, gripper (close, open, none) and terminate probabilities."""
    cont = list(CONTINUOUS)
    c_low = tf.gather(tf.constant(low, tf.float32), cont)
    c_high = tf.gather(tf.constant(high, tf.float32), cont)
    mean = tf.tile(((c_low + c_high) / 2)[None], (b, 1))
    std = tf.tile(((c_high - c_low) / 2)[None], (b, 1))
    modes = 3 if gripper_noop else 2
    p_gripper = tf.concat([tf.fill((b, modes), 1.0 / modes), tf.zeros((b, 3 - modes))], 1)
    return c_low, c_high, mean, std, p_gripper, tf.fill((b,), 0.5)


def _draw(seeds, samples, mean, std, p_gripper, p_terminate, c_low, c_high, terminate_rule,
          gripper_rule):
    """[B, N, 8] actions from one iteration's distribution, the cell's rules applied."""
    b = tf.shape(mean)[0]
    noise = tf.random.stateless_normal((b, samples, mean.shape[-1]), seeds[0])
    continuous = tf.clip_by_value(mean[:, None] + std[:, None] * noise, c_low, c_high)
    u = tf.random.stateless_uniform((b, samples), seeds[1])
    close = tf.cast(u < p_gripper[:, :1], tf.float32)
    open_ = tf.cast(u >= p_gripper[:, :1], tf.float32) * tf.cast(
        u < p_gripper[:, :1] + p_gripper[:, 1:2], tf.float32)
    if gripper_rule is not None:
        continuous, close, open_ = gripper_or_move(gripper_rule, continuous, close, open_)
    if terminate_rule is None:
        terminate = tf.cast(tf.random.stateless_uniform((b, samples), seeds[2])
                            < p_terminate[:, None], tf.float32)
    else:
        terminate = scripted_terminate_bits(*terminate_rule, continuous[..., 2])
    return _assemble(continuous, close, open_, terminate)


def first_draw(batch_size, seed, samples: int, low: np.ndarray = ACTION_LOW,
               high: np.ndarray = ACTION_HIGH, gripper_noop: bool = True, terminate_rule=None,
               gripper_rule=None) -> tf.Tensor:
    """[B, N, 8] actions as CEM's first iteration draws them (mean mid-box, std half the range,
    clipped; gripper modes and terminate bit uniform), under the same rules as
    ``cem_maximize``: the actions a greedy policy's search starts from."""
    c_low, c_high, mean, std, p_gripper, p_terminate = _initial(batch_size, low, high,
                                                                gripper_noop)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    return _draw(seeds, samples, mean, std, p_gripper, p_terminate, c_low, c_high,
                 terminate_rule, gripper_rule)


def scripted_terminate_bits(gripper_closed, height, translation_z):
    """Algorithm 2 on tensors (``schemas.mdp.scripted_termination``): [B] states x [B, N] moves."""
    closed = tf.cast(tf.reshape(gripper_closed, (-1, 1)), tf.float32) > 0.5
    high = tf.cast(tf.reshape(height, (-1, 1)), tf.float32) > SCRIPTED_TERMINATION_HEIGHT
    return tf.cast(closed & high & (translation_z > 0.0), tf.float32)


def gripper_or_move(gripper_closed, continuous, close, open_):
    """``schemas.mdp.gripper_or_move`` on tensors: [B] states x [B, N] samples."""
    closed = tf.cast(tf.cast(tf.reshape(gripper_closed, (-1, 1)), tf.float32) > 0.5, tf.float32)
    changes = close * (1.0 - closed) + open_ * closed          # 1: the step works the gripper
    still = tf.constant([0.0, 0.0, 0.0, 0.0, 1.0])               # no translation, yaw 0
    continuous = continuous * (1.0 - changes[..., None]) + still * changes[..., None]
    return continuous, close * (1.0 - closed), open_ * closed


def _assemble(continuous, close, open_, terminate):
    """[t_x, t_y, t_z, sin, cos] + (close, open) + terminate, in the spec's layout."""
    assert list(CONTINUOUS) == [0, 1, 2, 3, 4] and GRIPPER == (5, 6) and TERMINATE == 7
    return tf.concat([continuous, close[..., None], open_[..., None], terminate[..., None]], -1)


def seed_tensor(seed: int, counter: int = 0) -> tf.Tensor:
    """A stateless seed from a user seed and a call counter."""
    return tf.constant([seed, counter], tf.int64)

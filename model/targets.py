"""Bellman targets: r + gamma * V(s'), with V from the Polyak and lagged copies (section 4.1, F.4).

    a* = argmax_a' Q_polyak(s', a')                                (CEM)
    clipped_double_q: V(s') = min(Q_polyak(s', a*), Q_lagged(s', a*))   (the paper's choice)
    double_q:         V(s') = Q_lagged(s', a*)      (select with theta_1, evaluate with theta_2)
    single_q:         V(s') = Q_polyak(s', a*)
    target = r + gamma * V(s')   if s' is not terminal,   r   if it is.

The Bellman updater has no online weights, only the two target copies (appendix F.4), so plain
double Q selects with the Polyak copy and evaluates with the lagged one.

``compute_targets`` is the function the relabel job calls on each batch of parsed transitions.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from schemas.mdp import ACTION_HIGH, ACTION_LOW
from model.cem import cem_maximize
from model.network import QNetwork
from schemas.errors import UserError
from schemas.specs import ACTION_DIM, STATE_SCALARS

KINDS = ("clipped_double_q", "double_q", "single_q")


def bellman_targets(reward, is_terminal, q_polyak, q_lagged, gamma: float, kind: str):
    """target[B] from the two copies' Q at a*; no bootstrap past a terminal step."""
    if kind == "clipped_double_q":
        v = tf.minimum(q_polyak, q_lagged)
    elif kind == "double_q":
        v = q_lagged
    elif kind == "single_q":
        v = q_polyak
    else:
        raise ValueError(f"unknown target kind {kind!r}; known: {', '.join(KINDS)}")
    not_terminal = 1.0 - tf.cast(is_terminal, tf.float32)
    return tf.cast(reward, tf.float32) + gamma * not_terminal * v


class TargetComputer:
    """A compiled target function over fixed Polyak and lagged networks.

    Built once per process (per export); ``__call__`` takes any batch size without retracing.
    """

    def __init__(self, polyak: QNetwork, lagged: QNetwork, cem_config, target_config,
                 bounds=(ACTION_LOW, ACTION_HIGH), termination: str = "learned",
                 gripper_moves: bool = True):
        self.polyak, self.lagged = polyak, lagged
        self.termination, self.gripper_moves = termination, gripper_moves
        self.cem, self.targets = cem_config, target_config
        self.low, self.high = (np.asarray(b, np.float32) for b in bounds)
        spec = polyak.spec
        size = spec.image_size
        signature = {
            "next_observation/image": tf.TensorSpec((None, size, size, 3), tf.uint8),
            **{f"next_observation/{name}": tf.TensorSpec((None,), tf.float32)
               for name in STATE_SCALARS},
            "reward": tf.TensorSpec((None,), tf.float32),
            "is_terminal": tf.TensorSpec((None,), tf.bool),
        }
        # Not XLA: it gave about 1.2x the targets per second, but compiled anew for every batch
        # size (each shard's last chunk), seconds each on small datasets.
        self._fn = tf.function(self._compute, input_signature=[
            signature, tf.TensorSpec((2,), tf.int64)], jit_compile=False)

    def _compute(self, batch, seed):
        image = batch["next_observation/image"]
        b = tf.shape(image)[0]
        features = self.polyak.features(image)
        state = self.polyak.state_vector(batch, "next_observation")
        rule = None
        if self.termination == "scripted":
            rule = (batch["next_observation/gripper_closed"], batch["next_observation/height"])
        next_action, q1 = cem_maximize(
            lambda actions: self.polyak.q_samples(features, state, actions), b, seed,
            self.cem.samples, self.cem.elites, self.cem.iterations, self.low, self.high,
            self.cem.gripper_noop, terminate_rule=rule,
            gripper_rule=None if self.gripper_moves else batch["next_observation/gripper_closed"])
        kind = self.targets.kind
        if kind == "single_q":
            q2 = q1
        else:
            q2 = self.lagged.q_samples(self.lagged.features(image), state, next_action[:, None])
            q2 = q2[:, 0]
        # CEM's q1 is the Polyak copy's Q at a*: the value the min needs, no second evaluation.
        target = bellman_targets(batch["reward"], batch["is_terminal"], q1, q2,
                                 self.targets.gamma, kind)
        return target, next_action

    def __call__(self, batch: dict, seed: int = 0):
        feed = {
            "next_observation/image": tf.convert_to_tensor(batch["next_observation/image"],
                                                           tf.uint8),
            "reward": tf.convert_to_tensor(np.asarray(batch["reward"], np.float32)),
            "is_terminal": tf.convert_to_tensor(np.asarray(batch["is_terminal"], bool)),
        }
        n = feed["reward"].shape[0]
        for name in STATE_SCALARS:
            f = f"next_observation/{name}"
            value = batch.get(f)
            if value is None and f[len("next_"):] in self.polyak.spec.state_fields:
                raise UserError(f"transitions: no {f!r}, which the export's state inputs "
                                f"({self.polyak.spec.state_inputs}) need")
            if value is None and self.termination == "scripted" and name in (
                    "gripper_closed", "height"):
                raise UserError(f"transitions: no {f!r}, which the scripted termination "
                                "(algorithm 2) needs to set the terminate bit")
            if value is None and not self.gripper_moves and name == "gripper_closed":
                raise UserError(f"transitions: no {f!r}, which robot.gripper_moves=false "
                                "needs to tell a gripper step from a move")
            # A field the network does not read may be left out.
            feed[f] = (tf.convert_to_tensor(np.asarray(value, np.float32)) if value is not None
                       else tf.zeros((n,), tf.float32))
        target, next_action = self._fn(feed, tf.constant([int(seed), 0x5eed], tf.int64))
        return target.numpy(), next_action.numpy()


_COMPUTERS: dict = {}


def compute_targets(models_or_export, batch: dict, cem_config, target_config, seed: int = 0,
                    bounds=None, termination: str | None = None,
                    gripper_moves: bool | None = None):
    """(target float32[B], next_action float32[B, 8]) for a batch of parsed transitions.

    ``models_or_export``: an export path (local or ``gs://``, loaded once per process), a loaded
    ``model.export.Export``, or a ``(polyak, lagged)`` pair of ``QNetwork``. ``batch`` holds numpy
    arrays or tensors keyed by the transition spec's names: ``next_observation/image`` (uint8
    [B, H, W, 3]), the ``next_observation/`` state scalars its network reads, ``reward``,
    ``is_terminal``; other keys are ignored. ``seed`` makes CEM's samples reproducible; give each
    batch its own (e.g. a hash of shard and batch index). ``bounds``: CEM's (low, high) action
    bounds; by default the export's own (those it was trained with), else the RobotConfig
    defaults (``schemas.mdp``). ``termination``: ``learned`` or ``scripted``; by default
    the export's own (a pair of networks: learned). ``gripper_moves``: likewise (default true).

    ``target_config.returns`` (``floor``, ``only``) also reads ``return_to_go``, the recorded
    episode's return from each transition (``with_returns``); ``only`` runs no CEM and gives
    zero next actions.

    Raises ``UserError`` naming the export when its image size does not match the batch.
    """
    from model.export import Export, load_export

    rule = target_config.returns
    if rule != "none" and batch.get("return_to_go") is None:
        raise UserError(f"transitions: no 'return_to_go', which targets.returns={rule} needs")
    if rule == "only":
        returns = np.asarray(batch["return_to_go"], np.float32)
        return returns, np.zeros((len(returns), ACTION_DIM), np.float32)

    if isinstance(models_or_export, (str, bytes)) or hasattr(models_or_export, "__fspath__"):
        models_or_export = load_export(str(models_or_export))
    image_shape = np.shape(batch["next_observation/image"])[1:]
    if isinstance(models_or_export, Export):
        models_or_export.check_image_shape(image_shape, "transitions")
        nets = (models_or_export.polyak, models_or_export.lagged)
        bounds = models_or_export.bounds if bounds is None else bounds
        termination = termination or models_or_export.termination
        if gripper_moves is None:
            gripper_moves = models_or_export.gripper_moves
    else:
        nets = tuple(models_or_export)
        nets[0].spec.check_image_shape(image_shape, "transitions")
    bounds = (ACTION_LOW, ACTION_HIGH) if bounds is None else bounds
    termination = termination or "learned"
    gripper_moves = True if gripper_moves is None else bool(gripper_moves)
    key = (id(nets[0]), id(nets[1]), cem_config, target_config,
           tuple(np.asarray(bounds, np.float32).ravel().tolist()), termination, gripper_moves)
    computer = _COMPUTERS.get(key)
    if computer is None:
        if len(_COMPUTERS) >= 16:   # a long-lived worker that loads export after export
            _COMPUTERS.clear()
        computer = _COMPUTERS[key] = TargetComputer(nets[0], nets[1], cem_config, target_config,
                                                    bounds, termination, gripper_moves)
    target, next_action = computer(batch, seed)
    return with_returns(rule, target, batch.get("return_to_go")), next_action


def with_returns(rule: str, bellman, returns):
    """The target ``targets.returns`` asks for, from the Bellman target and the episode's
    return: ``none`` the Bellman target (the paper), ``floor`` the larger of the two (a
    recorded return is what one policy earned from there, so the best action is worth at
    least that; it carries a success back to the first step in one epoch), ``only`` the
    return (Monte Carlo)."""
    if rule == "none":
        return bellman
    returns = np.asarray(returns, np.float32)
    if rule == "floor":
        return np.maximum(np.asarray(bellman, np.float32), returns)
    if rule == "only":
        return returns
    raise ValueError(f"unknown targets.returns {rule!r}; known: none, floor, only")

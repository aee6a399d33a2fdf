"""pi_eval (appendix B): the greedy CEM policy over an export, for robot/'s policy interface.

    policy = GreedyCEMPolicy.from_export("work/train/exports")       # Polyak weights theta_1
    policy.reset()
    action = policy.sample_action(observation, step)                 # float32[8]

``observation`` holds ``observation/image`` (uint8 HxWx3) and the state scalars the export's
``state_inputs`` name (``observation/gripper_closed``, ``observation/gripper_opening``,
``observation/height``). Exploration wraps this policy: ``robot.policies.EpsilonGreedy``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model.cem import cem_maximize
from model.export import load_export
from model.network import IMAGE, QNetwork
from schemas.mdp import GRIPPER_CLOSED, HEIGHT
from schemas.config import CEMConfig
from schemas.errors import UserError


class GreedyCEMPolicy:
    """argmax_a Q(s, a) by CEM, one state at a time (or a batch with ``sample_actions``)."""

    name = "greedy_cem"

    def __init__(self, network: QNetwork, cem_config: CEMConfig | None = None, bounds=None,
                 seed: int = 0, where: str = "policy", termination: str = "learned",
                 gripper_moves: bool = True, cell: str | None = None):
        from schemas.mdp import ACTION_HIGH, ACTION_LOW

        self.network = network
        # scripted: the terminate bit follows algorithm 2, as the cell records it (model.cem).
        self.termination = termination
        # false: a step works the gripper or moves, as the cell records it (model.cem).
        self.gripper_moves = gripper_moves
        # The cell whose images the network learned from (None: not known, e.g. no export).
        self.cell = cell
        self.cem = cem_config or CEMConfig()
        low, high = (ACTION_LOW, ACTION_HIGH) if bounds is None else bounds
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.where = where
        self._seed, self._calls = int(seed), 0
        size = network.spec.image_size
        self._fn = tf.function(self._act, input_signature=[
            tf.TensorSpec((None, size, size, 3), tf.uint8), tf.TensorSpec((None, None),
                                                                         tf.float32),
            tf.TensorSpec((None, 2), tf.float32), tf.TensorSpec((2,), tf.int64)])

    @classmethod
    def from_export(cls, path: str, copy: str = "polyak", cem_config: CEMConfig | None = None,
                    seed: int = 0) -> "GreedyCEMPolicy":
        """The policy over one copy of an export (``export-*`` or ``exports/`` directory)."""
        export = load_export(path, copies=(copy,))
        policy = cls(export.networks[copy], cem_config, export.bounds, seed,
                     where=f"export {export.path}", termination=export.termination,
                     gripper_moves=export.gripper_moves, cell=export.cell)
        policy.name = f"greedy_cem({export.path.rstrip('/').rsplit('/', 1)[-1]}/{copy})"
        return policy

    def check_fits(self, robot_config) -> None:
        """Refuse a cell this export was not trained for: another image size, cell (camera,
        objects, cell version), termination mode, gripper-step rule or action bounds.

        Caught before any robot runs; otherwise the first observation fails deep inside a worker,
        CEM proposes moves the cell silently clips, or a policy runs on images it never saw."""
        from schemas.mdp import bounds_from_config
        from schemas.cells import how_to_match
        from schemas.specs import CELL_BEFORE_IDENTITIES

        size = self.network.spec.image_size
        if size != robot_config.image_size:
            raise UserError(f"{self.where}: trained on {size}x{size} images but the cell renders "
                            f"{robot_config.image_size}x{robot_config.image_size} "
                            f"(robot.image_size); use --set robot.image_size={size} or an export "
                            f"trained at {robot_config.image_size}")
        current = robot_config.cell_identity()
        if self.cell == CELL_BEFORE_IDENTITIES:
            raise UserError(f"{self.where}: has no cell identity: it was trained on the cell as "
                            f"it was before identities ({self.cell}), whose images and objects "
                            f"differ from this one's ({current}); train an export on episodes "
                            "collected by this cell")
        if self.cell != current:
            trained = self.cell or "an unknown cell"
            raise UserError(f"{self.where}: trained on images of {trained} but this cell is "
                            f"{current}; {how_to_match(trained, current)}, or use an export "
                            f"trained on {current}")
        if self.termination != robot_config.termination:
            raise UserError(f"{self.where}: trained with robot.termination={self.termination} "
                            f"but the cell uses {robot_config.termination}; use --set "
                            f"robot.termination={self.termination}")
        if self.gripper_moves != robot_config.gripper_moves:
            want = str(self.gripper_moves).lower()
            raise UserError(f"{self.where}: trained with robot.gripper_moves={want} but the cell "
                            f"uses {str(robot_config.gripper_moves).lower()}; use --set "
                            f"robot.gripper_moves={want}")
        low, high = bounds_from_config(robot_config)
        if not (np.allclose(low, self.low, atol=1e-6) and np.allclose(high, self.high, atol=1e-6)):
            raise UserError(f"{self.where}: trained with action bounds up to translation "
                            f"{float(self.high[0]):g} m and yaw sin {float(self.high[3]):g}, but "
                            f"the cell allows {float(high[0]):g} m and {float(high[3]):g} "
                            "(robot.max_translation, robot.max_rotation)")

    def seed(self, seed: int) -> None:
        """Restart the CEM sample stream (robot's run_episode calls this per episode)."""
        self._seed, self._calls = int(seed), 0

    def reset(self) -> None:
        """Nothing carries over between steps: the policy is a function of the observation."""

    def _act(self, image, state, closed_height, seed):
        features = self.network.features(image)
        rule = ((closed_height[:, 0], closed_height[:, 1]) if self.termination == "scripted"
                else None)
        action, _ = cem_maximize(
            lambda actions: self.network.q_samples(features, state, actions), tf.shape(image)[0],
            seed, self.cem.samples, self.cem.elites, self.cem.iterations, self.low, self.high,
            self.cem.gripper_noop, terminate_rule=rule,
            gripper_rule=None if self.gripper_moves else closed_height[:, 0])
        return action

    def sample_actions(self, observations: dict) -> np.ndarray:
        """Greedy actions float32[B, 8] for a batch of observations (keys as one observation)."""
        spec = self.network.spec
        if IMAGE not in observations:
            raise UserError(f"{self.where}: observation has no {IMAGE!r}")
        image = np.asarray(observations[IMAGE])
        if image.dtype != np.uint8:
            raise UserError(f"{self.where}: {IMAGE} must be uint8, got {image.dtype}")
        spec.check_image_shape(image.shape[1:], f"observation for {self.where}")
        cols = []
        for name in spec.state_fields:
            if name not in observations:
                raise UserError(f"{self.where}: observation has no {name!r} (state inputs "
                                f"{spec.state_inputs})")
            cols.append(np.asarray(observations[name], np.float32).reshape(-1))
        state = np.stack(cols, 1) if cols else np.zeros((len(image), 0), np.float32)
        closed_height = np.zeros((len(image), 2), np.float32)
        needed_by = {}      # the rules CEM follows read these state fields
        if self.termination == "scripted":
            needed_by = {GRIPPER_CLOSED: "the scripted termination",
                         HEIGHT: "the scripted termination"}
        elif not self.gripper_moves:
            needed_by = {GRIPPER_CLOSED: "robot.gripper_moves=false"}
        for i, name in enumerate((GRIPPER_CLOSED, HEIGHT)):
            if name not in needed_by:
                continue
            if name not in observations:
                raise UserError(f"{self.where}: observation has no {name!r} "
                                f"({needed_by[name]} needs it)")
            closed_height[:, i] = np.asarray(observations[name], np.float32).reshape(-1)
        seed = tf.constant([self._seed, self._calls], tf.int64)
        self._calls += 1
        return self._fn(tf.constant(image), tf.constant(state), tf.constant(closed_height),
                        seed).numpy()

    def sample_action(self, observation: dict, step: int) -> np.ndarray:
        keep = {IMAGE, GRIPPER_CLOSED, HEIGHT, *self.network.spec.state_fields}
        batch = {k: np.asarray(v)[None] for k, v in observation.items() if k in keep}
        return self.sample_actions(batch)[0]


def load_policy(path: str, copy: str = "polyak", cem_config: CEMConfig | None = None,
                seed: int = 0) -> GreedyCEMPolicy:
    """What ``pipelines.machinery.policies.make_policy`` calls for an export directory."""
    return GreedyCEMPolicy.from_export(path, copy, cem_config, seed)

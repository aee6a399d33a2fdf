"""Policies: an object with ``reset()`` and ``sample_action(observation, step) -> float32[8]``.

Policies compose: ``EpsilonGreedy`` wraps any policy with that interface (the scripted one here,
or the model's greedy CEM policy). A policy that draws random numbers also has ``seed(seed)``,
which ``robot.episode.run_episode`` calls with the episode's seed so that an episode depends on
its seed only.
"""

from __future__ import annotations

import math

import numpy as np

from schemas import mdp
from schemas.config import RobotConfig


class Policy:
    """The interface, and a base class for policies with their own random generator."""

    name = "policy"
    # Mixed into the episode seed, so that the robot and each kind of policy draw from streams
    # of their own; a policy that wraps another needs a salt unlike the wrapped one's.
    SEED_SALT = 0x5EED

    def __init__(self, rng: np.random.Generator | int | None = None):
        self.rng = np.random.default_rng(rng)

    def seed(self, seed: int) -> None:
        """Restart the policy's random stream, independently of the robot's stream."""
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), self.SEED_SALT]))

    def reset(self) -> None:
        """Forget the last episode."""

    def sample_action(self, observation: dict, step: int) -> np.ndarray:
        raise NotImplementedError


class RandomPolicy(Policy):
    """Uniform pose changes within the step limits, random gripper commands, rare termination."""

    name = "random"

    def __init__(self, config: RobotConfig | None = None, terminate_prob: float = 0.05,
                 rng=None):
        super().__init__(rng)
        self.config = config or RobotConfig()
        self.terminate_prob = terminate_prob

    def sample_action(self, observation: dict, step: int) -> np.ndarray:
        c, rng = self.config, self.rng
        translation = rng.uniform(-c.max_translation, c.max_translation, 3)
        yaw = rng.uniform(-c.max_rotation, c.max_rotation)
        gripper = (None, None, "close", "open")[int(rng.integers(4))]
        return mdp.make_action(translation, yaw, gripper, rng.random() < self.terminate_prob)


class ScriptedGrasp(Policy):
    """Appendix B's exploration policy: a random (x, y), a descent in a few random steps, close,
    ascend back to the starting height, terminate.

    The policy sees what any policy sees (image, gripper state, height). It knows where the
    cell's starting pose is from the tray centre (``mdp.START_OFFSET``), so it reaches its
    random (x, y) by dead reckoning, and it descends and ascends closed-loop on the observed height. When the descent stalls above the
    floor (fingers resting on an object) it backs off and retries a little to the side, at most
    ``retries`` times, then closes where it is. After closing it waits ``settle_steps`` steps
    (none by default: the cell's close command ends only when the fingers have stopped) and lifts
    in steps of ``lift_step``, as a careful operator would. Its randomisation (how far from the
    centre it aims, its yaw, how low it closes, how many descent steps, the retry shift) and the
    lift step set its success rate: about 25% on train objects, within the paper's 15-30% band.

    With ``aim_radius`` (metres) and a ``world`` that knows where the objects are (a simulated
    cell's ``object_positions`` and ``gripper_pose``), it aims instead at a point drawn uniformly
    within that radius of a random object's centre: privileged, simulation only. Its closes then
    fall near objects at graded distances, the contrast a learner needs to see where a grasp
    works, which blind aims rarely give.
    """

    name = "scripted"

    def __init__(self, config: RobotConfig | None = None, target_half: float = 0.1,
                 close_height: tuple = (0.0, 0.02), descent_steps: tuple = (3, 5),
                 yaw_range: float = math.pi / 2, retries: int = 2, retry_shift: float = 0.03,
                 settle_steps: int = 0, lift_step: float = 0.05, rng=None,
                 aim_radius: float | None = None, world=None):
        super().__init__(rng)
        if aim_radius is not None and world is None:
            raise ValueError("aim_radius needs a world with object_positions() and gripper_pose()")
        self.aim_radius = aim_radius
        self.world = world
        self.settle_steps = settle_steps
        self.lift_step = lift_step
        self.config = config or RobotConfig()
        self.target_half = target_half
        self.close_height = close_height
        self.descent_steps = descent_steps
        self.yaw_range = yaw_range
        self.retries = retries
        self.retry_shift = retry_shift
        self.reset()

    def reset(self) -> None:
        rng = self.rng
        # Its aim is around the tray centre; the gripper starts at mdp.START_OFFSET from it.
        self._offset = (rng.uniform(-self.target_half, self.target_half, 2)
                        - np.asarray(mdp.START_OFFSET))
        self._yaw = float(rng.uniform(-self.yaw_range, self.yaw_range))
        self._close_at = float(rng.uniform(*self.close_height))
        self._descents = int(rng.integers(self.descent_steps[0], self.descent_steps[1] + 1))
        # Random shares of the descent, one per step; a share larger than the step limit just
        # takes an extra step.
        self._shares = rng.dirichlet(np.ones(self._descents))
        self._phase = "move"
        self._descended = 0
        self._start_height = None
        self._drop = None
        self._retries_left = self.retries
        self._last = None   # (height before, commanded drop) of the last descent step

    def sample_action(self, observation: dict, step: int) -> np.ndarray:
        c = self.config
        height = float(observation[mdp.HEIGHT])
        if self._start_height is None:
            self._start_height = height
            if self.aim_radius is not None:
                self._offset = self._aim_at_object()
        if self._phase == "move":
            move = np.clip(self._offset, -c.max_translation, c.max_translation)
            yaw = float(np.clip(self._yaw, -c.max_rotation, c.max_rotation))
            self._offset = self._offset - move
            self._yaw -= yaw
            if np.all(np.abs(self._offset) < 1e-9) and abs(self._yaw) < 1e-9:
                self._phase = "descend"
            return mdp.make_action((move[0], move[1], 0.0), yaw, "open")
        if self._phase == "descend":
            remaining = height - self._close_at
            blocked = (self._last is not None and remaining > 0.015
                       and self._last[0] - height < 0.3 * self._last[1])
            if blocked and self._retries_left > 0:
                # Landed on an object: back off and try again a little to the side.
                self._retries_left -= 1
                self._last, self._drop, self._descended = None, None, 0
                shift = np.clip(self.rng.normal(0.0, self.retry_shift, 2), -c.max_translation,
                                c.max_translation)
                return mdp.make_action((shift[0], shift[1], 0.04), 0.0, None)
            if self._drop is None:
                self._drop = max(0.0, remaining)
            share = self._shares[min(self._descended, self._descents - 1)]
            self._descended += 1
            # Stop when low enough, or when the gripper no longer goes down (resting on an
            # object): the close then happens where it is.
            if remaining <= 0.004 or blocked or self._descended > self._descents + 2:
                self._phase = "ascend"
                self._settling = self.settle_steps
                return mdp.make_action(gripper="close")
            dz = min(remaining, max(share * self._drop, 0.01), c.max_translation)
            self._last = (height, dz)
            return mdp.make_action((0.0, 0.0, -dz), 0.0, None)
        # Let the fingers finish closing, ascend to the starting height, end the episode.
        if self._settling > 0:
            self._settling -= 1
            return mdp.make_action()
        if height >= self._start_height - 0.01:
            return mdp.make_action(terminate=True)
        up = min(c.max_translation, self.lift_step, self._start_height - height + 0.005)
        return mdp.make_action((0.0, 0.0, up))


    def _aim_at_object(self) -> np.ndarray:
        objects = np.asarray(self.world.object_positions(), np.float64)
        gripper, _ = self.world.gripper_pose()
        if len(objects) == 0:
            return self._offset
        centre = objects[int(self.rng.integers(len(objects)))][:2]
        # Uniform over the disc: radius by the square root of a uniform draw.
        r = self.aim_radius * math.sqrt(self.rng.random())
        angle = self.rng.uniform(0.0, 2 * math.pi)
        target = centre + r * np.array([math.cos(angle), math.sin(angle)])
        return target - np.asarray(gripper, np.float64)[:2]


class EpsilonGreedy(Policy):
    """pi_noisy of appendix B: the greedy action with probability 1 - epsilon, otherwise a random
    action: a Gaussian pose change (75%), a gripper toggle (17%) or termination (8%)."""

    name = "epsilon_greedy"
    PROBS = (0.75, 0.17, 0.08)
    # Seeded like the wrapped policy, the coin flips would repeat that policy's own draws (the
    # scripted policy's aim point, say) and bias the exploration.
    SEED_SALT = 0xE951

    def __init__(self, greedy_policy, epsilon: float = 0.2, rng=None,
                 config: RobotConfig | None = None, translation_sigma: float | None = None,
                 rotation_sigma: float | None = None):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if not (hasattr(greedy_policy, "sample_action") and hasattr(greedy_policy, "reset")):
            raise TypeError("EpsilonGreedy needs a policy with reset() and sample_action()")
        super().__init__(rng)
        self.greedy = greedy_policy
        self.epsilon = float(epsilon)
        config = config or RobotConfig()
        self.translation_sigma = translation_sigma or config.max_translation / 2
        self.rotation_sigma = rotation_sigma or config.max_rotation / 2
        self.name = f"epsilon_greedy({getattr(greedy_policy, 'name', 'greedy')})"

    def seed(self, seed: int) -> None:
        super().seed(seed)
        if hasattr(self.greedy, "seed"):
            self.greedy.seed(seed)

    def reset(self) -> None:
        self.greedy.reset()

    def sample_action(self, observation: dict, step: int) -> np.ndarray:
        # The greedy policy is asked every step, so a stateful one sees every observation.
        greedy = self.greedy.sample_action(observation, step)
        if self.rng.random() >= self.epsilon:
            return mdp.check_action(greedy)
        return self.random_action(observation)

    def random_action(self, observation: dict) -> np.ndarray:
        kind = self.rng.choice(3, p=self.PROBS)
        if kind == 0:
            return mdp.make_action(self.rng.normal(0.0, self.translation_sigma, 3),
                                   float(self.rng.normal(0.0, self.rotation_sigma)))
        if kind == 1:
            closed = float(observation[mdp.GRIPPER_CLOSED]) > 0.5
            return mdp.make_action(gripper="open" if closed else "close")
        return mdp.make_action(terminate=True)

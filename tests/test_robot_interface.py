"""The evaluation protocols and the drop-test labeller need only what ``Robot`` declares: they
run here against a stand-in robot with no simulator."""

from __future__ import annotations

import numpy as np
import pytest

from robot import labeller, protocols
from robot.interface import Outcome, Robot
from robot.layout import OUT_OF_VIEW, TRAY_CENTRE
from schemas import mdp

SIZE = 64


class Thing:
    """An object as the protocols see it: its id."""

    def __init__(self, object_id: str):
        self.object_id = object_id


POOL = [Thing(n) for n in "abcd"]


class StandIn(Robot):
    """A tray as a list, episodes of ``steps`` actions whose grasp succeeds on even seeds, and a
    camera that draws every object lying in the tray as a bright square at its (x, y)."""

    robot_id = "stand-in"

    def __init__(self, pool, steps: int = 3):
        self.pool, self.steps = list(pool), steps
        self.tray, self.held, self.n, self._done = [], None, 0, True
        self.position = np.array([TRAY_CENTRE[0], TRAY_CENTRE[1], 0.3])
        self._outcome = Outcome()

    @property
    def cell_identity(self) -> str:
        return "stand-in"

    def reset(self, seed: int, placements=None) -> dict:
        if placements is None:
            rng = np.random.default_rng(seed)
            placements = [(o, tuple(TRAY_CENTRE[:2] + rng.uniform(-0.1, 0.1, 2)), 0.0)
                          for o in self.pool[:3]]
        self.tray = [list(p) for p in placements]
        self.grasps = seed % 2 == 0
        self.held, self.n, self._done = None, 0, False
        return self.capture_state()

    def capture_state(self) -> dict:
        return {mdp.IMAGE: self.render(), mdp.GRIPPER_CLOSED: np.float32(0.0),
                mdp.GRIPPER_OPENING: np.float32(0.08), mdp.HEIGHT: np.float32(0.2)}

    def execute_command(self, action) -> None:
        self.n += 1
        if self.n >= self.steps:
            if self.grasps and self.tray:
                self.held = 0
            self._outcome = Outcome(success=self.held is not None, labeller="stand-in")
            self._done = True

    def receive_reward(self) -> float:
        return float(self._done and self._outcome.success)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def last_action(self):
        return mdp.zero_action()

    @property
    def outcome(self) -> Outcome:
        return self._outcome

    @property
    def object_ids(self) -> list[str]:
        return [p[0].object_id for p in self.tray]

    def tray_objects(self) -> list[tuple]:
        return [(o, xy, yaw, i == self.held) for i, (o, xy, yaw) in enumerate(self.tray)]

    def gripper_pose(self):
        return self.position.copy(), 0.0

    def glide(self, position) -> None:
        self.position = np.asarray(position, np.float64)
        if self.held is not None:   # a held object travels with the gripper
            self.tray[self.held][1] = tuple(self.position[:2])

    def wait(self, substeps: int) -> None:
        pass

    def open_gripper(self) -> None:
        self.held = None

    def render(self) -> np.ndarray:
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        for i, (_, xy, _) in enumerate(self.tray):
            if i == self.held and self.position[2] > 0.5:
                continue   # carried out of view
            u = int(np.clip((xy[0] - TRAY_CENTRE[0] + 0.2) / 0.4 * SIZE, 4, SIZE - 5))
            v = int(np.clip((xy[1] - TRAY_CENTRE[1] + 0.2) / 0.4 * SIZE, 4, SIZE - 5))
            image[v - 3:v + 3, u - 3:u + 3] = 255
        return image


class DoNothing:
    name = "nothing"

    def reset(self):
        pass

    def sample_action(self, observation, step):
        return mdp.zero_action()


def test_stand_in_is_not_the_simulated_cell():
    import robot.cell

    assert not issubclass(StandIn, robot.cell.SimCell)


def test_with_replacement_runs_on_any_robot():
    robot = StandIn(POOL)
    rows, kept = protocols.with_replacement(robot, DoNothing(), 0, 6, 2, POOL,
                                            seed=5, keep_episodes=2)
    assert [r.attempt for r in rows] == list(range(6)) and len(kept) == 2
    assert all(r.steps == 3 and r.objects_before == 2 for r in rows)
    seeds = [protocols._sub_seed(5, 1, 0, a) for a in range(6)]
    assert [r.success for r in rows] == [s % 2 == 0 for s in seeds]


def test_bin_emptying_takes_out_what_the_robot_held():
    robot = StandIn(POOL[:1])
    rows, _ = protocols.bin_emptying(robot, DoNothing(), 0, 4, 8, POOL, seed=3)
    before = [r.objects_before for r in rows]
    assert before[0] == 4
    # Each success leaves one object fewer for the next attempt; an empty bin fails the rest.
    for r, nxt in zip(rows, before[1:]):
        assert nxt == r.objects_before - int(r.success)
    assert any(r.success for r in rows) and all(r.grasped for r in rows if r.success)
    assert not any(r.success for r in rows if r.objects_before == 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_drop_test_tells_a_held_object_from_an_empty_gripper(seed):
    robot = StandIn(POOL[:2])
    robot.reset(seed)
    while not robot.done:
        robot.execute_command(mdp.zero_action())
    assert labeller.drop_test(robot) == (seed % 2 == 0)
    assert robot.gripper_pose()[0][2] == pytest.approx(OUT_OF_VIEW[2])


def test_a_robot_without_the_optional_parts_says_which_it_lacks():
    class Minimal(StandIn):
        tray_objects = Robot.tray_objects
        glide = Robot.glide

    robot = Minimal(POOL[:1])
    with pytest.raises(NotImplementedError, match="tray_objects"):
        protocols.bin_emptying(robot, DoNothing(), 0, 2, 2, POOL[:2], seed=3)
    robot.reset(0)
    with pytest.raises(NotImplementedError, match="glide"):
        labeller.drop_test(robot)

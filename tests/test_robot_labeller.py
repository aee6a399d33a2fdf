"""The image-subtraction drop test (appendix D.3) against the simulator's ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from robot import labeller, objects
from robot.cell import SimCell
from robot.layout import TRAY_CENTRE
from robot.episode import run_episode
from robot.policies import ScriptedGrasp
from schemas.config import RobotConfig


def _grasp(placements) -> SimCell:
    config = RobotConfig(image_size=64, success_labeller="image_subtraction")
    cell = SimCell(config, "train")
    policy = ScriptedGrasp(config, target_half=0.0, close_height=(0.005, 0.005),
                           descent_steps=(3, 3), yaw_range=0.0, retries=0)
    run_episode(cell, policy, 0, placements=placements)
    return cell


@pytest.mark.parametrize("object_id", ["013", "054"])
def test_drop_test_sees_a_held_object_and_agrees_with_ground_truth(object_id):
    # Not every held object is seen: one as wide as the opening stays pinched when the gripper
    # opens, a small one changes too few pixels (016). Those are the labeller's known
    # false negatives; these two objects are dropped and seen.
    obj = next(o for o in objects.random_urdfs("train") if o.object_id == object_id)
    cell = _grasp([(obj, tuple(TRAY_CENTRE), 0.0)])
    assert cell.outcome.ground_truth is True
    assert cell.outcome.success is True and cell.outcome.labeller == "image_subtraction"
    assert cell.receive_reward() == 1.0


def test_drop_test_sees_nothing_after_an_empty_grasp_of_a_full_tray():
    pool = objects.random_urdfs("train")
    corners = [(pool[i], (TRAY_CENTRE[0] + dx, TRAY_CENTRE[1] + dy), 0.3)
               for i, (dx, dy) in enumerate([(0.1, 0.1), (-0.1, 0.1), (0.1, -0.1)])]
    cell = _grasp(corners)
    assert cell.outcome.ground_truth is False
    assert cell.outcome.success is False and cell.receive_reward() == 0.0


def test_images_differ_needs_a_block_of_change_not_speckle():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
    speckle = base.copy()
    idx = rng.integers(0, 64, (40, 2))
    speckle[idx[:, 0], idx[:, 1]] = np.clip(speckle[idx[:, 0], idx[:, 1]].astype(int) + 40, 0,
                                            255).astype(np.uint8)
    assert not labeller.images_differ(base, speckle)
    blob = base.copy()
    blob[20:26, 30:36] = (250, 10, 10)
    assert labeller.images_differ(base, blob)
    assert not labeller.images_differ(base, base.copy())

"""The paper's success labeller (appendix D.3): an image-subtraction drop test.

After the episode, the arm is moved out of the camera's view (carrying whatever it holds) and an
image is taken; the arm then goes back over the tray, opens, leaves again and a second image is
taken. If nothing was held the two images match; if an object was held it now lies in the tray
and enough pixels differ. Like the real test, it can miss small objects and can be fooled by
objects still rolling in the tray; ``qtopt collect`` reports how often it agrees with the
simulator's ground truth.
"""

from __future__ import annotations

import numpy as np

# Images are compared as means over square blocks (2x2 pixels at 64x64, scaled with the image),
# which keeps texture speckle and sub-pixel jitter of resting objects from counting as change.
# A block has changed when a colour channel's mean moved by more than this (of 255)...
BLOCK_THRESHOLD = 50.0
# ...and the grasp counts as a success when more than this fraction of blocks changed.
CHANGED_FRACTION = 0.0035
# Substeps (1/240 s) between two images of the scene before the drop: what changes between them
# is motion of its own, not the drop's.
MOTION_PROBE = 120


def _blocks(image: np.ndarray) -> np.ndarray:
    h, w, c = image.shape
    k = max(1, min(h, w) // 32)
    h, w = h - h % k, w - w % k
    return image[:h, :w].reshape(h // k, k, w // k, k, c).astype(np.float32).mean(axis=(1, 3))


def changed_blocks(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(_blocks(before) - _blocks(after)).max(axis=-1) > BLOCK_THRESHOLD


def changed_fraction(before: np.ndarray, after: np.ndarray, ignore=None) -> float:
    changed = changed_blocks(before, after)
    if ignore is not None:
        changed &= ~ignore
    return float(changed.mean())


def images_differ(before: np.ndarray, after: np.ndarray, ignore=None,
                  fraction: float = CHANGED_FRACTION) -> bool:
    return changed_fraction(before, after, ignore) > fraction


def moving_blocks(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Blocks that changed between two images of an untouched scene, and their neighbours:
    objects still creeping or rocking there would otherwise pass for a drop."""
    moving = changed_blocks(first, second)
    grown = moving.copy()
    grown[1:] |= moving[:-1]
    grown[:-1] |= moving[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return grown


def drop_test(cell) -> bool:
    """Run the drop test on a ``Robot`` whose episode just ended (only the motions and the
    camera that ``robot.interface.Robot`` declares); True for a success."""
    from robot.layout import OUT_OF_VIEW, TRAY_CENTRE, TRAY_FLOOR_Z

    position, _ = cell.gripper_pose()
    cell.glide((position[0], position[1], TRAY_FLOOR_Z + 0.3))
    cell.glide(OUT_OF_VIEW)
    # Anything the grasp disturbed comes to rest before the reference image.
    cell.wait(120)
    first = cell.render()
    cell.wait(MOTION_PROBE)
    before = cell.render()
    cell.glide((TRAY_CENTRE[0], TRAY_CENTRE[1], TRAY_FLOOR_Z + 0.3))
    cell.glide((TRAY_CENTRE[0], TRAY_CENTRE[1], TRAY_FLOOR_Z + 0.18))
    cell.open_gripper()
    cell.wait(60)
    cell.glide((TRAY_CENTRE[0], TRAY_CENTRE[1], TRAY_FLOOR_Z + 0.3))
    cell.glide(OUT_OF_VIEW)
    cell.wait(40)
    after = cell.render()
    return images_differ(before, after, moving_blocks(first, before))

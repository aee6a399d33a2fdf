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


def _blocks(image: np.ndarray) -> np.ndarray:
    h, w, c = image.shape
    k = max(1, min(h, w) // 32)
    h, w = h - h % k, w - w % k
    return image[:h, :w].reshape(h // k, k, w // k, k, c).astype(np.float32).mean(axis=(1, 3))


def changed_fraction(before: np.ndarray, after: np.ndarray) -> float:
    diff = np.abs(_blocks(before) - _blocks(after)).max(axis=-1)
    return float((diff > BLOCK_THRESHOLD).mean())


def images_differ(before: np.ndarray, after: np.ndarray,
                  fraction: float = CHANGED_FRACTION) -> bool:
    return changed_fraction(before, after) > fraction


def drop_test(cell) -> bool:
    """Run the drop test on a ``SimCell`` whose episode just ended; True for a success."""
    from robot.cell import OUT_OF_VIEW, TRAY_CENTRE, TRAY_FLOOR_Z

    position, _ = cell.gripper_pose()
    cell.glide((position[0], position[1], TRAY_FLOOR_Z + 0.3))
    cell.glide(OUT_OF_VIEW)
    # Anything the grasp disturbed comes to rest before the reference image.
    cell.wait(120)
    before = cell.render()
    cell.glide((TRAY_CENTRE[0], TRAY_CENTRE[1], TRAY_FLOOR_Z + 0.3))
    cell.glide((TRAY_CENTRE[0], TRAY_CENTRE[1], TRAY_FLOOR_Z + 0.18))
    cell.open_gripper()
    cell.wait(60)
    cell.glide((TRAY_CENTRE[0], TRAY_CENTRE[1], TRAY_FLOOR_Z + 0.3))
    cell.glide(OUT_OF_VIEW)
    cell.wait(40)
    after = cell.render()
    return images_differ(before, after)

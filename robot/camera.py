"""The cell's camera: where it is and where it looks (a real cell would measure these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    eye: tuple
    target: tuple
    up: tuple = (0.0, 0.0, 1.0)
    fov_degrees: float = 42.0      # vertical; images are square
    near: float = 0.05
    far: float = 3.0


PLACEMENTS = {
    # Beside the arm's shoulder line, framed on the workspace and the heights the gripper
    # reaches: the fingertips hang below the palm in view instead of behind the forearm, and
    # the workspace fills about 40% of the image (benchmarks/camera_view.py).
    "workspace": Placement(eye=(0.6, 1.131, 1.221), target=(0.6, 0.0, 0.11), fov_degrees=16.0),
    # Over the arm's shoulder, looking down at the tray (the paper's set-up). At 64x64 the
    # forearm hides the fingertips when the gripper is low.
    "shoulder": Placement(eye=(0.1, 0.5, 0.9), target=(0.62, 0.0, 0.0)),
    # Across the tray from the arm, looking back at it: the fingers are in front of the arm.
    "facing": Placement(eye=(1.05, 0.3, 0.75), target=(0.6, 0.0, 0.05)),
}


class Camera:
    """The placement's RGB camera in the pybullet world ``p``, square images of ``size``."""

    def __init__(self, p, placement: Placement, size: int):
        import pybullet

        self._p, self._renderer = p, pybullet.ER_TINY_RENDERER
        self._masks = pybullet.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX
        self._no_masks = pybullet.ER_NO_SEGMENTATION_MASK
        self.view = p.computeViewMatrix(placement.eye, placement.target, placement.up)
        self.proj = p.computeProjectionMatrixFOV(placement.fov_degrees, 1.0, placement.near,
                                                 placement.far)
        self.size = size

    def render(self):
        import numpy as np

        _, _, rgba, _, _ = self._p.getCameraImage(
            self.size, self.size, self.view, self.proj, renderer=self._renderer,
            flags=self._no_masks, shadow=0)
        return np.asarray(rgba, np.uint8).reshape(self.size, self.size, 4)[:, :, :3].copy()

    def render_with_masks(self, bodies: list[int], gripper_body: int):
        """The image and, per pixel, which object (index into ``bodies``, -1: none) and whether
        a finger is seen there: for measuring what the camera shows."""
        import numpy as np

        _, _, rgba, _, seg = self._p.getCameraImage(
            self.size, self.size, self.view, self.proj, renderer=self._renderer,
            flags=self._masks, shadow=0)
        seg = np.asarray(seg, np.int64).reshape(self.size, self.size)
        body, link = np.where(seg >= 0, seg & ((1 << 24) - 1), -1), (seg >> 24) - 1
        objects = np.full(seg.shape, -1, np.int64)
        for i, b in enumerate(bodies):
            objects[body == b] = i
        fingers = (body == gripper_body) & (link >= 0)
        image = np.asarray(rgba, np.uint8).reshape(self.size, self.size, 4)[:, :, :3].copy()
        return image, {"objects": objects, "fingers": fingers}

"""The cell's camera: where it is and where it looks (a real cell would measure these)."""

from __future__ import annotations

EYE = (0.1, 0.5, 0.9)              # over the arm's shoulder, looking down at the tray
TARGET = (0.62, 0.0, 0.0)
UP = (0.0, 0.0, 1.0)
FOV_DEGREES = 42.0                 # vertical; images are square
NEAR, FAR = 0.05, 3.0


def pixels_on_plane(size: int, z: float):
    """World (x, y) where each pixel's ray meets the horizontal plane at height ``z``, as an
    array (size, size, 2); rows from the top of the image, columns from the left."""
    import numpy as np

    forward = np.subtract(TARGET, EYE)
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, UP)
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    t = np.tan(np.radians(FOV_DEGREES) / 2)
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    rays = forward + (centres[None, :, None] * t) * right - (centres[:, None, None] * t) * up
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (z - EYE[2]) / rays[..., 2]
    return np.asarray(EYE[:2]) + s[..., None] * rays[..., :2]

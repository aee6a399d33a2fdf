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

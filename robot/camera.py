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
    # Over the shoulder, framed on the workspace: a narrow lens from the same side as the arm,
    # low enough that the fingertips hang below the palm in view rather than behind the forearm.
    "workspace": Placement(eye=(0.1, 0.5, 0.9), target=(0.62, 0.0, 0.0), fov_degrees=24.0),
    # Over the arm's shoulder, looking down at the tray (the paper's set-up). At 64x64 the
    # forearm hides the fingertips when the gripper is low.
    "shoulder": Placement(eye=(0.1, 0.5, 0.9), target=(0.62, 0.0, 0.0)),
    # Across the tray from the arm, looking back at it: the fingers are in front of the arm.
    "facing": Placement(eye=(1.05, 0.3, 0.75), target=(0.6, 0.0, 0.05)),
}

"""The cell's camera: where it is and where it looks (a real cell would measure these)."""

from __future__ import annotations

EYE = (0.1, 0.5, 0.9)              # over the arm's shoulder, looking down at the tray
TARGET = (0.62, 0.0, 0.0)
UP = (0.0, 0.0, 1.0)
FOV_DEGREES = 42.0                 # vertical; images are square
NEAR, FAR = 0.05, 3.0

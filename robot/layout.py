"""Where things are in the cell, metres, world frame: the arm stands at the origin, the tray in
front of it. What the cell builds, and what the labeller and the protocols place things by."""

import numpy as np

TRAY_CENTRE = np.array([0.6, 0.0])
TRAY_FLOOR_Z = 0.015                 # top of traybox.urdf's floor box
TRAY_HALF = 0.25                     # the tray's rim, from its centre
WORKSPACE_HALF = 0.17                # gripper x/y stay within the tray's flat floor
SPAWN_HALF = 0.11                    # objects are dropped into the tray's centre region
MAX_HEIGHT = 0.2                     # gripper height bounds above the tray floor
MIN_HEIGHT = 0.003
OUT_OF_VIEW = (0.25, -0.45, 0.55)    # where the labeller parks the gripper (outside the frustum)

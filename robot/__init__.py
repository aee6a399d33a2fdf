"""The grasping cell and its policies; never imports TensorFlow.

- ``interface``: the ``Robot`` of algorithm 1 (capture state, execute command, receive reward).
- ``cell``: ``SimCell``, the pybullet implementation (KUKA iiwa, two-finger gripper, tray).
- ``camera``: the cell's camera calibration.
- ``objects``: the random_urdfs train/test split by parsed id, and user URDF files.
- ``labeller``: appendix D.3's image-subtraction drop test.
- ``policies``: ``Policy``, ``ScriptedGrasp``, ``RandomPolicy``, ``EpsilonGreedy``.
- ``episode``: ``run_episode(robot, policy, seed)`` -> an episode record.
- ``gym_env``: the cell as the Gymnasium environment ``qtopt/Grasping-v0``.
"""

"""The grasping cell and its policies; never imports TensorFlow.

- ``interface``: the ``Robot`` of algorithm 1 (capture state, execute command, receive reward).
- ``cell``: ``SimCell``, the pybullet implementation, built from its parts:
  ``layout`` (where things are), ``tray`` (world and objects), ``gripper``, ``arm`` (the iiwa
  following the gripper by IK) and ``camera`` (placements and rendering).
- ``objects``: the random_urdfs train/test split by parsed id, and user URDF files.
- ``labeller``: appendix D.3's image-subtraction drop test.
- ``policies``: ``Policy``, ``ScriptedGrasp``, ``RandomPolicy``, ``EpsilonGreedy``.
- ``protocols``: the paper's evaluation protocols (with replacement, bin emptying).
- ``episode``: ``run_episode(robot, policy, seed)`` -> an episode record.
- ``gym_env``: the cell as the Gymnasium environment ``qtopt/Grasping-v0``.
"""

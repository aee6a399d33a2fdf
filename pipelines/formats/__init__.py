"""Dataset formats other tools read, written by ``qtopt export`` (``pipelines.jobs.convert``):
RLDS as TFDS builds it, and LeRobot v3."""

import os
import sys

# Keep TensorFlow quiet and on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(__file__))

import schemas  # noqa: E402,F401  (install the tfrecord/tensorflow import hook before anything)

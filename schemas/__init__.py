"""Record specs, codecs, configuration, the grasping MDP's rules (``schemas.mdp``) and the file
layer shared by every QT-Opt package.

Importing this package installs the hook that lets ``tfrecord`` and ``tensorflow`` be imported in
one process (see ``schemas.compat``); TensorFlow itself is never imported here.
"""

from schemas import compat as _compat
from schemas import quiet as _quiet

_compat.install()
_quiet.install()

from schemas.errors import ConfigError, RecordError, UserError  # noqa: E402
from schemas.specs import (ACTION_DIM, ACTION_LAYOUT, EPISODE, LABELLED_TRANSITION,  # noqa: E402
                           SCHEMA_VERSION, SPECS, TRANSITION, spec_for)

__all__ = ["ACTION_DIM", "ACTION_LAYOUT", "EPISODE", "LABELLED_TRANSITION", "SCHEMA_VERSION",
           "SPECS", "TRANSITION", "spec_for", "ConfigError", "RecordError", "UserError"]

"""One spec per record kind: the single place where a field is named.

Everything else is derived from these specs: the TensorFlow-free codec (``schemas.codec``), the
TensorFlow parsers and Keras inputs (``schemas.tf_codec``), the description the ``tfrecord`` package
needs, fake data (``schemas.fake``) and the episode catalogue's pyarrow schema
(``schemas.catalogue``).

Field names follow RLDS step semantics where they apply: an episode of T actions is stored as
T + 1 steps; step t holds the observation s_t, the action a_t taken there, the reward r_t received
for it and ``is_first``/``is_last``/``is_terminal``. The last step holds the final observation, a
zero action and zero reward, as in RLDS.

Action layout (appendix D.2): ``a = (t_x, t_y, t_z, sin, cos, g_close, g_open, e)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Version 2 added ``gripper_opening`` to every observation. Version 1 records lack it and cannot
# be made whole by any default (it is a measurement): collect them again.
# Version 3 added the episode's ``cell``. A version 2 episode was made by the cell as it was
# before cells had identities, so it reads as that cell, never as the current one.
# Version 4 added the transitions' ``return_to_go``. An older transition reads with 0.0 there,
# and its dataset's manifest has no ``return_gamma``, so the jobs that use returns refuse it.
SCHEMA_VERSION = 4
SUPPORTED_VERSIONS = (2, 3, 4)
CELL_BEFORE_IDENTITIES = "cell-v1 (before cell identities)"
# What a field added in version V reads as in an older record: {V: {kind: {field: value}}}.
ADDED_IN = {3: {"episode": {"cell": CELL_BEFORE_IDENTITIES}},
            4: {"transition": {"return_to_go": 0.0},
                "labelled_transition": {"return_to_go": 0.0}}}

ACTION_LAYOUT = ("translation_x", "translation_y", "translation_z", "rotation_sin",
                 "rotation_cos", "gripper_close", "gripper_open", "terminate")
ACTION_DIM = len(ACTION_LAYOUT)
MAX_IMAGE_SIZE = 472

# Dtypes a field can have, and how each is stored in a tf.Example feature.
#   float32 -> float_list; int64, bool -> int64_list; string -> bytes_list (UTF-8);
#   image -> bytes_list holding raw uint8 pixels, shape from the record's ``image_shape``.
DTYPES = ("float32", "int64", "bool", "string", "image")


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    shape: tuple = ()      # () scalar; (n,) fixed vector; (None,) variable-length list
    doc: str = ""

    @property
    def variable(self) -> bool:
        return None in self.shape

    @property
    def size(self) -> Optional[int]:
        """Number of stored values, for fixed-size non-image fields."""
        if self.dtype == "image" or self.variable:
            return None
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class RecordSpec:
    kind: str
    container: str             # "example" or "sequence_example"
    fields: tuple              # tf.Example features, or a SequenceExample's context
    step_fields: tuple = ()    # a SequenceExample's feature lists, one value per step
    doc: str = ""

    def field(self, name: str) -> Field:
        for f in self.fields + self.step_fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.kind} records have no field {name!r}")

    @property
    def names(self) -> tuple:
        return tuple(f.name for f in self.fields + self.step_fields)


def _header() -> tuple:
    return (
        Field("schema_version", "int64", doc="version of this layout; readers refuse unknown ones"),
        Field("kind", "string", doc="record kind: episode, transition or labelled_transition"),
        Field("image_shape", "int64", (3,), doc="height, width, channels of every image field"),
    )


# The observation's scalar fields, in the order every consumer stacks them.
STATE_SCALARS = ("gripper_closed", "gripper_opening", "height")


def _observation(prefix: str) -> tuple:
    return (
        Field(f"{prefix}/image", "image", doc="RGB over-the-shoulder camera image, uint8"),
        Field(f"{prefix}/gripper_closed", "float32", doc="1 if the gripper is closed, else 0"),
        Field(f"{prefix}/gripper_opening", "float32",
              doc="distance between the finger pads, metres (0 when they touch): after a close, "
                  "more than 0 means something is between the fingers"),
        Field(f"{prefix}/height", "float32", doc="gripper height above the tray floor, metres"),
    )


EPISODE = RecordSpec(
    kind="episode",
    container="sequence_example",
    fields=_header() + (
        Field("episode_id", "string", doc="deterministic id: source, seed and index"),
        Field("source", "string", doc="dataset the episode belongs to, e.g. scripted-train"),
        Field("policy", "string", doc="policy that acted: scripted, random, or an export"),
        Field("robot_id", "string", doc="simulated cell or real robot that ran the episode"),
        Field("cell", "string", doc="the cell's configuration identity (RobotConfig."
                                    "cell_identity): data of different cells is never mixed"),
        Field("object_ids", "string", (None,), doc="objects in the tray at reset"),
        Field("seed", "int64", doc="seed the episode was reset with"),
        Field("success", "bool", doc="an object was held above the success height at the end"),
        Field("num_steps", "int64", doc="number of actions taken (the record holds one more step)"),
    ),
    step_fields=_observation("observation") + (
        Field("action", "float32", (ACTION_DIM,), doc="action taken at this step"),
        Field("reward", "float32", doc="reward for this step's action"),
        Field("discount", "float32", doc="0 after a terminal step, else 1"),
        Field("is_first", "bool"),
        Field("is_last", "bool"),
        Field("is_terminal", "bool", doc="the episode ended here; every end is scored (terminate "
                                         "action, scripted termination or the step limit), so "
                                         "nothing is bootstrapped past it"),
    ),
    doc="one grasp attempt, as RLDS-style steps",
)

_TRANSITION_FIELDS = _header() + (
    Field("episode_id", "string"),
    Field("step", "int64", doc="index of s in its episode"),
    Field("source", "string"),
) + _observation("observation") + (
    Field("action", "float32", (ACTION_DIM,)),
    Field("reward", "float32"),
    Field("is_terminal", "bool", doc="s' ends the episode: no bootstrap past it"),
    Field("return_to_go", "float32", doc="discounted return of the recorded episode from this "
                                         "step, with the gamma in the dataset's manifest "
                                         "(return_gamma)"),
) + _observation("next_observation")

TRANSITION = RecordSpec(
    kind="transition",
    container="example",
    fields=_TRANSITION_FIELDS,
    doc="(s, a, r, s', terminal) with the episode it came from",
)

LABELLED_TRANSITION = RecordSpec(
    kind="labelled_transition",
    container="example",
    fields=_TRANSITION_FIELDS + (
        Field("target", "float32", doc="Bellman target r + gamma * V(s')"),
        Field("next_action", "float32", (ACTION_DIM,), doc="CEM argmax action at s'"),
        Field("target_version", "string", doc="export the target was computed with"),
    ),
    doc="a transition with its Bellman target",
)

SPECS = {s.kind: s for s in (EPISODE, TRANSITION, LABELLED_TRANSITION)}


def added_since(kind: str, version: int) -> dict:
    """{field: value} that a ``kind`` record of an older supported ``version`` reads with."""
    out = {}
    for v, kinds in ADDED_IN.items():
        if v > int(version):
            out.update(kinds.get(kind, {}))
    return out


def spec_for(kind: str) -> RecordSpec:
    try:
        return SPECS[kind]
    except KeyError:
        raise KeyError(f"unknown record kind {kind!r}; known: {', '.join(SPECS)}") from None

"""Typed, validated configuration for every job.

A ``Config`` is a tree of frozen dataclasses. Every field carries its constraints in its metadata
(``lo``/``hi`` bounds, ``choices``), and each section is checked on construction, so a bad value
fails where it is made with a message that names the dotted option (``train.batch_size``).

Presets live in ``configs/<name>.yaml`` and hold only the values that differ from the defaults.
Overrides come from YAML files and from ``key=value`` strings on the command line, applied in
that order on top of the preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from schemas.errors import ConfigError

# Bumped whenever the simulated cell changes what it renders or how its objects behave (scene
# settling, tray appearance, gripper geometry): episodes and exports of different versions differ.
CELL_VERSION = 3


def _f(default, *, lo=None, hi=None, choices=None, doc: str = ""):
    """A dataclass field with its constraints and one line of documentation."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


class _Section:
    """Validation shared by every config section."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_value(self._path(f.name), getattr(self, f.name), hints[f.name], f.metadata)
        self.check()

    def check(self) -> None:
        """Cross-field constraints of a section; raise ConfigError naming the option."""

    @classmethod
    def _path(cls, name: str) -> str:
        section = getattr(cls, "SECTION", "")
        return f"{section}.{name}" if section else name


def _check_value(path: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> None:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_hint, *_rest) = typing.get_args(hint)
        for i, item in enumerate(value):
            _check_value(f"{path}[{i}]", item, item_hint, meta)
        return
    if dataclasses.is_dataclass(hint):
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}; got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{path}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: must be <= {hi}, got {value!r}")


@dataclass(frozen=True)
class RobotConfig(_Section):
    """The simulated grasping cell and its MDP (paper section 5, appendix D)."""

    SECTION = "robot"
    image_size: int = _f(64, lo=16, hi=472, doc="side of the square RGB camera image, pixels")
    min_objects: int = _f(5, lo=1, hi=50, doc="fewest objects dropped into the tray at reset")
    max_objects: int = _f(10, lo=1, hi=50, doc="most objects dropped into the tray at reset")
    max_steps: int = _f(20, lo=1, hi=1000, doc="steps before the episode is cut off")
    step_reward: float = _f(-0.05, lo=-1.0, hi=0.0, doc="reward of every step before the end")
    success_height: float = _f(0.1, lo=0.0, hi=1.0,
                               doc="metres above the tray floor an object must be held at the end")
    termination: str = _f("learned", choices=("learned", "scripted"),
                          doc="terminate action of the policy, or algorithm 2's heuristic")
    gripper_moves: bool = _f(True, doc="a step with a gripper command also moves the gripper "
                             "(the paper's action space); false: a step works the gripper or "
                             "moves it, not both (a command that changes the gripper holds the "
                             "pose, one the gripper already obeys is dropped), recorded as "
                             "executed")
    success_labeller: str = _f("ground_truth", choices=("ground_truth", "image_subtraction"),
                               doc="simulator truth, or the drop test of appendix D.3")
    action_repeat: int = _f(16, lo=1, hi=1000,
                            doc="physics sub-steps (1/240 s each) per control step")
    max_translation: float = _f(0.08, lo=0.001, hi=0.5,
                                doc="largest gripper move per step along each axis, metres")
    max_rotation: float = _f(0.5, lo=0.0, hi=3.1416,
                             doc="largest change of the gripper's yaw per step, radians")
    start_height: float = _f(0.2, lo=0.05, hi=0.2,
                             doc="gripper height above the tray floor at reset, metres")
    grip_force: float = _f(40.0, lo=1.0, hi=500.0, doc="finger motor force, newtons")
    camera: str = _f("workspace", choices=("workspace", "shoulder", "facing"),
                     doc="camera placement (robot/camera.py): over the shoulder, framed on the "
                     "workspace (default); the older wide shoulder view; or across the tray "
                     "facing the arm")
    object_scale: float = _f(0.8, lo=0.1, hi=3.0,
                             doc="scale applied to every object model when it is loaded "
                             "(random_urdfs at 1 are often wider than the gripper's opening)")

    def cell_identity(self) -> str:
        """What makes one cell's images and physics another's: recorded in every episode and
        export, so data and policies of different cells are never mixed silently."""
        return (f"cell-v{CELL_VERSION}/{self.camera}/{self.image_size}px/"
                f"scale-{self.object_scale:g}")

    def check(self):
        if self.min_objects > self.max_objects:
            raise ConfigError(f"robot.min_objects ({self.min_objects}) must not exceed "
                              f"robot.max_objects ({self.max_objects})")


@dataclass(frozen=True)
class CollectConfig(_Section):
    """Episode collection (``qtopt collect``)."""

    SECTION = "collect"
    policy: str = _f("scripted", doc="scripted | random | a policy export directory")
    episodes: int = _f(100, lo=1, doc="episodes to collect in all")
    objects: str = _f("train", doc="train | test | comma-separated URDF paths")
    episodes_per_block: int = _f(10, lo=1, doc="episodes one Beam element runs")
    epsilon: float = _f(0.2, lo=0.0, hi=1.0, doc="exploration rate for a greedy policy")
    scripted_epsilon: float = _f(0.0, lo=0.0, hi=1.0,
                                 doc="share of the scripted policy's steps replaced by "
                                 "appendix B's random actions (pose, gripper toggle, terminate)")
    scripted_close_max: float = _f(0.02, lo=0.0, hi=0.2,
                                   doc="the scripted policy closes at a height drawn uniformly "
                                   "from 0 to this (m above the floor); higher spreads its "
                                   "closes over heights where grasps fail, for offline data")
    scripted_aim: str = _f("blind", choices=("blind", "object"),
                           doc="where the scripted policy aims: blind (random, near the tray "
                           "centre: appendix B) or object (within ``scripted_aim_radius`` of a "
                           "random object's centre, from the simulator's truth)")
    scripted_aim_radius: float = _f(0.05, lo=0.0, hi=0.2,
                                    doc="with scripted_aim=object: the aim is drawn uniformly "
                                    "within this distance (m) of the chosen object's centre")
    seed: int = _f(0, lo=0, doc="collection seed: episode i's reset seed and id depend only on "
                                "(seed, i, source)")
    explore_episodes: int = _f(0, lo=0, doc="demo: episodes of ``explore_policy`` collected "
                               "beside the scripted ones into the offline dataset (paper table 9: "
                               "scripted data alone explores too little to learn from)")
    explore_policy: str = _f("random", doc="demo: the exploration policy of "
                             "``explore_episodes`` (scripted | random | an export)")
    explore_close_max: float = _f(0.02, lo=0.0, hi=0.2,
                                  doc="demo: ``scripted_close_max`` of the exploration "
                                  "episodes when ``explore_policy`` is scripted")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The Q-network (appendix E, figure 13)."""

    SECTION = "model"
    preset: str = _f("cpu64", choices=("tiny", "fast64", "cpu64", "paper"),
                     doc="network size: tiny (tests), fast64 (64x64, a cheap tower), cpu64 (64x64 "
                     "on a CPU), paper (472x472)")
    state_inputs: str = _f("image+gripper+height+opening",
                           choices=("image", "image+gripper", "image+gripper+height",
                                    "image+gripper+height+opening"),
                           doc="state representation: table 3's ablation, or (default, not in "
                           "the paper) those plus the fingers' opening")
    initial_q: float = _f(0.5, lo=0.001, hi=0.999,
                          doc="Q of the untrained network (its output bias; 0.5 is a zero bias), "
                          "which epoch 0's targets bootstrap from")


@dataclass(frozen=True)
class CEMConfig(_Section):
    """Cross-entropy method over actions (appendix C)."""

    SECTION = "cem"
    samples: int = _f(64, lo=2, doc="N, samples per iteration")
    elites: int = _f(6, lo=1, doc="M, elites refit per iteration")
    iterations: int = _f(2, lo=1, doc="CEM iterations")
    gripper_noop: bool = _f(True, doc="sample 'no gripper command' (both gripper bits 0) "
                            "besides close and open, as robot/ policies send it")

    def check(self):
        if self.elites > self.samples:
            raise ConfigError(f"cem.elites ({self.elites}) must not exceed cem.samples "
                              f"({self.samples})")


@dataclass(frozen=True)
class TargetConfig(_Section):
    """Bellman targets (section 4.2)."""

    SECTION = "targets"
    kind: str = _f("clipped_double_q", choices=("clipped_double_q", "double_q", "single_q"),
                   doc="Bellman target: min of the Polyak and lagged copies, the Polyak copy, or "
                       "the online weights at the Polyak copy's argmax")
    gamma: float = _f(0.9, lo=0.0, hi=1.0, doc="discount")
    polyak: float = _f(0.9999, lo=0.0, hi=1.0, doc="Polyak averaging rate of the target copy")
    lag_steps: int = _f(6000, lo=0, doc="steps the lagged copy trails the Polyak copy")
    returns: str = _f("none", choices=("none", "floor", "only"),
                      doc="the episode's own discounted return: none (the paper), floor "
                          "(target = max(Bellman target, return): the return a recorded policy "
                          "earned is a lower bound of the best action's value) or only (regress "
                          "Q to the return, Monte Carlo, no bootstrap)")


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The trainer (``qtopt train``)."""

    SECTION = "train"
    batch_size: int = _f(32, lo=1, doc="transitions per gradient step")
    steps: int = _f(1000, lo=1, doc="gradient steps per training epoch")
    epochs: int = _f(3, lo=1, doc="offline relabel/train epochs of qtopt demo and qtopt study "
                     "(each epoch is one Bellman backup of the whole dataset)")
    optimizer: str = _f("sgd", choices=("sgd", "adam"), doc="SGD with momentum (the paper) or Adam")
    learning_rate: float = _f(1e-4, lo=0.0, doc="optimizer step size")
    momentum: float = _f(0.9, lo=0.0, hi=1.0, doc="SGD momentum (unused by Adam)")
    decay_steps: int = _f(0, lo=0, doc="cosine decay of the learning rate from "
                          "learning_rate to learning_rate * decay_floor over this many "
                          "gradient steps, counted from the run's first (0: constant, the paper)")
    decay_floor: float = _f(0.1, lo=0.0, hi=1.0, doc="the decayed learning rate's final "
                            "fraction (with train.decay_steps)")
    l2: float = _f(7e-5, lo=0.0, doc="L2 weight regularisation")
    loss: str = _f("cross_entropy", choices=("cross_entropy", "squared_error"),
                   doc="loss between Q and the target (both in [0, 1])")
    conservative: float = _f(0.0, lo=0.0, doc="weight of a conservative term (CQL-like): the "
                             "cross-entropy of picking each state's recorded action among it "
                             "and train.conservative_samples actions drawn as CEM's first "
                             "iteration draws them, on Q's logits; 0 (the paper) leaves it out")
    conservative_samples: int = _f(8, lo=1, doc="sampled actions per state of the "
                                   "conservative term")
    augment: bool = _f(True, doc="random crop and colour jitter in training only")
    crop_pad: int = _f(4, lo=0, hi=64,
                       doc="random crop: pad each image side by this many pixels, crop back")
    shuffle_buffer: int = _f(1000, lo=1, doc="records in the input pipeline's shuffle buffer")
    checkpoint_every: int = _f(500, lo=1, doc="steps between checkpoints")
    keep_checkpoints: int = _f(3, lo=1, doc="newest checkpoints kept on disk")
    export_every: int = _f(0, lo=0, doc="steps between exports within one training call, "
                           "each kept (exports/export-STEP), so one call yields a learning "
                           "curve; 0: export only at the end of the call")
    checkpoint_input: bool = _f(True, doc="checkpoint the input position and shuffle buffer "
                                "too, so a resumed run sees the same batches (off: a resumed "
                                "run reads a fresh shuffle seeded by its step)")
    log_every: int = _f(50, lo=1, doc="steps between TensorBoard summaries")
    jit_compile: bool = _f(False, doc="compile the gradient step with XLA (without a "
                           "tf.distribute strategy): the same maths, 1.5x the steps per second "
                           "of fast64 on 2 cores, after seconds of compiling per trainer")
    deterministic: bool = _f(False, doc="deterministic TensorFlow ops (slower; for tests)")
    seed: int = _f(0, lo=0, doc="seed of the weights' initialisation and the input order")


@dataclass(frozen=True)
class PipelineConfig(_Section):
    """Beam jobs: shard, relabel, subsample."""

    SECTION = "pipeline"
    num_shards: int = _f(8, lo=1, doc="output shards of shard and relabel")
    shuffle_seed: int = _f(0, lo=0, doc="salt of the deterministic shuffle")
    direct_num_workers: int = _f(0, lo=0, doc="local worker processes; 0 means one per core")
    relabel_batch_size: int = _f(256, lo=1, doc="transitions per model call in relabel")
    max_dead_fraction: float = _f(0.0, lo=0.0, hi=1.0,
                                  doc="share of a job's input records it may dead-letter and "
                                  "still exit 0 (shard, relabel, subsample; above it they "
                                  "publish and exit 3)")


@dataclass(frozen=True)
class FinetuneConfig(_Section):
    """Joint finetuning (appendix F.3): rounds of collect, shard, relabel, train."""

    SECTION = "finetune"
    rounds: int = _f(3, lo=1, doc="collect-shard-relabel-train rounds")
    episodes_per_round: int = _f(50, lo=1, doc="on-policy episodes collected per round")
    epsilon: float = _f(0.2, lo=0.0, hi=1.0, doc="epsilon-greedy exploration while collecting")
    ramp_start: float = _f(0.01, lo=0.0, hi=1.0, doc="on-policy share of a batch at the start")
    ramp_end: float = _f(0.5, lo=0.0, hi=1.0, doc="on-policy share after the ramp")
    ramp_steps: int = _f(2000, lo=1, doc="finetuning steps over which the share ramps up")
    ramp_chunk: int = _f(100, lo=1, doc="steps trained at one share before it is updated, on "
                         "the ramp; past it a round trains in one chunk")
    steps_per_transition: float = _f(6.0, lo=0.01, hi=1000.0,
                                     doc="balancer: gradient steps per new on-policy transition")
    seed: int = _f(1000, lo=0, doc="seed of the first round's collection")
    select: str = _f("last", choices=("last", "train"),
                     doc="the export `qtopt demo` reports as finetuned: the last round's (the "
                         "paper), or the round export best on train objects")


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """Evaluation protocols (section 6.1)."""

    SECTION = "evaluate"
    robots: int = _f(4, lo=1, doc="grasping with replacement: robots (cells)")
    attempts: int = _f(50, lo=1, doc="grasping with replacement: attempts per robot")
    curve_attempts: int = _f(25, lo=1, doc="attempts per robot for each point of a learning "
                             "curve and for choosing the finetuned export on train objects")
    objects_per_robot: int = _f(5, lo=1, hi=50,
                                doc="objects in each robot's tray (grasped ones are put back)")
    bin_objects: int = _f(28, lo=1, hi=60, doc="bin emptying: objects in the tray")
    bin_attempts: int = _f(30, lo=1, doc="bin emptying: attempts per trial")
    bin_trials: int = _f(5, lo=0, doc="bin emptying: trials (0 skips the protocol)")
    gifs: int = _f(0, lo=0, doc="episodes to render as GIFs")
    seed: int = _f(7, lo=0, doc="seed of the evaluation's trays and attempts")


@dataclass(frozen=True)
class Config(_Section):
    """Every section of a run."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cem: CEMConfig = field(default_factory=CEMConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        return _build(cls, data, "")

    def updated(self, **sections: Mapping[str, Any]) -> "Config":
        """This config with some options changed, e.g. ``updated(collect={"episodes": 20})``;
        validated with the same messages as a file or ``--set``."""
        return Config.from_dict(_merge(self.to_dict(), sections))


def _build(cls, data: Mapping[str, Any], prefix: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, f"{path}.")
        elif typing.get_origin(hint_type) is tuple and isinstance(value, list):
            kwargs[key] = tuple(value)
        elif hint_type is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = float(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required field: not expected with defaults everywhere
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that ``1e-3`` is a number: YAML 1.1 wants a dot
    (``1.0e-3``), and a learning rate written the usual way must not become a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def presets_dir() -> Path:
    """Where the preset YAML files are: the source tree, or the installed data directory."""
    candidates = [Path(__file__).resolve().parent.parent / "configs",
                  Path(sys.prefix) / "share" / "qtopt" / "configs"]
    env = os.environ.get("QTOPT_CONFIGS")
    if env:
        candidates.insert(0, Path(env))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ConfigError("no configs/ directory with presets found; set QTOPT_CONFIGS")


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        data = _yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> dict:
    """``train.batch_size=64`` -> ``{"train": {"batch_size": 64}}`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.batch_size=64")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict = value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


def load_config(preset: str = "demo", files: list[str] | tuple[str, ...] = (),
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The preset, then each YAML file, then each ``key=value`` override, validated."""
    names = preset_names()
    if preset not in names:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(names)}")
    data = _read_yaml(presets_dir() / f"{preset}.yaml", "preset")
    for path in files:
        data = _merge(data, _read_yaml(Path(path), "config file"))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return Config.from_dict(data)


def describe_options(config: "Config | None" = None) -> list[tuple[str, Any, str, str]]:
    """(dotted name, value in ``config`` (default: the base defaults), doc, allowed values) for
    every option, for ``qtopt config options``."""
    config = config or Config()
    rows = []
    for section in dataclasses.fields(Config):
        values = getattr(config, section.name)
        for f in dataclasses.fields(section.default_factory()):
            meta = f.metadata
            if meta.get("choices"):
                allowed = " | ".join(map(str, meta["choices"]))
            elif meta.get("lo") is not None or meta.get("hi") is not None:
                lo, hi = meta.get("lo"), meta.get("hi")
                allowed = (f"{lo:g} to {hi:g}" if lo is not None and hi is not None else
                           f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            else:
                allowed = ""
            rows.append((f"{section.name}.{f.name}", getattr(values, f.name),
                         meta.get("doc", ""), allowed))
    return rows

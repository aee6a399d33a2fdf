"""The grasping Q-network (appendix E, figure 13), split where the action comes in.

Q(s, a) = sigmoid(head(tower(image), embed(action, state))). The network is built as two Keras
models that share nothing but the feature map between them:

- ``tower``: uint8 image -> conv feature map. Independent of the action, so CEM runs it once per
  state.
- ``head``: (feature map, [action, state scalars]) -> logit. The action and state are scaled to
  about unit range by fixed factors (``InputSpec.input_scale``), go through dense layers, are tiled over the feature map and added to it, then more convs and dense layers. CEM
  runs only this part for each of its samples.

``QNetwork.model`` composes the two into one Keras model over the spec's inputs
(``schemas.tf_codec.keras_inputs``): ``observation/image`` (uint8), the state scalars chosen by
``model.state_inputs``, and ``action`` (float32[8]); it outputs the logit of Q.

Every conv and dense layer is followed by batch normalisation and a ReLU, as in the paper; weights
start from a truncated normal with sigma 0.01.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from schemas import mdp
from schemas.errors import UserError
from schemas.specs import ACTION_DIM
from schemas.tf_codec import keras_inputs

IMAGE = mdp.IMAGE
ACTION = "action"
STATE_FIELDS = {
    "image": (),
    "image+gripper": (mdp.GRIPPER_CLOSED,),
    "image+gripper+height": (mdp.GRIPPER_CLOSED, mdp.HEIGHT),
    # Not in the paper: the fingers' opening besides the closed flag. After a close it tells
    # whether something is between the fingers, which 64x64 images barely show (README, "The
    # demo": grasp_probe).
    "image+gripper+height+opening": (mdp.GRIPPER_CLOSED, mdp.HEIGHT, mdp.GRIPPER_OPENING),
}
DEFAULT_STATE_INPUTS = "image+gripper+height+opening"
# Inputs are scaled to about unit range before the first dense layer. Adam moves every weight by
# about the learning rate per step whatever its input's scale, so an input of range 0.09 (the
# opening, metres) or 0.16 (a translation) would need weights tens of times larger than a 0/1 bit
# to matter as much: thousands of steps. Measured with benchmarks.grasp_probe --state final on 300
# scripted episodes: held-out AUC 0.62 raw, 0.86 scaled, after 400 steps.
STATE_RANGES = {mdp.GRIPPER_CLOSED: 1.0, mdp.HEIGHT: mdp.HEIGHT_RANGE,
                mdp.GRIPPER_OPENING: mdp.MAX_OPENING}
DEFAULT_TRANSLATION_RANGE = 0.08                        # robot.max_translation's default


@dataclass(frozen=True)
class Architecture:
    """Layer lists. Convs are ("conv", filters, kernel, stride); pools are ("pool", size)."""

    tower: tuple
    embed: tuple       # dense units for [action, state]; a last layer matching the map is added
    head: tuple
    dense: tuple       # dense units before the output logit


PRESETS = {
    # Tests: a few thousand weights, trains in seconds at 16-32 pixels.
    "tiny": Architecture(
        tower=(("conv", 8, 3, 2), ("conv", 8, 3, 1), ("pool", 2)),
        embed=(16,),
        head=(("conv", 8, 3, 1), ("pool", 2)),
        dense=(16,)),
    # 64x64 on a laptop CPU. The tower does ~60x the multiply-adds of the head so that CEM, which
    # runs the head 2 x 64 times per state, stays cheap (4x4x64 map at the merge).
    "cpu64": Architecture(
        tower=(("conv", 32, 5, 2), ("conv", 32, 3, 1), ("pool", 2), ("conv", 64, 3, 1),
               ("conv", 64, 3, 1), ("pool", 2), ("conv", 64, 3, 1), ("pool", 2)),
        embed=(64,),
        head=(("conv", 32, 3, 1), ("conv", 32, 3, 1)),
        dense=(64, 64)),
    # 64x64 with a tower about 20x cheaper than cpu64's (strided convs instead of full-size
    # ones), the same 4x4x64 merge and head: gradient steps are what a 2-core demo is short of.
    "fast64": Architecture(
        tower=(("conv", 16, 5, 2), ("conv", 32, 3, 2), ("conv", 32, 3, 2), ("conv", 64, 3, 1),
               ("pool", 2)),
        embed=(64,),
        head=(("conv", 32, 3, 1), ("conv", 32, 3, 1)),
        dense=(64, 64)),
    # Figure 13: 472x472 input, 7 convs before the merge, 9 after, two dense layers of 64.
    "paper": Architecture(
        tower=(("conv", 64, 6, 2), ("pool", 3)) + (("conv", 64, 5, 1),) * 6 + (("pool", 3),),
        embed=(256,),
        head=(("conv", 64, 3, 1),) * 6 + (("pool", 2),) + (("conv", 64, 3, 1),) * 3
        + (("pool", 2),),
        dense=(64, 64)),
}


@dataclass(frozen=True)
class InputSpec:
    """What an export expects of its data; recorded in every export's manifest."""

    image_size: int
    state_inputs: str = DEFAULT_STATE_INPUTS
    action_dim: int = ACTION_DIM
    # Metres of translation the network reads as 1 (robot.max_translation); the state scalars are
    # divided by STATE_RANGES. None: raw inputs, as exports written before input scaling were
    # trained (their manifests have no such key).
    translation_range: Optional[float] = DEFAULT_TRANSLATION_RANGE

    @property
    def input_scale(self) -> tuple:
        """Factors for the [action, state scalars] vector the head reads."""
        if self.translation_range is None:
            return (1.0,) * (self.action_dim + len(self.state_fields))
        t = 1.0 / float(self.translation_range)
        return (t, t, t) + (1.0,) * (self.action_dim - 3) + tuple(
            1.0 / STATE_RANGES[f] for f in self.state_fields)

    @property
    def state_fields(self) -> tuple:
        return STATE_FIELDS[self.state_inputs]

    @property
    def input_names(self) -> tuple:
        return (IMAGE,) + self.state_fields + (ACTION,)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(**{"translation_range": None, **data})

    def check_image_shape(self, image_shape, where: str) -> None:
        expected = (self.image_size, self.image_size, 3)
        if tuple(int(d) for d in image_shape) != expected:
            raise UserError(f"{where}: images are {tuple(int(d) for d in image_shape)} but the "
                            f"model expects {expected} (model.image_size / robot.image_size)")


def _init():
    return keras.initializers.TruncatedNormal(stddev=0.01)


def _bn(name, sync):
    # Synchronised across replicas, batch statistics are those of the global batch: replicas
    # compute what one process would, and their moving statistics stay identical.
    return keras.layers.BatchNormalization(name=name, synchronized=True) if sync else \
        keras.layers.BatchNormalization(name=name)


def _conv_bn_relu(x, filters, kernel, stride, name, sync=False):
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                            kernel_initializer=_init(), name=f"{name}_conv")(x)
    x = _bn(f"{name}_bn", sync)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _dense_bn_relu(x, units, name, sync=False):
    x = keras.layers.Dense(units, use_bias=False, kernel_initializer=_init(),
                           name=f"{name}_dense")(x)
    x = _bn(f"{name}_bn", sync)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _stack(x, layers, prefix, sync=False):
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            _, filters, kernel, stride = layer
            x = _conv_bn_relu(x, filters, kernel, stride, f"{prefix}{i}", sync)
        else:
            x = keras.layers.MaxPooling2D(layer[1], padding="same", name=f"{prefix}{i}_pool")(x)
    return x


class QNetwork:
    """Online, Polyak or lagged copy of the Q-function: tower, head and the composed model."""

    def __init__(self, spec: InputSpec, preset: str, name: str = "q", initial_q: float = 0.5,
                 sync_batch_norm: bool = False):
        """``initial_q``: Q of the untrained network (the output bias is its log-odds). Epoch 0's
        targets bootstrap from it, and every later epoch decays it by gamma only once per
        backup, so a start far above the data's returns takes many epochs to wash out.
        ``sync_batch_norm``: batch statistics over all replicas of a ``tf.distribute`` strategy
        (the same weights either way)."""
        if preset not in PRESETS:
            raise UserError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
        self.spec = spec
        self.preset = preset
        arch = PRESETS[preset]

        image = keras.Input((spec.image_size, spec.image_size, 3), dtype="uint8", name="image")
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(image)
        features = _stack(x, arch.tower, "tower", sync_batch_norm)
        self.tower = keras.Model(image, features, name=f"{name}_tower")

        fmap = keras.Input(features.shape[1:], name="features")
        action_state = keras.Input((spec.action_dim + len(spec.state_fields),),
                                   name="action_state")
        e = keras.layers.Rescaling(np.asarray(spec.input_scale, np.float32),
                                   name="action_state_scale")(action_state)
        for i, units in enumerate(arch.embed):
            e = _dense_bn_relu(e, units, f"embed{i}", sync_batch_norm)
        e = _dense_bn_relu(e, features.shape[-1], f"embed{len(arch.embed)}",
                            sync_batch_norm)
        # Broadcast over height and width: the "tile and add" of figure 13.
        e = keras.layers.Reshape((1, 1, features.shape[-1]), name="embed_tile")(e)
        h = keras.layers.Add(name="merge")([fmap, e])
        h = _stack(h, arch.head, "head", sync_batch_norm)
        h = keras.layers.Flatten(name="flatten")(h)
        for i, units in enumerate(arch.dense):
            h = _dense_bn_relu(h, units, f"fc{i}", sync_batch_norm)
        if not 0.0 < initial_q < 1.0:
            raise UserError(f"model.initial_q must lie strictly between 0 and 1, got {initial_q}")
        bias = float(np.log(initial_q / (1.0 - initial_q)))
        logit = keras.layers.Dense(1, kernel_initializer=_init(),
                                   bias_initializer=keras.initializers.Constant(bias),
                                   name="logit")(h)
        self.head = keras.Model([fmap, action_state], logit, name=f"{name}_head")

        inputs = keras_inputs(spec.image_size, spec.input_names)
        merged = self.head([self.tower(inputs[IMAGE]),
                            _action_state(inputs[ACTION],
                                          [inputs[f] for f in spec.state_fields])])
        with warnings.catch_warnings():
            # Keras wants dict keys equal to input names, which cannot hold the spec's "/".
            warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
            self.model = keras.Model(inputs, merged, name=name)

    # -- weights

    @property
    def variables(self) -> list:
        """Every weight, trainable or not (batch-norm statistics too), in a fixed order."""
        return list(self.model.weights)

    def count_params(self) -> int:
        return int(self.model.count_params())

    # -- evaluation

    def logits(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """Logit of Q for a batch dict holding the spec's input names; shape [B]."""
        feed = {name: inputs[name] for name in self.spec.input_names}
        return tf.squeeze(self.model(feed, training=training), -1)

    def q(self, inputs: dict, training: bool = False) -> tf.Tensor:
        return tf.sigmoid(self.logits(inputs, training))

    def features(self, image: tf.Tensor) -> tf.Tensor:
        return self.tower(image, training=False)

    def q_samples(self, features: tf.Tensor, state: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
        """Q for N actions per state, reusing each state's features: [B, N].

        ``features`` [B, h, w, c] from ``features``; ``state`` [B, k] (k may be 0); ``actions``
        [B, N, action_dim].
        """
        n = tf.shape(actions)[1]
        tiled = tf.repeat(features, n, axis=0)
        state_tiled = tf.repeat(state, n, axis=0)
        flat_actions = tf.reshape(actions, (-1, self.spec.action_dim))
        logit = self.head([tiled, tf.concat([flat_actions, state_tiled], -1)], training=False)
        return tf.sigmoid(tf.reshape(logit, (-1, n)))

    def state_vector(self, batch: dict, prefix: str = "observation") -> tf.Tensor:
        """[B, k] state scalars of ``batch`` (``observation/...`` or ``next_observation/...``)."""
        cols = [tf.reshape(tf.cast(batch[prefix + f[len("observation"):]], tf.float32), (-1, 1))
                for f in self.spec.state_fields]
        if not cols:
            b = tf.shape(batch[f"{prefix}/image"])[0]
            return tf.zeros((b, 0), tf.float32)
        return tf.concat(cols, -1)


def _action_state(action, states):
    cols = [action] + [keras.layers.Reshape((1,))(keras.ops.cast(s, "float32")) for s in states]
    return keras.layers.Concatenate(name="action_state_concat")(cols) if len(cols) > 1 else action


def build(model_config, image_size: int, name: str = "q",
          translation_range: float = DEFAULT_TRANSLATION_RANGE) -> QNetwork:
    """The network a ``ModelConfig`` describes, for images of ``image_size`` pixels and
    translations of up to ``translation_range`` metres (``robot.max_translation``)."""
    return QNetwork(InputSpec(image_size, model_config.state_inputs,
                              translation_range=translation_range), model_config.preset, name,
                     initial_q=model_config.initial_q)

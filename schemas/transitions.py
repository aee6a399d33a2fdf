"""The episode-to-transition rule: which step is terminal, what the return from each step is.

An episode of T actions (T + 1 RLDS steps) gives T transitions. Transition t pairs step t's
observation, action and reward with step t + 1's observation; it is terminal when step t + 1 is
the episode's last: every end is scored (the terminate action, the scripted termination and the
step limit alike, ``robot.episode``), so nothing is bootstrapped past it. Its ``return_to_go``
is the discounted return of the recorded episode from step t (``schemas.mdp.discounted_returns``
with the dataset's gamma), what the policy that acted earned from there.

``episode_transitions`` builds the records; ``encoded_transitions`` gives the same records'
bytes straight from a decoded episode (each step's values become Features once, shared by the
two transitions that hold the step), which is what the shard job writes.
"""

from __future__ import annotations

from schemas import codec
from schemas.mdp import discounted_returns
from schemas.specs import SCHEMA_VERSION, STATE_SCALARS, TRANSITION

_OBSERVATION = ("image",) + STATE_SCALARS


def terminal_flags(episode: dict) -> list[bool]:
    """Transition t's ``is_terminal``: whether step t + 1 ends the episode."""
    n = int(episode["num_steps"])
    return [bool(episode["is_terminal"][t + 1]) for t in range(n)]


def returns_to_go(episode: dict, gamma: float):
    """float32[T]: the discounted return of the recorded episode from each of its T actions."""
    n = int(episode["num_steps"])
    return discounted_returns(episode["reward"][:n], gamma)


def episode_transitions(episode: dict, gamma: float, source: str | None = None) -> list[dict]:
    """The T transition records of an episode of T actions (T + 1 RLDS steps)."""
    n = int(episode["num_steps"])
    shape = tuple(int(v) for v in episode["image_shape"])
    src = source or episode["source"]
    terminal, returns = terminal_flags(episode), returns_to_go(episode, gamma)
    out = []
    for t in range(n):
        out.append(codec.new_record(
            "transition", shape,
            episode_id=episode["episode_id"], step=t, source=src,
            action=episode["action"][t], reward=episode["reward"][t],
            is_terminal=terminal[t], return_to_go=returns[t],
            **{f"{prefix}/{name}": episode[f"observation/{name}"][t + dt]
               for prefix, dt in (("observation", 0), ("next_observation", 1))
               for name in _OBSERVATION}))
    return out


def encoded_transitions(episode: dict, gamma: float, source: str | None = None) -> list[bytes]:
    """``codec.encode`` of each of ``episode_transitions(episode, gamma, source)``, byte for
    byte, from an episode ``codec.decode`` has validated."""
    fields = {f.name: f for f in TRANSITION.fields}

    def feature(name, value):
        return codec.feature(fields[name], value)

    n = int(episode["num_steps"])
    header = {"schema_version": feature("schema_version", SCHEMA_VERSION),
              "kind": feature("kind", TRANSITION.kind),
              "image_shape": feature("image_shape", episode["image_shape"]),
              "episode_id": feature("episode_id", episode["episode_id"]),
              "source": feature("source", source or episode["source"])}
    observations = [{name: feature(f"observation/{name}", episode[f"observation/{name}"][t])
                     for name in _OBSERVATION} for t in range(n + 1)]
    terminal, returns = terminal_flags(episode), returns_to_go(episode, gamma)
    out = []
    for t in range(n):
        features = dict(header, step=feature("step", t),
                        action=feature("action", episode["action"][t]),
                        reward=feature("reward", episode["reward"][t]),
                        is_terminal=feature("is_terminal", terminal[t]),
                        return_to_go=feature("return_to_go", returns[t]))
        for name in _OBSERVATION:
            features[f"observation/{name}"] = observations[t][name]
            features[f"next_observation/{name}"] = observations[t + 1][name]
        out.append(codec.example_bytes(features))
    return out

"""Arithmetic of joint finetuning (appendix F.3), kept apart from any I/O so it can be tested.

- The ramp: the on-policy share of every training batch grows linearly from ``start`` (1% in
  the paper) to ``end`` (50%) over ``ramp_steps`` gradient steps, then stays at ``end``.
- Chunks: training runs in chunks of one share each; on the ramp they are short, past it
  the rest of a round is one chunk.
- The balancer: gradient steps are held at ``ratio`` per new on-policy transition (the paper
  keeps 6 to 11). Finetuning runs in rounds (collect, shard, relabel, train), so the balancer
  says how many steps a round may train given every on-policy transition collected so far and
  every step already taken; a round that collected nothing new trains nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def online_share(step: int, start: float = 0.01, end: float = 0.5, ramp_steps: int = 1) -> float:
    """Fraction of a batch drawn from on-policy data at global finetuning step ``step``."""
    if not 0.0 <= start <= 1.0 or not 0.0 <= end <= 1.0:
        raise ValueError(f"ramp shares must lie in [0, 1], got start={start}, end={end}")
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * max(step, 0) / ramp_steps


def chunk_end(step: int, until: int, ramp_steps: int, chunk: int) -> int:
    """Where the training chunk that starts at finetuning step ``step`` (steps since finetuning
    began) ends, ``until`` being the round's last step. On the ramp a chunk is ``chunk`` steps
    (each chunk trains at one share) and never crosses the ramp's end; past the ramp the share
    no longer changes, so one chunk takes the rest of the round."""
    if chunk <= 0:
        raise ValueError(f"ramp chunk must be positive, got {chunk}")
    if step >= ramp_steps:
        return until
    return min(until, step + chunk, ramp_steps)


def batch_split(batch_size: int, share: float) -> tuple[int, int]:
    """(offline, online) examples of a batch for an online share, at least one of each while
    the share is strictly between 0 and 1, so both sources are always seen."""
    online = int(round(batch_size * share))
    if 0.0 < share < 1.0 and batch_size >= 2:
        online = min(max(online, 1), batch_size - 1)
    return batch_size - online, online


@dataclass(frozen=True)
class Balancer:
    """Gradient steps per new on-policy transition."""

    ratio: float

    def __post_init__(self):
        if not self.ratio > 0:
            raise ValueError(f"balancer ratio must be positive, got {self.ratio}")

    def allowed_steps(self, online_transitions: int) -> int:
        """Total gradient steps the on-policy data collected so far pays for."""
        return int(math.floor(self.ratio * max(online_transitions, 0)))

    def steps_for_round(self, online_transitions: int, steps_done: int) -> int:
        """Steps to train now: what the data allows minus what was already trained."""
        return max(0, self.allowed_steps(online_transitions) - steps_done)

    def achieved(self, online_transitions: int, steps_done: int) -> float:
        return steps_done / online_transitions if online_transitions else 0.0

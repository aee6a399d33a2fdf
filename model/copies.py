"""The trainer's two target copies of the online weights (section 4.1, appendix F.4).

- theta_1 (``polyak``): after every gradient step, theta_1 <- rate * theta_1 + (1 - rate) * theta.
- theta_2 (``lagged``): theta_1 as it was between ``lag_steps`` and ``2 * lag_steps`` steps ago.
  Every ``lag_steps`` steps the lagged copy takes a snapshot of theta_1 taken ``lag_steps`` earlier,
  and a new snapshot is taken; two buffers give a lag of about 1.5 x ``lag_steps`` on average
  without keeping thousands of weight copies. Precisely, after step k the lagged copy equals
  theta_1 after step ``max(0, lag_steps * (k // lag_steps - 1))``. ``lag_steps = 0`` makes the
  lagged copy follow theta_1 exactly.

Batch-norm statistics are averaged and lagged like every other weight.
"""

from __future__ import annotations

import tensorflow as tf

from model.network import QNetwork


class TargetCopies:
    def __init__(self, online: QNetwork, polyak: QNetwork, lagged: QNetwork, rate: float,
                 lag_steps: int):
        self.online, self.polyak, self.lagged = online, polyak, lagged
        self.rate = rate
        self.lag_steps = lag_steps
        self.snapshot = [tf.Variable(v.numpy(), trainable=False, name=f"snapshot_{i}")
                         for i, v in enumerate(polyak.variables)]

    def reset(self) -> None:
        """All copies equal the online weights, as at step 0."""
        for src_dst in zip(self.online.variables, self.polyak.variables, self.lagged.variables,
                           self.snapshot):
            for dst in src_dst[1:]:
                dst.assign(src_dst[0])

    def polyak_update(self) -> None:
        """theta_1 <- rate * theta_1 + (1 - rate) * theta. Graph-safe: call inside a train step."""
        r = self.rate
        for target, source in zip(self.polyak.variables, self.online.variables):
            target.assign(r * target + (1.0 - r) * source)

    def after_step(self, step: int) -> None:
        """Advance the lag schedule once gradient step ``step`` (1-based) is done."""
        if self.lag_steps == 0:
            for dst, src in zip(self.lagged.variables, self.polyak.variables):
                dst.assign(src)
            return
        if step % self.lag_steps == 0:
            for lagged, snap, polyak in zip(self.lagged.variables, self.snapshot,
                                            self.polyak.variables):
                lagged.assign(snap)
                snap.assign(polyak)

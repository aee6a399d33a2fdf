"""Fake records that satisfy their spec, for tests and benchmarks.

Values are drawn from a numpy ``Generator`` so a seed gives the same records every time. Images
are smooth gradients plus noise rather than pure noise, so that gzip behaves as on real camera
images and not worse.
"""

from __future__ import annotations

import numpy as np

from schemas.codec import new_record
from schemas.cells import default_cell
from schemas.specs import ACTION_DIM, EPISODE, Field, RecordSpec, spec_for


def fake_image(rng: np.random.Generator, image_shape: tuple) -> np.ndarray:
    h, w, c = image_shape
    base = np.linspace(0, 200, h * w, dtype=np.float32).reshape(h, w, 1)
    noise = rng.integers(0, 40, size=(h, w, c))
    return (base + noise).astype(np.uint8)


def fake_action(rng: np.random.Generator) -> np.ndarray:
    a = np.zeros(ACTION_DIM, np.float32)
    a[:3] = rng.normal(0.0, 0.02, 3)
    angle = rng.uniform(-np.pi, np.pi)
    a[3:5] = (np.sin(angle), np.cos(angle))
    a[5 + rng.integers(0, 2)] = 1.0
    a[7] = float(rng.random() < 0.1)
    return a


def _fake_value(f: Field, rng: np.random.Generator, image_shape: tuple, record_id: str):
    if f.dtype == "image":
        return fake_image(rng, image_shape)
    if f.name == "action" or f.name == "next_action":
        return fake_action(rng)
    if f.dtype == "string":
        if f.variable:
            return [f"{int(i):03d}" for i in rng.choice(1000, size=int(rng.integers(1, 6)),
                                                         replace=False)]
        return record_id if f.name == "episode_id" else f"fake-{f.name.split('/')[-1]}"
    if f.dtype == "bool":
        return bool(rng.random() < 0.5)
    if f.dtype == "int64":
        return np.int64(rng.integers(0, 20))
    if f.name.endswith("gripper_closed"):
        return np.float32(rng.integers(0, 2))
    if f.name.endswith("gripper_opening"):
        return np.float32(rng.uniform(0.0, 0.09))
    if f.name == "reward":
        return np.float32(-0.05)
    return np.float32(rng.uniform(0.0, 1.0))


_HEADER = ("schema_version", "kind", "image_shape")


def fake_record(kind: str, rng: np.random.Generator | int = 0, image_size: int = 64,
                num_steps: int | None = None, record_id: str = "fake-0") -> dict:
    """One valid record of ``kind``; episodes get ``num_steps`` actions (random if None)."""
    rng = np.random.default_rng(rng)
    spec: RecordSpec = spec_for(kind)
    image_shape = (image_size, image_size, 3)
    # return_to_go (schema 4) takes no draw of its own, so every other field's fake value is
    # what it was before the field existed: a transition's reward is a return it could have.
    values = {f.name: _fake_value(f, rng, image_shape, record_id)
              for f in spec.fields if f.name not in _HEADER and f.name != "return_to_go"}
    if "reward" in values and spec is not EPISODE:
        values["return_to_go"] = values["reward"]
    if spec is EPISODE:
        # The default cell, as an export written with the defaults names it.
        values["cell"] = default_cell(image_size)
        n = int(rng.integers(1, 21)) if num_steps is None else int(num_steps)
        values["num_steps"] = np.int64(n)
        for f in spec.step_fields:
            values[f.name] = [_fake_value(f, rng, image_shape, record_id) for _ in range(n + 1)]
        values["is_first"] = [t == 0 for t in range(n + 1)]
        values["is_last"] = [t == n for t in range(n + 1)]
        terminal = bool(rng.random() < 0.8)
        values["is_terminal"] = [terminal and t == n for t in range(n + 1)]
        values["discount"] = [np.float32(0.0 if terminal and t == n else 1.0)
                              for t in range(n + 1)]
        values["action"][-1] = np.zeros(ACTION_DIM, np.float32)
        values["reward"][-1] = np.float32(0.0)
    return new_record(kind, image_shape, **values)


def fake_records(kind: str, n: int, seed: int = 0, image_size: int = 64, **kwargs) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [fake_record(kind, rng, image_size, record_id=f"fake-{seed}-{i}", **kwargs)
            for i in range(n)]

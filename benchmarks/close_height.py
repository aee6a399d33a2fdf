"""Where do the data's grasps close, how often does each height succeed, and can an export's Q
tell the successes apart at each height? Prints one JSON line.

    python -m benchmarks.close_height "RUN/episodes/scripted-train/*.tfrecord.gz" \\
        [--export RUN/train/exports] [--edges 0.03,0.08]

Takes the state where each episode's gripper is first told to close (as ``grasp_probe --state
close``), groups those states by the gripper's height above the floor (bands cut at ``--edges``,
metres) and gives each band's grasps and success rate. With ``--export`` (an export directory,
or an ``exports/`` folder for its latest) it also scores each state with the export's Polyak Q
at the action the data took there, and gives each band's mean Q and AUC (0.5: the Q cannot
tell that band's successes from its failures; the figure is on the export's own training data
when the episodes are those it trained on, so it is an upper bound of what it sees elsewhere).

A greedy policy picks where to close by Q. If the data's closes a few centimetres up succeed
as often as those on the floor (the scripted policy closes where its fingers rest on an
object), a Q that cannot see the object between the fingers learns that closing at that height
is worth as much as closing on the floor, and its policy closes there in mid-air too.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from benchmarks.grasp_probe import auc, probe_states
from schemas.specs import STATE_SCALARS


def bands(edges: list[float]) -> list[tuple[float, float]]:
    cuts = [0.0, *edges, float("inf")]
    return list(zip(cuts[:-1], cuts[1:]))


def band_table(height: np.ndarray, success: np.ndarray, edges: list[float],
               q: np.ndarray | None = None) -> list[dict]:
    """One row per height band: grasps, success rate, and with ``q`` its mean and AUC."""
    rows = []
    for lo, hi in bands(edges) + [(0.0, float("inf"))]:
        m = (height >= lo) & (height < hi)
        row = {"height_cm": f"{lo * 100:g}-{'' if hi == float('inf') else f'{hi * 100:g}'}",
               "grasps": int(m.sum()),
               "success": round(float(success[m].mean()), 3) if m.any() else None}
        if q is not None:
            row["mean_q"] = round(float(q[m].mean()), 3) if m.any() else None
            a = auc(q[m], success[m]) if m.any() else float("nan")
            row["auc"] = None if np.isnan(a) else round(a, 3)
        rows.append(row)
    rows[-1]["height_cm"] = "all"
    return rows


def export_q(path: str, data: dict, batch: int = 256) -> np.ndarray:
    """The export's Polyak Q at each probed state and the action taken there."""
    import tensorflow as tf

    from model.export import load_export

    network = load_export(path, copies=("polyak",)).polyak
    out = []
    for i in range(0, len(data["success"]), batch):
        s = slice(i, i + batch)
        inputs = {"observation/image": tf.constant(data["image"][s]),
                  "action": tf.constant(data["action"][s]),
                  **{f"observation/{k}": tf.constant(data[k][s]) for k in STATE_SCALARS}}
        out.append(network.q(inputs).numpy().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("episodes", nargs="+", help="episode files or globs (local)")
    parser.add_argument("--export", help="an export directory (or exports/ folder: its latest) "
                        "whose Q scores each state")
    parser.add_argument("--edges", default="0.03,0.08",
                        help="band edges in metres above the floor (default 0.03,0.08)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import glob

    try:
        edges = sorted(float(e) for e in args.edges.split(",") if e.strip())
    except ValueError:
        raise SystemExit(f"--edges: expected comma-separated metres, got {args.edges!r}")
    paths = sorted({p for pattern in args.episodes for p in glob.glob(pattern)})
    if not paths:
        raise SystemExit(f"no episode files match {args.episodes}")
    data = probe_states(paths, "close")
    if len(data["success"]) == 0:
        raise SystemExit(f"no episode in {len(paths)} files ever closes the gripper")
    q = None
    export = None
    if args.export:
        from model.export import resolve

        export = resolve(args.export)
        q = export_q(export, data)
    print(json.dumps({"benchmark": "close_height", "files": len(paths),
                      "grasps": len(data["success"]), "export": export,
                      "bands": band_table(data["height"], data["success"], edges, q)}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

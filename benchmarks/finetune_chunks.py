"""Finetuning's training speed in short chunks against one long chunk, on the same data.

``qtopt finetune`` trains each round in chunks, one on-policy share per chunk, with one
``model.train.Trainer``: each chunk sets its two-source mix (``Trainer.use_data``), trains
and checkpoints; the last exports. This benchmark writes two real labelled datasets (gzip
TFRecords of fake transitions, standing for the offline and the on-policy data), then trains the
same number of steps from scratch twice, each in a workdir of its own: once in chunks of
``--chunk`` steps as finetuning runs them, once in a single ``model.train.train_until`` call. The
order alternates over ``--repeats`` so that drifts in machine load hit both alike.

Prints one JSON line: ``chunked_steps_per_s``, ``single_steps_per_s``, ``ratio`` (chunked /
single) and the settings.

Usage: ``python -m benchmarks.finetune_chunks [--steps 600] [--chunk 100] [--preset demo]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import schemas  # noqa: E402,F401
from benchmarks.train_input import write_shards  # noqa: E402


def _timed(config, sources, workdir: str, steps: int, chunk: int) -> float:
    from model.train import Trainer, train_until

    start = time.perf_counter()
    if chunk >= steps:
        train_until(config, sources, workdir, until_step=steps, progress=False)
        return steps / (time.perf_counter() - start)
    trainer, step = Trainer(config, sources, workdir), 0
    while step < steps:
        end = min(steps, step + chunk)
        if step:
            # Shares alternate, as the ramp changes them: a new mix of the same two datasets.
            trainer.use_data([(p, w if (step // chunk) % 2 else 1.0 - w) for p, w in sources])
        step = trainer.run(until_step=end, progress=False, export=end >= steps).step
    return steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="gradient steps per side")
    parser.add_argument("--chunk", type=int, default=100, help="steps per chunk (finetune's "
                        "finetune.ramp_chunk)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternated")
    parser.add_argument("--share", type=float, default=0.5, help="on-policy share of a batch")
    parser.add_argument("--preset", default="demo", help="configuration preset")
    parser.add_argument("--records", type=int, default=1024, help="labelled records per source")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="config override, e.g. train.batch_size=32")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.chunk < 1 or args.repeats < 1 or not 0 < args.share < 1:
        raise SystemExit("--steps, --chunk and --repeats must be >= 1 and --share in (0, 1)")

    from schemas.config import load_config

    config = load_config(args.preset, overrides=args.overrides)
    # As finetuning trains: the input changes every chunk, so its position is never restored.
    config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                   checkpoint_input=False))
    chunked, single = [], []
    with tempfile.TemporaryDirectory(prefix="qtopt-finetune-chunks-") as tmp:
        size = config.robot.image_size
        sources = [(write_shards(os.path.join(tmp, "offline"), args.records, 4, size),
                    1.0 - args.share),
                   (write_shards(os.path.join(tmp, "online"), args.records, 4, size),
                    args.share)]
        for r in range(args.repeats):
            sides = [("chunked", args.chunk, chunked), ("single", args.steps, single)]
            for name, chunk, out in (sides if r % 2 == 0 else sides[::-1]):
                out.append(_timed(config, sources, os.path.join(tmp, f"{name}-{r}"),
                                  args.steps, chunk))
    c, s = sum(chunked) / len(chunked), sum(single) / len(single)
    print(json.dumps({"chunked_steps_per_s": round(c, 4), "single_steps_per_s": round(s, 4),
                      "ratio": round(c / s, 3), "steps": args.steps, "chunk": args.chunk,
                      "repeats": args.repeats, "preset": args.preset,
                      "model": config.model.preset, "image_size": size,
                      "batch_size": config.train.batch_size, "cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

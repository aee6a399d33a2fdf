"""Training steps per second from labelled shards on disk against the same model fed in memory.

Writes real labelled shards (gzip TFRecords through ``schemas``) to a temporary directory, builds
one ``model.train.Trainer`` over them (demo preset: cpu64 network, 64x64 images), and times its
gradient steps alternately with the real input (interleave, shuffle, parse, augment, prefetch)
and with one batch held in memory as constant tensors. Both loops are the trainer's own: the same
step function and the same per-step check of the loss.

Prints one JSON line: ``real_steps_per_s``, ``synthetic_steps_per_s``, ``ratio`` and settings.

Usage: ``python -m benchmarks.train_input [--seconds 20] [--preset demo] [--records 2048]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import schemas  # noqa: E402,F401


def write_shards(directory: str, records: int, shards: int, image_size: int) -> str:
    from schemas.fake import fake_records
    from schemas.tfrecord_io import write_records

    per = records // shards
    for s in range(shards):
        write_records(os.path.join(directory, f"shard-{s:05d}-of-{shards:05d}.tfrecord.gz"),
                      fake_records("labelled_transition", per, seed=s, image_size=image_size))
    return os.path.join(directory, "*.tfrecord.gz")


def _rate(trainer, next_batch, seconds: float) -> float:
    for _ in range(3):                                   # trace, fill buffers
        out = trainer.train_step(*next_batch())
        bool(out["finite"])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = trainer.train_step(*next_batch())
        bool(out["finite"])                              # the trainer checks every step
        steps += 1
    return steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per input kind")
    parser.add_argument("--preset", default="demo", help="configuration preset")
    parser.add_argument("--records", type=int, default=2048, help="labelled records written")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="config override, e.g. train.batch_size=32")
    args = parser.parse_args(argv)

    from model.data import in_memory_batch
    from model.train import Trainer
    from schemas.config import load_config

    config = load_config(args.preset, overrides=args.overrides)
    with tempfile.TemporaryDirectory(prefix="qtopt-train-input-") as tmp:
        pattern = write_shards(os.path.join(tmp, "labelled"), args.records, args.shards,
                               config.robot.image_size)
        trainer = Trainer(config, [(pattern, 1.0)], os.path.join(tmp, "work"))
        inputs, target = in_memory_batch(trainer.input_dataset)
        half = args.seconds / 2
        real, synthetic = [], []
        for _ in range(2):   # alternate, so drifts in machine load hit both alike
            real.append(_rate(trainer, lambda: next(trainer.iterator), half))
            synthetic.append(_rate(trainer, lambda: (inputs, target), half))
    r, s = sum(real) / 2, sum(synthetic) / 2
    print(json.dumps({"real_steps_per_s": round(r, 2), "synthetic_steps_per_s": round(s, 2),
                      "ratio": round(r / s, 3), "preset": args.preset,
                      "model": config.model.preset, "image_size": config.robot.image_size,
                      "batch_size": config.train.batch_size, "augment": config.train.augment,
                      "records": args.records, "shards": args.shards,
                      "cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

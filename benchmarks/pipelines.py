"""Throughput of the Beam jobs against doing the same work in one process. Prints one JSON line.

    python -m benchmarks.pipelines [--episodes 300] [--image-size 64] [--only shard|relabel]
                                   [--workdir DIR] [Beam options]

Relabel: the transitions of ``--episodes`` demo-size episodes (fake data, 64x64 by default) and
one export of the demo network (random weights; CEM does the same work whatever the weights).
``beam_per_s`` is transitions / wall time of the whole Beam job on the default local runner
(worker start-up, reading, decoding, CEM, encoding, writing, publishing); ``inprocess_per_s``
is the same transitions read and decoded in this process and passed to
``model.targets.compute_targets`` in the same chunks. ``ratio`` = beam / in-process (target
>= 0.5). ``inprocess_compute_only_per_s`` leaves reading out.

Shard: the episodes' compressed bytes / wall time of ``qtopt shard`` on its default local runner
(``shard_mb_per_s``), against a single-process tf.data read of the same files written back out as
gzip TFRecords (``baseline_mb_per_s``), which does none of the decoding, pairing, shuffling or
encoding, and writes half the bytes (a transition holds two images). ``shard_ratio`` = shard /
baseline (target >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas.config import TargetConfig
from schemas.rundirs import epoch_dir


def _episodes(directory: str, episodes: int, image_size: int, per_file: int = 20) -> list[str]:
    from schemas.fake import fake_records
    from schemas.tfrecord_io import write_records

    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(0, episodes, per_file):
        path = os.path.join(directory, f"episodes-{i:05d}.tfrecord.gz")
        write_records(path, fake_records("episode", min(per_file, episodes - i), seed=i,
                                         image_size=image_size, num_steps=10))
        paths.append(path)
    return paths


BEAM_ARGS: list = []


def _local_options(workers: int, local_mode: str = "multi_processing", extra=()):
    from pipelines.machinery import runner

    return runner.pipeline_options([*BEAM_ARGS, *extra], num_workers=workers,
                                   local_mode=local_mode)


def bench_shard(root: str, files: list[str], workers: int) -> dict:
    import tensorflow as tf

    from pipelines.machinery import runner

    from pipelines.jobs import shard

    size_mb = sum(os.path.getsize(f) for f in files) / 1e6
    out = os.path.join(root, "transitions")
    t0 = time.perf_counter()
    shard.execute(_local_options(workers, shard.LOCAL_MODE), [(None, f) for f in files], out, 4,
                  0, {}, TargetConfig().gamma)
    shard_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(root, "baseline.tfrecord.gz"), "GZIP") as w:
        for record in ds:
            w.write(record.numpy())
    base_s = time.perf_counter() - t0
    runner.quiet_beam_logging()
    return {"input_mb": round(size_mb, 2), "shard_s": round(shard_s, 2),
            "shard_mb_per_s": round(size_mb / shard_s, 2),
            "baseline_s": round(base_s, 2), "baseline_mb_per_s": round(size_mb / base_s, 2),
            "shard_ratio": round(base_s / shard_s, 3)}


def bench_relabel(root: str, image_size: int, workers: int) -> dict:
    from model.export import load_export, write_export
    from model.network import build
    from model.targets import compute_targets
    from pipelines.machinery import dataset, runner
    from pipelines.jobs import relabel
    from schemas.config import load_config
    from schemas.tfrecord_io import read_records

    cfg = load_config("demo")
    chunk = cfg.pipeline.relabel_batch_size
    nets = {n: build(cfg.model, image_size, name=n) for n in ("online", "polyak", "lagged")}
    export_path = write_export(os.path.join(root, "exports"), 1, nets)
    src = os.path.join(root, "transitions")
    manifests, shards = relabel.read_inputs([src])
    n = manifests[0][1]["counts"]["transitions"]

    export = load_export(export_path, copies=("polyak", "lagged"))
    # Warm the in-process function once, as a worker does on its first chunk.
    first = next(read_records(shards[0][1]))
    compute_targets(export, relabel.stack_inputs([first]), cfg.cem, cfg.targets)
    t0 = time.perf_counter()
    compute_s = 0.0
    for j, path in shards:
        recs = list(read_records(path))
        for start in range(0, len(recs), chunk):
            c0 = time.perf_counter()
            compute_targets(export, relabel.stack_inputs(recs[start:start + chunk]), cfg.cem,
                            cfg.targets, seed=relabel.chunk_seed(j, start))
            compute_s += time.perf_counter() - c0
    inprocess_s = time.perf_counter() - t0

    def beam_job(epoch: int, extra=()) -> float:
        options = _local_options(workers, relabel.LOCAL_MODE, extra)
        target_model = {"export_path": export.path, "cem_config": cfg.cem,
                        "target_config": cfg.targets,
                        "intra_op_threads": runner.threads_per_worker(options)}
        out = epoch_dir(os.path.join(root, "labelled"), epoch)
        t0 = time.perf_counter()
        relabel.execute(options, shards, out, target_model, chunk,
                        relabel.target_version(export), {}, n)
        seconds = time.perf_counter() - t0
        assert dataset.read_dataset_manifest(out)["counts"]["transitions"] == n
        return seconds

    beam_s = beam_job(0)
    beam, inproc = n / beam_s, n / inprocess_s
    result = {"transitions": n, "chunk": chunk, "beam_s": round(beam_s, 2),
              "inprocess_s": round(inprocess_s, 2), "beam_per_s": round(beam, 1),
              "inprocess_per_s": round(inproc, 1),
              "inprocess_compute_only_per_s": round(n / compute_s, 1),
              "ratio": round(beam / inproc, 3)}
    if not any(a.startswith("--direct_running_mode") for a in BEAM_ARGS):
        # The same job with one worker process per core, for comparison with the default.
        mp_s = beam_job(1, ["--direct_running_mode=multi_processing"])
        result.update({"beam_multi_processing_s": round(mp_s, 2),
                       "beam_multi_processing_per_s": round(n / mp_s, 1),
                       "ratio_multi_processing": round(n / mp_s / inproc, 3)})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300,
                        help="fake episodes of 10 steps (300: ~3000 transitions, like the demo "
                             "collection of 200 scripted episodes)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="local Beam workers; 0 = cores")
    parser.add_argument("--workdir", default=None, help="kept if given; else a temporary dir")
    parser.add_argument("--only", choices=("shard", "relabel"), default=None,
                        help="measure one job (relabel reads the shard job's output, so shard "
                             "still runs first)")
    parser.add_argument("--skip-relabel", action="store_true", help="the same as --only shard")
    args, beam_args = parser.parse_known_args(argv)
    BEAM_ARGS[:] = beam_args  # any Beam option, e.g. --direct_running_mode=multi_threading
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = args.workdir or tempfile.mkdtemp(prefix="qtopt-bench-")
    try:
        files = _episodes(os.path.join(root, "episodes"), args.episodes, args.image_size)
        result = {"benchmark": "pipelines", "episodes": args.episodes, "beam_args": beam_args,
                  "image_size": args.image_size, "workers": args.workers or os.cpu_count(),
                  "cores": os.cpu_count()}
        shard_result = bench_shard(root, files, args.workers)
        if args.only != "relabel":
            result.update(shard_result)
        if not args.skip_relabel and args.only != "shard":
            result.update(bench_relabel(root, args.image_size, args.workers))
        print(json.dumps(result, sort_keys=True), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

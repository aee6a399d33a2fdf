"""``qtopt export``: episodes to a dataset other tools read, RLDS (TFDS) or LeRobot v3.

    qtopt export rlds    runs/demo/episodes/scripted -o runs/demo/export/rlds
    qtopt export lerobot 'gs://BUCKET/episodes/*/*.tfrecord.gz' -o gs://BUCKET/export/lerobot

EPISODES is a directory of ``qtopt collect`` output (its record files: names starting with ``_``
or ``.`` are skipped) or a glob, local or ``gs://``. Both formats are written by a Beam job
(``pipelines/formats/rlds.py``, ``pipelines/formats/lerobot.py``) that reads every file, accounts
for every episode (``records_in = records_out + records_dead_lettered``), stages its files under
``OUT/_staging/<run id>/`` and publishes them with a ``manifest.json`` written last, like the
other jobs. A rerun into a finished export of the same format replaces it (the same inputs give
the same dataset; files the new one lacks are removed); a directory holding anything else is
refused. How each format marks an episode's end: ``pipelines.formats.common``.

The command keeps the verb ``export`` that users know; the module is ``convert`` because in the
code an export is a trained policy's weights (``model.export``).
"""

from __future__ import annotations

import argparse
import json

from pipelines.formats.common import NAMESPACE, check_output, read_format_manifest
from pipelines.machinery import dataset, records, runner
from pipelines.machinery.episodes import expand_inputs, expected_counts
from pipelines.machinery.job import JobResult, add_max_dead_fraction
from pipelines.machinery.job import max_dead_fraction as allowance
from pipelines.machinery.options import add_config_arguments, config_from_args
from schemas.errors import UserError

FORMATS = ("rlds", "lerobot")
# The options that belong to one format: giving one to the other is an error, not ignored.
OPTIONS_OF = {"num_shards": "rlds", "episodes_per_file": "lerobot", "fps": "lerobot",
              "task": "lerobot"}


def format_module(fmt: str):
    """The format's module, imported only when asked for: each pulls in its own libraries."""
    if fmt == "rlds":
        from pipelines.formats import rlds
        return rlds
    from pipelines.formats import lerobot
    return lerobot


# ------------------------------------------------------------------------------------ inputs

def input_files(episodes: str) -> list[str]:
    """The episode files EPISODES names (a directory's record files, or a glob's matches); a
    one-line UserError naming it when there are none."""
    return [path for _source, path in expand_inputs([(None, episodes.rstrip("/"))])]


def first_episode(files: list[str]) -> dict | None:
    """The first readable episode of the inputs: the cell and image shape the export expects."""
    for path in files:
        for episode, _raw, _letter in records.read_episodes(path):
            if episode is not None:  # else damaged: the job dead-letters it
                return episode
            break
    return None


# ------------------------------------------------------------------------------------ output

# ---------------------------------------------------------------------------------- the job

# ------------------------------------------------------------------------------------ command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=tuple(FORMATS),
                        help="rlds: a TFDS/RLDS dataset (tfds.builder_from_directory); "
                             "lerobot: a LeRobot v3.0 dataset (parquet, PNG frames)")
    parser.add_argument("episodes", metavar="EPISODES",
                        help="episode files of qtopt collect: a directory or a glob, local or "
                             "gs://")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="rlds: TFRecord shards (default pipeline.num_shards; empty ones "
                             "are not written); a shard is gathered on one worker, so at scale "
                             "choose enough for one to fit its memory")
    parser.add_argument("--episodes-per-file", type=int, default=None,
                        help="lerobot: episodes per data parquet file (default 500); a file "
                             "is gathered on one worker")
    parser.add_argument("--fps", type=float, default=None,
                        help="lerobot: frames per second recorded in info.json and the "
                             "timestamps (default 10)")
    parser.add_argument("--task", default=None,
                        help="lerobot: the task every episode is filed under (default: 'grasp "
                             "an object from the bin and lift it')")
    add_max_dead_fraction(parser)
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    others = [name for name in OPTIONS_OF
              if getattr(args, name) is not None and OPTIONS_OF[name] != fmt]
    if others:
        raise UserError(f"--{others[0].replace('_', '-')} is an option of export "
                        f"{OPTIONS_OF[others[0]]}, not of export {fmt}")
    return export(config_from_args(args), fmt, args.episodes, args.output,
                  max_dead_fraction=args.max_dead_fraction, beam_args=args.beam_args,
                  **{name: getattr(args, name) for name in OPTIONS_OF}).status


def export(cfg, fmt: str, episodes: str, output: str, *, max_dead_fraction: float | None = None,
           beam_args=(), **format_options) -> JobResult:
    """Episodes (a collection directory or a glob) as a ``fmt`` dataset (rlds or lerobot) in
    ``output``; ``format_options``: that format's options (``OPTIONS_OF``)."""
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r}: choose from {', '.join(FORMATS)}")
    allowed = allowance(max_dead_fraction, cfg)
    module = format_module(fmt)
    args = argparse.Namespace(**{name: format_options.get(name) for name in OPTIONS_OF})
    out = output.rstrip("/")
    files = input_files(episodes)
    if out in {p.rsplit("/", 1)[0] for p in files}:
        raise UserError(f"--output {out} is where the episodes are: export into another "
                        "directory (a job never writes into its input)")
    check_output(out, fmt, module.ours)
    first = first_episode(files)
    if first is None:
        raise UserError(f"input {episodes}: no readable episode in {len(files)} file(s)")
    options = runner.pipeline_options(list(beam_args), cfg.pipeline.direct_num_workers,
                                      f"qtopt-export-{fmt}", local_mode="in_memory")
    runner.quiet_beam_logging()
    run_id = dataset.new_run_id()
    pipeline = runner.new_pipeline(options)
    extra = {"export": fmt, "created_by": f"qtopt export {fmt}", "input": episodes,
             "input_files": len(files)}
    module.build(pipeline, files, out, run_id, args, cfg, first,
                 expected_counts([(None, p) for p in files]), extra)
    print(f"export {fmt}: {len(files)} episode files -> {out} "
          f"(runner {runner.runner_name(options)})", flush=True)
    with runner.progress(f"export {fmt}"):
        result = runner.run_pipeline(pipeline)
    if runner.is_dry_run(pipeline.options):
        described = runner.describe_dry_run(pipeline, result)
        print(f"export {fmt}: dry run, nothing submitted: {json.dumps(described, sort_keys=True)}",
              flush=True)
        return JobResult("export", out, 0, {"dry_run": described})
    dataset.raise_refusal(out, run_id)
    manifest = read_format_manifest(out)
    summary = {"output": out, "export": fmt, "counts": manifest["counts"],
               "accounting": manifest["accounting"],
               "metrics": runner.counters(result, NAMESPACE)}
    print(json.dumps(summary, sort_keys=True), flush=True)
    return JobResult("export", out, dataset.dead_letter_status(f"export {fmt}", out, manifest,
                                                               allowed), summary)

"""``qtopt export``: episodes to a dataset other tools read, RLDS (TFDS) or LeRobot v3.

    qtopt export rlds    runs/demo/episodes/scripted -o runs/demo/export/rlds
    qtopt export lerobot 'gs://BUCKET/episodes/*/*.tfrecord.gz' -o gs://BUCKET/export/lerobot

EPISODES is a directory of ``qtopt collect`` output (its record files: names starting with ``_``
or ``.`` are skipped) or a glob, local or ``gs://``. Both formats are written by a Beam job
(``pipelines/export_rlds.py``, ``pipelines/export_lerobot.py``) that reads every file, accounts
for every episode (``records_in = records_out + records_dead_lettered``), stages its files under
``OUT/_staging/<run id>/`` and publishes them with a ``manifest.json`` written last, like the
other jobs. A rerun into a finished export of the same format replaces it (the same inputs give
the same dataset; files the new one lacks are removed); a directory holding anything else is
refused.

How an episode ended: the cell records the executed action, whose ``terminate`` component is 1
when the policy's terminate action or the scripted termination ended the episode; an episode cut
off by the step limit ends on an action without it. Our own records mark every end terminal (the
grasp is scored either way, so the Bellman target never bootstraps past it); both exports keep
the distinction: a step-limit end is an RLDS truncation (``is_last`` without ``is_terminal``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

from pipelines import dataset, records, runner
from pipelines.episodes import duplicate_ids, expand_inputs, expected_counts
from pipelines.jobs import JobResult, add_max_dead_fraction
from pipelines.jobs import max_dead_fraction as allowance
from pipelines.options import add_config_arguments, config_from_args
from schemas import cells as cell_rules
from schemas import fs, mdp
from schemas.datasets import manifest_json
from schemas.errors import UserError
from schemas.specs import SCHEMA_VERSION

NAMESPACE = "qtopt.export"
FORMAT = "qtopt-export/1"
FORMATS = {"rlds": "pipelines.export_rlds", "lerobot": "pipelines.export_lerobot"}
ENDED_BY_TERMINATION, ENDED_BY_STEP_LIMIT = "termination", "step_limit"
# The options that belong to one format: giving one to the other is an error, not ignored.
OPTIONS_OF = {"num_shards": "rlds", "episodes_per_file": "lerobot", "fps": "lerobot",
              "task": "lerobot"}


def ended_by(episode: dict) -> str:
    """``"termination"`` when the episode's last action terminated it, else ``"step_limit"``."""
    n = int(episode["num_steps"])
    if n > 0 and float(episode["action"][n - 1][mdp.TERMINATE]) > 0.5:
        return ENDED_BY_TERMINATION
    return ENDED_BY_STEP_LIMIT


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

def _previous(out: str) -> dict | None:
    """The manifest in ``out`` as written, None without one, {} if it is not JSON (so it is
    taken for some other dataset's)."""
    try:
        return manifest_json(out)
    except UserError:
        return {}


def check_output(out: str, fmt: str, ours) -> None:
    """Refuse an output directory that holds anything but an export of format ``fmt``.

    ``ours(name)``: whether a top-level name is one an export of ``fmt`` writes, so that a
    publication killed half-way (files moved, no manifest yet) can be rerun.
    """
    names = [fs.basename(p) for p in fs.listdir(out)]
    names = [n for n in names if n != dataset.STAGING and fs.TMP_MARKER not in n]
    if not names:
        return
    previous = _previous(out)
    if previous is not None:
        if previous.get("format") == FORMAT and previous.get("export") == fmt:
            return
        what = (f"a qtopt {previous.get('export')} export" if previous.get("format") == FORMAT
                else f"another dataset (manifest format {previous.get('format')!r})")
        raise UserError(f"output {out} holds {what}; export {fmt} into an empty or new "
                        "directory, or one holding an earlier export of the same format")
    stray = sorted(n for n in names if not (ours(n) or n == dataset.DEAD_LETTER))
    if stray:
        raise UserError(f"output {out} is not empty ({stray[0]} ...) and holds no qtopt export: "
                        "choose an empty or new directory")


def publish(out: str, run_id: str, names: list[str], manifest: dict) -> dict:
    """Move the staged files ``names`` (paths relative to the output, nested ones included) into
    place and write the manifest last; remove the files of the previous export that the new one
    lacks. Idempotent, so a runner may retry it."""
    staging = dataset.staging_dir(out, run_id)
    previous = _previous(out) or {}
    infos = []
    for name in names:
        src = fs.join(staging, name)
        infos.append({"name": name, "bytes": fs.size(src) if fs.exists(src) else
                      fs.size(fs.join(out, name))})
    manifest = {**manifest, "format": FORMAT, "schema_version": SCHEMA_VERSION,
                "run_id": run_id, "files": infos,
                "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fs.remove(fs.join(out, dataset.MANIFEST))
    for name in names:
        src, dst = fs.join(staging, name), fs.join(out, name)
        if fs.exists(src):
            if not fs.is_remote(dst):
                os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
            dataset._move(src, dst)  # noqa: SLF001  (the jobs' one way to move a staged file)
        elif not fs.exists(dst):
            raise RuntimeError(f"staged file {src} is missing: cannot publish {out}")
    keep = set(names)
    for info in previous.get("files", []) if previous.get("format") == FORMAT else []:
        if info.get("name") not in keep:
            fs.remove(fs.join(out, info["name"]))
    dataset.write_json(fs.join(out, dataset.MANIFEST), manifest)
    fs.remove(fs.join(out, dataset.STAGING), recursive=True)
    fs.remove_stale_temporaries(out)
    return manifest


def publish_export(fmt: str, out: str, run_id: str, names: list[str], letters: list,
                   counted: list, written: int, ids: list, manifest: dict) -> dict:
    """The end of either format's commit: stage the dead letters, check that every episode read
    was written or dead-lettered, and publish ``names`` with the format's ``manifest`` fields
    plus the cell, the accounting and the dead-letter file."""
    dataset.write_dead_letters(fs.join(dataset.staging_dir(out, run_id), dataset.DEAD_LETTER),
                               letters)
    acc = dataset.check_accounting(f"export {fmt}", out, dataset.accounting(
        "episodes", sum(counted), written, letters))
    cells = sorted({c for _i, _s, c, _p, _x in ids})
    return publish(out, run_id, names + [dataset.DEAD_LETTER],
                   {**manifest, "cell": cells[0] if cells else None, "accounting": acc,
                    "dead_letter": dataset.DEAD_LETTER})


def read_manifest(out: str) -> dict:
    manifest = _previous(out)
    if not manifest or manifest.get("format") != FORMAT:
        raise UserError(f"{out} holds no finished qtopt export (no manifest.json)")
    return manifest


# ---------------------------------------------------------------------------------- the job

def read_episodes(pipeline, files: list[str], expected: dict):
    """files -> decoded episodes (main output) and, tagged: ``dead`` letters, ``ids``
    (episode id, steps, cell, file, record index) and ``counted`` (records per file)."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    class ReadEpisodes(beam.DoFn):
        def __init__(self, expected):
            self.expected = expected
            self.episodes = Metrics.counter(NAMESPACE, "episodes_read")
            self.dead = Metrics.counter(NAMESPACE, "dead_lettered")

        def process(self, path):
            n = dead = 0
            for episode, raw, letter in records.read_episodes(path, self.expected.get(path)):
                if letter is not None:
                    self.dead.inc()
                    dead += letter["records"]
                    yield beam.pvalue.TaggedOutput("dead", letter)
                    continue
                n += 1
                self.episodes.inc()
                yield beam.pvalue.TaggedOutput("ids", (episode["episode_id"],
                                                       int(episode["num_steps"]),
                                                       episode["cell"], path, raw.index))
                yield episode
            yield beam.pvalue.TaggedOutput("counted", n + dead)

    return (pipeline
            | "Files" >> beam.Create(files)  # Create redistributes its elements itself
            | "Read episodes" >> beam.ParDo(ReadEpisodes(dict(expected)))
            .with_outputs("dead", "ids", "counted", main="episodes"))


def refusal(out: str, ids: list) -> str | None:
    """Why the episodes read cannot make one export (several cells, an id read twice), or None."""
    found: dict = {}
    for _id, _steps, cell, path, _index in sorted(ids, key=lambda t: (t[3], t[4])):
        found.setdefault(cell, path)
    try:
        cell_rules.one_cell(found, f"export {out}")
    except UserError as exc:
        return str(exc)
    dups = duplicate_ids([(i, path, index) for i, _s, _c, path, index in ids])
    if dups:
        episode_id = min(dups)
        (a, i), (b, j) = dups[episode_id][:2]
        return (f"export {out}: episode {episode_id} is in {a} (record {i}) and {b} (record {j});"
                f" {len(dups)} episode id(s) read more than once, nothing published")
    return None


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
    module = importlib.import_module(FORMATS[fmt])
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
    manifest = read_manifest(out)
    summary = {"output": out, "export": fmt, "counts": manifest["counts"],
               "accounting": manifest["accounting"],
               "metrics": runner.counters(result, NAMESPACE)}
    print(json.dumps(summary, sort_keys=True), flush=True)
    return JobResult("export", out, dataset.dead_letter_status(f"export {fmt}", out, manifest,
                                                               allowed), summary)

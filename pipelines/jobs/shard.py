"""``qtopt shard``: episodes to shuffled transition shards, a catalogue and a manifest.

    qtopt shard --input 'work/episodes/scripted/*.tfrecord.gz' \\
                --input online='work/episodes/online/*.tfrecord.gz' \\
                --output work/transitions/demo [--set pipeline.num_shards=8] [Beam options]

Each input is a glob (local or ``gs://``), optionally ``SOURCE=GLOB`` to file its episodes under
another source name than the one they carry. Every episode of T actions gives T transitions
(s_t, a_t, r_t, s_t+1, terminal). The shuffle is a function of the data, not of the runner: a
transition's place is the SHA-256 of (seed, episode id, step); its leading 8 bytes pick the shard
and the rest order the shard. The same inputs and seed therefore give byte-identical shards on
any runner, with any number of workers, in any order of arrival.

Episodes of different cells (``schemas.cells``: camera, image size, object scale, cell version)
are never mixed: the launcher looks at the first episode of each input directory before any
work, and the job checks every episode and publishes nothing when it finds a second cell. The
dataset's one cell goes into its manifest (``cell``) for the jobs downstream.

A shard is sorted in memory by the worker that writes it, so at scale choose
``pipeline.num_shards`` so that data size / shards fits a worker (paper scale: 4 TB over 10000
shards is 400 MB each).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.machinery import dataset, job, records, runner
from pipelines.machinery import episodes as episode_inputs
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.machinery.outputlock import output_lock
from schemas import cells as cell_rules
from schemas import codec, fs
from schemas.catalogue import catalogue_row, catalogue_table
from schemas.errors import UserError
from schemas.tfrecord_io import RecordWriter
from schemas.transitions import encoded_transitions

NAMESPACE = "qtopt.shard"
# Locally one process: Beam's worker-process and worker-thread modes lost transitions in
# measured runs (docs/pipelines.md, "Runners and options").
LOCAL_MODE = "in_memory"


# ----------------------------------------------------------------------------------- launcher

# ------------------------------------------------------------------------------- the element work

# Where an episode was read (file and record index), to drop all but the first copy of an id.
ORIGIN = "_origin"


def _origin(path: str, index: int) -> str:
    return f"{path}\x00{int(index)}"


def duplicate_message(out: str, dups: dict) -> str:
    episode_id = min(dups)
    (a, i), (b, j) = dups[episode_id][:2]
    where = f"{a} (record {i}) and {b} (record {j})" if a != b else f"{a} (records {i} and {j})"
    return (f"shard {out}: episode {episode_id} is in {where}; {len(dups)} episode id(s) read "
            "more than once, nothing published (pass --drop-duplicates to keep the first copy "
            "of each)")


def shuffle_key(seed: int, episode_id: str, step: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{episode_id}\x00{int(step)}".encode()).digest()


def shard_of(key: bytes, num_shards: int) -> int:
    return int.from_bytes(key[:8], "big") % num_shards


class ReadEpisodes(beam.DoFn):
    """(source, file) -> decoded episodes; damaged records to the 'dead' output, each
    episode's (id, file, index) to 'ids' and the file's record count to 'counted'."""

    def __init__(self, out, run_id, mark, expected):
        self.out, self.run_id, self.mark, self.expected = out, run_id, mark, expected
        self.records_in = Metrics.counter(NAMESPACE, "records_in")
        self.episodes = Metrics.counter(NAMESPACE, "episodes")
        self.dead = Metrics.counter(NAMESPACE, "dead_lettered")

    def process(self, item):
        source, path = item
        n, dead, cells = 0, 0, set()
        for episode, raw, letter in records.read_episodes(path, self.expected.get(path)):
            self.records_in.inc()
            if letter is not None:
                self.dead.inc()
                dead += letter["records"]
                yield beam.pvalue.TaggedOutput("dead", letter)
                continue
            if source:
                episode["source"] = source
            if episode["cell"] not in cells:
                cells.add(episode["cell"])
                yield beam.pvalue.TaggedOutput("cells", (episode["cell"], path))
            n += 1
            self.episodes.inc()
            episode[ORIGIN] = _origin(path, raw.index)
            yield beam.pvalue.TaggedOutput("ids", (episode["episode_id"], path, raw.index))
            yield episode
        yield beam.pvalue.TaggedOutput("counted", n + dead)
        if self.mark:
            dataset.mark_progress(self.out, self.run_id, "read",
                                  hashlib.sha1(path.encode()).hexdigest()[:12], n)


class ToTransitions(beam.DoFn):
    def __init__(self, seed, num_shards, gamma):
        self.seed, self.num_shards, self.gamma = seed, num_shards, gamma
        self.transitions = Metrics.counter(NAMESPACE, "transitions")

    def process(self, episode):
        # One element per shard the episode reaches instead of one per transition: fewer
        # for Beam to carry through the grouping (a third as many at 10 steps, 4 shards).
        by_shard: dict = {}
        for step, data in enumerate(encoded_transitions(episode, self.gamma)):
            key = shuffle_key(self.seed, episode["episode_id"], step)
            by_shard.setdefault(shard_of(key, self.num_shards), []).append((key, data))
            self.transitions.inc()
        yield from by_shard.items()


class WriteShard(beam.DoFn):
    """(shard, [[(key, bytes), ...], ...]) -> the shard file in staging, sorted by key."""

    def __init__(self, out, run_id, num_shards, mark):
        self.out, self.run_id, self.num_shards, self.mark = out, run_id, num_shards, mark

    def process(self, item):
        index, batches = item
        info = _write_shard(dataset.staging_dir(self.out, self.run_id),
                            dataset.shard_name(index, self.num_shards),
                            sorted(itertools.chain.from_iterable(batches)))
        if self.mark:
            dataset.mark_progress(self.out, self.run_id, "write", info["name"],
                                  info["records"])
        yield info


def _write_shard(staging: str, name: str, rows: list) -> dict:
    """One shard file in staging from (key, bytes) rows in their order; its manifest entry."""
    path = fs.join(staging, name)
    # ISA-L's gzip: zlib spent most of the job's time compressing (reproductions/README.md).
    with RecordWriter(path, fast=True) as w:
        for _key, data in rows:
            w.write(data)
    return {"name": name, "records": len(rows), "bytes": fs.size(path)}


def _write_empty_shards(infos: list, staging: str, num_shards: int) -> list:
    """Write the shards that no transition fell into (small datasets, many shards); their infos."""
    have = {i["name"] for i in infos}
    names = (dataset.shard_name(index, num_shards) for index in range(num_shards))
    return [_write_shard(staging, name, []) for name in names if name not in have]


def _write_catalogue(rows: list, staging: str) -> dict:
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: r["episode_id"])
    with fs.atomic_write(fs.join(staging, dataset.CATALOGUE), "wb") as f:
        pq.write_table(catalogue_table(rows), f)
    by_source: dict = {}
    for r in rows:
        s = by_source.setdefault(r["source"], {"episodes": 0, "transitions": 0, "successes": 0})
        s["episodes"] += 1
        s["transitions"] += int(r["num_steps"])
        s["successes"] += int(bool(r["success"]))
    ids = [r["episode_id"] for r in rows]
    duplicates = sorted({i for i, j in zip(ids, ids[1:]) if i == j})
    return {"episodes": len(rows), "by_source": by_source, "duplicate_episode_ids": duplicates}


def build(pipeline, files: list[tuple[str | None, str]], out: str, run_id: str,
          num_shards: int, seed: int, manifest_extra: dict, gamma: float,
          mark_progress: bool = False,
          expected: dict | None = None, drop_duplicates: bool = False,
          one_process: bool = False):
    """Add the shard job to ``pipeline``: files -> staged shards -> commit (manifest last).

    ``expected``: {file: episodes it holds} where known (``expected_counts``). An episode id
    read twice refuses the job, or with ``drop_duplicates`` keeps the copy read first (by
    file name and record index). ``one_process``: the runner has no workers to spread the
    files over (local ``in_memory``), so they are not redistributed."""
    staging = dataset.staging_dir(out, run_id)
    read = (pipeline
            # Create redistributes its elements itself (a grouping: one more stage) unless told.
            | "Files" >> beam.Create(files, reshuffle=not one_process)
            | "Read episodes" >> beam.ParDo(ReadEpisodes(out, run_id, mark_progress,
                                                         dict(expected or {})))
            .with_outputs("dead", "cells", "ids", "counted", main="episodes"))
    episodes = read.episodes
    if drop_duplicates:
        # Every copy after the first of an id, by origin; only built when asked for, since the
        # episodes then wait for all ids to be read.
        later = (read.ids
                 | "Key ids" >> beam.Map(lambda t: (t[0], (t[1], t[2])))
                 | "Group ids" >> beam.GroupByKey()
                 | "Later copies" >> beam.FlatMap(
                     lambda kv: [(_origin(p, i), True) for p, i in sorted(kv[1])[1:]]))
        episodes = (episodes
                    | "Drop later copies" >> beam.Filter(
                        lambda e, drop: e[ORIGIN] not in drop, beam.pvalue.AsDict(later)))

    # No Flatten into the GroupByKey (an earlier version flattened a (shard, None) per index in,
    # so that empty shards got written): Beam's FnApiRunner in multi_processing mode dropped
    # 4-27% of the grouped transitions that way at 3000 episodes (1.2 GB); without the Flatten
    # it loses nothing. Commit writes the shards no transition fell into instead.
    shards = (episodes
              | "To transitions" >> beam.ParDo(ToTransitions(seed, num_shards, gamma))
              | "Group by shard" >> beam.GroupByKey()
              | "Write shards" >> beam.ParDo(WriteShard(out, run_id, num_shards, mark_progress)))

    # Each episode's catalogue row and image shape go to commit as one side input, which writes
    # the catalogue: no stages of their own (a stage's fixed costs in Beam, DoFn set-up and a
    # sampler thread per bundle, are a sizeable share of a small job).
    rows = (episodes
            | "Catalogue rows" >> beam.Map(
                lambda e: (catalogue_row(e), tuple(int(v) for v in e["image_shape"]))))

    def commit(_, infos, rows, letters, cells, ids, counted):
        found: dict = {}
        for cell, path in sorted(cells):
            found.setdefault(cell, path)
        try:
            cell = cell_rules.one_cell(found, f"shard {out}")
        except UserError as exc:
            return dataset.refuse(out, run_id, str(exc))
        dups = episode_inputs.duplicate_ids(ids)
        if dups and not drop_duplicates:
            return dataset.refuse(out, run_id, duplicate_message(out, dups))
        dropped = sum(len(w) - 1 for w in dups.values())
        infos = sorted(list(infos) + _write_empty_shards(infos, staging, num_shards),
                       key=lambda i: i["name"])
        cat = _write_catalogue([row for row, _shape in rows], staging)
        image_shapes = {shape for _row, shape in rows}
        # Two branches of the job counted the same episodes; if they disagree, the runner lost
        # or repeated data and nothing is published.
        written = sum(i["records"] for i in infos)
        expected = sum(s["transitions"] for s in cat["by_source"].values())
        if written != expected or len(infos) != num_shards:
            raise RuntimeError(f"shard job for {out}: wrote {written} transitions in "
                               f"{len(infos)} shards, but its episodes hold {expected} in "
                               f"{num_shards}; not published")
        dataset.write_dead_letters(fs.join(staging, dataset.DEAD_LETTER), letters)
        acc = dataset.check_accounting("shard", out, dataset.accounting(
            "episodes", sum(counted), cat["episodes"], letters,
            {"duplicate_episodes": dropped} if drop_duplicates else None))
        manifest = {
            **manifest_extra,
            "kind": "transition",
            **({"cell": cell} if cell else {}),
            "num_shards": num_shards,
            "shuffle_seed": seed,
            # The discount of every transition's return_to_go (targets.gamma at shard time).
            "return_gamma": gamma,
            "image_shapes": sorted(list(s) for s in image_shapes),
            "counts": {"episodes": cat["episodes"],
                       "transitions": sum(i["records"] for i in infos),
                       "dead_lettered": len(letters),
                       "by_source": cat["by_source"],
                       "duplicate_episode_ids": len(cat["duplicate_episode_ids"])},
            "accounting": acc,
            "files": infos,
            "catalogue": dataset.CATALOGUE,
            "dead_letter": dataset.DEAD_LETTER,
        }
        names = [i["name"] for i in infos] + [dataset.CATALOGUE, dataset.DEAD_LETTER]
        return dataset.commit(out, run_id, names, manifest)

    AsList = beam.pvalue.AsList  # noqa: N806
    return (pipeline
            | "Commit trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, AsList(shards), AsList(rows), AsList(read.dead),
                                   AsList(read.cells), AsList(read.ids), AsList(read.counted)))


# ------------------------------------------------------------------------------------ command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", action="append", required=True,
                        metavar="[SOURCE=]GLOB|DIR",
                        help="episode files (local or gs://), or a collection directory; "
                             "repeat for several sources")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR",
                        help="dataset directory, e.g. work/transitions/demo")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="override pipeline.num_shards")
    parser.add_argument("--seed", type=int, default=None, help="override pipeline.shuffle_seed")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="keep the first copy (by file name, then record) of an episode id "
                             "read more than once, instead of refusing the job")
    job.add_max_dead_fraction(parser)
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def shard(cfg, inputs: list[str], out: str, *, num_shards: int | None = None,
          seed: int | None = None, drop_duplicates: bool = False,
          max_dead_fraction: float | None = None, beam_args=()) -> job.JobResult:
    """Episode files (``[SOURCE=]GLOB`` or directories) to a published transition dataset."""
    allowed = job.max_dead_fraction(max_dead_fraction, cfg)
    pcfg = cfg.pipeline
    num_shards = num_shards if num_shards is not None else pcfg.num_shards
    seed = seed if seed is not None else pcfg.shuffle_seed
    if num_shards < 1:
        raise UserError(f"--num-shards must be >= 1, got {num_shards}")
    parsed = episode_inputs.parse_inputs(inputs)
    files = episode_inputs.expand_inputs(parsed)
    cell_rules.one_cell(episode_inputs.first_cells(files), f"shard {out}")
    out = out.rstrip("/")
    options = runner.pipeline_options(list(beam_args), pcfg.direct_num_workers, "qtopt-shard",
                                      LOCAL_MODE)
    with output_lock(out, "shard", runner.is_dry_run(options)):
        return execute(options, files, out, num_shards, seed,
                       {"inputs": [{"source": s, "glob": g} for s, g in parsed],
                        "input_files": len(files), "created_by": "qtopt shard"},
                       cfg.targets.gamma, expected=episode_inputs.expected_counts(files),
                       drop_duplicates=drop_duplicates, max_dead_fraction=allowed)


def run(args: argparse.Namespace) -> int:
    return shard(config_from_args(args), args.input, args.output, num_shards=args.num_shards,
                 seed=args.seed, drop_duplicates=args.drop_duplicates,
                 max_dead_fraction=args.max_dead_fraction, beam_args=args.beam_args).status


def execute(options, files, out, num_shards, seed, manifest_extra, gamma, expected=None,
            drop_duplicates=False, max_dead_fraction=0.0) -> job.JobResult:
    runner.quiet_beam_logging()
    run_id = dataset.new_run_id()
    local = runner.is_local(options)
    pipeline = runner.new_pipeline(options)
    build(pipeline, files, out, run_id, num_shards, seed, manifest_extra, gamma,
          mark_progress=local,
          expected=expected, drop_duplicates=drop_duplicates,
          one_process=local and runner.running_mode(options) == "in_memory")

    seen: dict = {}

    def poll():
        c = dataset.progress_counts(out, run_id, seen)
        r, w = c.get("read", (0, 0)), c.get("write", (0, 0))
        return r[0], f"{r[1]} episodes read, {w[0]}/{num_shards} shards written"

    print(f"shard: {len(files)} episode files -> {out} ({num_shards} shards, "
          f"runner {runner.runner_name(options)})", flush=True)
    with runner.progress("shard", poll if local else None, total=len(files), unit="files"):
        result = runner.run_pipeline(pipeline)
    if not runner.is_dry_run(pipeline.options):
        dataset.raise_refusal(out, run_id)
    return job.report(pipeline, result, out, NAMESPACE, "shard", max_dead_fraction)

"""``qtopt subsample``: a stable fraction of a dataset's episodes, for dataset-size studies.

    qtopt subsample --input work/transitions/demo --fraction 0.25 --output work/transitions/demo-25

An episode is kept when a salted hash of its id, read as a number in [0, 1), is below the
fraction. The same salt therefore nests the subsets (the 25% set is inside the 55% set), keeps
every transition of a kept episode, and gives the same answer on any runner. Input shard i
becomes output shard i with its order kept, so the shuffle of ``qtopt shard`` carries over.
Works on transition and labelled datasets alike; the catalogue is filtered the same way.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.machinery import dataset, records, runner
from pipelines.machinery.job import add_max_dead_fraction, report
from pipelines.machinery.job import max_dead_fraction as allowance
from pipelines.machinery.options import add_config_arguments, config_from_args
from schemas import fs
from schemas.errors import RecordError, UserError
from schemas.tfrecord_io import RecordWriter

NAMESPACE = "qtopt.subsample"


def episode_fraction(episode_id: str, seed: int) -> float:
    """Where an episode falls in [0, 1); keep it when this is below the fraction."""
    digest = hashlib.sha256(f"subsample\x00{seed}\x00{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def keep(episode_id: str, fraction: float, seed: int) -> bool:
    return episode_fraction(episode_id, seed) < fraction


@dataclass(frozen=True)
class FilterPlan:
    """What every subsample worker needs."""

    out: str
    run_id: str
    kinds: tuple
    count: int                  # shards, in and out
    expected: dict              # {input shard: records it holds}
    fraction: float
    seed: int
    mark_progress: bool


class FilterShard(beam.DoFn):
    """(index, input shard) -> the kept records as shard ``index`` in staging."""

    def __init__(self, plan: FilterPlan):
        self.plan = plan
        self.records_in = Metrics.counter(NAMESPACE, "records_in")
        self.kept = Metrics.counter(NAMESPACE, "kept")
        self.dead = Metrics.counter(NAMESPACE, "dead_lettered")

    def process(self, item):
        plan, (index, path) = self.plan, item
        staging = dataset.staging_dir(plan.out, plan.run_id)
        name = dataset.shard_name(index, plan.count)
        n = dead = dead_records = left = 0
        with RecordWriter(fs.join(staging, name)) as w:
            for raw in records.read_counted(path, plan.expected.get(path)):
                self.records_in.inc()
                if isinstance(raw, dict):
                    self.dead.inc()
                    dead += 1
                    dead_records += raw["records"]
                    yield beam.pvalue.TaggedOutput("dead", raw)
                    continue
                try:
                    rec = records.decode_as(raw, plan.kinds)
                except RecordError as exc:
                    self.dead.inc()
                    dead += 1
                    dead_records += 1
                    yield beam.pvalue.TaggedOutput("dead",
                                                   records.letter_from_error(exc, "decode"))
                    continue
                if keep(rec["episode_id"], plan.fraction, plan.seed):
                    w.write(raw.data)
                    n += 1
                    self.kept.inc()
                else:
                    left += 1
        if plan.mark_progress:
            dataset.mark_progress(plan.out, plan.run_id, "write", name, n)
        yield {"name": name, "records": n, "dead_lettered": dead,
               "records_in": n + left + dead_records, "not_selected": left,
               "bytes": fs.size(fs.join(staging, name))}


def build(pipeline, src: str, manifest_in: dict, out: str, run_id: str, fraction: float,
          seed: int, mark_progress: bool = False):
    """Add the subsample job to ``pipeline``: shards -> filtered shards in staging -> commit."""
    staging = dataset.staging_dir(out, run_id)
    shards = [(i, p) for i, p in enumerate(dataset.shard_paths(src, manifest_in))]
    count = len(shards)
    plan = FilterPlan(out=out, run_id=run_id, kinds=(manifest_in["kind"],), count=count,
                      expected=dataset.file_records(src, manifest_in), fraction=fraction,
                      seed=seed, mark_progress=mark_progress)

    parts = (pipeline
             | "Shards" >> beam.Create(shards)  # Create redistributes its elements itself
             | "Filter shards" >> beam.ParDo(FilterShard(plan)).with_outputs("dead",
                                                                           main="files"))

    def commit(_, infos, letters):
        infos = dataset.check_shard_outputs("subsample", out, infos, letters, count)
        acc = dataset.shard_accounting(
            "subsample", out, "transitions", infos, letters,
            {"not_selected": sum(i["not_selected"] for i in infos)})
        infos = [{k: v for k, v in i.items() if k not in ("records_in", "not_selected")}
                 for i in infos]
        dataset.write_dead_letters(fs.join(staging, dataset.DEAD_LETTER), letters)
        names = [i["name"] for i in infos] + [dataset.DEAD_LETTER]
        counts = {"transitions": sum(i["records"] for i in infos), "dead_lettered": len(letters)}
        if manifest_in.get("catalogue"):
            counts.update(_filter_catalogue(fs.join(src, manifest_in["catalogue"]),
                                            fs.join(staging, dataset.CATALOGUE), fraction, seed))
            names.append(dataset.CATALOGUE)
        manifest = {key: manifest_in[key] for key in ("kind", "cell", "image_shapes",
                                                      "num_shards", "shuffle_seed",
                                                      "return_gamma", "target_version")
                    if key in manifest_in}
        manifest.update({"created_by": "qtopt subsample", "subsample_of": src,
                         "fraction": fraction, "subsample_seed": seed, "counts": counts,
                         "accounting": acc,
                         "files": infos, "dead_letter": dataset.DEAD_LETTER})
        if dataset.CATALOGUE in names:
            manifest["catalogue"] = dataset.CATALOGUE
        return dataset.commit(out, run_id, names, manifest)

    return (pipeline
            | "Commit trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, beam.pvalue.AsList(parts.files),
                                   beam.pvalue.AsList(parts.dead)))


def _filter_catalogue(src: str, dst: str, fraction: float, seed: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open_file(src, "rb") as f:
        table = pq.read_table(f)
    mask = [keep(i, fraction, seed) for i in table.column("episode_id").to_pylist()]
    table = table.filter(pa.array(mask, pa.bool_()))
    with fs.atomic_write(dst, "wb") as f:
        pq.write_table(table, f)
    by_source: dict = {}
    for s in table.column("source").to_pylist():
        by_source[s] = by_source.get(s, 0) + 1
    return {"episodes": table.num_rows, "episodes_by_source": by_source}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", required=True, metavar="DIR",
                        help="a complete dataset (from qtopt shard, relabel or subsample)")
    parser.add_argument("--fraction", type=float, required=True,
                        help="share of episodes to keep, in (0, 1]")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR")
    parser.add_argument("--seed", type=int, default=None,
                        help="salt of the hash (default pipeline.shuffle_seed); the same salt "
                             "nests the subsets")
    add_max_dead_fraction(parser)
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def subsample(cfg, input_dir: str, fraction: float, output: str, *, seed: int | None = None,
              max_dead_fraction: float | None = None, beam_args=()):
    """A stable, nested ``fraction`` of ``input_dir``'s episodes as a dataset in ``output``."""
    allowed = allowance(max_dead_fraction, cfg)
    pcfg = cfg.pipeline
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    seed = seed if seed is not None else pcfg.shuffle_seed
    src, out = input_dir.rstrip("/"), output.rstrip("/")
    if src == out:
        raise UserError("--output must differ from --input (a job never rewrites its input)")
    manifest_in = dataset.read_dataset_manifest(src)
    options = runner.pipeline_options(list(beam_args), pcfg.direct_num_workers, "qtopt-subsample")
    runner.quiet_beam_logging()
    run_id = dataset.new_run_id()
    local = runner.is_local(options)
    pipeline = runner.new_pipeline(options)
    build(pipeline, src, manifest_in, out, run_id, fraction, seed, mark_progress=local)
    total = len(manifest_in["files"])

    seen: dict = {}

    def poll():
        w = dataset.progress_counts(out, run_id, seen).get("write", (0, 0))
        return w[0], f"{w[1]} records kept"

    print(f"subsample: {src} -> {out} ({fraction:g} of episodes, salt {seed})", flush=True)
    with runner.progress("subsample", poll if local else None, total=total, unit="shards"):
        result = runner.run_pipeline(pipeline)
    return report(pipeline, result, out, NAMESPACE, "subsample", allowed)


def run(args: argparse.Namespace) -> int:
    return subsample(config_from_args(args), args.input, args.fraction, args.output,
                     seed=args.seed, max_dead_fraction=args.max_dead_fraction,
                     beam_args=args.beam_args).status

"""``qtopt relabel``: the paper's Bellman updater (section 4.3, appendix F.4) as a batch job.

    qtopt relabel --input work/transitions/demo --export work/exports \\
                  --output work/labelled --epoch 3 [Beam options]

Reads one or more transition datasets and an export (``model.export``: the Polyak copy theta_1
and the lagged copy theta_2), and writes ``<output>/epoch-K/``: every transition with its
Bellman target, the CEM argmax action at s' and the export it came from (``target``,
``next_action``, ``target_version``). Where the paper's 1000 updater jobs label a ring buffer
continuously with whatever target network each last loaded, here every transition of an epoch is
labelled with the same export, so the target lag is one epoch, known and recorded.

The maths is ``model.targets.compute_targets``; this module only moves records to it in batches.
Each worker process loads the export once (held in a ``shared.Shared``) and
relabels whole shards: it reads a shard, labels it in fixed chunks of
``pipeline.relabel_batch_size`` transitions and writes the labelled shard, so no record crosses
processes (at paper scale the labelled data never goes through a shuffle). Chunks are cut in
reading order and each gets its own CEM seed from its position, so a rerun gives the same labels
whatever the runner. Parallelism is per shard: give the job at least as many shards as workers.

Input shard j (inputs in the order given) becomes output shard j, in the same order, so the
shuffle of ``qtopt shard`` carries over. Damaged records go to ``dead-letter.jsonl`` with their
file and offset, and ``records in = labelled + dead-lettered``. A missing, half-written or
incompatible export (image size, or trained on another cell than the inputs), or inputs of two
cells, are refused before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from pipelines.machinery import dataset, records, runner
from pipelines.machinery.job import add_max_dead_fraction, report
from pipelines.machinery.job import max_dead_fraction as allowance
from pipelines.machinery.options import add_config_arguments, config_from_args
from pipelines.machinery.outputlock import output_lock
from schemas import cells as cell_rules
from schemas import codec, fs
from schemas.errors import RecordError, UserError
from schemas.rundirs import epoch_dir, epoch_of
from schemas.specs import STATE_SCALARS
from schemas.tfrecord_io import RecordWriter

NAMESPACE = "qtopt.relabel"
# Locally the job runs in one process (pipelines.machinery.runner): the work is TensorFlow's,
# whose thread
# pool already uses every core, and worker processes would each pay TensorFlow's import, the
# export's load and CEM's tracing (10-15 s) before their first chunk.
LOCAL_MODE = "in_memory"
TARGET_SCALE = 1e6  # Beam distributions hold integers: targets are counted in millionths
# What compute_targets reads from a transition.
MODEL_INPUTS = ("next_observation/image",) + tuple(
    f"next_observation/{name}" for name in STATE_SCALARS) + ("reward", "is_terminal",
                                                            "return_to_go")


def latest_epoch(root: str) -> Optional[int]:
    """The highest K with a complete ``<root>/epoch-K``, or None."""
    best = None
    for path in fs.listdir(root):
        k = epoch_of(path)
        if k is not None and fs.exists(fs.join(path, dataset.MANIFEST)):
            best = max(best or 0, k)
    return best


def chunk_seed(shard: int, first_record: int) -> int:
    digest = hashlib.sha256(f"relabel\x00{shard}\x00{first_record}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def stack_inputs(records_: Sequence[dict]) -> dict:
    return {name: np.stack([np.asarray(r[name]) for r in records_]) for name in MODEL_INPUTS}


def load_target_export(export_path: str, intra_op_threads: Optional[int] = None):
    """The export's target copies (Polyak and lagged), as a worker process holds them once in a
    ``shared.Shared``; its TensorFlow threads capped first when asked."""
    import tensorflow as tf

    if intra_op_threads:
        try:  # only possible before TensorFlow's runtime starts in this process
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        except RuntimeError:
            pass
    from model.export import load_export

    return load_export(export_path, copies=("polyak", "lagged"))


def input_cell(manifests: Sequence[tuple[str, dict]]) -> str:
    """The one cell every input dataset was made by; UserError if they mix cells."""
    found: dict = {}
    for src, manifest in manifests:
        found.setdefault(cell_rules.of_manifest(manifest), src)
    return cell_rules.one_cell(found, "relabel")


def check_export(export_path: str, manifests: Sequence[tuple[str, dict]]):
    """Load the export on the launcher and check it fits every input; UserError otherwise."""
    from model.export import load_export

    export = load_export(export_path, copies=("polyak", "lagged"))
    for src, manifest in manifests:
        for shape in manifest.get("image_shapes") or []:
            export.check_image_shape(tuple(shape), f"dataset {src}")
        # Targets from a Q-function of another cell's images would be mixed into this one's.
        cell = cell_rules.of_manifest(manifest)
        if export.cell != cell:
            raise UserError(f"export {export.path} was trained on {export.cell} but dataset "
                            f"{src} was made by {cell}; relabel it with an export trained on "
                            "that cell")
    return export


def target_version(export) -> str:
    return fs.basename(export.path)


class RelabelShard(beam.DoFn):
    """(j, input shard) -> labelled shard j in staging, read and written chunk by chunk.

    A shard never leaves the worker that reads it: only file names and dead letters cross
    processes. Chunks of ``chunk_size`` records are cut in reading order, so chunk k of shard
    j has the same records and the same CEM seed on any runner.
    """

    def __init__(self, export_path, cem_config, target_config, out, run_id, count,
                 chunk_size, version, intra_op_threads=None, mark_progress=False,
                 expected=None):
        self.export_path, self.cem_config, self.target_config = (export_path, cem_config,
                                                                 target_config)
        self.out, self.run_id, self.count = out, run_id, count
        self.chunk_size, self.version = chunk_size, version
        self.intra_op_threads, self.mark_progress = intra_op_threads, mark_progress
        self.expected = dict(expected or {})
        self._shared = shared.Shared()
        self.records_in = Metrics.counter(NAMESPACE, "records_in")
        self.labelled = Metrics.counter(NAMESPACE, "labelled")
        self.dead = Metrics.counter(NAMESPACE, "dead_lettered")
        self.target = Metrics.distribution(NAMESPACE, "target_x1e6")

    def setup(self):
        self.export = self._shared.acquire(
            lambda: load_target_export(self.export_path, self.intra_op_threads),
            tag=self.export_path)

    def process(self, item):
        shard, path = item
        name = dataset.shard_name(shard, self.count)
        staged = fs.join(dataset.staging_dir(self.out, self.run_id), name)
        letters, written = [], 0
        with RecordWriter(staged) as writer:
            chunk = []
            for raw in records.read_counted(path, self.expected.get(path)):
                self.records_in.inc()
                if isinstance(raw, dict):
                    letters.append(raw)
                    continue
                try:
                    chunk.append((raw, records.decode_as(raw, ("transition",))))
                except RecordError as exc:
                    letters.append(records.letter_from_error(exc, "decode"))
                    continue
                if len(chunk) == self.chunk_size:
                    written += self._label(shard, chunk, writer, letters)
                    chunk = []
            if chunk:
                written += self._label(shard, chunk, writer, letters)
        self.dead.inc(len(letters))
        for letter in letters:
            yield beam.pvalue.TaggedOutput("dead", letter)
        yield {"name": name, "records": written, "dead_lettered": len(letters),
               "records_in": written + records.dead_records(letters),
               "bytes": fs.size(staged)}

    def _label(self, shard, chunk, writer, letters) -> int:
        from model.targets import compute_targets

        first = chunk[0][0].index
        try:
            targets, actions = compute_targets(
                self.export, stack_inputs([rec for _, rec in chunk]), self.cem_config,
                self.target_config, seed=chunk_seed(shard, first))
        except UserError as exc:  # e.g. an image size the export does not take
            letters.extend(records.dead_letter(raw.path, raw.index, raw.offset, str(exc),
                                               "label") for raw, _ in chunk)
            return 0
        n = 0
        for (raw, rec), target, action in zip(chunk, targets, actions):
            rec.update(kind="labelled_transition", target=np.float32(target),
                       next_action=np.asarray(action, np.float32),
                       target_version=self.version)
            try:
                data = codec.encode(rec)
            except RecordError as exc:  # a non-finite target: this record, not the job
                letters.append(records.letter_from_error(exc, "label", raw.path, raw.index,
                                                         raw.offset))
                continue
            writer.write(data)
            n += 1
            self.labelled.inc()
            self.target.update(int(round(float(target) * TARGET_SCALE)))
        if self.mark_progress:
            dataset.mark_progress(self.out, self.run_id, "label", f"{shard}-{first}",
                                  len(chunk))
        return n


def build(pipeline, shards: list[tuple[int, str]], out: str, run_id: str, target_model: dict,
          chunk_size: int, version: str, manifest_extra: dict, mark_progress: bool = False,
          expected: dict | None = None):
    """Add the relabel job to ``pipeline``: shards -> labelled shards in staging -> commit.

    ``target_model``: ``export_path``, ``cem_config``, ``target_config`` and optionally
    ``intra_op_threads`` (TensorFlow threads per worker process). ``expected``: {shard path:
    records} from the input manifests, so a shard that lost records is dead-lettered for them.
    """
    count = len(shards)
    staging = dataset.staging_dir(out, run_id)
    parts = (pipeline
             | "Shards" >> beam.Create(shards)  # Create redistributes its elements itself
             | "Relabel shards" >> beam.ParDo(RelabelShard(
                 out=out, run_id=run_id, count=count, chunk_size=chunk_size, version=version,
                 mark_progress=mark_progress, expected=expected, **target_model))
             .with_outputs("dead", main="files"))

    def commit(_, infos, letters):
        infos = dataset.check_shard_outputs("relabel", out, infos, letters, count)
        acc = dataset.shard_accounting("relabel", out, "transitions", infos, letters)
        infos = [{k: v for k, v in i.items() if k != "records_in"} for i in infos]
        dataset.write_dead_letters(fs.join(staging, dataset.DEAD_LETTER), letters)
        manifest = {
            **manifest_extra,
            "kind": "labelled_transition",
            "target_version": version,
            "num_shards": count,
            "counts": {"transitions": sum(i["records"] for i in infos),
                       "dead_lettered": len(letters)},
            "accounting": acc,
            "files": infos,
            "dead_letter": dataset.DEAD_LETTER,
        }
        return dataset.commit(out, run_id, [i["name"] for i in infos] + [dataset.DEAD_LETTER],
                              manifest)

    return (pipeline
            | "Commit trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, beam.pvalue.AsList(parts.files),
                                   beam.pvalue.AsList(parts.dead)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", action="append", required=True, metavar="DIR|GLOB",
                        help="transition dataset from qtopt shard (a directory, or a glob of "
                             "them); repeat to mix several")
    parser.add_argument("--export", "-e", required=True, metavar="PATH",
                        help="an export-* directory, or an exports/ directory (its latest "
                             "complete export)")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR",
                        help="labelled root: the job writes DIR/epoch-K")
    parser.add_argument("--epoch", type=int, required=True, metavar="K",
                        help="epoch number; rerunning an epoch replaces it")
    add_max_dead_fraction(parser)
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def read_inputs(inputs: Sequence[str]) -> tuple[list[tuple[str, dict]], list[tuple[int, str]]]:
    """Input manifests and the global shard list; UserError for an incomplete or wrong input.
    An input is a dataset directory, or a glob of them (``runs/*/transitions/round-*``)."""
    manifests, shards = [], []
    for src in dataset.expand_dirs(inputs):
        manifest = dataset.read_dataset_manifest(src)
        if manifest.get("kind") != "transition":
            raise UserError(f"dataset {src} holds {manifest.get('kind')} records; relabel reads "
                            "transition datasets (from qtopt shard or subsample)")
        manifests.append((src, manifest))
        shards.extend(dataset.shard_paths(src, manifest))
    return manifests, list(enumerate(shards))


def check_returns(targets, manifests: Sequence[tuple[str, dict]]) -> None:
    """UserError unless every input's returns were discounted as ``targets`` asks, when the
    target rule uses them (``targets.returns``)."""
    if targets.returns == "none":
        return
    for src, manifest in manifests:
        gamma = manifest.get("return_gamma")
        if gamma is None:
            raise UserError(f"dataset {src} was sharded before transitions held their returns; "
                            f"shard it again to relabel with targets.returns={targets.returns}")
        if abs(float(gamma) - targets.gamma) > 1e-9:
            raise UserError(f"dataset {src} holds returns discounted with gamma {gamma} but "
                            f"targets.gamma is {targets.gamma}: shard it again with --set "
                            f"targets.gamma={targets.gamma}")


def relabel(cfg, inputs: Sequence[str], export: str, output: str, epoch: int, *,
            max_dead_fraction: float | None = None, beam_args=()):
    """Transition datasets to ``output/epoch-K``, labelled with targets from ``export`` (an
    export directory, or an exports/ directory: its latest complete export)."""
    allowed = allowance(max_dead_fraction, cfg)
    if epoch < 0:
        raise UserError(f"--epoch must be >= 0, got {epoch}")
    manifests, shards = read_inputs(inputs)
    out = epoch_dir(output.rstrip("/"), epoch)
    if any(out == src for src, _ in manifests):
        raise UserError("--output must differ from --input (a job never rewrites its input)")
    cell = input_cell(manifests)
    check_returns(cfg.targets, manifests)
    runner.quiet_beam_logging()
    found = check_export(export, manifests)
    version = target_version(found)
    options = runner.pipeline_options(list(beam_args), cfg.pipeline.direct_num_workers,
                                      "qtopt-relabel", LOCAL_MODE)
    target_model = {"export_path": found.path, "cem_config": cfg.cem,
                    "target_config": cfg.targets,
                    "intra_op_threads": runner.threads_per_worker(options)}
    extra = {"created_by": "qtopt relabel", "cell": cell, "epoch": epoch,
             "inputs": [s for s, _ in manifests],
             "export": found.path, "export_step": found.step, "cem": vars_of(cfg.cem),
             "targets": vars_of(cfg.targets),
             "image_shapes": sorted({tuple(s) for _, m in manifests
                                     for s in m.get("image_shapes") or []})}
    expected = {}
    for src, manifest in manifests:
        expected.update(dataset.file_records(src, manifest))
    with output_lock(out, "relabel", runner.is_dry_run(options)):
        return execute(options, shards, out, target_model, cfg.pipeline.relabel_batch_size,
                       version, extra, sum(m["counts"]["transitions"] for _, m in manifests),
                       expected, allowed)


def run(args: argparse.Namespace) -> int:
    return relabel(config_from_args(args), args.input, args.export, args.output, args.epoch,
                   max_dead_fraction=args.max_dead_fraction, beam_args=args.beam_args).status


def vars_of(section) -> dict:
    return dataclasses.asdict(section)


def execute(options, shards, out, target_model, chunk_size, version, extra, total=None,
            expected=None, max_dead_fraction=0.0):
    run_id = dataset.new_run_id()
    local = runner.is_local(options)
    pipeline = runner.new_pipeline(options)
    build(pipeline, shards, out, run_id, target_model, chunk_size, version, extra,
          mark_progress=local, expected=expected)

    seen: dict = {}

    def poll():
        n = dataset.progress_counts(out, run_id, seen).get("label", (0, 0))[1]
        # The first chunk waits for every worker to import TensorFlow and load the export.
        return n, "" if n else "workers loading the export"

    with runner.progress("relabel", poll if local else None, total=total, unit="transitions"):
        result = runner.run_pipeline(pipeline)
    return report(pipeline, result, out, NAMESPACE, "relabel", max_dead_fraction)

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
``TargetModelHandler`` is a Beam ``ModelHandler``: ``RunInference`` loads the export once per
worker process and hands it fixed chunks of ``pipeline.relabel_batch_size`` transitions. Chunks
are cut in reading order and each gets its own CEM seed from its position, so a rerun gives the
same labels whatever the runner.

Input shard j (inputs in the order given) becomes output shard j, in the same order, so the
shuffle of ``qtopt shard`` carries over. Damaged records go to ``dead-letter.jsonl`` with their
file and offset, and ``records in = labelled + dead-lettered``. A missing, half-written or
incompatible export is refused before any work starts.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas import fs
from schemas.errors import RecordError, UserError
from pipelines import dataset, records, runner

NAMESPACE = "qtopt.relabel"
TARGET_SCALE = 1e6  # Beam distributions hold integers: targets are counted in millionths
# What compute_targets reads from a transition.
MODEL_INPUTS = ("next_observation/image", "next_observation/gripper_closed",
                "next_observation/height", "reward", "is_terminal")


def epoch_dir(root: str, epoch: int) -> str:
    return fs.join(root, f"epoch-{int(epoch)}")


def latest_epoch(root: str) -> Optional[int]:
    """The highest K with a complete ``<root>/epoch-K``, or None."""
    best = None
    for path in fs.listdir(root):
        m = re.fullmatch(r"epoch-(\d+)", path.rstrip("/").rsplit("/", 1)[-1])
        if m and fs.exists(fs.join(path, dataset.MANIFEST)):
            best = max(best or 0, int(m.group(1)))
    return best


def chunk_seed(shard: int, first_record: int) -> int:
    digest = hashlib.sha256(f"relabel\x00{shard}\x00{first_record}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def stack_inputs(records_: Sequence[dict]) -> dict:
    return {name: np.stack([np.asarray(r[name]) for r in records_]) for name in MODEL_INPUTS}


class TargetModelHandler(ModelHandler):
    """RunInference's view of a target export: load it once, label a chunk per call.

    Elements are pre-batched chunks: lists of ``((shard, record index), transition dict)``.
    The inference of each element is ``(target, next_action)``, or the ``UserError`` that made
    its chunk unlabellable, which the next step dead-letters record by record.
    """

    def __init__(self, export_path: str, cem_config, target_config):
        super().__init__()
        self.export_path = export_path
        self.cem_config = cem_config
        self.target_config = target_config
        self.progress: Optional[tuple[str, str]] = None  # (output, run id) for markers

    def should_skip_batching(self) -> bool:
        # Elements arrive as fixed chunks: a chunk's seed then depends only on its position.
        return True

    def load_model(self):
        from model.export import load_export

        return load_export(self.export_path, copies=("polyak", "lagged"))

    def run_inference(self, batch: Sequence[Any], model, inference_args=None
                      ) -> Iterable[PredictionResult]:
        from model.targets import compute_targets

        chunk = list(batch)
        if not chunk:
            return []
        (shard, first), _ = chunk[0]
        try:
            targets, actions = compute_targets(model, stack_inputs([r for _, r in chunk]),
                                               self.cem_config, self.target_config,
                                               seed=chunk_seed(shard, first))
        except UserError as exc:
            return [PredictionResult(item, exc) for item in chunk]
        if self.progress:
            dataset.mark_progress(*self.progress, "label", f"{shard}-{first}", len(chunk))
        return [PredictionResult(item, (float(t), np.asarray(a, np.float32)))
                for item, t, a in zip(chunk, targets, actions)]

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}.inference"

    def share_model_across_processes(self) -> bool:
        return False


def check_export(export_path: str, manifests: Sequence[tuple[str, dict]]):
    """Load the export on the launcher and check it fits every input; UserError otherwise."""
    from model.export import load_export

    export = load_export(export_path, copies=("polyak", "lagged"))
    for src, manifest in manifests:
        for shape in manifest.get("image_shapes") or []:
            export.check_image_shape(tuple(shape), f"dataset {src}")
    return export


def target_version(export) -> str:
    return export.path.rstrip("/").rsplit("/", 1)[-1]


def _beam_parts(out: str, run_id: str, chunk_size: int, version: str):
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    class ReadChunks(beam.DoFn):
        """(shard, file) -> chunks of decoded transitions; damaged records dead-lettered."""

        def __init__(self):
            self.records_in = Metrics.counter(NAMESPACE, "records_in")
            self.dead = Metrics.counter(NAMESPACE, "dead_lettered")

        def process(self, item):
            shard, path = item
            chunk = []
            for raw in records.read_file(path):
                self.records_in.inc()
                if isinstance(raw, dict):
                    self.dead.inc()
                    yield beam.pvalue.TaggedOutput("dead", raw)
                    continue
                try:
                    rec = records.decode_as(raw, ("transition",))
                except RecordError as exc:
                    self.dead.inc()
                    yield beam.pvalue.TaggedOutput("dead", records.letter_from_error(exc, "decode"))
                    continue
                rec["_where"] = (raw.path, raw.index, raw.offset)
                chunk.append(((shard, raw.index), rec))
                if len(chunk) == chunk_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    class Label(beam.DoFn):
        """PredictionResult -> (shard, (index, labelled record bytes)), or a dead letter."""

        def __init__(self):
            self.labelled = Metrics.counter(NAMESPACE, "labelled")
            self.dead = Metrics.counter(NAMESPACE, "dead_lettered")
            self.target = Metrics.distribution(NAMESPACE, "target_x1e6")

        def process(self, result):
            (shard, index), rec = result.example
            path, rec_index, offset = rec.pop("_where")
            if isinstance(result.inference, Exception):
                self.dead.inc()
                yield beam.pvalue.TaggedOutput("dead", records.dead_letter(
                    path, rec_index, offset, str(result.inference), "label"))
                return
            target, next_action = result.inference
            rec.update(kind="labelled_transition", target=np.float32(target),
                       next_action=next_action, target_version=version)
            try:
                data = records.encode(rec)
            except RecordError as exc:  # a non-finite target, say: the record, not the job
                self.dead.inc()
                yield beam.pvalue.TaggedOutput("dead", records.letter_from_error(
                    exc, "label", path, rec_index, offset))
                return
            self.labelled.inc()
            self.target.update(int(round(float(target) * TARGET_SCALE)))
            yield shard, (index, data)

    class WriteShard(beam.DoFn):
        def __init__(self, count):
            self.count = count

        def process(self, item):
            from schemas.tfrecord_io import RecordWriter

            shard, values = item
            rows = sorted(v for v in values if v is not None)
            name = dataset.shard_name(shard, self.count)
            path = fs.join(dataset.staging_dir(out, run_id), name)
            with RecordWriter(path) as w:
                for _index, data in rows:
                    w.write(data)
            yield {"name": name, "records": len(rows), "bytes": fs.size(path)}

    return beam, ReadChunks, Label, WriteShard


def build(pipeline, shards: list[tuple[int, str]], out: str, run_id: str, handler,
          chunk_size: int, version: str, manifest_extra: dict, mark_progress: bool = False):
    """Add the relabel job to ``pipeline``: shards -> labelled shards in staging -> commit."""
    beam, ReadChunks, Label, WriteShard = _beam_parts(out, run_id, chunk_size, version)
    if mark_progress:
        handler.progress = (out, run_id)
    from apache_beam.ml.inference.base import RunInference

    count = len(shards)
    staging = dataset.staging_dir(out, run_id)
    read = (pipeline
            | "Shards" >> beam.Create(shards)
            | "Spread shards" >> beam.Reshuffle()
            | "Read chunks" >> beam.ParDo(ReadChunks()).with_outputs("dead", main="chunks"))
    # Chunks move between workers here so that a few large shards still use every worker.
    chunks = read.chunks | "Spread chunks" >> beam.Reshuffle()
    predicted = chunks | "Targets" >> RunInference(handler)
    labelled = predicted | "Label" >> (beam.ParDo(Label())
                                       .with_output_types(tuple[int, tuple[int, bytes]])
                                       .with_outputs("dead", main="records"))
    every = pipeline | "Shard indices" >> beam.Create([(i, None) for i in range(count)])
    files = ((labelled.records, every) | "With empty" >> beam.Flatten()
             | "Group by shard" >> beam.GroupByKey()
             | "Write shards" >> beam.ParDo(WriteShard(count)))
    dead = ((read.dead, labelled.dead) | "Dead letters" >> beam.Flatten()
            | "All dead" >> beam.combiners.ToList())

    def commit(_, infos, letters):
        letters = letters[0]
        infos = sorted(infos, key=lambda i: i["name"])
        dataset.write_dead_letters(fs.join(staging, dataset.DEAD_LETTER), letters)
        manifest = {
            **manifest_extra,
            "kind": "labelled_transition",
            "target_version": version,
            "num_shards": count,
            "counts": {"transitions": sum(i["records"] for i in infos),
                       "dead_lettered": len(letters)},
            "files": infos,
            "dead_letter": dataset.DEAD_LETTER,
        }
        return dataset.commit(out, run_id, [i["name"] for i in infos] + [dataset.DEAD_LETTER],
                              manifest)

    return (pipeline
            | "Commit trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, beam.pvalue.AsList(files),
                                   beam.pvalue.AsList(dead)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.cli import add_config_arguments

    parser.add_argument("--input", "-i", action="append", required=True, metavar="DIR",
                        help="transition dataset from qtopt shard; repeat to mix several")
    parser.add_argument("--export", "-e", required=True, metavar="PATH",
                        help="an export-* directory, or an exports/ directory (its latest "
                             "complete export)")
    parser.add_argument("--output", "--out", "-o", required=True, metavar="DIR",
                        help="labelled root: the job writes DIR/epoch-K")
    parser.add_argument("--epoch", type=int, required=True, metavar="K",
                        help="epoch number; rerunning an epoch replaces it")
    add_config_arguments(parser)
    runner.add_beam_arguments(parser)


def plan(inputs: Sequence[str]) -> tuple[list[tuple[str, dict]], list[tuple[int, str]]]:
    """Input manifests and the global shard list; UserError for an incomplete or wrong input."""
    manifests, shards = [], []
    for src in inputs:
        src = src.rstrip("/")
        manifest = dataset.read_manifest(src)
        if manifest.get("kind") != "transition":
            raise UserError(f"dataset {src} holds {manifest.get('kind')} records; relabel reads "
                            "transition datasets (from qtopt shard or subsample)")
        manifests.append((src, manifest))
        shards.extend(dataset.shard_paths(src, manifest))
    return manifests, list(enumerate(shards))


def run(args: argparse.Namespace) -> int:
    from pipelines.cli import config_from_args

    cfg = config_from_args(args)
    if args.epoch < 0:
        raise UserError(f"--epoch must be >= 0, got {args.epoch}")
    manifests, shards = plan(args.input)
    out = epoch_dir(args.output.rstrip("/"), args.epoch)
    if any(out == src for src, _ in manifests):
        raise UserError("--output must differ from --input (a job never rewrites its input)")
    runner.quiet_beam_logging()
    export = check_export(args.export, manifests)
    version = target_version(export)
    options = runner.pipeline_options(args.beam_args, cfg.pipeline.direct_num_workers,
                                      "qtopt-relabel")
    handler = TargetModelHandler(export.path, cfg.cem, cfg.targets)
    extra = {"created_by": "qtopt relabel", "epoch": args.epoch, "inputs": [s for s, _ in manifests],
             "export": export.path, "export_step": export.step, "cem": vars_of(cfg.cem),
             "targets": vars_of(cfg.targets),
             "image_shapes": sorted({tuple(s) for _, m in manifests
                                     for s in m.get("image_shapes") or []})}
    return execute(options, shards, out, handler, cfg.pipeline.relabel_batch_size, version, extra,
                   sum(m["counts"]["transitions"] for _, m in manifests))


def vars_of(section) -> dict:
    import dataclasses

    return dataclasses.asdict(section)


def execute(options, shards, out, handler, chunk_size, version, extra, total=None) -> int:
    from pipelines.shard import report

    run_id = dataset.new_run_id()
    local = runner.is_local(options)
    pipeline = runner.new_pipeline(options)
    build(pipeline, shards, out, run_id, handler, chunk_size, version, extra,
          mark_progress=local)

    def poll():
        n = dataset.progress_counts(out, run_id).get("label", (0, 0))[1]
        return f"labelled {n}/{total if total is not None else '?'} transitions"

    print(f"relabel: {len(shards)} shards -> {out} (targets from {version}, runner "
          f"{runner.runner_name(options)})", flush=True)
    with runner.progress("relabel", poll if local else None):
        result = runner.run_pipeline(pipeline)
    return report(pipeline, result, out, NAMESPACE, "relabel")

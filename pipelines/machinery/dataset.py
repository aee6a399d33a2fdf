"""Sharded datasets on disk or in a bucket, and how a job publishes one.

A dataset directory (``transitions/<name>/``, ``labelled/epoch-K/``) holds::

    shard-00000-of-00004.tfrecord.gz ...   records, gzip TFRecord
    catalogue.parquet                      one row per episode (shard and subsample)
    dead-letter.jsonl                      records that could not be read, with file and offset
    manifest.json                          written last: the dataset is complete

A dataset without ``manifest.json`` is incomplete (a job still running, or killed) and
``read_dataset_manifest`` refuses it. Readers take the shard list from the manifest, never from a
glob, so stray files cannot be read twice.

A job writes everything under ``<out>/_staging/<run id>/`` and its last step, ``commit``, moves
the files into place: it removes the old manifest, moves the new files in, deletes the old
dataset's files that the new one does not have, writes the manifest, and removes the staging
directory. A job killed before ``commit`` leaves the previous dataset published and untouched; one
killed during it leaves no manifest, and a rerun publishes a complete dataset. The same names are
reused, so nothing is duplicated.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from typing import Iterable

from pipelines.machinery.records import dead_records
from schemas import fs
from schemas.datasets import (  # noqa: F401
    COLLECT_DONE, FORMAT, MANIFEST, read_dataset_manifest)
from schemas.errors import DeadLettered, UserError
from schemas.specs import SCHEMA_VERSION

CATALOGUE = "catalogue.parquet"
DEAD_LETTER = "dead-letter.jsonl"
STAGING = "_staging"
PROGRESS = "_progress"
REFUSED = "_refused.txt"
# A collection directory (``qtopt collect``'s output) holds one shard per block of episode
# indices, named by the collection's seed and the block, and COLLECT_DONE once complete.
COLLECT_SHARD = re.compile(r"^episodes-s(\d+)-(\d{7})-(\d{7})\.tfrecord\.gz$")


def collect_shard_name(seed: int, start: int, end: int) -> str:
    return f"episodes-s{seed}-{start:07d}-{end:07d}.tfrecord.gz"


def collect_block_size(name: str) -> int | None:
    """Episodes a collect shard holds, from its name; None for any other name."""
    m = COLLECT_SHARD.match(name)
    return int(m.group(3)) - int(m.group(2)) if m else None


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.tfrecord.gz"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def staging_dir(out: str, run_id: str) -> str:
    return fs.join(out, STAGING, run_id)


def _is_ours(name: str) -> bool:
    """Files a previous publication of a dataset may have left, which a new one replaces."""
    return (name.startswith("shard-") and name.endswith(".tfrecord.gz")) or \
        name in (CATALOGUE, DEAD_LETTER, MANIFEST)


def expand_dirs(inputs: Iterable[str]) -> list[str]:
    """Dataset directories named directly or by a glob, in the order given (a glob's matches
    sorted); a glob that matches nothing is an error naming it."""
    out = []
    for item in inputs:
        item = item.rstrip("/")
        if not any(c in item for c in "*?["):
            out.append(item)
            continue
        found = [p.rstrip("/") for p in fs.glob_dirs(item)]
        if not found:
            raise UserError(f"input {item}: no dataset directories match")
        out.extend(found)
    return out


def shard_paths(directory: str, manifest: dict | None = None) -> list[str]:
    """Full paths of a complete dataset's shards, in shard order."""
    manifest = manifest or read_dataset_manifest(directory)
    return [fs.join(directory, f["name"]) for f in manifest["files"]]


def file_records(directory: str, manifest: dict) -> dict:
    """{shard path: records} as the manifest says: what a job reading it must account for."""
    return {fs.join(directory, f["name"]): int(f["records"]) for f in manifest["files"]}


def write_json(path: str, value) -> None:
    fs.write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def check_shard_outputs(job: str, out: str, infos: list, letters: list, count: int) -> list:
    """The shard infos of a one-input-shard-to-one-output-shard job, sorted by name, after
    checking that every shard and every dead letter arrived exactly once; RuntimeError (nothing
    is published) when the runner lost or repeated any."""
    infos = sorted(infos, key=lambda i: i["name"])
    if [i["name"] for i in infos] != [shard_name(j, count) for j in range(count)]:
        raise RuntimeError(f"{job} job for {out}: shards written do not match its {count} "
                           "inputs; not published")
    if sum(i["dead_lettered"] for i in infos) != len(letters):
        raise RuntimeError(f"{job} job for {out}: the runner lost or repeated dead letters; "
                           "not published")
    return infos


def shard_accounting(job: str, out: str, unit: str, infos: list, letters: list,
                     left_out: dict | None = None) -> dict:
    """The accounting of a one-shard-in, one-shard-out job from its shard infos (each with
    ``records_in``: the input shard's records as its manifest says, or as counted); checked."""
    return check_accounting(job, out, accounting(
        unit, sum(i["records_in"] for i in infos), sum(i["records"] for i in infos), letters,
        left_out))


def accounting(unit: str, records_in: int, records_out: int, letters: list,
               left_out: dict | None = None) -> dict:
    """The manifest's ``accounting``: ``records_in = records_out + records_dead_lettered`` plus
    any records the job was asked to leave out (``left_out``: reason -> count)."""
    return {"unit": unit, "records_in": int(records_in), "records_out": int(records_out),
            "records_dead_lettered": dead_records(letters), "dead_letters": len(letters),
            "left_out": {k: int(v) for k, v in sorted((left_out or {}).items())}}


def check_accounting(job: str, out: str, acc: dict) -> dict:
    """RuntimeError (nothing is published) unless every input record is accounted for."""
    total = acc["records_out"] + acc["records_dead_lettered"] + sum(acc["left_out"].values())
    if total != acc["records_in"]:
        raise RuntimeError(f"{job} job for {out}: {acc['records_in']} {acc['unit']} in but "
                           f"{acc['records_out']} out, {acc['records_dead_lettered']} "
                           f"dead-lettered and {sum(acc['left_out'].values())} left out; "
                           "not published")
    return acc


def dead_letter_status(label: str, out: str, manifest: dict, max_dead_fraction: float,
                       stream=None) -> int:
    """After publishing: one line on stderr if anything was dead-lettered; the exit status,
    ``DEAD_LETTERED`` (3) unless the share dead-lettered is within ``max_dead_fraction``."""
    acc = manifest.get("accounting") or {}
    dead, total = acc.get("records_dead_lettered", 0), acc.get("records_in", 0)
    if not dead:
        return 0
    first = ""
    path = fs.join(out, manifest.get("dead_letter", DEAD_LETTER))
    try:
        letter = json.loads(fs.read_text(path).splitlines()[0])
        where = [letter.get("file") or "?"]
        if letter.get("index") is not None:
            where.append(f"record {letter['index']}")
        if letter.get("offset") is not None:
            where.append(f"offset {letter['offset']}")
        first = f" (first: {', '.join(where)}: {letter.get('reason')})"
    except (OSError, ValueError, IndexError):
        pass
    allowed = total > 0 and dead / total <= max_dead_fraction
    tail = (f"; within --max-dead-fraction {max_dead_fraction:g}" if allowed else
            f"; exit status {DeadLettered.exit_status} (allow with --max-dead-fraction)")
    print(f"{label}: {dead} of {total} {acc.get('unit', 'records')} dead-lettered{first}, "
          f"see {path}{tail}", file=stream or sys.stderr, flush=True)
    return 0 if allowed else DeadLettered.exit_status


def write_dead_letters(path: str, letters: Iterable[dict]) -> int:
    rows = sorted(letters, key=lambda d: (d.get("file", ""), d.get("offset") or 0,
                                          d.get("stage", "")))
    fs.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return len(rows)


def _move(src: str, dst: str) -> None:
    if not fs.is_remote(src):
        os.replace(src, dst)
        return
    # A server-side copy (GCS rewrite) and a delete. gcsfs's mv tries the newer moveTo API
    # first and retries it for minutes where a store does not offer it (the GCS emulator).
    filesystem, s = fs.filesystem(src)
    _, d = fs.filesystem(dst)
    filesystem.copy(s, d)
    filesystem.rm(s)


def commit(out: str, run_id: str, names: list[str], manifest: dict) -> dict:
    """Publish the staged files ``names`` and the manifest; see the module docstring.

    Idempotent, so a runner may retry it: a staged file already moved is not an error.
    """
    staging = staging_dir(out, run_id)
    manifest = {**manifest, "format": FORMAT, "schema_version": SCHEMA_VERSION,
                "run_id": run_id, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fs.remove(fs.join(out, MANIFEST))
    for name in names:
        src, dst = fs.join(staging, name), fs.join(out, name)
        if fs.exists(src):
            _move(src, dst)
        elif not fs.exists(dst):
            raise RuntimeError(f"staged file {src} is missing: cannot publish {out}")
    keep = set(names)
    for path in fs.listdir(out):
        name = fs.basename(path)
        if _is_ours(name) and name not in keep:
            fs.remove(path)
    write_json(fs.join(out, MANIFEST), manifest)
    fs.remove(fs.join(out, STAGING), recursive=True)
    fs.remove_stale_temporaries(out)
    return manifest


def refuse(out: str, run_id: str, reason: str) -> None:
    """Publish nothing and leave ``reason`` for the launcher (``raise_refusal``): a job that
    finds its input unusable only once it has read all of it, on whatever runner."""
    fs.write_text(fs.join(staging_dir(out, run_id), REFUSED), reason)


def raise_refusal(out: str, run_id: str) -> None:
    """After a job ran: a one-line UserError with the reason it refused to publish, if it did;
    its staged files are removed."""
    path = fs.join(staging_dir(out, run_id), REFUSED)
    if fs.exists(path):
        reason = fs.read_text(path)
        fs.remove(staging_dir(out, run_id), recursive=True)
        if not fs.listdir(fs.join(out, STAGING)):
            fs.remove(fs.join(out, STAGING), recursive=True)
        raise UserError(reason)


def mark_progress(out: str, run_id: str, stage: str, key: str, count: int = 1) -> None:
    """Leave a marker the launcher's progress line counts; markers go with the staging dir."""
    fs.touch(fs.join(out, STAGING, run_id, PROGRESS, stage, f"{key}={count}"))


def progress_counts(out: str, run_id: str, seen: dict | None = None) -> dict:
    """{stage: (markers, summed counts)} so far.

    Pass the same ``seen`` dict on every call to get counts that never go back, as when the
    staging directory (markers included) is removed on publication.
    """
    root = fs.join(out, STAGING, run_id, PROGRESS)
    out_counts = seen if seen is not None else {}
    for stage_dir in fs.listdir(root):
        stage = fs.basename(stage_dir)
        names = [p.rsplit("/", 1)[-1] for p in fs.listdir(stage_dir)]
        total = sum(int(n.rsplit("=", 1)[1]) for n in names if "=" in n)
        out_counts[stage] = max(out_counts.get(stage, (0, 0)), (len(names), total))
    return out_counts

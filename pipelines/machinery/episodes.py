"""Episode files as a job's input: ``[SOURCE=]GLOB`` or a collection directory, expanded to
files and checked before any work; how many episodes each should hold; ids read twice."""

from __future__ import annotations

import json
import re
from typing import Iterable

from pipelines.machinery import dataset, records
from schemas import codec, fs
from schemas.errors import RecordError, UserError

_SOURCE_PREFIX = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


def parse_inputs(specs: Iterable[str]) -> list[tuple[str | None, str]]:
    """``[SOURCE=]GLOB`` or ``[SOURCE=]DIR`` strings to (source or None, glob or directory)
    pairs."""
    out = []
    for spec in specs:
        m = _SOURCE_PREFIX.match(spec)
        out.append((m.group(1), m.group(2)) if m and "://" not in m.group(1) else (None, spec))
    return out


def expand_inputs(inputs: list[tuple[str | None, str]], kind: str = "episode"
                  ) -> list[tuple[str | None, str]]:
    """(source, file) for every file the globs match, each file once; UserError if one is empty.

    Names starting with ``_`` or ``.`` (``_SUCCESS.json``, ``_collect.json``) are not record
    files and are skipped, so ``DIR/*`` means DIR's episode files. The first file of each glob
    is peeked at, so pointing the job at the wrong kind of records fails here, before any work.
    """
    seen, out = set(), []
    for source, pattern in inputs:
        if not any(c in pattern for c in "*?["):
            if not fs.exists(pattern):
                raise UserError(f"input {pattern}: no such file or directory")
            if fs.is_dir(pattern):  # a collection directory: its record files
                pattern = fs.join(pattern.rstrip("/"), "*")
        paths = [p for p in fs.glob(pattern) if not fs.basename(p).startswith(("_", "."))]
        if not paths:
            raise UserError(f"input {pattern}: no files match")
        _check_kind(paths[0], kind)
        for path in paths:
            if path not in seen:
                seen.add(path)
                out.append((source, path))
    return out


def expected_counts(files: list[tuple[str | None, str]]) -> dict:
    """{file: episodes it should hold} where that is known: from the collection's
    ``_SUCCESS.json`` (its ``files``), else from a collect shard's name
    (``episodes-s<seed>-<first>-<end>``). Other files are counted as read."""
    found: dict = {}
    listed: dict = {}
    for _source, path in files:
        directory = path.rsplit("/", 1)[0] if "/" in path else "."
        if directory not in listed:
            listed[directory] = {}
            done = fs.join(directory, dataset.COLLECT_DONE)
            if fs.exists(done):
                try:
                    listed[directory] = {name: int(info["records"]) for name, info in
                                         json.loads(fs.read_text(done)).get("files", {}).items()}
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise UserError(f"{done}: not a collection summary (invalid JSON or "
                                    "files list)") from None
        name = fs.basename(path)
        n = listed[directory].get(name, dataset.collect_block_size(name))
        if n is not None:
            found[path] = n
    return found


def first_cells(files: list[tuple[str | None, str]]) -> dict:
    """{cell identity: file} from the first episode of the first file in each directory.

    A cheap look before any work, enough for the usual mix (collect keeps one cell's episodes
    per directory); the job itself checks every episode before it publishes.
    """
    found, seen = {}, set()
    for _source, path in files:
        directory = path.rsplit("/", 1)[0]
        if directory in seen:
            continue
        seen.add(directory)
        for episode, _raw, _letter in records.read_episodes(path):
            if episode is not None:  # else damaged: the job dead-letters it
                found.setdefault(episode["cell"], path)
            break
    return found


def _check_kind(path: str, kind: str) -> None:
    for item in records.read_file(path):
        if isinstance(item, dict):  # damaged: the job itself dead-letters it
            return
        try:
            found, _version = codec.peek_kind(item.data)
        except RecordError as exc:
            raise exc.located(item.path, item.index, item.offset) from None
        if found != kind:
            raise UserError(f"{path}: holds {found} records; this job reads {kind} records")
        return


def duplicate_ids(ids: list) -> dict:
    """{episode id: [(file, index), ...]} for every id read more than once, copies in order."""
    where: dict = {}
    for episode_id, path, index in ids:
        where.setdefault(episode_id, []).append((path, int(index)))
    return {i: sorted(w) for i, w in where.items() if len(w) > 1}

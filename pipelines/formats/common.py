"""What both export formats share: the export manifest and its publication, reading the input
episodes in a Beam job, and how an episode ended.

How an episode ended: the cell records the executed action, whose ``terminate`` component is 1
when the policy's terminate action or the scripted termination ended the episode; an episode cut
off by the step limit ends on an action without it. Our own records mark every end terminal (the
grasp is scored either way, so the Bellman target never bootstraps past it); both exports keep
the distinction: a step-limit end is an RLDS truncation (``is_last`` without ``is_terminal``).
"""

from __future__ import annotations

import os
import time

from pipelines.machinery import dataset, records
from pipelines.machinery.episodes import duplicate_ids
from schemas import cells as cell_rules
from schemas import fs, mdp
from schemas.datasets import manifest_json
from schemas.errors import UserError
from schemas.specs import SCHEMA_VERSION

NAMESPACE = "qtopt.export"
FORMAT = "qtopt-export/1"
ENDED_BY_TERMINATION, ENDED_BY_STEP_LIMIT = "termination", "step_limit"


def ended_by(episode: dict) -> str:
    """``"termination"`` when the episode's last action terminated it, else ``"step_limit"``."""
    n = int(episode["num_steps"])
    if n > 0 and float(episode["action"][n - 1][mdp.TERMINATE]) > 0.5:
        return ENDED_BY_TERMINATION
    return ENDED_BY_STEP_LIMIT


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


def read_format_manifest(out: str) -> dict:
    manifest = _previous(out)
    if not manifest or manifest.get("format") != FORMAT:
        raise UserError(f"{out} holds no finished qtopt export (no manifest.json)")
    return manifest


def episodes_of(pipeline, files: list[str], expected: dict):
    """files -> decoded episodes (main output) and, tagged: ``dead`` letters, ``ids``
    (episode id, steps, cell, file, record index) and ``counted`` (records per file)."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    class ReadExportEpisodes(beam.DoFn):
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
            | "Read episodes" >> beam.ParDo(ReadExportEpisodes(dict(expected)))
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

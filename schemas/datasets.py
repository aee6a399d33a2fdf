"""How a published dataset directory is recognised and read: the manifest written last (a
directory without one is incomplete), its format and schema version. One place for every
package: the jobs that publish datasets (``pipelines.machinery.dataset``) and the trainer that
reads them."""

from __future__ import annotations

import json

from schemas import fs
from schemas.errors import UserError
from schemas.specs import SUPPORTED_VERSIONS

MANIFEST = "manifest.json"
FORMAT = "qtopt-dataset/1"
# What ``qtopt collect`` writes beside its episode shards once the set is complete.
COLLECT_DONE = "_SUCCESS.json"


def manifest_json(directory: str) -> dict | None:
    """The manifest's JSON as written, or None when there is none (yet)."""
    path = fs.join(directory, MANIFEST)
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def read_dataset_manifest(directory: str) -> dict:
    """The manifest of a complete dataset; a one-line UserError if there is none."""
    path = fs.join(directory, MANIFEST)
    manifest = manifest_json(directory)
    if manifest is None:
        if not fs.exists(directory):
            what = "does not exist"
        elif fs.exists(fs.join(directory, COLLECT_DONE)) or fs.glob(
                fs.join(directory, "episodes-s*.tfrecord.gz")):
            what = ("holds episodes from qtopt collect, not a dataset: make transitions of them "
                    f"with qtopt shard -i {directory}")
        else:
            what = ("has no manifest.json: it is incomplete (its job is running, failed or was "
                    "killed; rerun it)")
        raise UserError(f"dataset {directory} {what}")
    check_manifest(path, manifest)
    return manifest


def check_manifest(path: str, manifest: dict) -> None:
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a qtopt dataset manifest (format {manifest.get('format')!r},"
                        f" expected {FORMAT!r})")
    if int(manifest.get("schema_version", -1)) not in SUPPORTED_VERSIONS:
        raise UserError(f"{path}: schema version {manifest.get('schema_version')} is not "
                        f"supported (this reader knows "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))})")

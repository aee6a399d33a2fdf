"""The one file-system layer: local paths and ``gs://`` (any fsspec URL) alike.

Every job reads and writes through these functions, so no code assumes local paths. ``gs://``
goes through gcsfs, which honours ``STORAGE_EMULATOR_HOST`` for tests against a local emulator.

Publishing is atomic: ``atomic_write`` writes to a temporary name beside the target and renames it
into place on success (locally an ``os.replace``); on GCS an object becomes visible only when its
upload completes, so the object is written under its final name directly.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import fsspec

TMP_MARKER = ".tmp-"


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def filesystem(path: str):
    """(fsspec filesystem, path inside it) for a local path or URL."""
    path = str(path)
    if path.startswith("gs://"):
        options = _gcs_options()
        if options.get("endpoint_url"):
            # gcsfs's default class first asks the storage-control gRPC API whether the bucket is
            # hierarchical and waits a minute for an answer an emulator never gives; the plain
            # class does not ask. The variable is read when gcsfs is imported, so it is also set
            # for subprocesses and the class is picked directly for this one.
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            import gcsfs.core

            return gcsfs.core.GCSFileSystem(**options), path
        fs = fsspec.filesystem("gs", **options)
        return fs, path
    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


def _gcs_options() -> dict:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        if "://" not in host:
            host = f"http://{host}"
        return {"endpoint_url": host, "token": "anon"}
    return {}


def staging_root() -> str:
    """Where local copies of remote data and checkpoints are staged: ``$QTOPT_STAGING_DIR``, else
    ``qtopt-staging`` in the system's temp directory."""
    import tempfile

    return os.environ.get("QTOPT_STAGING_DIR") or os.path.join(tempfile.gettempdir(),
                                                               "qtopt-staging")


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    """The last name of a local or ``gs://`` path, a trailing slash ignored."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def is_dir(path: str) -> bool:
    fs_, p = filesystem(path)
    return fs_.isdir(p)


def makedirs(path: str) -> None:
    fs, p = filesystem(path)
    if not is_remote(path):
        os.makedirs(p, exist_ok=True)
    else:  # object stores have no directories; nothing to create
        fs.makedirs(p, exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob; files only, temporary files excluded, URLs kept as URLs."""
    fs, p = filesystem(pattern)
    matches = fs.glob(p) if any(c in p for c in "*?[") else ([p] if fs.exists(p) else [])
    out = []
    for m in matches:
        if TMP_MARKER in os.path.basename(m) or fs.isdir(m):
            continue
        out.append(_unstrip(pattern, m))
    return sorted(out)


def glob_dirs(pattern: str) -> list[str]:
    """Sorted directories a glob matches, URLs kept as URLs."""
    fs, p = filesystem(pattern)
    return sorted(_unstrip(pattern, m) for m in fs.glob(p) if fs.isdir(m))


def _unstrip(original: str, path: str) -> str:
    """fsspec returns bucket paths without their protocol; put it back."""
    if str(original).startswith("gs://") and not path.startswith("gs://"):
        return "gs://" + path
    return path


def listdir(path: str) -> list[str]:
    fs, p = filesystem(path)
    if not fs.exists(p):
        return []
    return sorted(_unstrip(path, e) for e in fs.ls(p, detail=False))


def open_file(path: str, mode: str = "rb"):
    fs, p = filesystem(path)
    return fs.open(p, mode)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def remove(path: str, recursive: bool = False) -> None:
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=recursive)


def size(path: str) -> int:
    fs, p = filesystem(path)
    return int(fs.size(p))


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator:
    """Write a file so that readers see either nothing or the complete file."""
    path = str(path)
    if is_remote(path):
        fs, p = filesystem(path)
        with fs.open(p, mode) as f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{os.path.basename(path)}{TMP_MARKER}{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def touch(path: str) -> None:
    """Create an empty file (and its directory): for markers whose name is the message, which
    need neither the atomic rename nor the fsync of ``write_bytes``."""
    if is_remote(path):
        fs, p = filesystem(path)
        fs.touch(p)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb"):
        pass


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: str) -> int:
    """Delete temporary files a killed writer left in a local directory; returns how many."""
    if is_remote(directory) or not os.path.isdir(directory):
        return 0
    n = 0
    for name in os.listdir(directory):
        if TMP_MARKER in name:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))
                n += 1
    return n

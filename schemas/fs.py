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

            return _retrying(gcsfs.core.GCSFileSystem)(**options), path
        return _retrying(fsspec.get_filesystem_class("gs"))(**options), path
    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


# A bucket's transient failures (HTTP 408, 429, 5xx, dropped connections) are retried this many
# times in all per request, waiting about BACKOFF_S, then twice that, and so on (at most 32 s).
RETRIES_ENV, BACKOFF_ENV = "QTOPT_GCS_TRIES", "QTOPT_GCS_BACKOFF_S"
DEFAULT_TRIES, DEFAULT_BACKOFF_S = 6, 1.0
_classes: dict = {}
_retry_logged = {"done": False}   # this command has logged its first retry


def _retrying(base):
    """``base`` (a gcsfs class) with this project's retry policy on every request: a budget and
    backoff from the environment, the first retry of a process logged in one line, and past
    the budget a StorageUnavailable naming the request, which the command reports in one line.
    gcsfs's own retries are fixed at six tries and 31 s or more before giving up."""
    if base not in _classes:
        raw_request = base._request.__wrapped__
        raw_get = base._get_file_request.__wrapped__

        class Retrying(base):
            async def _request(self, method, path, *args, **kwargs):
                return await _with_retries(
                    raw_request, self, lambda: f"{method} {self._format_path(path, args)}",
                    (method, path) + args, kwargs)

            async def _get_file_request(self, rpath, lpath, *args, **kwargs):
                return await _with_retries(raw_get, self, lambda: f"GET {rpath}",
                                           (rpath, lpath) + args, kwargs)

        Retrying.__name__ = Retrying.__qualname__ = f"Retrying{base.__name__}"
        _classes[base] = Retrying
    return _classes[base]


async def _with_retries(raw, self, what, args: tuple, kwargs: dict):
    import asyncio
    import random
    import sys

    from gcsfs.retry import is_retriable
    from schemas.errors import StorageUnavailable

    tries = max(1, int(os.environ.get(RETRIES_ENV, DEFAULT_TRIES)))
    backoff = float(os.environ.get(BACKOFF_ENV, DEFAULT_BACKOFF_S))
    for attempt in range(tries):
        try:
            return await raw(self, *args, **kwargs)
        except Exception as exc:
            if not is_retriable(exc):   # a 404 among them
                raise
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            if attempt == tries - 1:
                raise StorageUnavailable(
                    f"{what()}: the bucket failed "
                    f"{tries} tries in a row (last: {reason}); rerun the same command once it "
                    f"answers (jobs resume), or allow more tries with {RETRIES_ENV}") from exc
            if not _retry_logged["done"]:
                _retry_logged["done"] = True
                print(f"gs: a request failed ({reason}); retrying up to {tries} tries with "
                      "backoff (further retries are not logged)", file=sys.stderr, flush=True)
            await asyncio.sleep(min(32.0, backoff * 2 ** attempt * (1 + random.random())))


def reset_retries() -> None:
    """A new command: its first retry is logged again."""
    _retry_logged["done"] = False


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

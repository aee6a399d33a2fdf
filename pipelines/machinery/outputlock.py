"""One job at a time on one output: a lock file in the output directory.

Two jobs publishing into one dataset directory would interleave their ``commit`` steps (each
moves its shards in and removes the other's staging), leaving shards of both under one
manifest. A job therefore takes ``<out>/_lock.json`` (its pid, host, job and start) before it
stages anything and removes it when it ends, however it ends. A second job finds the lock and
refuses at once with one line naming the holder.

Locally the file is held with ``flock``, which the kernel drops when the holding process dies:
a job killed with SIGKILL leaves a file nobody holds, and the next job on this host takes it
over, so a killed job still resumes by rerunning its command; two jobs starting together, or
racing for a dead job's file, cannot both win. A file naming another host (a shared file
system) is never taken over. A bucket has no such primitive in fsspec; there a job writes its
lock, waits ``REMOTE_SETTLE_S`` and reads it back, and refuses if another job's lock replaced
it; a bucket lock of a dead process on this host is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid

from schemas import fs
from schemas.errors import UserError

LOCK = "_lock.json"
REMOTE_SETTLE_S = 1.0


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not taken for the holder."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = holder.get("process_start")
    return start is None or _process_start(pid) in (None, start)


def _describe(path: str, holder: dict) -> str:
    return (f"{path}: in use by qtopt {holder.get('job', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it to end, "
            f"or remove {path} if that job is gone")


def _read(path: str) -> dict | None:
    try:
        return json.loads(fs.read_text(path))
    except FileNotFoundError:
        return None
    except ValueError:
        # A lock cut short by a crash while it was written holds no live job.
        return {}


def _acquire_local(path: str, me: dict, body: bytes) -> int:
    """The open, ``flock``-ed lock file's descriptor, holding ``body``; or a UserError naming
    the holder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(_describe(path, _read(path) or {})) from None
        try:
            # Locked a file its holder removed on release (another job opened it first)?
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)
            continue
        holder = _read(path)
        if holder and holder.get("host") != me["host"]:
            os.close(fd)
            raise UserError(_describe(path, holder))
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)
        return fd
    raise UserError(_describe(path, _read(path) or {}))


def acquire(out: str, job: str) -> dict:
    """Take ``out``'s lock for ``job`` or raise a one-line UserError naming its holder."""
    path = fs.join(out, LOCK)
    # A job that stops before writing anything leaves no directory it made for its lock.
    made_dir = not fs.is_remote(out) and not os.path.exists(out)
    me = {"job": job, "pid": os.getpid(), "host": socket.gethostname(),
          "process_start": _process_start(os.getpid()),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "token": uuid.uuid4().hex}
    body = json.dumps(me, sort_keys=True).encode()
    if not fs.is_remote(path):
        return {**me, "fd": _acquire_local(path, me, body), "made_dir": made_dir}
    holder = _read(path)
    if holder is not None:
        if holder and (holder.get("host") != me["host"] or _alive(holder)):
            raise UserError(_describe(path, holder))
        fs.remove(path)   # stale: its process on this host is gone
    fs.write_bytes(path, body)
    time.sleep(REMOTE_SETTLE_S)
    holder = _read(path)
    if holder and holder.get("token") == me["token"]:
        return me
    raise UserError(_describe(path, holder or {}))


def release(out: str, me: dict) -> None:
    """Remove ``me``'s lock (a bucket's only if it is still ``me``'s)."""
    path = fs.join(out, LOCK)
    if "fd" in me:
        # Removed before the descriptor closes (and the flock goes): a job that opened the file
        # meanwhile finds it gone once it gets the flock, and starts again.
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(me["fd"])
        if me.get("made_dir"):
            with contextlib.suppress(OSError):   # not empty: the job wrote its output there
                os.rmdir(out)
        return
    holder = _read(path)
    if holder and holder.get("token") == me["token"]:
        fs.remove(path)


@contextlib.contextmanager
def output_lock(out: str, job: str, dry_run: bool = False):
    """Hold ``out``'s lock while the body runs (see the module docstring); a dry run, which
    writes nothing, takes none."""
    if dry_run:
        yield None
        return
    me = acquire(out, job)
    try:
        yield me
    finally:
        release(out, me)

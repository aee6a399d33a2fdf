"""Shared helpers for the pipelines tests: small real inputs, real runs, real corruption."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import schemas  # noqa: F401  (first: the tfrecord/tensorflow import hook)
from schemas import codec, example_proto, tfrecord_io
from schemas.fake import fake_records

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# In-process FnApiRunner: the tests that are not about the runner skip worker start-up.
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
IMAGE = 16


def write_episodes(directory: Path, files: int = 3, per_file: int = 3, seed: int = 0,
                   steps: int | None = None, prefix: str = "ep", cell: str | None = None,
                   before_cells: bool = False) -> list[Path]:
    """Fake episodes of the default cell (``cell``: another identity); ``before_cells``: as
    schema version 2 wrote them, without a cell."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = directory / f"{prefix}-{i}.tfrecord.gz"
        recs = fake_records("episode", per_file, seed=seed * 1000 + i, image_size=IMAGE,
                            num_steps=steps)
        for rec in recs:
            rec["cell"] = cell or rec["cell"]
        with tfrecord_io.RecordWriter(str(path)) as writer:
            for rec in recs:
                data = codec.encode(rec)
                writer.write(as_version_2(data) if before_cells else data)
        paths.append(path)
    return paths


def as_version_2(episode: bytes) -> bytes:
    """A serialised episode as schema version 2 wrote it: no cell."""
    msg = example_proto.SequenceExample.FromString(episode)
    msg.context.feature["schema_version"].int64_list.value[0] = 2
    del msg.context.feature["cell"]
    return msg.SerializeToString(deterministic=True)


def qtopt(*args: str) -> int:
    from pipelines.cli import main

    return main([str(a) for a in args])


def qtopt_process(*args: str, env: dict | None = None, timeout: float = 300
                  ) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def manifest(directory) -> dict:
    return json.loads((Path(directory) / "manifest.json").read_text())


def shard_bytes(directory) -> dict:
    m = manifest(directory)
    return {f["name"]: (Path(directory) / f["name"]).read_bytes() for f in m["files"]}


def read_all(directory) -> list[dict]:
    from pipelines.machinery import dataset

    out = []
    for path in dataset.shard_paths(str(directory)):
        out.extend(tfrecord_io.read_records(path))
    return out


def dead_letters(directory) -> list[dict]:
    text = (Path(directory) / "dead-letter.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def truncate(path: Path, keep_fraction: float = 0.6) -> None:
    """Cut a (gzip) TFRecord file's uncompressed stream mid-record, recompressed cleanly."""
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: int(len(data) * keep_fraction)], mtime=0))


def corrupt_record(path: Path, index: int) -> int:
    """Flip a byte inside record ``index``'s data, so only its data checksum fails.

    Returns the record's offset. The gzip layer stays valid: the fault is the record's own.
    """
    records = list(tfrecord_io.iter_raw(str(path)))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    offset = records[index].offset
    raw[offset + 12 + len(records[index].data) // 2] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))
    return offset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def make_export(exports: Path, image_size: int = IMAGE, step: int = 100, seed: int = 0,
                cell: str | None = None) -> str:
    """A real export of the tiny network (random weights), written by model.export; of the
    default cell unless ``cell`` names another."""
    import keras

    from model.export import write_export
    from model.network import build
    from schemas.config import ModelConfig

    keras.utils.set_random_seed(seed)
    cfg = ModelConfig(preset="tiny")
    nets = {n: build(cfg, image_size, name=n) for n in ("online", "polyak", "lagged")}
    return write_export(str(exports), step, nets, cell=cell)


def as_before_cells(export: str) -> str:
    """An export as written before cell identities: its manifest names no cell."""
    path = Path(export) / "manifest.json"
    m = json.loads(path.read_text())
    del m["cell"]
    path.write_text(json.dumps(m, indent=2, sort_keys=True))
    return export

"""A flaky bucket: the GCS emulator behind a proxy on the loopback that answers a share of the
requests with HTTP 503 or drops the connection. collect, shard, relabel and train write what a
clean run writes, logging the retries once; a bucket that keeps failing stops a job with one
line and status 2, and the rerun completes."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading

import pytest

from pipelines_testlib import IN_PROCESS, IMAGE, make_export, qtopt
from test_pipelines_gcs import bucket  # noqa: F401  (the emulator fixture)

SIZE = [f"--set=robot.image_size={IMAGE}", "--set=model.preset=tiny"]
TRAIN = ["--until-step", 3, "--no-progress", "--set=train.batch_size=8",
         "--set=train.deterministic=true", *SIZE]


class Faults:
    """Which requests fail: every ``every``-th one while ``left`` lasts (alternately a 503 and
    a dropped connection), or all of them during an ``outage``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.every, self.left, self.outage = 0, 0, False
        self.seen = self.failed = 0

    def next(self) -> str | None:
        with self.lock:
            self.seen += 1
            if self.outage:
                return "503"
            if self.every and self.left and self.seen % self.every == 0:
                self.left -= 1
                self.failed += 1
                return "503" if self.failed % 2 else "drop"
            return None


def proxy(upstream_port: int, faults: Faults):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = faults.next()
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "503":
                payload = json.dumps({"error": {"code": 503, "message": "backend error"}})
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())
                return
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection", "transfer-encoding")}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def flaky(bucket, monkeypatch, tmp_path_factory):  # noqa: F811
    import os

    import gcsfs.core

    upstream = int(os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    faults = Faults()
    server = proxy(upstream, faults)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("QTOPT_GCS_TRIES", "4")
    monkeypatch.setenv("QTOPT_GCS_BACKOFF_S", "0.02")
    monkeypatch.setenv("QTOPT_STAGING_DIR", str(tmp_path_factory.mktemp("staging")))
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    try:
        yield bucket, faults
    finally:
        server.shutdown()
        gcsfs.core.GCSFileSystem.clear_instance_cache()


def loop(root: str, capsys) -> tuple[dict, list]:
    """collect -> shard -> relabel -> train under ``root``: the bytes each wrote, and stderr."""
    from schemas import fs

    episodes, transitions = f"{root}/episodes", f"{root}/transitions"
    labelled, train = f"{root}/labelled", f"{root}/train"
    err = []
    steps = [
        ("collect", "--policy", "scripted", "--episodes", 2, "--episodes-per-block", 1, "--out",
         episodes, "--workers", 1, *SIZE, *IN_PROCESS),
        ("shard", "-i", f"{episodes}/*.tfrecord.gz", "-o", transitions, "--num-shards", 2,
         *IN_PROCESS),
        ("relabel", "-i", transitions, "-e", f"{root}/exports", "-o", labelled, "--epoch", 0,
         *SIZE, *IN_PROCESS),
        ("train", "--data", f"{labelled}/epoch-0", "--workdir", train, *TRAIN),
    ]
    for args in steps:
        capsys.readouterr()
        status = qtopt(*args)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status == 0, (args[0], lines)
        err.append((args[0], lines))
    written = {}
    for pattern in (f"{episodes}/*.tfrecord.gz", f"{transitions}/shard-*",
                    f"{labelled}/epoch-0/shard-*",
                    f"{train}/exports/export-000000003/*/weights.npz"):
        for path in fs.glob(pattern):
            written[path[len(root):]] = fs.read_bytes(path)
    return written, err


def test_a_flaky_bucket_gives_what_a_clean_one_gives_and_an_outage_one_line(flaky, capsys):
    root, faults = flaky
    make_export(f"{root}/clean/exports", IMAGE, step=0)
    make_export(f"{root}/flaky/exports", IMAGE, step=0)
    clean, clean_err = loop(f"{root}/clean", capsys)
    assert not any("gs: " in line for _, lines in clean_err for line in lines), clean_err

    # One request in five fails, for the whole loop: every job meets several.
    faults.every, faults.left = 5, 10_000
    flaky_out, flaky_err = loop(f"{root}/flaky", capsys)
    assert faults.failed >= 40, faults.failed           # the faults really happened
    assert flaky_out == clean                           # and changed nothing written
    assert len(flaky_out) >= 2 + 2 + 2 + 3
    for job, lines in flaky_err:                        # each job logged its retries once
        logged = [line for line in lines if line.startswith("gs: ")]
        assert len(logged) == 1 and "retrying up to 4 tries" in logged[0], (job, lines)

    faults.outage = True
    capsys.readouterr()
    status = qtopt("shard", "-i", f"{root}/clean/episodes/*.tfrecord.gz", "-o",
                   f"{root}/outage", "--num-shards", 2, *IN_PROCESS)
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.strip() and not line.startswith("gs: ")]
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("qtopt shard: error: ") and "failed 4 tries in a row" in lines[0]
    assert "QTOPT_GCS_TRIES" in lines[0]
    faults.outage = False
    assert qtopt("shard", "-i", f"{root}/clean/episodes/*.tfrecord.gz", "-o",
                 f"{root}/outage", "--num-shards", 2, *IN_PROCESS) == 0

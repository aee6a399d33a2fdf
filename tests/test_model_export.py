"""Exports: round trip (local and gs://), latest-complete selection, and clear errors for
half-written, corrupted and mismatched exports."""

import json
import os
import socket

import numpy as np
import pytest

import schemas  # noqa: F401

# gcsfs's bucket-type probe (storage layout API) hangs against the emulator; plain GCS API only.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

tf = pytest.importorskip("tensorflow")

from model.export import (complete_exports, export_step, load_export, prune_exports,  # noqa: E402
                          write_export)
from model.network import DEFAULT_STATE_INPUTS, InputSpec, QNetwork  # noqa: E402
from model.targets import compute_targets  # noqa: E402
from schemas import fs  # noqa: E402
from schemas.config import CEMConfig, TargetConfig  # noqa: E402
from schemas.errors import UserError  # noqa: E402


def _nets(seed, size=16, state_inputs=DEFAULT_STATE_INPUTS):
    rng = np.random.default_rng(seed)
    nets = {}
    for name in ("online", "polyak", "lagged"):
        net = QNetwork(InputSpec(size, state_inputs), "tiny", name)
        for v in net.variables:
            v.assign(v.numpy() + np.abs(rng.normal(0, 0.1, v.shape)).astype(np.float32))
        nets[name] = net
    return nets


def _batch(size=16, n=4):
    rng = np.random.default_rng(0)
    return {"observation/image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
            "observation/gripper_closed": np.ones(n, np.float32),
            "observation/gripper_opening": np.full(n, 0.02, np.float32),
            "observation/height": np.full(n, 0.1, np.float32),
            "action": rng.normal(0, 0.1, (n, 8)).astype(np.float32)}


def _assert_same(a: QNetwork, b: QNetwork):
    for va, vb in zip(a.variables, b.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    np.testing.assert_array_equal(a.q(_batch()).numpy(), b.q(_batch()).numpy())


def test_round_trip_and_latest_complete_export(tmp_path):
    exports = str(tmp_path / "exports")
    old, new = _nets(0), _nets(1)
    write_export(exports, 100, old)
    path = write_export(exports, 200, new)
    # A later export without its manifest (a writer killed half-way) must be ignored.
    os.makedirs(os.path.join(exports, "export-000000300", "online"))
    loaded = load_export(exports)
    assert loaded.path == path and loaded.step == 200
    assert loaded.spec == InputSpec(16) and loaded.preset == "tiny"
    for name in ("online", "polyak", "lagged"):
        _assert_same(loaded.networks[name], new[name])
    assert load_export(path) is loaded             # cached per process
    # Complete exports only, oldest first; the step read back from the name.
    assert [export_step(p) for p in complete_exports(exports)] == [100, 200]
    with pytest.raises(UserError, match="not an export directory"):
        export_step(str(tmp_path / "exports"))
    with pytest.raises(UserError, match="no complete export"):
        load_export(os.path.join(exports, "export-000000300"))


def test_prune_keeps_the_named_and_the_newest_and_finishes_half_removed(tmp_path):
    exports = str(tmp_path / "exports")
    nets = _nets(0)
    paths = {step: write_export(exports, step, nets) for step in (10, 20, 30, 40, 50)}
    # A removal interrupted after the manifest went: no longer complete, finished next time.
    os.remove(os.path.join(paths[30], "manifest.json"))
    # A newer export still being written (no manifest yet) is not the newest complete one.
    os.makedirs(os.path.join(exports, "export-000000060", "online"))
    removed = prune_exports(exports, {paths[10], "export-000000020"})
    assert sorted(os.path.basename(p) for p in removed) == ["export-000000030",
                                                           "export-000000040"]
    assert sorted(os.listdir(exports)) == ["export-000000010", "export-000000020",
                                           "export-000000050", "export-000000060"]
    assert load_export(exports).step == 50
    assert prune_exports(exports, set()) == [paths[10], paths[20]]
    assert sorted(os.listdir(exports)) == ["export-000000050", "export-000000060"]


def test_corrupted_weights_name_the_file(tmp_path):
    path = write_export(str(tmp_path / "exports"), 5, _nets(0))
    weights = os.path.join(path, "polyak", "weights.npz")
    with open(weights, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(UserError, match=r"polyak/weights.npz: checksum"):
        load_export(path)
    os.remove(weights)
    with pytest.raises(UserError, match=r"polyak/weights.npz: missing weights file"):
        load_export(path, copies=("polyak",))


def test_export_of_another_architecture_is_refused(tmp_path):
    path = write_export(str(tmp_path / "exports"), 5, _nets(0, state_inputs="image"))
    manifest = json.loads(open(os.path.join(path, "manifest.json")).read())
    manifest["input_spec"]["state_inputs"] = "image+gripper+height"
    open(os.path.join(path, "manifest.json"), "w").write(json.dumps(manifest))
    with pytest.raises(UserError, match=r"online/weights.npz: weight .* does not match"):
        load_export(path)


def test_export_whose_image_size_does_not_match_the_data(tmp_path):
    path = write_export(str(tmp_path / "exports"), 5, _nets(0, size=16))
    batch = {"next_observation/image": np.zeros((2, 24, 24, 3), np.uint8),
             "reward": np.zeros(2, np.float32), "is_terminal": np.zeros(2, bool)}
    with pytest.raises(UserError, match=r"export-000000005.*\(24, 24, 3\)"):
        compute_targets(path, batch, CEMConfig(), TargetConfig())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs(monkeypatch):
    server_mod = pytest.importorskip("gcp_storage_emulator.server")
    port = _free_port()
    server = server_mod.create_server("127.0.0.1", port, in_memory=True,
                                      default_bucket="qtopt-test")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        yield "gs://qtopt-test"
    finally:
        server.stop()


def test_round_trip_through_gcs(gcs):
    nets = _nets(3)
    path = write_export(fs.join(gcs, "run", "exports"), 42, nets)
    assert path.startswith("gs://")
    loaded = load_export(fs.join(gcs, "run", "exports"))
    assert loaded.step == 42
    _assert_same(loaded.polyak, nets["polyak"])
    # Pruning in a bucket: the older export goes, files and all; the newest stays readable.
    write_export(fs.join(gcs, "run", "exports"), 50, nets)
    removed = prune_exports(fs.join(gcs, "run", "exports"), set())
    assert removed == [path]
    assert not fs.glob(fs.join(path, "*", "weights.npz"))
    assert load_export(fs.join(gcs, "run", "exports")).step == 50

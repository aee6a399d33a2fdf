"""Exports of the online, Polyak and lagged weights: what relabelling and the policies load.

Layout, on a local path or ``gs://``::

    <workdir>/exports/export-000001000/
        online/weights.npz      every weight of the network, batch-norm statistics included
        polyak/weights.npz      theta_1: Polyak average of the online weights
        lagged/weights.npz      theta_2: theta_1 some thousands of steps ago
        manifest.json           written last: an export without it is incomplete and ignored

``manifest.json`` records the format version, the training step, the network preset, the input
spec (image size, state inputs, action dimension), the action bounds CEM must use with these
weights (from the robot's per-step limits), the termination mode of the data (learned or
scripted, which decides how CEM treats the terminate bit), the identity of the cell the data
came from (``cell``: policies run only in that cell) and a SHA-256 per weights file, all of
which loading checks, whichever copies it loads. The weights are plain ``.npz`` arrays keyed
``NNNN:<variable path>``, so any numpy can read them; loading rebuilds the network from the
preset and checks every name and shape.

``load_export(path)`` takes an ``export-*`` directory or an ``exports/`` directory (then the
complete export with the highest step). Results are cached per process, so a Beam DoFn can call it
in ``setup`` or on every bundle at no cost.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass

import numpy as np

from schemas import fs
from schemas.errors import UserError
from schemas.rundirs import export_dir, step_in_name  # noqa: F401  (export_dir: re-exported)

FORMAT = "qtopt-export"
FORMAT_VERSION = 1
COPIES = ("online", "polyak", "lagged")
MANIFEST = "manifest.json"


@dataclass
class Export:
    """A loaded export: the three networks and what they expect of their inputs."""

    path: str
    step: int
    spec: "InputSpec"  # noqa: F821  (model.network, imported lazily)
    preset: str
    networks: dict     # copy name -> QNetwork
    manifest: dict

    @property
    def online(self):
        return self.networks["online"]

    @property
    def polyak(self):
        return self.networks["polyak"]

    @property
    def lagged(self):
        return self.networks["lagged"]

    @property
    def bounds(self):
        """CEM's (low, high) action bounds: those the export was trained with."""
        from schemas.mdp import ACTION_HIGH, ACTION_LOW

        b = self.manifest.get("action_bounds")
        if b is None:
            return ACTION_LOW, ACTION_HIGH
        return np.asarray(b["low"], np.float32), np.asarray(b["high"], np.float32)

    @property
    def gripper_moves(self) -> bool:
        """``robot.gripper_moves`` of the data the export was trained on (older exports: true)."""
        return bool(self.manifest.get("gripper_moves", True))

    @property
    def cell(self) -> str:
        """The identity of the cell whose data the export was trained on (``schemas.cells``);
        exports written before identities existed were trained on the cell before them."""
        from schemas.cells import of_manifest

        return of_manifest(self.manifest)

    @property
    def termination(self) -> str:
        """``robot.termination`` of the data the export was trained on (older exports: learned)."""
        return self.manifest.get("termination", "learned")

    def check_image_shape(self, image_shape, where: str) -> None:
        self.spec.check_image_shape(image_shape, f"{where} (export {self.path})")


def weights_to_bytes(variables) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{f"{i:04d}:{v.path}": np.asarray(v.numpy()) for i, v in enumerate(variables)})
    return buf.getvalue()


def weights_digest(networks: dict) -> str:
    """SHA-256 (16 hex digits) of the networks' weights (``{"online": QNetwork, ...}``): names,
    shapes and values, so two processes or an export and a live trainer can be compared."""
    digest = hashlib.sha256()
    for name in sorted(networks):
        for v in networks[name].variables:
            value = np.ascontiguousarray(v.numpy())
            digest.update(f"{name}/{v.path}:{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def assign_from_bytes(variables, data: bytes, where: str) -> None:
    """Load ``weights_to_bytes`` output into ``variables``, checking names and shapes."""
    try:
        arrays = np.load(io.BytesIO(data))
        keys = sorted(arrays.files)
    except Exception as exc:  # a truncated or foreign file: numpy raises several kinds
        raise UserError(f"{where}: not a readable weights file ({exc})") from None
    if len(keys) != len(variables):
        raise UserError(f"{where}: holds {len(keys)} arrays but the network has "
                        f"{len(variables)} weights (different model preset or state inputs?)")
    for key, var in zip(keys, variables):
        name = key.split(":", 1)[1]
        value = arrays[key]
        if name != var.path or tuple(value.shape) != tuple(var.shape):
            raise UserError(f"{where}: weight {name} {tuple(value.shape)} does not match the "
                            f"network's {var.path} {tuple(var.shape)}")
        var.assign(value)


def write_export(exports: str, step: int, networks: dict, extra: dict | None = None,
                 bounds=None, termination: str = "learned", gripper_moves: bool = True,
                 cell: str | None = None) -> str:
    """Write the networks (``{"online": QNetwork, ...}``) as ``export-<step>``; returns its path.

    ``bounds``: the (low, high) action bounds CEM should use with these weights (default: the
    RobotConfig defaults). ``termination``: the ``robot.termination`` the weights were trained
    under; with ``scripted``, CEM sets the terminate bit by algorithm 2 instead of sampling it.
    ``gripper_moves``: the ``robot.gripper_moves`` of the data; false, CEM samples only actions
    that work the gripper or move, as the cell executes them. ``cell``: the identity of the cell
    whose data trained the weights (default: the default cell at the networks' image size);
    policies refuse to run in any other.

    The manifest goes last, so a reader never sees a half-written export as complete.
    """
    from schemas.mdp import ACTION_HIGH, ACTION_LOW

    from schemas.cells import default_cell

    low, high = (ACTION_LOW, ACTION_HIGH) if bounds is None else bounds
    first = next(iter(networks.values()))
    path = export_dir(exports, step)
    files = {}
    for name, net in networks.items():
        data = weights_to_bytes(net.variables)
        rel = f"{name}/weights.npz"
        fs.write_bytes(fs.join(path, rel), data)
        files[name] = {"path": rel, "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "preset": first.preset,
        "input_spec": first.spec.to_dict(),
        "action_bounds": {"low": [float(x) for x in low], "high": [float(x) for x in high]},
        "termination": termination,
        "gripper_moves": bool(gripper_moves),
        "cell": cell or default_cell(first.spec.image_size),
        "networks": files,
        "created_unix": time.time(),
        **(extra or {}),
    }
    fs.write_text(fs.join(path, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
    return path


def complete_exports(exports: str) -> list[str]:
    """The complete ``export-*`` directories under ``exports``, oldest (lowest step) first."""
    manifests = fs.glob(fs.join(exports, "export-*", MANIFEST))
    return sorted((m[: -len(MANIFEST) - 1] for m in manifests), key=fs.basename)


def export_step(path: str) -> int:
    """The training step in an export directory's name (``export-000001234`` -> 1234)."""
    name = fs.basename(path.rstrip("/"))
    if not re.fullmatch(r"export-\d+", name):
        raise UserError(f"{path}: not an export directory (export-<step>)")
    return step_in_name(name)


def latest_export(exports: str) -> str | None:
    """The complete ``export-*`` directory with the highest step under ``exports``, or None."""
    found = complete_exports(exports)
    return found[-1] if found else None


def prune_exports(exports: str, keep: set[str]) -> list[str]:
    """Remove the ``export-*`` directories under ``exports`` except those in ``keep`` (paths or
    directory names), the newest complete one and any newer (perhaps still being written);
    returns what was removed.

    The manifest goes first, so an export whose removal is interrupted is no longer complete
    (``latest_export`` ignores it) and the next prune finishes it."""
    newest = latest_export(exports)
    if newest is None:
        return []
    newest_name = fs.basename(newest)
    keep_names = {fs.basename(k) for k in keep if k} | {newest_name}
    removed = []
    for path in fs.listdir(exports):
        name = fs.basename(path)
        # A name after the newest complete one may still be being written: left alone.
        if not name.startswith("export-") or name in keep_names or name > newest_name:
            continue
        fs.remove(fs.join(path, MANIFEST))
        fs.remove(path, recursive=True)
        removed.append(path)
    return removed


def resolve(path: str) -> str:
    """An export directory from an ``export-*`` or ``exports/`` path; UserError if none."""
    path = str(path).rstrip("/")
    if fs.exists(fs.join(path, MANIFEST)):
        return path
    found = latest_export(path)
    if found is None:
        if fs.glob(fs.join(path, "export-*")) or fs.listdir(path):
            raise UserError(f"{path}: no complete export (manifest.json missing: half-written?)")
        raise UserError(f"{path}: no such export")
    return found


def read_export_manifest(path: str) -> dict:
    where = fs.join(path, MANIFEST)
    try:
        manifest = json.loads(fs.read_text(where))
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: unreadable export manifest ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{where}: not a {FORMAT} v{FORMAT_VERSION} manifest "
                        f"(format {manifest.get('format')!r} v{manifest.get('format_version')})")
    return manifest


def load_export(path: str, copies=COPIES) -> Export:
    """Load an export; cached per process by path, manifest and copies.

    The manifest is reread on every call (one small file), so an export rewritten in place is
    loaded afresh while repeated calls on an unchanged export cost nothing.
    """
    path = resolve(path)
    manifest = read_export_manifest(path)
    return _load(path, json.dumps(manifest, sort_keys=True), tuple(copies))


@functools.lru_cache(maxsize=8)
def _load(path: str, manifest_text: str, copies: tuple) -> Export:
    from model.network import InputSpec, QNetwork

    manifest = json.loads(manifest_text)
    spec = InputSpec.from_dict(manifest["input_spec"])
    for name in copies:
        if name not in manifest["networks"]:
            raise UserError(f"{path}: export has no {name!r} weights")
    # Every file the manifest lists is checked, not only the copies loaded: an export is
    # whole or refused, whichever job looks at it first.
    files = {}
    for name, entry in sorted(manifest["networks"].items()):
        where = fs.join(path, entry["path"])
        try:
            data = fs.read_bytes(where)
        except FileNotFoundError:
            raise UserError(f"{where}: missing weights file") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise UserError(f"{where}: checksum does not match the manifest (corrupted?)")
        files[name] = (where, data)
    networks = {}
    for name in copies:
        where, data = files[name]
        net = QNetwork(spec, manifest["preset"], name=name)
        assign_from_bytes(net.variables, data, where)
        networks[name] = net
    return Export(path, int(manifest["step"]), spec, manifest["preset"], networks, manifest)

"""Which cell made a piece of data, and the refusals that keep cells apart.

A cell's identity (``RobotConfig.cell_identity``: cell version, camera, image size, object scale)
is recorded in every episode, carried into the manifest of every dataset made from them and into
every export trained on them. Two cells render different images of differently behaving objects,
so a dataset never mixes cells and a policy only runs in the cell it was trained on. Data and
exports made before identities existed read as ``CELL_BEFORE_IDENTITIES``.
"""

from __future__ import annotations

import re

from schemas.errors import UserError
from schemas.specs import CELL_BEFORE_IDENTITIES

_IDENTITY = re.compile(r"^cell-v(\d+)/([^/]+)/(\d+)px/scale-([^/]+)$")
# robot.* option -> the part of an identity that names its value
_OPTIONS = (("camera", 1), ("image_size", 2), ("object_scale", 3))


def of_manifest(manifest: dict) -> str:
    """The cell a dataset or export manifest names (older manifests name none)."""
    return manifest.get("cell") or CELL_BEFORE_IDENTITIES


def parse(identity: str) -> dict | None:
    """``{"version", "camera", "image_size", "object_scale"}`` of an identity; None when it is
    not one ``RobotConfig.cell_identity`` writes (one made before identities existed)."""
    m = _IDENTITY.match(identity or "")
    if not m:
        return None
    return {"version": int(m.group(1)), "camera": m.group(2), "image_size": int(m.group(3)),
            "object_scale": m.group(4)}


def default_cell(image_size: int) -> str:
    """The default RobotConfig's identity at ``image_size``, what fake data and exports written
    without a config name (sizes under robot.image_size's minimum included)."""
    from schemas.config import RobotConfig

    default = RobotConfig()
    return default.cell_identity().replace(f"/{default.image_size}px/", f"/{int(image_size)}px/",
                                           1)


def how_to_match(identity: str, current: str) -> str:
    """What makes the current cell ``identity``'s: the ``--set robot.*`` options, or nothing
    but new data where the cell itself (its version) differs."""
    have, want = parse(current), parse(identity)
    if have is None or want is None or have["version"] != want["version"]:
        return "the cell itself has changed since: collect and train again with this cell"
    options = " ".join(f"--set robot.{name}={want[name]}" for name, _ in _OPTIONS
                       if want[name] != have[name])
    return f"use {options}"


def one_cell(found: dict, what: str) -> str | None:
    """The single identity in ``found`` ({identity: a file or directory that holds it}), None
    if it is empty; a one-line UserError naming two of them, and where each was found, if there
    are more."""
    if not found:
        return None
    if len(found) > 1:
        (a, where_a), (b, where_b) = sorted(found.items())[:2]
        raise UserError(f"{what} would mix data of different cells: {a} ({where_a}) and {b} "
                        f"({where_b}); their images and objects differ: give each cell's data "
                        "a dataset of its own")
    return next(iter(found))

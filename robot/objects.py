"""Which objects go into the tray: the train/test split of pybullet's random_urdfs, or user files.

The split is by the object's parsed numeric id (``random_urdfs/123/123.urdf`` is object 123):
ids ending in 0 are the 100 test objects, the other 900 are for training. Parsing the id, rather
than globbing names, is what keeps the two sets disjoint and complete; the default pools then
leave out the few objects listed in ``BROKEN``.

User files are checked before any simulation: a readable URDF with at least one collision shape,
whose local meshes exist and whose ``.obj`` collision meshes have finite vertices.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pybullet_data

from schemas.errors import UserError

RANDOM_URDFS = os.path.join(pybullet_data.getDataPath(), "random_urdfs")
SPLITS = ("train", "test")

# random_urdfs objects the default pools leave out, by id, with why: a one-off scan of all 1000
# (pybullet_data of pybullet 3.2.7) by check_urdf, by loading, and by dropping each alone into the
# tray at object scales 0.8 and 1. Every other object has collision geometry and finite vertices,
# loads, and lands on the floor. The pools are resolved at every cell construction: this list
# stands in for checking 1000 meshes each time.
BROKEN = {
    168: "168.obj's vertices are all NaN: it loads, has no extent and falls through the floor",
}


@dataclass(frozen=True)
class ObjectFile:
    """One object model: a stable id for records and the URDF file to load."""

    object_id: str
    path: str


def object_number(name: str) -> int | None:
    """The numeric id of a random_urdfs entry ('007' -> 7), or None when it is not a number."""
    return int(name) if name.isdigit() else None


def is_test_object(number: int) -> bool:
    return number % 10 == 0


def random_urdfs(split: str, root: str = RANDOM_URDFS,
                 exclude: dict | None = None) -> list[ObjectFile]:
    """Every object of one split, sorted by id, less ``exclude`` (by default ``BROKEN`` for
    pybullet_data's own random_urdfs, nothing for another directory)."""
    if exclude is None:
        exclude = BROKEN if os.path.abspath(root) == os.path.abspath(RANDOM_URDFS) else {}
    if split not in SPLITS:
        raise UserError(f"objects: unknown split {split!r}; use train, test or URDF paths")
    if not os.path.isdir(root):
        raise UserError(f"objects: {root} does not exist (is pybullet_data installed?)")
    out = []
    for name in sorted(os.listdir(root)):
        number = object_number(name)
        path = os.path.join(root, name, f"{name}.urdf")
        if number is None or number in exclude or not os.path.isfile(path):
            continue
        if is_test_object(number) == (split == "test"):
            out.append(ObjectFile(name, path))
    if not out:
        raise UserError(f"objects: no {split} objects found under {root}")
    return out


_SHAPES = ("mesh", "box", "sphere", "cylinder", "capsule")


def check_urdf(path: str) -> None:
    """Fail with a message naming the file unless it looks like a loadable single-object URDF
    with something to collide with."""
    if os.path.isdir(path):
        raise UserError(f"object file {path}: is a directory; give .urdf files, train or test")
    if not os.path.isfile(path):
        raise UserError(f"object file {path}: no such file")
    if not path.lower().endswith(".urdf"):
        raise UserError(f"object file {path}: expected a .urdf file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise UserError(f"object file {path}: not valid XML ({exc})") from None
    if root.tag != "robot" or root.find("link") is None:
        raise UserError(f"object file {path}: not a URDF (expected <robot> with a <link>)")
    for mesh in root.iter("mesh"):
        name = mesh.get("filename", "")
        if name and "://" not in name and not os.path.isfile(
                os.path.join(os.path.dirname(path), name)):
            raise UserError(f"object file {path}: mesh {name} not found")
    shapes = [shape for collision in root.iter("collision")
              for geometry in collision.findall("geometry") for shape in geometry
              if shape.tag in _SHAPES]
    if not shapes:
        # pybullet loads it without complaint, and it falls through the tray.
        raise UserError(f"object file {path}: no collision geometry (a <collision> with a "
                        f"<geometry> of {', '.join(_SHAPES)})")
    for shape in shapes:
        name = shape.get("filename", "") if shape.tag == "mesh" else ""
        if name.lower().endswith(".obj") and "://" not in name:
            check_obj(os.path.join(os.path.dirname(path), name), path)


def check_obj(mesh: str, urdf: str) -> None:
    """Refuse a Wavefront mesh with a non-finite or unreadable vertex, or with none at all."""
    count = 0
    with open(mesh, errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.startswith("v "):
                continue
            count += 1
            try:
                values = [float(x) for x in line.split()[1:4]]
            except ValueError:
                values = []
            if len(values) != 3:
                raise UserError(f"object file {urdf}: mesh {mesh} line {number}: "
                                f"not a vertex ({line.strip()[:60]!r})")
            if not all(math.isfinite(v) for v in values):
                raise UserError(f"object file {urdf}: mesh {mesh} line {number}: "
                                f"non-finite vertex ({line.strip()[:60]!r})")
    if count == 0:
        raise UserError(f"object file {urdf}: mesh {mesh} has no vertices")


def user_objects(paths: list[str]) -> list[ObjectFile]:
    out = []
    for path in paths:
        path = os.path.abspath(os.path.expanduser(path.strip()))
        check_urdf(path)
        out.append(ObjectFile(os.path.splitext(os.path.basename(path))[0], path))
    if not out:
        raise UserError("objects: the list of URDF files is empty")
    return out


def resolve(spec: str | list[str] | tuple[str, ...]) -> list[ObjectFile]:
    """``train``, ``test``, a comma-separated string of URDF paths, or a list of paths."""
    if isinstance(spec, str):
        if spec.strip() in SPLITS:
            return random_urdfs(spec.strip())
        return user_objects([p for p in spec.split(",") if p.strip()])
    return user_objects(list(spec))

"""Which objects go into the tray: the train/test split of pybullet's random_urdfs, or user files.

The split is by the object's parsed numeric id (``random_urdfs/123/123.urdf`` is object 123):
ids ending in 0 are the 100 test objects, the other 900 are for training. Parsing the id, rather
than globbing names, is what keeps the two sets disjoint and complete.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pybullet_data

from schemas.errors import UserError

RANDOM_URDFS = os.path.join(pybullet_data.getDataPath(), "random_urdfs")
SPLITS = ("train", "test")


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


def random_urdfs(split: str, root: str = RANDOM_URDFS) -> list[ObjectFile]:
    """Every object of one split, sorted by id."""
    if split not in SPLITS:
        raise UserError(f"objects: unknown split {split!r}; use train, test or URDF paths")
    if not os.path.isdir(root):
        raise UserError(f"objects: {root} does not exist (is pybullet_data installed?)")
    out = []
    for name in sorted(os.listdir(root)):
        number = object_number(name)
        path = os.path.join(root, name, f"{name}.urdf")
        if number is None or not os.path.isfile(path):
            continue
        if is_test_object(number) == (split == "test"):
            out.append(ObjectFile(name, path))
    if not out:
        raise UserError(f"objects: no {split} objects found under {root}")
    return out


def check_urdf(path: str) -> None:
    """Fail with a message naming the file unless it looks like a loadable single-object URDF."""
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

"""Object pools and the validation of object files, on real files (no simulation)."""

from __future__ import annotations

import os

import pytest

from robot import objects
from schemas.errors import UserError

# A loadable object: one link, a box to collide with.
BOX = ('<robot name="box"><link name="a"><inertial><mass value="0.1"/>'
       '<inertia ixx="1" ixy="0" ixz="0" iyy="1" iyz="0" izz="1"/></inertial>'
       '<collision><geometry><box size="0.03 0.03 0.03"/></geometry></collision></link></robot>')
TRIANGLE = "v 0 0 0\nv 0.01 0 0\nv 0 0.01 {z}\nf 1 2 3\n"


def _mesh_urdf(tmp_path, obj_text: str, element: str = "collision"):
    (tmp_path / "thing.obj").write_text(obj_text)
    path = tmp_path / "thing.urdf"
    path.write_text(f'<robot name="x"><link name="a"><{element}><geometry>'
                    f'<mesh filename="thing.obj" scale="1 1 1"/></geometry></{element}>'
                    f'</link></robot>')
    return path


def _refused(path, message: str) -> str:
    with pytest.raises(UserError) as err:
        objects.resolve(str(path))
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text
    return text


# ------------------------------------------------------------------------------ the pools

def test_pools_split_by_parsed_id_and_leave_out_the_broken():
    train = objects.random_urdfs("train")
    test = objects.random_urdfs("test")
    train_ids = {int(o.object_id) for o in train}
    test_ids = {int(o.object_id) for o in test}
    assert not train_ids & test_ids
    assert all(i % 10 == 0 for i in test_ids) and all(i % 10 != 0 for i in train_ids)
    # ids like 100 and 010 end in 0 as numbers: test objects, whatever a glob would say.
    assert {0, 10, 100, 990} <= test_ids
    assert not (train_ids | test_ids) & set(objects.BROKEN)
    on_disk = {int(n) for n in os.listdir(objects.RANDOM_URDFS) if n.isdigit()}
    assert train_ids | test_ids | set(objects.BROKEN) == on_disk
    assert len(train_ids | test_ids) == 1000 - len(objects.BROKEN)
    assert all(os.path.isfile(o.path) for o in train + test)
    assert all(o.object_id == os.path.basename(os.path.dirname(o.path)) for o in train + test)


def test_every_excluded_object_fails_the_cheap_checks():
    assert 168 in objects.BROKEN
    for number, reason in objects.BROKEN.items():
        assert reason
        name = f"{number:03d}"
        path = os.path.join(objects.RANDOM_URDFS, name, f"{name}.urdf")
        with pytest.raises(UserError, match=name):
            objects.check_urdf(path)


def test_another_directory_excludes_nothing_unless_asked(tmp_path):
    for name in ("168", "170", "171"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.urdf").write_text(BOX)
    # The default exclusion belongs to pybullet_data's own objects, not to any 168.
    assert [o.object_id for o in objects.random_urdfs("train", str(tmp_path))] == ["168", "171"]
    assert [o.object_id for o in objects.random_urdfs("test", str(tmp_path))] == ["170"]
    assert [o.object_id for o in objects.random_urdfs(
        "train", str(tmp_path), exclude=objects.BROKEN)] == ["171"]
    with pytest.raises(UserError, match="no test objects"):
        objects.random_urdfs("test", str(tmp_path), exclude={170: "a reason"})


# ------------------------------------------------------------------------------ user files

def test_good_files_are_accepted(tmp_path):
    box = tmp_path / "box.urdf"
    box.write_text(BOX)
    mesh = _mesh_urdf(tmp_path, TRIANGLE.format(z="0.01"))
    pool = objects.resolve(f"{box},{mesh}")
    assert [o.object_id for o in pool] == ["box", "thing"]
    assert objects.resolve([str(box)])[0].path == str(box)


def test_a_urdf_without_collision_geometry_is_refused(tmp_path):
    _refused(_mesh_urdf(tmp_path, TRIANGLE.format(z="0.01"), element="visual"),
             "no collision geometry")
    empty = tmp_path / "empty.urdf"
    empty.write_text('<robot name="x"><link name="a"><collision><geometry/></collision>'
                     '</link></robot>')
    _refused(empty, "no collision geometry")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_a_mesh_with_non_finite_vertices_is_refused(tmp_path, value):
    text = _refused(_mesh_urdf(tmp_path, TRIANGLE.format(z=value)), "non-finite vertex")
    assert "thing.obj line 3" in text


@pytest.mark.parametrize("obj_text, message", [
    ("v 0 0\nf 1 1 1\n", "not a vertex"),
    ("v 0 zero 0\n", "not a vertex"),
    ("# nothing\nf 1 2 3\n", "has no vertices"),
])
def test_an_unreadable_mesh_is_refused(tmp_path, obj_text, message):
    _refused(_mesh_urdf(tmp_path, obj_text), message)


def test_a_directory_is_named_as_one(tmp_path):
    _refused(tmp_path, "is a directory")
    text = _refused(objects.RANDOM_URDFS, "is a directory")
    assert "no such file" not in text


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("<robot><link", "not valid XML"),
    ("<sdf><model/></sdf>", "not a URDF"),
    ('<robot name="x"><link name="a"><visual><geometry><mesh filename="gone.obj"/>'
     '</geometry></visual></link></robot>', "mesh gone.obj not found"),
])
def test_bad_object_files_are_named(tmp_path, content, message):
    path = tmp_path / "thing.urdf"
    if content is not None:
        path.write_text(content)
    _refused(path, message)


def test_unknown_split_and_wrong_suffix_are_refused(tmp_path):
    other = tmp_path / "thing.obj"
    other.write_text("v 0 0 0\n")
    with pytest.raises(UserError, match="expected a .urdf file"):
        objects.resolve(str(other))
    with pytest.raises(UserError, match="the list of URDF files is empty"):
        objects.resolve(" , ")
    with pytest.raises(UserError, match="unknown split"):
        objects.random_urdfs("validation")

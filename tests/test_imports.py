"""Every module of the project, tfrecord and tensorflow import together in one process, in
either order of the two packages (they clash on a protobuf symbol as shipped)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import importlib, pkgutil, sys
first, second = sys.argv[1], sys.argv[2]
import schemas
importlib.import_module(first)
importlib.import_module(second)
failed = []
count = 0
for package in ("schemas", "robot", "model", "pipelines"):
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        importlib.import_module(info.name)
        count += 1
import tensorflow as tf, tfrecord
ex = tfrecord.example_pb2.Example()
ex.features.feature["x"].int64_list.value.append(7)
parsed = tf.io.parse_single_example(ex.SerializeToString(),
                                    {"x": tf.io.FixedLenFeature([], tf.int64)})
assert int(parsed["x"]) == 7
print("modules", count)
"""


@pytest.mark.parametrize("first, second", [("tfrecord", "tensorflow"),
                                           ("tensorflow", "tfrecord")])
def test_everything_imports_in_one_process(first, second):
    proc = subprocess.run([sys.executable, "-c", PROGRAM, first, second], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) >= 10


def test_importing_tfrecord_before_schemas_is_explained():
    code = ("import tfrecord, schemas.compat as c\n"
            "try:\n    c.ensure_compatible()\nexcept ImportError as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert "Import schemas (or any qtopt package) first" in proc.stdout


def test_packages_import_one_way_and_robot_never_loads_tensorflow():
    # The contracts (.importlinter): schemas <- robot, schemas <- model, everything <- pipelines;
    # robot free of TensorFlow; no command imports another's module.
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout
    code = ("import importlib, pkgutil, sys, robot\n"
            "for info in pkgutil.walk_packages(robot.__path__, 'robot.'):\n"
            "    importlib.import_module(info.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_every_pipelines_module_sits_in_a_layer_and_nothing_is_imported_by_name():
    # A module left out of the layers escapes the contract; importlib hides an import from it.
    import configparser
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    contracts = configparser.ConfigParser()
    contracts.read(repo / ".importlinter")
    layers = contracts["importlinter:contract:pipelines"]["layers"]
    listed = {name.strip() for line in layers.splitlines() for name in line.split("|")
              if name.strip()}
    modules = {".".join(p.relative_to(repo).with_suffix("").parts)
               for p in (repo / "pipelines").rglob("*.py") if p.name != "__init__.py"}
    assert modules == listed, (sorted(modules - listed), sorted(listed - modules))
    by_name = [str(p.relative_to(repo)) for p in (repo / "pipelines").rglob("*.py")
               if "import_module(" in p.read_text() and p.name != "cli.py"]
    assert by_name == []   # the dispatcher alone loads the command named on the line

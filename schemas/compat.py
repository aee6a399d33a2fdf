"""Let ``tfrecord`` and ``tensorflow`` live in one process, in either import order.

Importing ``schemas`` installs an import hook that gives ``tfrecord`` our private-pool messages
(``schemas.example_proto``) as its ``tfrecord.example_pb2``. ``tfrecord`` then never registers its
``tensorflow.*`` symbols in protobuf's default pool, which leaves that pool to TensorFlow alone.
The wire format is identical, so records read and written either way are the same bytes.

The hook only helps if ``schemas`` is imported before ``tfrecord``; ``ensure_compatible`` says so
clearly when that was not the case.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "tfrecord.example_pb2"


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from schemas import example_proto

        for name in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "FeatureList",
                     "FeatureLists", "Example", "SequenceExample", "DESCRIPTOR"):
            setattr(module, name, getattr(example_proto, name))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), origin="schemas.example_proto")


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def ensure_compatible() -> None:
    """Raise a clear error if ``tfrecord`` was imported before the hook was installed."""
    module = sys.modules.get(_TARGET)
    if module is not None and not isinstance(getattr(module, "__spec__", None) and
                                             module.__spec__.loader, _Loader):
        raise ImportError(
            "tfrecord was imported before schemas: its example_pb2 now holds the tensorflow.* "
            "protobuf symbols and TensorFlow cannot be imported in this process. "
            "Import schemas (or any qtopt package) first.")

"""Quiet by default: TensorFlow's and pybullet's start-up chatter (oneDNN and absl notices,
``pybullet build time``, ``argv[0]=``) is written by C++ straight to the process's file
descriptors, so only silencing the descriptors while they load hides it. ``qtopt --verbose``
(``QTOPT_VERBOSE=1``, inherited by worker processes) lets it through."""

from __future__ import annotations

import contextlib
import os
import sys

ENV = "QTOPT_VERBOSE"


def verbose() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


@contextlib.contextmanager
def silenced(fds=(1, 2)):
    """Send what C code writes to ``fds`` to /dev/null for the block (unless verbose)."""
    if verbose():
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:  # no such descriptor in this process
                continue
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


class _QuietLoader:
    """The real loader of a noisy package, run with the descriptors silenced."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def create_module(self, spec):
        with silenced((2,)):
            return self._inner.create_module(spec)

    def exec_module(self, module):
        with silenced((2,)):
            self._inner.exec_module(module)


class _QuietFinder:
    """Finds ``tensorflow`` as the other finders do, and loads it silenced."""

    NOISY = ("tensorflow",)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.NOISY or verbose():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def install() -> None:
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())

"""A run's record of what it has done: named phases in a JSON state file, written as each one
completes, so that a killed run resumes at the next one; the configuration it was made with,
so that a rerun under another one is refused instead of mixed in."""

from __future__ import annotations

import copy
import json
import time

from schemas import fs
from schemas.config import Config
from schemas.errors import UserError


class Phases:
    """Named steps of a long job, recorded in a JSON state file as each one completes: the one
    record of what a run has done (demo, study, and each finetuning round), so that a killed run
    resumes at the next step. ``state`` may hold the job's own fields beside ``done``; they are
    written with it (``save``).

    ``config``: the run's configuration, refused when a rerun differs (``same_config``); None
    for a job that checks its inputs itself (finetuning)."""

    def __init__(self, path: str, config: dict | None, label: str, defaults: dict | None = None):
        self.path, self.label = path, label
        try:
            self.state = json.loads(fs.read_text(path)) if fs.exists(path) else {}
        except ValueError:
            raise UserError(f"{path}: not valid JSON (remove it to start this run over)") \
                from None
        # Copies: a default list shared between runs in one process would collect all their
        # entries.
        for key, value in copy.deepcopy({"done": [], **(defaults or {})}).items():
            self.state.setdefault(key, value)
        if config is not None:
            stored = self.state.get("config")
            if stored is not None and not same_config(stored, config):
                raise UserError(f"{path}: this run was made with another configuration; use "
                                "another run directory or remove it")
            self.state["config"] = config

    def save(self) -> None:
        fs.write_text(self.path, json.dumps(self.state, indent=1, sort_keys=True))

    def __call__(self, name: str, fn) -> None:
        if name in self.state["done"]:
            print(f"{self.label}: {name} already done", flush=True)
            return
        start = time.monotonic()
        print(f"{self.label}: --- {name} ---", flush=True)
        fn()
        self.state["done"].append(name)
        self.state.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
        self.save()


# Options that only choose what the table reports, not how anything is made: a finished run
# may be asked again under another value (each finetuned export is evaluated in its own directory).
REPORTING_OPTIONS = {("finetune", "select")}
# Options a finished run may be asked again under a larger value: more finetuning rounds go on
# from the rounds done (finetuning resumes), and the curve and table are brought up to date.
GROWING_OPTIONS = {("finetune", "rounds")}


def same_config(stored: dict, current: dict) -> bool:
    """Whether a run recorded with ``stored`` may go on under ``current``: equal, except that
    an option added to the code since (missing from ``stored``) may hold its default, which
    keeps the old behaviour, that REPORTING_OPTIONS may differ and GROWING_OPTIONS grow."""
    defaults = Config().to_dict()

    def same(a, b, d, path=()) -> bool:
        if path in REPORTING_OPTIONS:
            return True
        if path in GROWING_OPTIONS and a is not None and b is not None:
            return b >= a
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return a == b
        for key in b:
            if key not in a:
                if (path + (key,) not in REPORTING_OPTIONS and
                        (not isinstance(d, dict) or key not in d or b[key] != d[key])):
                    return False
            elif not same(a[key], b[key], d.get(key) if isinstance(d, dict) else None,
                          path + (key,)):
                return False
        return set(a) <= set(b)

    return same(stored, current, defaults)

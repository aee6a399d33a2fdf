"""The ``qtopt`` command line.

Each command lives in a module with ``add_arguments(parser)`` and ``run(args) -> int``, imported
only when that command runs, so ``qtopt inspect`` never imports TensorFlow and ``--help`` is fast.
A ``UserError`` (bad file, record or option) prints one line and exits with status 2; a job that
published with dead letters beyond ``--max-dead-fraction`` exits with status 3.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# TensorFlow's C++ start-up chatter, in this process and the Beam workers it starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import schemas  # noqa: F401  (installs the tfrecord/tensorflow import hook first)
from schemas import fs, quiet
from schemas.errors import StorageUnavailable, UserError

# name -> (module, one-line help). Add a command by adding a line here.
COMMANDS = {
    "inspect": ("pipelines.jobs.inspect_records", "describe TFRecord files of any record kind"),
    "config": ("pipelines.jobs.config", "show presets and resolved configurations"),
    "collect": ("pipelines.jobs.collect",
                "run a policy in simulated cells, episodes to TFRecord shards"),
    "render": ("pipelines.jobs.render", "a GIF or MP4 of chosen episodes of a TFRecord file"),
    "shard": ("pipelines.jobs.shard",
              "episodes to shuffled transition shards, catalogue, manifest"),
    "subsample": ("pipelines.jobs.subsample", "a stable, nested fraction of a dataset's episodes"),
    "relabel": ("pipelines.jobs.relabel", "Bellman targets for transitions from a target export"),
    "evaluate": ("pipelines.jobs.evaluate", "a policy under the grasping-with-replacement and "
                                       "bin-emptying protocols; result, report, plots"),
    "finetune": ("pipelines.flows.finetune",
                 "joint finetuning: rounds of on-policy collect, shard, "
                                       "relabel, train"),
    "study": ("pipelines.flows.study",
              "dataset-size study: subsample, train, evaluate each subset"),
    "curve": ("pipelines.flows.curve", "a run's learning curve: every kept export on train objects "
                                 "against gradient steps and grasps"),
    "export": ("pipelines.jobs.convert", "episodes to an RLDS (TFDS) or LeRobot v3 dataset: "
                                   "export rlds|lerobot EPISODES -o DIR"),
    "demo": ("pipelines.flows.demo", "the whole system end to end on local defaults (make demo)"),
    "train": ("pipelines.jobs.train",
              "train the Q-function on labelled shards; checkpoints, exports"),
}


def examples(module) -> str:
    """The ``qtopt ...`` lines of a command module's docstring (with their continuations), for
    the end of its ``--help``."""
    lines, going = [], False
    for line in (module.__doc__ or "").splitlines():
        text = line.strip()
        if text.startswith("qtopt ") or going:
            lines.append(("      " if going else "  ") + text)
            going = text.endswith("\\")
    return "examples:\n" + "\n".join(lines) if lines else ""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, status 2, as argparse does, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qtopt", description="QT-Opt grasping: collect episodes, shard and "
                     "relabel them with Beam, train and evaluate Q-functions.",
                     epilog="Every command takes --verbose, which lets TensorFlow's and "
                            "pybullet's own start-up messages through; 'qtopt COMMAND --help' "
                            "ends with examples.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def command_parser(name: str):
    """The command's module and its argument parser, as ``qtopt NAME`` uses them."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = _Parser(prog=f"qtopt {name}", description=COMMANDS[name][1],
                     epilog=examples(module), formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return module, parser


def invoke(argv: list[str]) -> int:
    """Run one command as the CLI would, but let a UserError propagate to the caller (tests and
    scripts; jobs chain each other through their functions)."""
    from pipelines.machinery.job import JobResult

    name = argv[0]
    if name not in COMMANDS:
        raise UserError(f"unknown command {name!r}")
    module, cmd_parser = command_parser(name)
    try:
        args = cmd_parser.parse_args([str(a) for a in argv[1:]])
    except SystemExit as exc:
        raise UserError(f"qtopt {' '.join(map(str, argv))}: invalid arguments") from exc
    return JobResult(name, "", int(module.run(args) or 0)).require().status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # anywhere on the line: TensorFlow's and pybullet's chatter too
        argv = [a for a in argv if a != "--verbose"]
        os.environ[quiet.ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r} (choose from {', '.join(COMMANDS)})")
    module, cmd_parser = command_parser(name)
    args = cmd_parser.parse_args(argv[1:])
    fs.reset_retries()
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"qtopt {name}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:  # output piped into head or less that closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"qtopt {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = known_failure(exc, args)
        if line is None:
            raise
        print(f"qtopt {name}: error: {line}", file=sys.stderr)
        return 2


def known_failure(exc: BaseException, args=None) -> str | None:
    """The one line for a UserError the failure wraps, or for a failure of the machine rather
    than of the code: a full disk (where, the file if known, else the command's output) or a
    bucket past its retry budget; None for anything else. Beam's runners re-raise a worker's exception as a RuntimeError carrying only
    its text, and TensorFlow raises its own errors, so the text is read too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, UserError):
            return text
        marker = f"{StorageUnavailable.__name__}: "
        if marker in text:
            return text.split(marker, 1)[1].split(" [while running", 1)[0].splitlines()[0]
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or \
                "No space left on device" in text or "[Errno 28]" in text:
            where = getattr(exc, "filename", None) or _output(args)
            return (f"{where}: no space left on device; nothing was published (a job publishes "
                    "only complete outputs): free space and rerun the same command")
        exc = exc.__cause__ or exc.__context__
    return None


def _output(args) -> str:
    for name in ("output", "workdir", "run"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return "the output"


if __name__ == "__main__":
    sys.exit(main())

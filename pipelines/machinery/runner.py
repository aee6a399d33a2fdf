"""How every ``qtopt`` Beam job picks its runner and options. Use this module for any new job.

A job uses it like this (``pipelines/jobs/subsample.py`` is a short complete one)::

    def add_arguments(parser):
        ...                              # the command's own options
        runner.add_beam_arguments(parser)

    def subsample(cfg, ..., beam_args=()):
        options = runner.pipeline_options(list(beam_args), cfg.pipeline.direct_num_workers,
                                          "qtopt-subsample")
        pipeline = runner.new_pipeline(options)
        build(pipeline, ...)             # the job's transforms, ending in its commit step
        with runner.progress("subsample", poll, total=shards, unit="shards"):
            result = runner.run_pipeline(pipeline)
        return jobs.report(pipeline, result, out, NAMESPACE, "subsample", allowed)

``add_beam_arguments`` makes the command's parser keep every option it does not know
(``--runner``, ``--project``, ``--region``, ``--temp_location``, ``--setup_file``, ...) in
``args.beam_args`` instead of failing, and ``pipeline_options`` turns that list into Beam
``PipelineOptions`` with the local defaults filled in:

* no ``--runner`` (or ``--runner=DirectRunner``): Beam's FnApiRunner, which is the engine the
  DirectRunner runs batch pipelines on, in ``multi_processing`` mode with one worker process per
  core (``pipeline.direct_num_workers``, 0 = every core). Naming it explicitly skips the
  DirectRunner's first attempt with the PrismRunner, which downloads a binary and fails offline.
  A job whose work is TensorFlow's (relabel) asks for ``in_memory`` mode instead
  (``local_mode``): one process whose TensorFlow thread pool spans every core, so it pays
  TensorFlow's import, the export's load and CEM's tracing once instead of once per worker.
  ``qtopt shard`` runs ``in_memory`` too: Beam's worker-process and worker-thread modes lost
  transitions before its grouping in measured runs (docs/pipelines.md, "Runners and options").
  ``--direct_running_mode`` given by the user always wins.
* ``--runner=DataflowRunner`` without ``--setup_file``/``--sdk_container_image``/``--requirements_file``:
  the project's ``setup.py`` is staged, so workers can import ``schemas``, ``model`` and ``robot``.
* ``--runner=DaskRunner`` (needs ``pip install -e '.[dask]'``):
  ``pipelines.machinery.dask_runner``, Beam's Dask runner with the tagged outputs, side inputs
  and metrics our jobs use, on the Dask cluster at ``--dask_client_address HOST:PORT`` (or
  ``--dask_scheduler_file``), else on a ``distributed.LocalCluster`` of
  ``--direct_num_workers`` worker processes started for the job (default
  ``pipeline.direct_num_workers``, 0 = one per core). Each element of a ``Create`` is its own
  partition (``--dask_partition_size=1``) unless ``--dask_npartitions`` or
  ``--dask_partition_size`` says otherwise, so every worker gets files, blocks or shards to run.
* ``--runner=PortableRunner``, ``PrismRunner``, ``FlinkRunner``...: passed through untouched.

Any other option is passed to Beam as given, so everything Beam documents works.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from schemas.errors import UserError

_LOG = logging.getLogger("qtopt.pipelines")

LOCAL_RUNNER = "FnApiRunner"
# Runner names that mean "this machine": we run them on the FnApiRunner directly.
_DIRECT_ALIASES = ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner")
DASK_RUNNER = "pipelines.machinery.dask_runner.DaskRunner"


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` collect unknown options into ``args.beam_args`` for Beam.

    ``qtopt`` parses a command's arguments with ``parse_args``; here that call is made to keep
    what it does not recognise instead of exiting, which is how Beam's own examples treat
    ``parse_known_args``.
    """
    parser.add_argument_group(
        "Beam options",
        "Any other --option goes to Beam: --runner, --project, --region, --temp_location, "
        "--setup_file, --num_workers, --max_num_workers, --direct_num_workers ... "
        "Default runner: local, one worker process per core.")
    parse_known = parser.parse_known_args

    def parse_args(args=None, namespace=None):
        ns, extra = parse_known(args, namespace)
        stray = [a for i, a in enumerate(extra) if not a.startswith("--") and
                 not (i > 0 and extra[i - 1].startswith("--") and "=" not in extra[i - 1])]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)} (Beam options must be "
                         "written --name=value or --name value)")
        ns.beam_args = list(extra)
        return ns

    parser.parse_args = parse_args  # type: ignore[method-assign]


def _option_value(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` / ``--name value`` in a raw Beam argument list."""
    flag = f"--{name}"
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _without(args: Sequence[str], name: str) -> list[str]:
    flag, out, skip = f"--{name}", [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def project_setup_file() -> str | None:
    """The ``setup.py`` of this source tree, if the packages run from one."""
    candidate = Path(__file__).resolve().parents[2] / "setup.py"   # pipelines/machinery/..
    return str(candidate) if candidate.is_file() else None


LOCAL_MODES = ("multi_processing", "multi_threading", "in_memory")


def resolve_args(beam_args: Sequence[str] | None, num_workers: int = 0,
                 job_name: str | None = None, local_mode: str = "multi_processing") -> list[str]:
    """The full Beam argument list: the user's options plus our defaults where they gave none."""
    if local_mode not in LOCAL_MODES:
        raise ValueError(f"local_mode must be one of {LOCAL_MODES}, got {local_mode!r}")
    args = list(beam_args or [])
    runner = _option_value(args, "runner")
    if runner is None or runner.split(".")[-1] in _DIRECT_ALIASES:
        args = _without(args, "runner") + [f"--runner={LOCAL_RUNNER}"]
        if _option_value(args, "direct_running_mode") is None:
            args.append(f"--direct_running_mode={local_mode}")
        if _option_value(args, "direct_num_workers") is None:
            # In one process (in_memory) Beam has no workers to count, and warns if told of more.
            workers = 1 if _option_value(args, "direct_running_mode") == "in_memory" else \
                num_workers or os.cpu_count() or 1
            args.append(f"--direct_num_workers={workers}")
    elif runner.split(".")[-1] == "DaskRunner":
        # Beam's own DaskRunner (a name Beam does not resolve) mixes a ParDo's tagged outputs
        # into its main output and reports no metrics: pipelines.machinery.dask_runner fills those
        # gaps.
        args = _without(args, "runner") + [f"--runner={DASK_RUNNER}"]
        if _option_value(args, "dask_npartitions") is None and \
                _option_value(args, "dask_partition_size") is None:
            args.append("--dask_partition_size=1")
        remote = any(_option_value(args, o) for o in ("dask_client_address",
                                                      "dask_scheduler_file"))
        if not remote and _option_value(args, "direct_num_workers") is None:
            args.append(f"--direct_num_workers={num_workers or os.cpu_count() or 1}")
    elif runner.split(".")[-1] in ("DataflowRunner", "TestDataflowRunner"):
        staged = any(_option_value(args, o) for o in
                     ("setup_file", "sdk_container_image", "requirements_file"))
        setup = project_setup_file()
        if not staged and setup:
            args.append(f"--setup_file={setup}")
        if job_name and _option_value(args, "job_name") is None:
            args.append(f"--job_name={job_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


def pipeline_options(beam_args: Sequence[str] | None = None, num_workers: int = 0,
                     job_name: str | None = None, local_mode: str = "multi_processing"):
    """Beam ``PipelineOptions`` from pass-through arguments, with the local defaults filled in
    (``local_mode``: the FnApiRunner's running mode when the user names none).

    An option Beam does not know is an error here, naming it, rather than being ignored.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    args = resolve_args(beam_args, num_workers, job_name, local_mode)
    if _option_value(args, "runner") == DASK_RUNNER:
        try:  # also registers Beam's DaskOptions (--dask_client_address ...)
            import pipelines.machinery.dask_runner  # noqa: F401
        except ImportError as exc:
            raise UserError(f"--runner=DaskRunner needs Dask ({exc.msg}): pip install -e "
                            "'.[dask]'") from None
    options = PipelineOptions(args)
    unknown = _unknown_options(args)
    if unknown:
        raise UserError(f"unknown option {unknown[0]} (neither a qtopt option nor a Beam "
                        "pipeline option)")
    return options


def _unknown_options(args: Sequence[str]) -> list[str]:
    """The ``--flags`` in ``args`` that no Beam options class defines (Beam would drop them)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(c): c for c in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001  (how Beam itself collects its options)
    _known, unknown = parser.parse_known_args(list(args))
    return [a.split("=", 1)[0] for a in unknown if a.startswith("--")]


def runner_name(options) -> str:
    from apache_beam.options.pipeline_options import StandardOptions

    return str(options.view_as(StandardOptions).runner or "").split(".")[-1]


def is_dry_run(options) -> bool:
    from apache_beam.options.pipeline_options import TestOptions

    return bool(options.view_as(TestOptions).dry_run)


def is_local(options) -> bool:
    return runner_name(options) in _DIRECT_ALIASES + ("BundleBasedDirectRunner", "PrismRunner")


def new_pipeline(options):
    """``beam.Pipeline(options)``; Beam's option validation errors become one-line UserErrors."""
    import apache_beam as beam

    try:
        return beam.Pipeline(options=options)
    except ValueError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise UserError("invalid Beam options: " + " ".join(lines[1:] or lines)) from None


def describe_dry_run(pipeline, result) -> dict:
    """What a dry run built: the job's name, its transforms and the files it would stage."""
    info = {"runner": runner_name(pipeline.options), "submitted": False}
    job = getattr(result, "job", None)
    if job is not None:
        info["job_name"] = job.proto.name
    proto = getattr(pipeline.runner, "proto_pipeline", None)
    if proto is not None:
        info["transforms"] = len(proto.components.transforms)
        info["steps"] = sorted(t.unique_name for t in proto.components.transforms.values()
                               if "/" not in t.unique_name and not t.unique_name.startswith("ref_"))
        staged = set()
        for env in proto.components.environments.values():
            for dep in env.dependencies:
                if dep.role_urn.endswith("staging_to:v1"):
                    staged.add(dep.role_payload[2:].decode("utf-8", "replace"))
        info["staged"] = sorted(staged)
    return info


def running_mode(options) -> str | None:
    """The local FnApiRunner's ``direct_running_mode``, or None off this machine."""
    from apache_beam.options.pipeline_options import DirectOptions

    if runner_name(options) not in _DIRECT_ALIASES:
        return None
    return options.view_as(DirectOptions).direct_running_mode


def threads_per_worker(options) -> int | None:
    """Cores per local worker process (for TensorFlow's thread pools), or None off this machine.

    Local workers share this machine's cores; each TensorFlow runtime would otherwise start a
    thread per core and the processes would fight over them.
    """
    from apache_beam.options.pipeline_options import DirectOptions

    direct = options.view_as(DirectOptions)
    if runner_name(options) == "DaskRunner":
        given = options.get_all_options()
        if given.get("address") or given.get("scheduler_file"):
            return None  # another cluster's machines
        # The LocalCluster that pipelines.machinery.dask_runner starts on this machine.
    elif runner_name(options) not in _DIRECT_ALIASES:
        return None
    elif direct.direct_running_mode != "multi_processing":
        return None  # one process: TensorFlow's default pool already spans every core
    workers = direct.direct_num_workers or os.cpu_count() or 1
    return max(1, (os.cpu_count() or 1) // workers)


def run_pipeline(pipeline, wait: bool = True):
    """Run a built pipeline; wait for it unless ``wait`` is false (a Dataflow job keeps going)."""
    result = pipeline.run()
    if wait and not is_dry_run(pipeline.options):
        result.wait_until_finish()
    return result


def counters(result, namespace: str) -> dict:
    """Committed counters and distributions of one namespace: ``{name: value}``.

    A distribution is reported as its mean (None when it saw nothing). Runners that do not
    report metrics (a dry run) give ``{}``.
    """
    try:
        from apache_beam.metrics.metric import MetricsFilter

        res = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except (NotImplementedError, AttributeError):
        return {}
    out: dict = {}
    for c in res.get("counters", []):
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    for d in res.get("distributions", []):
        value = d.committed if d.committed is not None else d.attempted
        if value is not None and value.count:
            out[d.key.metric.name] = value.sum / value.count
        else:
            out.setdefault(d.key.metric.name, None)
    return out


@contextlib.contextmanager
def progress(label: str, poll=None, total: int | None = None, unit: str = "it",
             every: float = 5.0, stream=None, initial: int = 0) -> Iterator[None]:
    """Progress of a local job, updated every ``every`` seconds from ``poll()``.

    ``poll()`` returns ``(done, note)``: how many of ``total`` ``unit`` are done and a short
    note; it runs on the launcher, so it works whatever runner executes the job. On a terminal
    this is a tqdm bar; in a log, the same tqdm line every ``every`` seconds (a job shorter than
    that prints nothing; without ``poll``, the time elapsed). The count never goes back, and a
    job that finishes shows its total.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    start = time.monotonic()
    state = {"n": initial, "note": "", "printed": False}
    bar = tqdm(total=total, initial=initial, desc=label, unit=f" {unit}", file=stream,
               mininterval=0, dynamic_ncols=True) if interactive else None
    stop = threading.Event()
    lock = threading.Lock()

    def show():
        if bar is not None:
            if state["n"] > bar.n:
                bar.update(state["n"] - bar.n)
            bar.set_postfix_str(state["note"], refresh=False)
            bar.refresh()
        else:
            line = tqdm.format_meter(state["n"], total, time.monotonic() - start, prefix=label,
                                     unit=f" {unit}", postfix=state["note"] or None,
                                     initial=initial)
            print(line, file=stream, flush=True)
            state["printed"] = True

    def loop():
        while not stop.wait(every):
            try:
                done, note = poll() if poll is not None else (state["n"], "")
            except Exception:  # a progress probe must never break the job
                done, note = state["n"], state["note"]
            with lock:  # without a probe (a remote runner) the line still shows time elapsed
                state["n"], state["note"] = max(state["n"], done), note
                show()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    finished = False
    try:
        yield
        finished = True
    finally:
        stop.set()
        thread.join(timeout=every + 1)
        with lock:
            if finished and total is not None and (bar is not None or state["printed"]):
                state["n"], state["note"] = max(state["n"], total), ""
                show()
            if bar is not None:
                bar.close()


def quiet_beam_logging() -> None:
    """Beam logs every stage at INFO; a CLI user wants our lines and Beam's warnings."""
    for name in ("apache_beam", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Local workers forward every log line here, including a start-up warning about
    # semi_persistent_directory on every run; failures still surface as the job's exception.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # A DoFn's exception is logged here with its traceback and then raised again as the job's
    # own: the command reports it once (one line for a full disk, a traceback for a bug).
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""Beam's DaskRunner, with what the qtopt jobs need from it: ``--runner=DaskRunner``.

Beam 2.77's ``apache_beam.runners.dask.dask_runner.DaskRunner`` turns a pipeline into a graph of
``dask.bag`` operations and runs it on a ``distributed`` cluster. Four of its gaps break our
jobs, and this subclass fills them, reusing Beam's translation of everything else (Create,
GroupByKey, Flatten, Reshuffle, Read):

* tagged outputs (``ParDo(...).with_outputs``): Beam's translation puts every output of a ParDo
  in one bag, so a consumer of ``.dead`` also receives the main output. Here a ParDo's bag holds
  ``(tag, value)`` pairs and each consumer reads only its own tag.
* side inputs: Beam's translation computes each side input inside the consuming task (a nested
  ``compute``, which recomputes the whole branch once per side input on one worker). Here they
  are graph dependencies, computed once, on the cluster.
* only the last transform's bag is computed, so a branch that ends elsewhere never runs. Here
  every ParDo runs.
* metrics: Beam's result raises NotImplementedError. Here each bundle runs in its own
  ``MetricsContainer`` and its counters and distributions come back to the launcher, which the
  jobs read for their accounting as on any other runner (``pipelines.machinery.runner.counters``).

Without ``--dask_client_address``/``--dask_scheduler_file`` the runner starts a
``distributed.LocalCluster`` of ``--direct_num_workers`` single-threaded worker processes for the
job and stops it afterwards.
"""

from __future__ import annotations

import dataclasses
import typing as t

from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.runner import PipelineResult, PipelineState

from schemas.errors import UserError

# The tag of the metric updates a ParDo's bundles emit beside their outputs.
_METRICS = ("qtopt", "metrics")


def _is_metrics(pair) -> bool:
    return pair[0] == _METRICS


def _value(pair):
    return pair[1]


def _has_tag(tag):
    return lambda pair: pair[0] == tag


def _concat(lists) -> list:
    return [value for values in lists for value in values]


# Seconds to wait for a remote scheduler unless --dask_connection_timeout says otherwise.
CONNECT_TIMEOUT_S = 10


@dataclasses.dataclass
class _Spec:
    """What a worker needs to run one ParDo's bundles (pickled into the task graph)."""

    label: str
    fn: t.Any
    args: list
    kwargs: dict
    window_fn: t.Any
    sides: list  # (view class, view options) per side input, in the transform's order


def _run_bundle(items, *side_values, spec: _Spec) -> list:
    """One bundle of a ParDo: ``(tag, value)`` for every output, then the bundle's metrics."""
    from apache_beam import DoFn
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.common import (DoFnContext, DoFnInvoker, DoFnSignature, Receiver,
                                            _OutputHandler)
    from apache_beam.runners.dask.transform_evaluator import get_windowed_value
    from apache_beam.runners.worker import statesampler
    from apache_beam.transforms.sideinputs import SideInputMap
    from apache_beam.utils.counters import CounterFactory

    out: list = []

    class Tagged(Receiver):
        def __init__(self, tag):
            self.tag = tag

        def receive(self, windowed_value):
            out.append((self.tag, windowed_value.value))

    class Receivers(dict):
        def __missing__(self, tag):
            self[tag] = Tagged(tag)
            return self[tag]

    receivers = Receivers()
    handler = _OutputHandler(window_fn=spec.window_fn, main_receivers=receivers[None],
                             tagged_receivers=receivers, per_element_output_counter=None,
                             output_batch_converter=None, process_yields_batches=False,
                             process_batch_yields_elements=False)
    sides = [SideInputMap(view, options, [get_windowed_value(v, None) for v in values])
             for (view, options), values in zip(spec.sides, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(spec.fn), handler, context=DoFnContext(spec.label, state=None),
        side_inputs=sides, input_args=list(spec.args), input_kwargs=dict(spec.kwargs),
        user_state_context=None, bundle_finalizer_param=DoFn.BundleFinalizerParam())

    # Metrics go to the container of the current state sampler's state, as in Beam's workers.
    container = MetricsContainer(spec.label)
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(spec.label, "process", metrics_container=container):
            invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(get_windowed_value(item, spec.window_fn))
            invoker.invoke_finish_bundle()
            invoker.invoke_teardown()
    finally:
        statesampler.set_current_tracker(None)
    out.append((_METRICS, container.get_cumulative()))
    return out


class _Translator:
    """Beam's pipeline as dask bags: ParDos here, every other transform by Beam's translation."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs = bag_kwargs
        self.bags: dict = {}      # producing AppliedPTransform -> its bag
        self.tagged: set = set()  # producers whose bag holds (tag, value) pairs
        self.metrics: list = []   # a bag of metric updates per ParDo

    def bag_of(self, pcoll):
        bag = self.bags[pcoll.producer]
        if pcoll.producer in self.tagged:
            bag = bag.filter(_has_tag(pcoll.tag)).map(_value)
        return bag

    def visit(self, node) -> None:
        import apache_beam as beam
        import dask
        from apache_beam import pvalue
        from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS, Flatten, NoOp

        inputs = [None if isinstance(v, pvalue.PBegin) else self.bag_of(v) for v in node.inputs]
        if node.transform.__class__ is beam.ParDo:
            transform = node.transform
            args, kwargs = transform.raw_side_inputs
            main = next(iter(node.main_inputs.values()))
            window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
            spec = _Spec(node.full_label, transform.fn, list(args), dict(kwargs), window_fn,
                         [(type(si), si._view_options()) for si in node.side_inputs])
            # The side input's partitions by their own keys: a reduction or a delayed of the bag
            # fuses its producers into its own tasks, which then run once per consumer.
            sides = [dask.delayed(_concat)(self.bag_of(si.pvalue).to_delayed(optimize_graph=False))
                     for si in node.side_inputs]
            bag = inputs[0].map_partitions(_run_bundle, *sides, spec=spec)
            self.tagged.add(node)
            self.metrics.append(bag.filter(_is_metrics).map(_value))
        else:
            op = TRANSLATIONS.get(node.transform.__class__, NoOp)(node,
                                                                  bag_kwargs=self.bag_kwargs)
            if isinstance(op, Flatten):
                bag = op.apply(inputs)
            else:
                bag = op.apply(inputs[0] if inputs else None)
        self.bags[node] = bag


def _visitor(translator: _Translator):
    from apache_beam.pipeline import PipelineVisitor

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            translator.visit(node)

    return Visitor()


class DaskResult(PipelineResult):
    """A submitted job: ``wait_until_finish`` gathers the bundles' metrics (or the error)."""

    def __init__(self, client, future, cluster=None):
        super().__init__(PipelineState.RUNNING)
        self.client, self.future, self.cluster = client, future, cluster
        self._metrics = None

    def wait_until_finish(self, duration=None):
        from apache_beam.runners.direct.direct_metrics import DirectMetrics

        if self._metrics is not None:
            return self._state
        try:
            updates = self.future.result(timeout=None if duration is None else duration / 1000)
            metrics = DirectMetrics()
            for update in updates:
                metrics.commit_logical(None, update)
                metrics.commit_physical(None, update)
            self._metrics = metrics
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            if self._state != PipelineState.RUNNING:
                self.close()
        return self._state

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def cancel(self):
        self.client.cancel([self.future])
        self.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self):
        if self._metrics is None:
            raise RuntimeError("the job's metrics exist once it has finished")
        return self._metrics


class DaskRunner(beam_dask.DaskRunner):
    """Runs a pipeline on a Dask ``distributed`` cluster (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.bag as db
        import distributed
        from apache_beam.options.pipeline_options import DirectOptions
        from apache_beam.runners.dask.overrides import dask_overrides

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)  # noqa: SLF001
        cluster = None
        if not dask_options.get("address") and not dask_options.get("scheduler_file"):
            workers = options.view_as(DirectOptions).direct_num_workers or None
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                               processes=True, dashboard_address=None)
            dask_options["address"] = cluster
        else:
            # A scheduler that is not there should say so in seconds, not Dask's 30.
            dask_options.setdefault("timeout", CONNECT_TIMEOUT_S)
        try:
            client = distributed.Client(**dask_options)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            where = dask_options.get("address") or dask_options.get("scheduler_file")
            raise UserError(f"--runner=DaskRunner: cannot reach the Dask scheduler at {where} "
                            f"({exc})") from None
        try:
            pipeline.replace_all(dask_overrides())
            translator = _Translator(bag_kwargs)
            pipeline.visit(_visitor(translator))
            if not translator.metrics:
                raise ValueError("the pipeline has no ParDo: nothing would run")
            future = client.compute(db.concat(translator.metrics), optimize_graph=False)
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise
        return DaskResult(client, future, cluster)

"""The commands' jobs: each a function of its configuration and paths returning a ``JobResult``
(collect, shard, subsample, relabel, evaluate, train, convert for ``qtopt export``), and the
small commands beside them (inspect, render, config). No job imports another."""

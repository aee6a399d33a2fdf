"""The configuration options every command shares (``--preset``, ``--config``, ``--set``)."""

from __future__ import annotations

import argparse

from schemas.config import load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that takes a Config shares."""
    parser.add_argument("--preset", default="demo",
                        help="configuration preset from configs/ (default: demo)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML file of overrides; may be repeated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides", help="one override, e.g. train.batch_size=64")


def config_from_args(args: argparse.Namespace):
    return load_config(args.preset, args.config, args.overrides)

"""``qtopt config show PRESET`` and ``qtopt config list``: presets and resolved configurations."""

from __future__ import annotations

import argparse

from schemas.config import describe_options, load_config, preset_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=type(parser))
    show = sub.add_parser("show", help="print a preset with overrides applied, as YAML")
    show.add_argument("preset", help="preset name (see 'qtopt config list')")
    show.add_argument("--config", action="append", default=[], metavar="FILE",
                      help="YAML file of overrides; may be repeated")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      dest="overrides", help="one override, e.g. train.batch_size=64")
    sub.add_parser("list", help="list the presets")
    sub.add_parser("options", help="list every option with its default and meaning")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print("\n".join(preset_names()))
    elif args.action == "options":
        for name, default, doc in describe_options():
            print(f"{name:28s} {default!s:22s} {doc}")
    else:
        print(load_config(args.preset, args.config, args.overrides).to_yaml(), end="")
    return 0

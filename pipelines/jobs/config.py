"""``qtopt config``: presets and resolved configurations.

    qtopt config list                               # the presets
    qtopt config show demo --set train.steps=500    # a preset with overrides, as YAML
    qtopt config options --preset cpu-long          # every option: value, allowed values, meaning
"""

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
    options = sub.add_parser("options", help="list every option with its value in a preset, "
                                             "its allowed values and its meaning")
    options.add_argument("--preset", default="demo",
                         help="preset whose values to show (default: demo, what commands use "
                              "without --preset)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print("\n".join(preset_names()))
    elif args.action == "options":
        rows = describe_options(load_config(args.preset))
        print(f"{'option':32s} {'value (' + args.preset + ')':22s} {'allowed':26s} meaning")
        for name, value, doc, allowed in rows:
            print(f"{name:32s} {value!s:22s} {allowed:26s} {doc}")
    else:
        print(load_config(args.preset, args.config, args.overrides).to_yaml(), end="")
    return 0

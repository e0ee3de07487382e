"""python -m diffrepro list [--configfile FILE]: what the harness offers (diffrepro.catalog)."""

from __future__ import annotations

import argparse
import sys

import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrepro")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="methods, training components, table kinds and the "
                                               "reproduce_* targets of a config, one line each")
    listing.add_argument("--configfile", "--config", metavar="FILE", default=None,
                         help="the config whose targets to list, merged into config/default.yaml as "
                              "Snakemake merges it (default: config/default.yaml alone)")
    args = parser.parse_args(argv)
    from .catalog import listing as make_listing

    try:
        text = make_listing(args.configfile)
    except (OSError, KeyError, ValueError, yaml.YAMLError) as err:  # a missing file, an unknown kind, bad YAML
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

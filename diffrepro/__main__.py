"""python -m diffrepro list [--configfile FILE]: what the harness offers (diffrepro.catalog).
python -m diffrepro check [--configfile FILE]: the config checks a run makes, without Snakemake
(Snakemake reads a --configfile before any workflow code, and its YAML error names no line)."""

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
    check = commands.add_parser("check", help="check a config as a run would, naming file and line of any error")
    check.add_argument("--configfile", "--config", metavar="FILE", default=None,
                       help="merged into config/default.yaml as Snakemake merges it (or alone if standalone)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.configfile)
    from .catalog import listing as make_listing

    try:
        text = make_listing(args.configfile)
    except (OSError, KeyError, ValueError, yaml.YAMLError) as err:  # a missing file, an unknown kind, bad YAML
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def run_check(path: str | None) -> int:
    from .catalog import DEFAULT_CONFIG, load_config
    from .config import ConfigError, prepare_config
    from .configfile import ConfigFileError, read_config_file

    try:
        files = [] if path is None else [path]
        if path is None or not read_config_file(path)[0].get("standalone"):
            files.insert(0, DEFAULT_CONFIG)
        prepare_config(load_config(path), files=files, command_line={})
    except (ConfigError, ConfigFileError) as err:
        print(err, file=sys.stderr)
        return 1
    print(f"config ok: {' + '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

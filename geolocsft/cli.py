"""The `geolocsft` command. Each part adds its sub-commands through a `register(subparsers)`
function in its own module; modules of optional parts (trainer, convert, desktop) are skipped
when their extra is not installed, so the core command works with light dependencies only.
Register functions must stay cheap: heavy imports belong inside the command handlers."""

from __future__ import annotations

import argparse
import importlib
import sys

from geolocsft import __version__

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = [
    "geolocsft.bench_cli",
    "geolocsft.locate_cli",
    "geolocsft.models_cli",
    "trainer.cli",
    "convert.cli",
    "desktop.cli",
    "demo.cli",
]

# Parts that add options to core commands (cluster/ adds --ray to `locate` and `bench run`).
# Each has `extend(command, parser)`, called after the command set its own options and handler;
# it may wrap that handler. A part that is not installed is skipped, like COMMAND_MODULES.
OPTION_MODULES = [
    "cluster.cli",
]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def extend_command(command: str, parser: argparse.ArgumentParser) -> None:
    """Let the parts in OPTION_MODULES add their options to a core command's parser."""
    for name in OPTION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # the part itself is absent
                continue
            raise
        module.extend(command, parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geolocsft",
        description="Offline photo geolocation with fine-tuned vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"geolocsft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            # An optional part (trainer, convert, desktop) or its extra is not installed:
            # its commands are simply absent. A broken core module is a real error.
            if name.split(".")[0] != "geolocsft":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args) or 0)
    except CliError as exc:
        print(f"geolocsft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geolocsft: interrupted", file=sys.stderr)
        return 130


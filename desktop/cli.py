"""`geolocsft app [FOLDER]`: the desktop window. Qt is imported only when the command runs."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("app", help="open the desktop app (photo folder, map, reasoning)",
                              description="Open the desktop app, optionally on a photo folder.")
    from desktop.app import add_arguments  # imports no Qt at module level

    add_arguments(p)
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from geolocsft.cli import CliError

    try:
        from desktop.app import run
    except ImportError as exc:  # the app extra (PySide6) is not installed
        raise CliError(f"the desktop app needs the 'app' extra: {exc}") from exc
    return run(args.folder, store=args.store, model=args.model)

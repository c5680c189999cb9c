"""`geolocsft app [FOLDER]`: the desktop window. Qt is imported only when the command runs."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("app", help="open the desktop app (photo folder, map, reasoning)",
                              description="Open the desktop app, optionally on a photo folder.")
    p.add_argument("folder", nargs="?", help="photo folder to open")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from geolocsft.cli import CliError

    try:
        from desktop.app import main
    except ImportError as exc:  # the app extra (PySide6) is not installed
        raise CliError(f"the desktop app needs the 'app' extra: {exc}") from exc
    return main([args.folder] if args.folder else [])

"""`geolocsft app [FOLDER]`: the desktop window. Qt is imported only when the command runs."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("app", help="open the desktop app (photo folder, map, reasoning)",
                              description="Open the desktop app, optionally on a photo folder.")
    from desktop.app import add_arguments  # imports no Qt at module level

    add_arguments(p)
    p.set_defaults(handler=handle)


def no_display_reason() -> str:
    """Why Qt would abort the process at start ("" when a display is there): on Linux without
    X11 or Wayland and no QT_QPA_PLATFORM, Qt prints a plugin error and calls abort()."""
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return ""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return ""
    return ("no display: the app needs a desktop session (DISPLAY or WAYLAND_DISPLAY is not "
            "set); on a server use `geolocsft locate`, or QT_QPA_PLATFORM=offscreen for tests")


def handle(args) -> int:
    from geolocsft.cli import CliError

    reason = no_display_reason()
    if reason:
        raise CliError(reason)
    try:
        from desktop.app import run
    except ImportError as exc:  # the app extra (PySide6) is not installed
        raise CliError(f"the desktop app needs the 'app' extra: {exc}") from exc
    return run(args.folder, store=args.store, model=args.model)

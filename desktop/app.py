"""Start the desktop app: `geolocsft app [FOLDER] [--store FILE] [--model FOLDER]` or
`geolocsft-desktop` with the same arguments."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("folder", nargs="?", help="photo folder to open")
    parser.add_argument("--store", metavar="FILE",
                        help="results store to show and add to (default: the user data folder's)")
    parser.add_argument("--model", metavar="FOLDER", help="model folder to load (default: the "
                        "last one used)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="geolocsft-desktop", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args.folder, store=args.store, model=args.model)


def run(folder=None, *, store=None, model=None) -> int:
    from PySide6.QtWidgets import QApplication

    from desktop.main_window import MainWindow
    from desktop.settings import APPLICATION, ORGANIZATION

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    window = MainWindow(store_path=store, model=model)
    window.show()
    if folder:
        window.open_folder(folder)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())

"""Start the desktop app: `geolocsft app [FOLDER]` or `geolocsft-desktop [FOLDER]`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from desktop.main_window import MainWindow
    from desktop.settings import APPLICATION, ORGANIZATION

    argv = list(sys.argv[1:] if argv is None else argv)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    window = MainWindow()
    window.show()
    if argv:
        window.open_folder(argv[0])
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())

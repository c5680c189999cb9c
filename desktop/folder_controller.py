"""Opening a photo folder: the scan (`geolocsft.locate.find_photos`) runs on a pool thread so a
slow disk or many thousands of files never freeze the window; the recent-folders menu."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtWidgets import QFileDialog


class _ScanSignals(QObject):
    done = Signal(int, str, list, list)  # scan number, folder, photo paths, problems


class _FolderScan(QRunnable):
    def __init__(self, number: int, folder: Path, signals: _ScanSignals):
        super().__init__()
        self.number, self.folder, self.signals = number, folder, signals

    def run(self) -> None:
        from geolocsft.locate import find_photos

        try:
            items, problems = find_photos([self.folder])
            paths = [item.path for item in items]
        except Exception as exc:  # a folder that vanished or cannot be listed
            paths, problems = [], [f"{self.folder}: cannot be read ({exc})"]
        self.signals.done.emit(self.number, str(self.folder), paths, list(problems))


class FolderController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.scanning: Path | None = None
        self._number = 0
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._signals = _ScanSignals(self)
        self._signals.done.connect(self._on_scanned)

    def choose_folder(self) -> None:
        w = self.window
        start = str(w.folder) if w.folder else (w.settings.recent_folders or [""])[0]
        folder = QFileDialog.getExistingDirectory(w, "Open a photo folder", start)
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        """Scan the folder on a pool thread; the window fills when it is done (and emits
        `folderOpened` for scripts and tests)."""
        w = self.window
        folder = Path(folder)
        if not folder.is_dir():
            w.report_problem(f"{folder}: not a folder")
            return
        if w.running:
            w.report_problem("a run is in progress: cancel it before opening another folder")
            return
        self._number += 1  # a newer request makes any earlier scan's answer stale
        self.scanning = folder
        w.statusBar().showMessage(f"Looking for photos in {folder}…")
        self._pool.start(_FolderScan(self._number, folder, self._signals))

    def _on_scanned(self, number: int, folder_text: str, paths: list, problems: list) -> None:
        if number != self._number:
            return
        self.scanning = None
        w = self.window
        if w.running:  # a run started while the scan was going on: keep its folder
            w.report_problem("a run is in progress: cancel it before opening another folder")
            return
        for line in problems:
            w.report_problem(line)
        w.show_folder(Path(folder_text), paths)

    def fill_recent_menu(self, menu) -> None:
        menu.clear()
        recent = self.window.settings.recent_folders
        for folder in recent:
            action = menu.addAction(folder)
            action.triggered.connect(lambda checked=False, f=folder: self.open_folder(f))
        menu.setEnabled(bool(recent))

    def wait(self, ms: int) -> None:
        self._pool.waitForDone(ms)

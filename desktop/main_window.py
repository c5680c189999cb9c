"""The main window: photo folder, model, run, reasoning, answer, map, results table.

Layout (left to right): thumbnails | preview over the results table | map over answer and
reasoning. The window is a view: a `WorkerThread` runs the core (`geolocsft.engine.Engine`,
`geolocsft.locate.LocateRunner`, `geolocsft.store.ResultStore`) and small controllers react to
its signals: `FolderController` (opening folders), `PhotoController` (the photo on show),
`RunController` (a photo run), `BenchController` (benchmark mode), `ExportController` (exports
and tags through `geolocsft.workflow`). This class builds the widgets and the menus and holds
the shared state. Errors go to the status bar and the photo's row, never to a stream of dialogs.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QListView, QMainWindow, QMessageBox, QProgressBar,
                               QSplitter, QTableView, QTabWidget, QToolBar, QVBoxLayout, QWidget)

from desktop.bench_controller import BenchController
from desktop.benchmark import BenchmarkPane
from desktop.export_controller import ExportController
from desktop.folder_controller import FolderController
from desktop.map_view import MapView
from desktop.model_controller import ModelController
from desktop.panes import AnswerPane, ReasoningPane
from desktop.photo_controller import PhotoController
from desktop.results_model import STATUS_FILTERS, ResultsModel, ResultsProxy
from desktop.run_controller import RunController
from desktop.settings import AppSettings, SettingsDialog
from desktop.thumbnails import ImageLoader, ThumbnailModel
from desktop.worker import EngineOptions, WorkerThread


class MainWindow(QMainWindow):
    # Queued into the worker thread.
    requestLoad = Signal(str, object)
    requestRun = Signal(list, object)
    requestBench = Signal(object, object)
    folderOpened = Signal(str)  # after the scan of a folder has filled the window
    # After the window has taken in a finished run (RunSummary or None) or benchmark
    # (BenchResult or None); emitted on the GUI thread, unlike the worker's own signals.
    runDone = Signal(object)
    benchDone = Signal(object)

    def __init__(self, settings: AppSettings | None = None, store_path: str | Path | None = None,
                 basemap=None, engine_kwargs: dict | None = None, model: str | Path | None = None):
        """engine_kwargs: extra `Engine` keyword arguments (e.g. max_tokens) on top of the
        settings, for scripting and tests. model: a model folder to load instead of the last
        one used (`geolocsft app --model`, the demo's hand-over)."""
        super().__init__()
        from geolocsft.store import ResultStore, default_store_path

        self.settings = settings or AppSettings()
        self.engine_kwargs = dict(engine_kwargs or {})
        self.setWindowTitle("geolocsft")
        self.setAcceptDrops(True)
        self.folder: Path | None = None
        self.spec = None  # ModelSpec of the loaded model
        self.shown_model_sha256: str | None = None  # the model chosen, loaded or not yet
        self.running = False
        self.run_kind = ""  # "photos" or "benchmark" while running
        self.run_started = 0.0
        self.last_summary = None
        self.problems: list[str] = []
        self.store = ResultStore(store_path or default_store_path())

        self.loader = ImageLoader(self)
        self.thumbs = ThumbnailModel(self.loader, self)
        self.results = ResultsModel(self)
        self.proxy = ResultsProxy(self)
        self.proxy.setSourceModel(self.results)

        self._build_widgets(basemap)
        self.folders = FolderController(self)
        self.photos = PhotoController(self)
        self.runs = RunController(self)
        self.benchmarks = BenchController(self)
        self.exports = ExportController(self)
        self.models = ModelController(self)
        self._build_actions()
        self._start_worker()
        if model is not None:
            self.settings.last_model = str(Path(model).resolve())
        self.refresh_models()
        if model is not None and self.model_combo.currentData() != self.settings.last_model:
            self.load_model(self.settings.last_model)  # not in the models folder: load it anyway
        self.apply_map_settings()
        self.resize(1280, 800)

    # ------------------------------------------------------------------ construction
    def _build_widgets(self, basemap) -> None:
        self.thumb_view = QListView()
        self.thumb_view.setModel(self.thumbs)
        self.thumb_view.setViewMode(QListView.ViewMode.IconMode)
        self.thumb_view.setIconSize(self.thumbs.icon_size())
        self.thumb_view.setGridSize(QSize(140, 125))
        self.thumb_view.setResizeMode(QListView.ResizeMode.Adjust)
        self.thumb_view.setMovement(QListView.Movement.Static)
        self.thumb_view.setUniformItemSizes(True)
        self.thumb_view.setWordWrap(True)
        self.thumb_view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)

        self.preview = QLabel("Open a folder of photos (Ctrl+O) or drop one here.")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumSize(240, 180)
        self.preview.setStyleSheet("background: #20242a; color: #d0d4d8")
        self.preview.setWordWrap(True)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter results (Ctrl+F)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.status_filter = QComboBox()
        self.status_filter.addItems(list(STATUS_FILTERS))
        self.status_filter.currentTextChanged.connect(self.proxy.set_status_filter)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for column, width in enumerate((112, 66, 74, 78, 150, 90)):
            self.table.setColumnWidth(column, width)
        table_box = QWidget()
        table_layout = QVBoxLayout(table_box)
        table_layout.setContentsMargins(0, 0, 0, 0)
        filters = QHBoxLayout()
        filters.addWidget(self.filter_edit, 1)
        filters.addWidget(self.status_filter)
        table_layout.addLayout(filters)
        table_layout.addWidget(self.table)

        self.map = MapView(basemap)
        self.answer = AnswerPane()
        self.reasoning = ReasoningPane()

        middle = QSplitter(Qt.Orientation.Vertical)
        middle.addWidget(self.preview)
        middle.addWidget(table_box)
        middle.setSizes([330, 400])
        lower_right = QSplitter(Qt.Orientation.Horizontal)
        lower_right.addWidget(self.answer)
        lower_right.addWidget(self.reasoning)
        lower_right.setSizes([340, 220])
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.map)
        right.addWidget(lower_right)
        right.setSizes([430, 300])
        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(self.thumb_view)
        main.addWidget(middle)
        main.addWidget(right)
        main.setSizes([300, 420, 560])
        main.setStretchFactor(2, 1)
        self.bench = BenchmarkPane(self.map.basemap, self.settings.samples,
                                   form=self.settings.bench_form())
        self.modes = QTabWidget()
        self.modes.setDocumentMode(True)
        self.modes.addTab(main, "Photos")
        self.modes.addTab(self.bench, "Benchmark")
        self.setCentralWidget(self.modes)

        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.eta_label = QLabel()
        self.model_label = QLabel("no model")
        self.statusBar().addPermanentWidget(self.eta_label)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.model_label)

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcuts(shortcut if isinstance(shortcut, list) else [shortcut])
        action.setStatusTip(tip or text)
        action.setToolTip(f"{text} ({action.shortcut().toString()})" if shortcut else text)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        keys = QKeySequence
        self.open_action = self._action("Open folder…", self.folders.choose_folder, keys(keys.StandardKey.Open))
        self.locate_action = self._action("Locate selected", self.runs.locate_selected,
                                          [keys("Ctrl+L"), keys("F5")])
        self.locate_all_action = self._action("Locate all", self.runs.locate_all, keys("Ctrl+Shift+L"))
        self.cancel_action = self._action("Cancel", self.runs.cancel_run, keys("Esc"))
        self.settings_action = self._action("Settings…", self.show_settings, keys("Ctrl+,"))
        self.about_action = self._action("About geolocsft", self.show_about)
        self.quit_action = self._action("Quit", self.close, keys(keys.StandardKey.Quit))
        self.copy_action = self._action("Copy coordinates", self.answer.copy_coordinates,
                                        keys("Ctrl+Shift+C"))
        self.filter_action = self._action("Filter results", self._focus_filter, keys("Ctrl+F"))
        self.export_action = self._action("Export results…", self.exports.export_results, keys("Ctrl+E"))
        self.xmp_action = self._action("Write XMP sidecars", self.exports.write_xmp, keys("Ctrl+Shift+X"),
                                       "Write photo.ext.xmp sidecars (digiKam, darktable) for "
                                       "the located photos")
        self.exif_action = self._action(
            "Write GPS into copies…", self.exports.write_exif_copies_dialog, keys("Ctrl+Shift+G"),
            "Copy the located photos into a folder of your choice with the estimate in their EXIF "
            "GPS tags (the originals are never changed)")
        self.bench_action = self._action("Benchmark mode", self.show_benchmark, keys("Ctrl+B"))
        self.reload_models_action = self._action("Rescan model folders", self.refresh_models)
        self.world_action = self._action("Whole world", self.map.show_world, keys("Ctrl+0"))
        self.locate_action.setEnabled(False)
        self.locate_all_action.setEnabled(False)
        self.cancel_action.setEnabled(False)

        menu = self.menuBar().addMenu("&File")
        menu.addAction(self.open_action)
        self.recent_menu = menu.addMenu("Open &recent")
        self.folders.fill_recent_menu(self.recent_menu)
        menu.addAction(self.export_action)
        menu.addAction(self.xmp_action)
        menu.addAction(self.exif_action)
        menu.addSeparator()
        menu.addAction(self.settings_action)
        menu.addSeparator()
        menu.addAction(self.quit_action)
        run = self.menuBar().addMenu("&Run")
        for action in (self.locate_action, self.locate_all_action, self.cancel_action,
                       self.bench_action, self.reload_models_action):
            run.addAction(action)
        view = self.menuBar().addMenu("&View")
        view.addAction(self.world_action)
        view.addAction(self.filter_action)
        view.addAction(self.copy_action)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self.about_action)

        toolbar = QToolBar("Main")
        toolbar.setObjectName("main-toolbar")
        toolbar.setMovable(False)
        toolbar.addAction(self.open_action)
        toolbar.addSeparator()
        toolbar.addWidget(QLabel(" Model "))
        self.model_combo = QComboBox()
        self.model_combo.setMinimumWidth(260)
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_combo.activated.connect(self.models.on_model_chosen)
        toolbar.addWidget(self.model_combo)
        toolbar.addSeparator()
        toolbar.addAction(self.locate_action)
        toolbar.addAction(self.locate_all_action)
        toolbar.addAction(self.cancel_action)
        toolbar.addSeparator()
        toolbar.addAction(self.settings_action)
        self.addToolBar(toolbar)

    def _start_worker(self) -> None:
        self.thread = WorkerThread(self.store, self)
        worker = self.thread.worker
        self.requestLoad.connect(worker.load_model)
        worker.modelLoaded.connect(self.models.on_model_loaded)
        worker.modelFailed.connect(self.models.on_model_failed)
        self.runs.connect_worker(worker)
        self.benchmarks.connect_worker(worker)
        self.thread.start()

    # ------------------------------------------------------------------ folders
    def open_folder(self, folder: str | Path) -> None:
        self.folders.open_folder(folder)

    @property
    def scanning(self) -> Path | None:
        return self.folders.scanning

    def show_folder(self, folder: Path, paths: list) -> None:
        """Fill the window with a scanned folder's photos and what the store has for them."""
        self.folder = folder
        self.thumbs.set_paths(paths)
        self.results.set_photos(paths)
        self.settings.add_recent_folder(str(folder))
        self.folders.fill_recent_menu(self.recent_menu)
        self.setWindowTitle(f"geolocsft — {folder}")
        self.answer.clear()
        self.map.clear_photo()
        self.preview.setText(f"{len(paths)} photos in {folder}" if paths else f"No photos in {folder}")
        self.photos.preview_image = None
        self.photos.photo_gps.clear()  # read again with the thumbnails: files may have changed
        self.load_stored_results()
        self.update_actions()
        self.statusBar().showMessage(f"Opened {folder}: {len(paths)} photos", 5000)
        if paths:
            self.select_photo(paths[0])
        self.folderOpened.emit(str(folder))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and all(u.isLocalFile() for u in urls):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            path = Path(url.toLocalFile())
            self.open_folder(path if path.is_dir() else path.parent)
            event.acceptProposedAction()
            return

    # ------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        self.models.refresh_models()

    def load_model(self, folder: str) -> None:
        self.models.load_model(folder)

    def engine_options(self) -> EngineOptions:
        options = self.settings.engine_options()
        options.engine_kwargs.update(self.engine_kwargs)
        return options

    def load_stored_results(self) -> None:
        self.photos.load_stored_results()

    def refresh_map_results(self) -> None:
        self.photos.refresh_map_results()

    # ------------------------------------------------------------------ selection
    def current_path(self) -> str:
        return self.photos.current_path()

    def select_photo(self, path) -> None:
        self.photos.select_photo(path)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        QTimer.singleShot(0, self.photos.scale_preview)

    # ------------------------------------------------------------------ runs
    def start_run(self, paths: list[str], options: EngineOptions | None = None) -> bool:
        return self.runs.start_run(paths, options)

    def start_benchmark(self, request=None, confirm_replace=None) -> bool:
        return self.benchmarks.start_benchmark(request, confirm_replace)

    def update_actions(self) -> None:
        ready = self.spec is not None and not self.running and bool(self.results.rows)
        self.locate_action.setEnabled(ready)
        self.locate_all_action.setEnabled(ready)
        self.cancel_action.setEnabled(self.running)
        self.model_combo.setEnabled(not self.running)
        self.open_action.setEnabled(not self.running)
        self.xmp_action.setEnabled(not self.running)
        self.exif_action.setEnabled(not self.running)
        self.bench.set_running(self.running, model_ready=self.spec is not None)

    def show_benchmark(self) -> None:
        self.modes.setCurrentWidget(self.bench)

    # ------------------------------------------------------------------ misc
    def report_problem(self, message: str) -> None:
        """Errors are listed and shown in the status bar; never a dialog per error."""
        self.problems.append(message)
        self.statusBar().showMessage(message, 15000)

    def _focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def apply_map_settings(self) -> None:
        from desktop.mbtiles import MBTilesError

        try:
            self.map.set_mbtiles(self.settings.mbtiles or None)
        except MBTilesError as exc:
            self.report_problem(str(exc))

    def show_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        before = (self.settings.models_dir, self.settings.threads, self.settings.image_max_tokens)
        if dialog.exec():
            dialog.apply()
            self.apply_map_settings()
            after = (self.settings.models_dir, self.settings.threads, self.settings.image_max_tokens)
            if after != before and not self.running:
                self.refresh_models()

    def about_text(self) -> str:
        return self.models.about_text()

    def show_about(self) -> None:
        QMessageBox.about(self, "About geolocsft", self.about_text())

    def closeEvent(self, event) -> None:
        self.loader.clear()
        self.thread.stop()
        self.loader.wait(5000)
        self.folders.wait(5000)
        self.store.close()
        super().closeEvent(event)

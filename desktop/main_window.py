"""The main window: photo folder, model, run, reasoning, answer, map, results table.

Layout (left to right): thumbnails | preview over the results table | map over answer and
reasoning. The window is a view: a `WorkerThread` runs the core (`geolocsft.engine.Engine`,
`geolocsft.locate.LocateRunner`, `geolocsft.store.ResultStore`) and this class reacts to its
signals. Errors go to the status bar and the photo's row, never to a stream of dialogs.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import (QItemSelectionModel, QModelIndex, QObject, QRunnable, QSize, Qt,
                            QThreadPool, QTimer, Signal)
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QListView, QMainWindow,
                               QMessageBox, QProgressBar, QSplitter, QTableView, QTabWidget,
                               QToolBar, QVBoxLayout, QWidget)

from desktop.benchmark import REPORT_FILES, BenchmarkPane, copy_report
from desktop.map_view import MapView
from desktop.panes import AnswerPane, ReasoningPane
from desktop.results_model import (STATUS_FILTERS, ResultsModel, ResultsProxy, RowStatus,
                                   status_of)
from desktop.settings import AppSettings, SettingsDialog
from desktop.thumbnails import PREVIEW_SIZE, ImageLoader, ThumbnailModel
from desktop.worker import BenchRequest, EngineOptions, WorkerThread
from geolocsft.locate import guess_heading


class _ScanSignals(QObject):
    done = Signal(int, str, list, list)  # scan number, folder, photo paths, problems


class _FolderScan(QRunnable):
    """Walks a folder for photos (`geolocsft.locate.find_photos`) off the GUI thread: a
    folder on a slow disk or with many thousands of files must not freeze the window."""

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
                 basemap=None, engine_kwargs: dict | None = None):
        """engine_kwargs: extra `Engine` keyword arguments (e.g. max_tokens) on top of the
        settings, for scripting and tests."""
        super().__init__()
        from geolocsft.store import ResultStore, default_store_path

        self.settings = settings or AppSettings()
        self.engine_kwargs = dict(engine_kwargs or {})
        self.setWindowTitle("geolocsft")
        self.setAcceptDrops(True)
        self.folder: Path | None = None
        self.spec = None  # ModelSpec of the loaded model
        self.running = False
        self.run_kind = ""  # "photos" or "benchmark" while running
        self.run_started = 0.0
        self._live_path = ""  # the photo being located now, and its text so far
        self._live_text: list[str] = []
        self._scan_number = 0
        self._scan_pool = QThreadPool(self)
        self._scan_pool.setMaxThreadCount(1)
        self._scan_signals = _ScanSignals(self)
        self._scan_signals.done.connect(self._on_folder_scanned)
        self.scanning: Path | None = None
        self._bench_request: BenchRequest | None = None
        self.last_summary = None
        self.problems: list[str] = []
        self.store = ResultStore(store_path or default_store_path())

        self.loader = ImageLoader(self)
        self.thumbs = ThumbnailModel(self.loader, self)
        self.results = ResultsModel(self)
        self.proxy = ResultsProxy(self)
        self.proxy.setSourceModel(self.results)
        self.loader.loaded.connect(self._on_image_loaded)
        self.loader.failed.connect(self._on_image_failed)

        self._build_widgets(basemap)
        self._build_actions()
        self._start_worker()
        self.refresh_models()
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
        self.thumb_view.selectionModel().currentChanged.connect(self._on_thumb_current)

        self.preview = QLabel("Open a folder of photos (Ctrl+O) or drop one here.")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumSize(240, 180)
        self.preview.setStyleSheet("background: #20242a; color: #d0d4d8")
        self.preview.setWordWrap(True)
        self._preview_image: QImage | None = None
        self._preview_path = ""

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
        self.table.selectionModel().currentRowChanged.connect(self._on_table_current)
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
        self.bench.runRequested.connect(self.start_benchmark)
        self.bench.cancelRequested.connect(self.cancel_run)
        self.bench.saveRequested.connect(self.save_report)
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
        self.open_action = self._action("Open folder…", self.choose_folder, keys(keys.StandardKey.Open))
        self.locate_action = self._action("Locate selected", self.locate_selected,
                                          [keys("Ctrl+L"), keys("F5")])
        self.locate_all_action = self._action("Locate all", self.locate_all, keys("Ctrl+Shift+L"))
        self.cancel_action = self._action("Cancel", self.cancel_run, keys("Esc"))
        self.settings_action = self._action("Settings…", self.show_settings, keys("Ctrl+,"))
        self.about_action = self._action("About geolocsft", self.show_about)
        self.quit_action = self._action("Quit", self.close, keys(keys.StandardKey.Quit))
        self.copy_action = self._action("Copy coordinates", self.answer.copy_coordinates,
                                        keys("Ctrl+Shift+C"))
        self.filter_action = self._action("Filter results", self._focus_filter, keys("Ctrl+F"))
        self.export_action = self._action("Export results…", self.export_results, keys("Ctrl+E"))
        self.xmp_action = self._action("Write XMP sidecars", self.write_xmp, keys("Ctrl+Shift+X"),
                                       "Write photo.ext.xmp sidecars (digiKam, darktable) for "
                                       "the located photos")
        self.exif_action = self._action(
            "Write GPS into copies…", self.write_exif_copies_dialog, keys("Ctrl+Shift+G"),
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
        self._fill_recent_menu()
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
        self.model_combo.activated.connect(self._on_model_chosen)
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
        self.requestRun.connect(worker.run)
        worker.modelLoaded.connect(self._on_model_loaded)
        worker.modelFailed.connect(self._on_model_failed)
        worker.photoStarted.connect(self._on_photo_started)
        worker.token.connect(self._on_token)
        worker.outcome.connect(self._on_outcome)
        worker.progress.connect(self._on_progress)
        worker.runFinished.connect(self._on_run_finished)
        worker.runFailed.connect(self.report_problem)
        self.requestBench.connect(worker.run_benchmark)
        worker.benchSamples.connect(self._on_bench_samples)
        worker.benchProgress.connect(self._on_progress)
        worker.benchPhotoStarted.connect(self.bench.photo_started)
        worker.benchToken.connect(self.bench.token)
        worker.benchOutcome.connect(self.bench.add_outcome)
        worker.benchFinished.connect(self._on_bench_finished)
        self.thread.start()

    # ------------------------------------------------------------------ folders
    def choose_folder(self) -> None:
        start = str(self.folder) if self.folder else (self.settings.recent_folders or [""])[0]
        folder = QFileDialog.getExistingDirectory(self, "Open a photo folder", start)
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        """Scan the folder on a pool thread; `_on_folder_scanned` fills the window (and
        `folderOpened` tells scripts and tests)."""
        folder = Path(folder)
        if not folder.is_dir():
            self.report_problem(f"{folder}: not a folder")
            return
        if self.running:
            self.report_problem("a run is in progress: cancel it before opening another folder")
            return
        self._scan_number += 1  # a newer request makes any earlier scan's answer stale
        self.scanning = folder
        self.statusBar().showMessage(f"Looking for photos in {folder}…")
        self._scan_pool.start(_FolderScan(self._scan_number, folder, self._scan_signals))

    def _on_folder_scanned(self, number: int, folder_text: str, paths: list,
                           problems: list) -> None:
        if number != self._scan_number:
            return
        self.scanning = None
        folder = Path(folder_text)
        if self.running:  # a run started while the scan was going on: keep its folder
            self.report_problem("a run is in progress: cancel it before opening another folder")
            return
        for line in problems:
            self.report_problem(line)
        self.folder = folder
        self.thumbs.set_paths(paths)
        self.results.set_photos(paths)
        self.settings.add_recent_folder(str(folder))
        self._fill_recent_menu()
        self.setWindowTitle(f"geolocsft — {folder}")
        self.answer.clear()
        self.map.clear_photo()
        self.preview.setText(f"{len(paths)} photos in {folder}" if paths else f"No photos in {folder}")
        self._preview_image = None
        self.load_stored_results()
        self._update_actions()
        self.statusBar().showMessage(f"Opened {folder}: {len(paths)} photos", 5000)
        if paths:
            self.select_photo(paths[0])
        self.folderOpened.emit(str(folder))

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for folder in self.settings.recent_folders:
            action = self.recent_menu.addAction(folder)
            action.triggered.connect(lambda checked=False, f=folder: self.open_folder(f))
        self.recent_menu.setEnabled(bool(self.settings.recent_folders))

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
        from geolocsft.catalog import list_local

        models, problems = list_local(self.settings.models_dir)
        for line in problems:
            self.report_problem(line)
        self.model_combo.clear()
        for model in models:
            m = model.manifest
            size = model.size_bytes
            size_text = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
            self.model_combo.addItem(f"{m.name} · {m.family} · {m.quant} · {size_text}",
                                     str(model.folder))
            index = self.model_combo.count() - 1
            self.model_combo.setItemData(index, self._model_tooltip(model), Qt.ItemDataRole.ToolTipRole)
        if not models:
            self.model_combo.addItem(f"no models in {self.settings.models_dir}", "")
            return
        last = self.settings.last_model
        index = self.model_combo.findData(last) if last else -1
        self.model_combo.setCurrentIndex(max(index, 0))
        self.load_model(self.model_combo.currentData())

    @staticmethod
    def _model_tooltip(model) -> str:
        m = model.manifest
        need = model.memory_need
        return (f"{model.folder}\nbase: {m.base_model}\nprompt: {m.prompt_version}\n"
                f"needs about {need / 1e9:.1f} GB of memory")

    def _on_model_chosen(self, index: int) -> None:
        folder = self.model_combo.itemData(index)
        if folder:
            self.load_model(folder)

    def load_model(self, folder: str) -> None:
        if not folder:
            return
        if self.running:
            self.report_problem("a run is in progress: cancel it before changing the model")
            return
        self.spec = None
        self._update_actions()
        self.model_label.setText(f"loading {Path(folder).name}…")
        self.settings.last_model = folder
        self.requestLoad.emit(folder, self.engine_options())

    def engine_options(self) -> EngineOptions:
        options = self.settings.engine_options()
        options.engine_kwargs.update(self.engine_kwargs)
        return options

    def _on_model_loaded(self, spec) -> None:
        self.spec = spec
        self.model_label.setText(f"model: {spec.name} ({spec.family.value})")
        self.statusBar().showMessage(f"Model {spec.name} loaded", 5000)
        self.load_stored_results()
        self._update_actions()

    def _on_model_failed(self, message: str) -> None:
        self.spec = None
        self.model_label.setText("model failed to load")
        self.report_problem(message)
        self._update_actions()

    # ------------------------------------------------------------------ stored results
    def load_stored_results(self) -> None:
        """Show what the store already has for these photos under the loaded model, so a
        rerun shows what is done at once (the runner will skip those)."""
        if self.spec is None or not self.results.rows:
            self._refresh_map_results()
            return
        latest = {}
        for result in self.store.results(model_sha256=self.spec.model_sha256):
            previous = latest.get(result.path)
            if previous is None or result.created_at >= previous.created_at:
                latest[result.path] = result
        for row in self.results.rows:
            result = latest.get(str(row.path))
            if result is not None:
                self.results.update(row.path, status=status_of(result), result=result,
                                    message=result.error)
        self._refresh_map_results()
        self._show_current()

    def _refresh_map_results(self) -> None:
        points = []
        for row in self.results.rows:
            r = row.result
            if r is not None and r.has_point:
                points.append((r.latitude, r.longitude, f"{row.path.name}: {r.latitude:.4f}, "
                               f"{r.longitude:.4f}", True))
        self.map.set_results(points)

    # ------------------------------------------------------------------ selection and preview
    def current_path(self) -> str:
        index = self.table.currentIndex()
        if not index.isValid():
            return ""
        return self.proxy.data(index, Qt.ItemDataRole.UserRole) or ""

    def select_photo(self, path) -> None:
        row = self.results.row_of(path)
        if row is None:
            return
        source = self.results.index(row, 0)
        index = self.proxy.mapFromSource(source)
        if index.isValid():
            self.table.selectionModel().setCurrentIndex(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect
                | QItemSelectionModel.SelectionFlag.Rows)
            self.table.scrollTo(index)
        else:  # filtered out of the table: still show it
            self._show_photo(str(path))

    def _on_table_current(self, current: QModelIndex, _previous=None) -> None:
        if current.isValid():
            path = self.proxy.data(current, Qt.ItemDataRole.UserRole)
            self._show_photo(path)
            row = self.thumbs._rows.get(path)
            if row is not None:
                thumb = self.thumbs.index(row)
                if self.thumb_view.currentIndex() != thumb:
                    self.thumb_view.selectionModel().setCurrentIndex(
                        thumb, QItemSelectionModel.SelectionFlag.ClearAndSelect)

    def _on_thumb_current(self, current: QModelIndex, _previous=None) -> None:
        if current.isValid():
            path = self.thumbs.data(current, ThumbnailModel.PathRole)
            if path != self.current_path():
                self.select_photo(path)

    def _show_current(self) -> None:
        path = self.current_path()
        if path:
            self._show_photo(path, reload_preview=False)

    def _show_photo(self, path: str, reload_preview: bool = True) -> None:
        row = self.results.row(path)
        if row is None:
            return
        if reload_preview and path != self._preview_path:
            self._preview_path = path
            self.preview.setText(f"Loading {Path(path).name}…")
            self.loader.request(path, PREVIEW_SIZE)
        if self.running and path == self._live_path and row.status == RowStatus.RUNNING:
            if self.reasoning.path != path:  # back on the running photo: its text so far
                self.reasoning.show_text(path, Path(path).name, "".join(self._live_text))
        else:
            text = ""
            if row.result is not None:
                outputs = row.result.outputs
                text = "".join(guess_heading(k, len(outputs)) + o.get("text", "")
                               for k, o in enumerate(outputs))
            self.reasoning.show_text(path, Path(path).name, text or row.message)
        self.answer.show_result(row.result, row.message)
        self._show_on_map(row)

    def _show_on_map(self, row) -> None:
        from geolocsft.images import read_gps

        r = row.result
        truth = None
        if r is not None and r.truth_lat is not None:
            truth = (r.truth_lat, r.truth_lon)
        elif row.status != RowStatus.ERROR:
            try:
                truth = read_gps(row.path)
            except Exception:  # unreadable EXIF: no ground truth, the row says why elsewhere
                truth = None
        self.map.set_truth(*(truth or (None, None)))
        if truth and (r is None or r.truth_km is None):
            self.answer.error.setText(f"photo's GPS: {truth[0]:.5f}, {truth[1]:.5f}")
        if r is not None and r.has_point:
            self.map.set_prediction(r.latitude, r.longitude, f"{row.path.name}: prediction")
            guesses = [(o["latitude"], o["longitude"]) for o in r.outputs
                       if o.get("latitude") is not None and o.get("longitude") is not None]
            if len(guesses) > 1:
                self.map.set_guesses(guesses, (r.latitude, r.longitude), r.radius_km)
            else:
                self.map.set_guesses([])
            points = [(r.latitude, r.longitude)] + ([truth] if truth else []) + \
                (guesses if len(guesses) > 1 else [])
            self.map.fit_points(points, min_span_km=200.0)
        else:
            self.map.set_prediction(None, None)
            self.map.set_guesses([])
            if truth:
                self.map.fit_points([truth], min_span_km=500.0)

    def _on_image_loaded(self, path: str, size: int, image: QImage) -> None:
        if size == PREVIEW_SIZE and path == self._preview_path:
            self._preview_image = image
            self._scale_preview()

    def _on_image_failed(self, path: str, size: int, message: str) -> None:
        if size == PREVIEW_SIZE and path == self._preview_path:
            self._preview_image = None
            self.preview.setText(message)
        if size != PREVIEW_SIZE:
            self.results.update(path, status=RowStatus.ERROR, message=message)

    def _scale_preview(self) -> None:
        if self._preview_image is None:
            return
        pixmap = QPixmap.fromImage(self._preview_image).scaled(
            self.preview.size(), Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation)
        self.preview.setPixmap(pixmap)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        QTimer.singleShot(0, self._scale_preview)

    # ------------------------------------------------------------------ running
    def selected_paths(self) -> list[str]:
        rows = self.table.selectionModel().selectedRows()
        paths = [self.proxy.data(index, Qt.ItemDataRole.UserRole) for index in rows]
        if not paths and self.current_path():
            paths = [self.current_path()]
        return paths

    def locate_selected(self) -> None:
        self.start_run(self.selected_paths())

    def locate_all(self) -> None:
        self.start_run([str(row.path) for row in self.results.rows])

    def start_run(self, paths: list[str], options: EngineOptions | None = None) -> bool:
        if self.running or self.spec is None or not paths:
            if self.spec is None:
                self.report_problem("choose a model first (it loads in the background)")
            return False
        self.running = True
        self.run_kind = "photos"
        self._live_path = ""
        self._live_text = []
        self.run_started = time.perf_counter()
        for path in paths:
            self.results.update(path, status=RowStatus.QUEUED, message="")
        self.progress.setRange(0, len(paths))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.eta_label.setText("starting…")
        self._update_actions()
        self.requestRun.emit(list(paths), options or self.engine_options())
        return True

    def cancel_run(self) -> None:
        if self.running:
            self.thread.worker.cancel_event.set()
            self.eta_label.setText("cancelling…")

    def _on_photo_started(self, path: str) -> None:
        # Follow the run only while the user is on the photo the run was on (or on nothing):
        # someone who selected another photo to look at keeps it.
        follow = self.current_path() in ("", self._live_path) or not self._live_path
        self._live_path = path
        self._live_text = []
        self.results.update(path, status=RowStatus.RUNNING)
        if follow:
            self.reasoning.start(path, Path(path).name)
            self.select_photo(path)

    def _on_token(self, path: str, piece: str) -> None:
        if path == self._live_path:
            self._live_text.append(piece)
        if path == self.reasoning.path:
            self.reasoning.append(piece)

    def _on_outcome(self, outcome) -> None:
        path = str(outcome.item.path)
        if outcome.action == "cancelled":
            self.results.update(path, status=RowStatus.CANCELLED, message="cancelled")
        elif outcome.action == "error":
            self.results.update(path, status=RowStatus.ERROR, result=outcome.result,
                                message=outcome.message)
            self.report_problem(outcome.message)
        else:
            result = outcome.result
            self.results.update(path, status=status_of(result), result=result,
                                message=result.error if result is not None else "")
        self._refresh_map_results()
        if path == self.current_path():
            self._show_photo(path, reload_preview=False)

    def _on_progress(self, progress) -> None:
        from geolocsft.locate import format_eta

        self.progress.setMaximum(max(progress.total, 1))
        self.progress.setValue(progress.processed)
        rate = f" · {progress.s_per_photo:.1f} s/photo" if progress.s_per_photo else ""
        self.eta_label.setText(f"{progress.processed}/{progress.total} · ETA "
                               f"{format_eta(progress.eta_s)}{rate}")

    def _on_run_finished(self, summary) -> None:
        self.running = False
        self.run_kind = ""
        self._live_path = ""
        self.last_summary = summary
        for row in self.results.rows:
            if row.status in (RowStatus.QUEUED, RowStatus.RUNNING):
                self.results.update(row.path, status=status_of(row.result) if row.result else
                                    RowStatus.CANCELLED if summary and summary.cancelled else
                                    RowStatus.NOT_RUN)
        self.progress.setVisible(False)
        if summary is None:
            self.eta_label.setText("run failed")
        else:
            done = summary.count("computed")
            what = "cancelled" if summary.cancelled else "finished"
            self.eta_label.setText(
                f"{what}: {done} located, {summary.count('skipped')} from the store, "
                f"{summary.count('error')} errors in {summary.elapsed_s:.1f} s")
            for warning in summary.warnings:
                self.report_problem(warning)
        self._update_actions()
        self.runDone.emit(summary)

    def _update_actions(self) -> None:
        ready = self.spec is not None and not self.running and bool(self.results.rows)
        self.locate_action.setEnabled(ready)
        self.locate_all_action.setEnabled(ready)
        self.cancel_action.setEnabled(self.running)
        self.model_combo.setEnabled(not self.running)
        self.open_action.setEnabled(not self.running)
        self.xmp_action.setEnabled(not self.running)
        self.exif_action.setEnabled(not self.running)
        self.bench.set_running(self.running, model_ready=self.spec is not None)

    # ------------------------------------------------------------------ benchmark mode
    def show_benchmark(self) -> None:
        self.modes.setCurrentWidget(self.bench)

    def start_benchmark(self, request: BenchRequest | None = None, confirm_replace=None) -> bool:
        """Run a benchmark set through `bench_run.run_benchmark` on the worker (the form's
        run when `request` is None). A report folder that already holds a report is resumed
        into (its store skips finished photos; the report is rewritten) only when
        `confirm_replace(report_json)` says yes."""
        if self.running:
            self.report_problem("a run is in progress: cancel it first")
            return False
        if self.spec is None:
            self.report_problem("choose a model first (it loads in the background)")
            return False
        if request is None:
            try:
                request = self.bench.request(self.spec.name)
            except ValueError as exc:
                self.report_problem(str(exc))
                return False
            self.settings.set_bench_form(self.bench.form_values())
            confirm_replace = confirm_replace or self._confirm_report_replace
        existing = Path(request.out_dir) / "report.json"
        if existing.exists() and not (confirm_replace and confirm_replace(existing)):
            self.report_problem(f"{existing}: a report is there; not replaced")
            return False
        self.running = True
        self.run_kind = "benchmark"
        self.run_started = time.perf_counter()
        self._bench_request = request
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.eta_label.setText("reading the benchmark set…")
        self._update_actions()
        self.requestBench.emit(request, self.engine_options())
        return True

    def _on_bench_samples(self, data) -> None:
        self.bench.start(data, self._bench_request.samples)
        self.progress.setRange(0, len(data.samples))
        self.progress.setValue(0)

    def _on_bench_finished(self, result) -> None:
        self.running = False
        self.run_kind = ""
        self.progress.setVisible(False)
        if result is None:
            self.eta_label.setText("benchmark failed")
        else:
            what = "cancelled" if result.cancelled else "finished"
            self.eta_label.setText(f"benchmark {what} in "
                                   f"{time.perf_counter() - self.run_started:.1f} s")
            self.statusBar().showMessage(f"report: {result.out_dir / 'report.md'}", 15000)
        self.bench.finish(result)
        self._update_actions()
        self.benchDone.emit(result)

    def _confirm_report_replace(self, existing: Path) -> bool:
        answer = QMessageBox.question(
            self, "Resume into this report folder?",
            f"{existing} exists. Run into this folder anyway? Photos already in its results "
            f"store are not run again, and its report files are rewritten.")
        return answer == QMessageBox.StandardButton.Yes

    def save_report(self) -> None:
        if self.bench.result is None:
            self.report_problem("no benchmark report yet: run one first")
            return
        folder = QFileDialog.getExistingDirectory(self, "Save the report to",
                                                  str(self.bench.result.out_dir))
        if folder:
            self.save_report_to(folder, confirm_replace=self._confirm_replace)

    def save_report_to(self, folder: str | Path, confirm_replace=None) -> list[Path]:
        """Copy the last benchmark's report files (report.md/json, predictions.csv, plots)."""
        if self.bench.result is None:
            self.report_problem("no benchmark report yet: run one first")
            return []
        folder = Path(folder)
        if folder.resolve() == Path(self.bench.result.out_dir).resolve():
            return [folder / name for name in REPORT_FILES if (folder / name).exists()]
        try:
            written = copy_report(Path(self.bench.result.out_dir), folder, confirm_replace)
        except (OSError, FileExistsError) as exc:
            self.report_problem(str(exc))
            return []
        self.statusBar().showMessage(f"report saved to {folder}", 8000)
        return written

    # ------------------------------------------------------------------ XMP sidecars
    def write_xmp(self) -> None:
        self.write_xmp_sidecars(confirm_replace=self._confirm_sidecars)

    def _ask_about(self, title: str, existing: list[Path], question: str) -> bool:
        """One yes/no for a batch: "<first file> and N more exist. <question>"."""
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        answer = QMessageBox.question(self, title, f"{existing[0]}{more} exist. {question}")
        return answer == QMessageBox.StandardButton.Yes

    def _confirm_sidecars(self, existing: list[Path]) -> bool:
        return self._ask_about("Replace XMP sidecars?", existing,
                               "Write the model's estimate into them? Their other properties "
                               "are kept; GPS and place fields are replaced.")

    def _located(self) -> list:
        """(path, PhotoResult) of every photo with a predicted point."""
        return [(row.path, row.result) for row in self.results.rows
                if row.result is not None and row.result.has_point]

    def write_xmp_sidecars(self, confirm_replace=None) -> list:
        """`photo.ext.xmp` for every located photo of the folder, as `geolocsft locate --xmp`
        writes them (`geolocsft.export_xmp.write_sidecar`). Photos that already have a sidecar
        are written only when `confirm_replace(existing sidecars)` says yes (then with force,
        like `--xmp --force`); otherwise they are skipped. Returns the TagOutcomes."""
        from geolocsft.export_xmp import TagOutcome, sidecar_path, write_sidecar

        located = self._located()
        if not located:
            self.report_problem("no located photos to write sidecars for yet")
            return []
        existing = [sidecar_path(p) for p, _ in located if sidecar_path(p).exists()]
        replace = bool(existing) and bool(confirm_replace and confirm_replace(existing))
        outcomes = []
        for photo, result in located:
            target = sidecar_path(photo)
            if target.exists() and not replace:
                outcomes.append(TagOutcome(target, "skipped", "exists; not replaced"))
                continue
            try:
                outcome = write_sidecar(photo, result, force=replace)
            except Exception as exc:  # e.g. pyexiv2 missing: say so, go on with the batch
                outcome = TagOutcome(target, "error", str(exc))
            outcomes.append(outcome)
        self._report_tags("XMP sidecars", outcomes)
        return outcomes

    # ------------------------------------------------------------------ EXIF GPS in copies
    def write_exif_copies_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write photos with GPS into",
                                                  str(self.folder.parent if self.folder else ""))
        if folder:
            self.write_exif_copies(folder, confirm_replace=self._confirm_copies)

    def _confirm_copies(self, existing: list[Path]) -> bool:
        return self._ask_about("Replace files?", existing,
                               "geolocsft did not write them. Replace them with copies of the "
                               "photos carrying the estimate?")

    def write_exif_copies(self, out_dir: str | Path, confirm_replace=None) -> list:
        """Copies of the located photos under `out_dir` (same sub-folders as in the opened
        folder) with the estimate in EXIF GPS, as `geolocsft locate --write-exif` writes them
        (`geolocsft.export_xmp.write_exif_gps`). The originals are never written: a target
        inside the opened folder is refused. Photos with their own GPS keep it (skipped); files
        already in `out_dir` that geolocsft did not write are replaced only when
        `confirm_replace(paths)` says yes. Returns the TagOutcomes."""
        from geolocsft.export_xmp import TagOutcome, write_exif_gps, written_by_geolocsft

        out_dir = Path(out_dir).resolve()
        located = self._located()
        if not located:
            self.report_problem("no located photos to write yet")
            return []
        root = self.folder.resolve() if self.folder else None
        if root is not None and (out_dir == root or root in out_dir.parents):
            self.report_problem(f"{out_dir}: inside the photo folder; choose a folder outside "
                                f"it so the originals stay as they are")
            return []
        targets = []
        for photo, result in located:
            try:
                relative = Path(photo).resolve().relative_to(root) if root else Path(photo.name)
            except ValueError:
                relative = Path(Path(photo).name)
            targets.append((photo, out_dir / relative, result))
        try:
            foreign = [t for _, t, _ in targets if t.exists() and not written_by_geolocsft(t)]
        except Exception as exc:  # the photo tools' library is missing from this install
            self.report_problem(str(exc))
            return []
        replace = bool(foreign) and bool(confirm_replace and confirm_replace(foreign))
        outcomes = []
        for photo, target, result in targets:
            if target in foreign and not replace:
                outcomes.append(TagOutcome(target, "skipped", "a file is already there"))
                continue
            try:  # a photo's own GPS is kept (no force): the estimate never hides a real fix
                outcome = write_exif_gps(photo, target, result, replace_target=replace)
            except Exception as exc:  # one bad photo: say so, go on with the batch
                outcome = TagOutcome(target, "error", str(exc))
            outcomes.append(outcome)
        self._report_tags("GPS copies", outcomes)
        return outcomes

    def _report_tags(self, what: str, outcomes: list) -> None:
        counts: dict[str, int] = {}
        for outcome in outcomes:
            counts[outcome.action] = counts.get(outcome.action, 0) + 1
            if outcome.action == "error":
                self.report_problem(f"{outcome.path}: {outcome.message}")
        summary = f"{what}: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        skipped = [o for o in outcomes if o.action == "skipped"]
        if skipped:
            summary += f" ({skipped[0].path.name}: {skipped[0].message})"
        if "error" not in counts:
            self.statusBar().showMessage(summary, 10000)

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
        import importlib.metadata

        from PySide6 import __version__ as pyside_version

        import geolocsft

        try:
            llama = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            llama = "not installed"
        lines = [f"geolocsft {geolocsft.__version__}", f"llama-cpp-python {llama}",
                 f"PySide6 {pyside_version}"]
        if self.spec is not None:
            lines.append(f"model: {self.spec.name} ({self.spec.family.value}, prompt "
                         f"{self.spec.prompt_version})")
            try:
                from geolocsft.manifest import read_manifest

                manifest = read_manifest(self.spec.gguf.parent)
                version = getattr(manifest, "llama_cpp_version", "")
                lines.append(f"model quantization {manifest.quant}"
                             + (f", converted with llama.cpp {version}" if version else ""))
            except Exception:
                pass
        lines.append(f"map: {self.map.basemap.provenance}")
        return "\n".join(lines)

    def show_about(self) -> None:
        QMessageBox.about(self, "About geolocsft", self.about_text())

    def export_results(self) -> None:
        if not any(row.result is not None for row in self.results.rows):
            self.report_problem("nothing to export yet")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export results to", str(self.folder or ""))
        if folder:
            self.export_to(folder, confirm_replace=self._confirm_replace)

    def _confirm_replace(self, existing: Path) -> bool:
        answer = QMessageBox.question(self, "Replace files?",
                                      f"{existing} exists. Replace the export files?")
        return answer == QMessageBox.StandardButton.Yes

    def export_to(self, folder: str | Path, confirm_replace=None) -> list[Path]:
        """CSV, GeoJSON and KML of the folder's results (`geolocsft.export`, as the CLI writes
        them). Existing files are replaced only when `confirm_replace(path)` says yes."""
        from geolocsft.export import ExportError, export_paths, write_exports

        results = [row.result for row in self.results.rows if row.result is not None]
        existing = [p for p in export_paths(folder) if p.exists()]
        if existing and not (confirm_replace and confirm_replace(existing[0])):
            self.report_problem(f"{existing[0]}: exists; not replaced")
            return []
        try:
            written = write_exports(results, folder, force=True)
        except ExportError as exc:
            self.report_problem(str(exc))
            return []
        self.statusBar().showMessage("exported " + ", ".join(str(p) for p in written), 8000)
        return written

    def closeEvent(self, event) -> None:
        self.loader.clear()
        self.thread.stop()
        self.loader.wait(5000)
        self._scan_pool.waitForDone(5000)
        self.store.close()
        super().closeEvent(event)

"""Benchmark mode: a benchmark set run through `geolocsft.bench_run.run_benchmark` (the same
call as `geolocsft bench run`), watched live.

`LiveBenchmark` (Qt-free) turns each finished photo into the report's prediction row and scores
the rows so far with the core's scorer, so the live table is what `report.json` says once every
photo is done. `BenchmarkPane` is the tab: the form, the accuracy table beside the published
numbers, the cumulative error curve, the error map, the report's plots and the current photo's
streamed text. The main window owns the run (one worker, one model) and feeds the pane.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QPushButton, QScrollArea, QSpinBox, QSplitter,
                               QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget)

from desktop.error_curve import ErrorCurve
from desktop.map_view import MapView
from desktop.panes import ReasoningPane
from desktop.worker import BenchRequest
from geolocsft.fsutil import atomic_open

# (label, bench_run dataset kind); the kinds are `geolocsft bench run --dataset` values.
DATASET_CHOICES = [("Im2GPS3k", "im2gps3k"), ("YFCC4k", "yfcc4k"),
                   ("CSV (image, latitude, longitude)", "csv"),
                   ("EXIF folder (photos with GPS)", "exif")]
REPORT_FILES = ("report.md", "report.json", "predictions.csv", "error_cdf.png", "error_map.png")
MAP_OK_KM = 750  # error-map dots: blue within this radius (the paper's country scale), grey beyond


class LiveBenchmark:
    """The rows of a benchmark run so far, keyed by sample, in the dataset's order."""

    def __init__(self, samples, samples_k: int = 1):
        self.samples = list(samples)
        self.samples_k = samples_k
        self._by_path: dict[Path, list[int]] = {}
        for i, sample in enumerate(self.samples):
            self._by_path.setdefault(Path(sample.image).resolve(), []).append(i)
        self._rows: dict[int, object] = {}  # sample index -> report.PredictionRow

    def add(self, outcome) -> list:
        """Record a finished photo (computed, from the store, or failed); a cancelled one is
        not finished. Returns the rows it produced (one per sample of that image)."""
        # The same row the report writes (bench_run's own conversion, so the numbers agree).
        from geolocsft.bench_run import prediction_row

        if outcome.action == "cancelled":
            return []
        rows = []
        for i in self._by_path.get(Path(outcome.item.path).resolve(), []):
            self._rows[i] = prediction_row(self.samples[i], outcome)
            rows.append(self._rows[i])
        return rows

    @property
    def rows(self) -> list:
        return [self._rows[i] for i in sorted(self._rows)]

    @property
    def finished(self) -> int:
        return len(self._rows)

    def scores(self):
        """geo.Scores of the finished rows (no bootstrap: the table shows point values), or
        None before the first photo."""
        from geolocsft.report import score_rows

        rows = self.rows
        return score_rows(rows, bootstrap=0) if rows else None

    def oracle(self):
        from geolocsft.report import oracle_accuracy

        return oracle_accuracy(self.rows) if self.samples_k > 1 else None


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def copy_report(source: Path, target: Path, confirm_replace=None) -> list[Path]:
    """Copy a finished report folder's files to `target` (atomically, file by file). Existing
    files are replaced only when `confirm_replace(first_existing)` says yes."""
    files = [source / name for name in REPORT_FILES if (source / name).exists()]
    if not files:
        raise FileNotFoundError(f"{source}: no report there yet")
    target.mkdir(parents=True, exist_ok=True)
    existing = [target / f.name for f in files if (target / f.name).exists()]
    if existing and not (confirm_replace and confirm_replace(existing[0])):
        raise FileExistsError(f"{existing[0]}: exists; not replaced")
    written = []
    for f in files:  # exclusive random temp names: a planted symlink cannot redirect a copy
        with atomic_open(target / f.name, "wb") as out, open(f, "rb") as src:
            shutil.copyfileobj(src, out)
        written.append(target / f.name)
    return written


class BenchmarkPane(QWidget):
    runRequested = Signal()
    cancelRequested = Signal()
    saveRequested = Signal()
    rowsChanged = Signal()  # the live table, curve and map now include another photo

    def __init__(self, basemap=None, samples: int = 1, parent=None, form: dict | None = None):
        """form: the last run's fields (`AppSettings.bench_form()`)."""
        super().__init__(parent)
        self.live: LiveBenchmark | None = None
        self.result = None  # the BenchResult of the last run
        self.published: list[dict] = []
        self._build(basemap, samples)
        form = form or {}
        if self.kind.findData(form.get("kind")) >= 0:
            self.set_kind(form["kind"])
        self.meta.setText(form.get("meta", ""))
        self.images.setText(form.get("images", ""))
        self.out_dir.setText(form.get("out", ""))
        self._on_kind_changed()

    def form_values(self) -> dict[str, str]:
        return {"kind": self.kind_value(), "meta": self.meta.text().strip(),
                "images": self.images.text().strip(), "out": self.out_dir.text().strip()}

    # ------------------------------------------------------------------ construction
    def _build(self, basemap, samples: int) -> None:
        form_box = QGroupBox("Benchmark set")
        form = QFormLayout(form_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.kind = QComboBox()
        for label, kind in DATASET_CHOICES:
            self.kind.addItem(label, kind)
        self.kind.currentIndexChanged.connect(self._on_kind_changed)
        form.addRow("Dataset", self.kind)
        self.meta = QLineEdit()
        self.meta.setPlaceholderText("metadata CSV")
        self.meta_button = QPushButton("…")
        self.meta_button.clicked.connect(self._choose_meta)
        form.addRow("Metadata", self._with_button(self.meta, self.meta_button))
        self.images = QLineEdit()
        self.images.setPlaceholderText("folder of the photos")
        images_button = QPushButton("…")
        images_button.clicked.connect(lambda: self._choose_folder(self.images, "Images folder"))
        form.addRow("Images", self._with_button(self.images, images_button))
        self.samples = QSpinBox()
        self.samples.setRange(1, 20)
        self.samples.setValue(max(1, samples))
        self.samples.setToolTip("Guesses per photo: 1 is the paper's single greedy pass; more "
                                "are sampled and fused, and Oracle@K is reported")
        form.addRow("Guesses per photo", self.samples)
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("report folder (default: data folder/bench/…)")
        self.out_dir.setToolTip("The report is written here at the end (report.md, report.json, "
                                "predictions.csv, plots); its results store lets a rerun resume")
        out_button = QPushButton("…")
        out_button.clicked.connect(lambda: self._choose_folder(self.out_dir, "Report folder"))
        form.addRow("Report folder", self._with_button(self.out_dir, out_button))
        self.run_button = QPushButton("Run benchmark")
        self.run_button.setToolTip("Run with the model chosen in the toolbar; a rerun into the "
                                   "same report folder resumes")
        self.run_button.clicked.connect(self.runRequested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop within a token (Esc); the report covers what ran")
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.save_button = QPushButton("Save report as…")
        self.save_button.clicked.connect(self.saveRequested)
        buttons = QHBoxLayout()
        for button in (self.run_button, self.cancel_button, self.save_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        form_box.setMinimumWidth(400)
        form_box.setMaximumWidth(470)

        table_box = QGroupBox("Accuracy (% of photos within the radius)")
        table_layout = QVBoxLayout(table_box)
        from geolocsft.geo import THRESHOLDS_KM

        self.table = QTableWidget(0, 1 + len(THRESHOLDS_KM))
        self.table.setHorizontalHeaderLabels(["method"] + [f"{t:,} km" for t in THRESHOLDS_KM])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, 1 + len(THRESHOLDS_KM)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            self.table.setColumnWidth(column, 70)
        self.status = QLabel("Choose a dataset and its images folder, then Run.")
        self.status.setWordWrap(True)
        table_layout.addWidget(self.table)
        table_layout.addWidget(self.status)

        top = QHBoxLayout()
        top.addWidget(form_box)
        top.addWidget(table_box, 1)

        self.curve = ErrorCurve()
        self.map = MapView(basemap, background=False)  # finer levels built when zoomed into
        self.report_view = QLabel("The report's plots appear here when the run ends.")
        self.report_view.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.report_view.setWordWrap(True)
        report_scroll = QScrollArea()
        report_scroll.setWidgetResizable(True)
        report_scroll.setWidget(self.report_view)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.curve, "Error curve")
        map_box = QWidget()
        map_layout = QVBoxLayout(map_box)
        map_layout.setContentsMargins(0, 0, 0, 0)
        map_layout.setSpacing(2)
        map_layout.addWidget(self.map, 1)
        legend = QLabel(f"Dots: each finished photo's true position, blue when the guess is within "
                        f"{MAP_OK_KM} km, grey otherwise (tooltip: the error). Line: the latest "
                        f"photo's geodesic error.")
        legend.setWordWrap(True)
        legend.setStyleSheet("color: #444; padding: 0 4px")
        map_layout.addWidget(legend)
        self.tabs.addTab(map_box, "Error map")
        self.tabs.addTab(report_scroll, "Report")
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.reasoning = ReasoningPane()
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.tabs)
        bottom.addWidget(self.reasoning)
        bottom.setSizes([860, 400])
        bottom.setStretchFactor(0, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(bottom, 1)
        self.set_running(False)

    @staticmethod
    def _with_button(edit: QLineEdit, button: QPushButton) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        button.setFixedWidth(30)
        row.addWidget(edit, 1)
        row.addWidget(button)
        return box

    def _choose_meta(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Metadata CSV", self.meta.text(),
                                              "CSV files (*.csv);;All files (*)")
        if path:
            self.meta.setText(path)

    def _choose_folder(self, edit: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, edit.text())
        if folder:
            edit.setText(folder)

    def _on_kind_changed(self, _index=None) -> None:
        from geolocsft.report import load_published

        exif = self.kind_value() == "exif"
        self.meta.setEnabled(not exif)
        self.meta_button.setEnabled(not exif)
        self.meta.setPlaceholderText("not needed: the photos carry their GPS" if exif
                                     else "metadata CSV")
        self.published = load_published(self.kind_value())
        self.curve.set_published(self.published)
        self._fill_table()

    # ------------------------------------------------------------------ the form
    def kind_value(self) -> str:
        return self.kind.currentData()

    def set_kind(self, kind: str) -> None:
        self.kind.setCurrentIndex(self.kind.findData(kind))

    def request(self, model_name: str) -> BenchRequest:
        """The run the form describes; ValueError says what is missing."""
        from geolocsft.paths import data_dir

        kind = self.kind_value()
        images = self.images.text().strip()
        meta = self.meta.text().strip()
        if not images:
            raise ValueError("benchmark: choose the images folder")
        if kind != "exif" and not meta:
            raise ValueError(f"benchmark: {kind} needs its metadata CSV")
        out = self.out_dir.text().strip()
        out_dir = Path(out) if out else data_dir() / "bench" / f"{kind}-{model_name}"
        return BenchRequest(kind, Path(meta) if kind != "exif" else None, Path(images),
                            out_dir, self.samples.value())

    def set_running(self, running: bool, model_ready: bool = True) -> None:
        self.run_button.setEnabled(not running and model_ready)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.result is not None)
        for widget in (self.kind, self.images, self.out_dir, self.samples):
            widget.setEnabled(not running)
        exif = self.kind_value() == "exif"
        self.meta.setEnabled(not running and not exif)
        self.meta_button.setEnabled(not running and not exif)

    # ------------------------------------------------------------------ a run
    def start(self, data, samples_k: int) -> None:
        """The worker read the set: clear the views for it."""
        self.live = LiveBenchmark(data.samples, samples_k)
        self.result = None
        self.report_view.setPixmap(QPixmap())
        self.report_view.setText("The report's plots appear here when the run ends.")
        self.curve.set_errors([], 0)
        self.map.clear_photo()
        self.map.set_results([])
        self.map.show_world()
        self._fill_table()
        self.status.setText(f"{len(data.samples)} photos from {data.source}; running…")

    def photo_started(self, path: str) -> None:
        self.reasoning.start(path, Path(path).name)

    def token(self, path: str, piece: str) -> None:
        if path == self.reasoning.path:
            self.reasoning.append(piece)

    def add_outcome(self, outcome) -> None:
        if self.live is None:
            return
        if outcome.action == "cancelled":
            self.status.setText(f"cancelled after {self.live.finished} photos; writing the "
                                f"report of what ran…")
            return
        rows = self.live.add(outcome)
        if not rows:
            return
        self._fill_table()
        finished = self.live.rows
        self.curve.set_errors([r.error_km for r in finished])
        self._refresh_map(finished, rows[-1])
        scores = self.live.scores()
        median = "–" if scores.median_km is None else f"{scores.median_km:,.0f} km"
        self.status.setText(f"{self.live.finished}/{len(self.live.samples)} photos finished · "
                            f"{scores.parsed} answered · median error {median}")
        self.rowsChanged.emit()

    def _refresh_map(self, finished: list, latest) -> None:
        points = []
        for r in finished:
            err = r.error_km
            text = f"{r.id}: " + ("no answer" if err is None else f"error {err:,.0f} km")
            points.append((r.true_lat, r.true_lon, text, err is not None and err <= MAP_OK_KM))
        self.map.set_results(points)
        # The latest photo: its truth, the guess and the geodesic error line between them.
        self.map.set_truth(latest.true_lat, latest.true_lon)
        self.map.set_prediction(latest.pred_lat, latest.pred_lon, f"{latest.id}: guess")

    def _on_tab_changed(self, index: int) -> None:
        if self.tabs.widget(index) is self.map.parentWidget():
            self.fit_map()

    def fit_map(self) -> None:
        """The finished photos' dots in view (the world when nothing ran). Guesses are left
        out: an untrained model's polar guesses would pull the view off the photos."""
        points = [(r.true_lat, r.true_lon) for r in (self.live.rows if self.live else [])]
        self.map.fit_points(points, min_span_km=2000.0)

    def finish(self, result) -> None:
        """The run ended: the report folder is written; show its plots."""
        self.result = result
        self.reasoning.title.setText("Reasoning")
        if result is None:
            self.status.setText("The benchmark did not run (see the status bar).")
            return
        self._fill_table()
        self.fit_map()
        what = "cancelled" if result.cancelled else "finished"
        self.status.setText(
            f"{what}: {result.computed} run now, {result.skipped} from the store, "
            f"{result.errors} errors · report in {result.out_dir}")
        self.show_report(result.out_dir)

    def show_report(self, folder: Path) -> None:
        curve, world = folder / "error_cdf.png", folder / "error_map.png"
        if not (curve.exists() and world.exists()):
            return
        # Both plots, one above the other, at the width of the tab.
        from PySide6.QtGui import QPainter

        a, b = QPixmap(str(curve)), QPixmap(str(world))
        width = max(a.width(), b.width())
        both = QPixmap(width, a.height() + b.height())
        both.fill(Qt.GlobalColor.white)
        painter = QPainter(both)
        painter.drawPixmap((width - a.width()) // 2, 0, a)
        painter.drawPixmap((width - b.width()) // 2, a.height(), b)
        painter.end()
        self.report_view.setPixmap(both)
        self.report_view.setToolTip(str(folder))

    # ------------------------------------------------------------------ the table
    def table_values(self) -> dict[str, list[float]]:
        """What the table shows, by method, as fractions (for tests and scripting)."""
        from geolocsft.geo import THRESHOLDS_KM

        out = {}
        if self.live is not None and self.live.finished:
            scores = self.live.scores()
            out["this run"] = [scores.acc[t] for t in THRESHOLDS_KM]
        for entry in self.published:
            out[entry["method"]] = [a / 100 for a in entry["acc"]]
        return out

    def _fill_table(self) -> None:
        from geolocsft.geo import THRESHOLDS_KM

        rows: list[tuple[str, list[str], str, bool]] = []
        if self.live is not None and self.live.finished:
            scores = self.live.scores()
            total = len(self.live.samples)
            rows.append((f"this run ({self.live.finished}/{total} photos)",
                         [_pct(scores.acc[t]) for t in THRESHOLDS_KM],
                         "accuracy over the photos finished so far", True))
            oracle = self.live.oracle()
            if oracle:
                rows.append((f"Oracle@{self.live.samples_k} (best guess)",
                             [_pct(oracle[t]) for t in THRESHOLDS_KM],
                             "a photo counts when its best guess is within the radius", False))
            if self.result is not None and self.live.finished < total:
                # The report scores every photo of the set; unfinished ones are misses.
                report = self.result.scores
                rows.append((f"report ({report.n} photos, unfinished = miss)",
                             [_pct(report.acc[t]) for t in THRESHOLDS_KM],
                             str(self.result.out_dir / "report.json"), False))
        else:
            rows.append(("this run (not started)", ["–"] * len(THRESHOLDS_KM), "", True))
        for entry in self.published:
            rows.append((entry["method"], [f"{a:.1f}" for a in entry["acc"]], entry["source"],
                         False))
        if not self.published:
            rows.append(("no published numbers for this dataset", [""] * len(THRESHOLDS_KM),
                         "published.toml lists Im2GPS3k and YFCC4k results", False))
        self.table.setRowCount(len(rows))
        for r, (name, values, tip, bold) in enumerate(rows):
            for c, text in enumerate([name] + values):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if bold:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(r, c, item)

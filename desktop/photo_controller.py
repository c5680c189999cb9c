"""The photo on show: keeps the table and the thumbnails on the same photo, loads its preview
off the GUI thread, and puts its answer, reasoning and points on the panes and the map."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QObject, Qt
from PySide6.QtGui import QImage, QPixmap

from desktop.results_model import RowStatus, status_of
from desktop.thumbnails import PREVIEW_SIZE, ThumbnailModel
from geolocsft import workflow
from geolocsft.locate import guess_heading


class PhotoController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.preview_image: QImage | None = None
        self.preview_path = ""
        # EXIF GPS per photo, read off the GUI thread with its thumbnail or preview (never
        # again at each selection); a photo not loaded yet gets it with its preview.
        self.photo_gps: dict[str, tuple[float, float] | None] = {}
        window.thumb_view.selectionModel().currentChanged.connect(self.on_thumb_current)
        window.table.selectionModel().currentRowChanged.connect(self.on_table_current)
        window.loader.loaded.connect(self.on_image_loaded)
        window.loader.failed.connect(self.on_image_failed)
        window.loader.gps.connect(self.on_gps)

    def load_stored_results(self) -> None:
        """Show what the store already has for these photos under the loaded model, so a
        rerun shows what is done at once (the runner will skip those)."""
        w = self.window
        sha = w.spec.model_sha256 if w.spec is not None else w.shown_model_sha256
        if sha is None or not w.results.rows:
            self.refresh_map_results()
            return
        latest = workflow.latest_results(w.store, sha)
        for row in w.results.rows:
            result = latest.get(str(row.path))
            if result is not None:
                w.results.update(row.path, status=status_of(result), result=result,
                                 message=result.error)
        self.refresh_map_results()
        self.show_current()

    def refresh_map_results(self) -> None:
        w = self.window
        points = []
        for row in w.results.rows:
            r = row.result
            if r is not None and r.has_point:
                points.append((r.latitude, r.longitude, f"{row.path.name}: {r.latitude:.4f}, "
                               f"{r.longitude:.4f}", True))
        w.map.set_results(points)

    def current_path(self) -> str:
        w = self.window
        index = w.table.currentIndex()
        if not index.isValid():
            return ""
        return w.proxy.data(index, Qt.ItemDataRole.UserRole) or ""

    def select_photo(self, path) -> None:
        w = self.window
        row = w.results.row_of(path)
        if row is None:
            return
        index = w.proxy.mapFromSource(w.results.index(row, 0))
        if index.isValid():
            w.table.selectionModel().setCurrentIndex(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect
                | QItemSelectionModel.SelectionFlag.Rows)
            w.table.scrollTo(index)
        else:  # filtered out of the table: still show it
            self.show_photo(str(path))

    def on_table_current(self, current: QModelIndex, _previous=None) -> None:
        w = self.window
        if current.isValid():
            path = w.proxy.data(current, Qt.ItemDataRole.UserRole)
            self.show_photo(path)
            row = w.thumbs._rows.get(path)
            if row is not None:
                thumb = w.thumbs.index(row)
                if w.thumb_view.currentIndex() != thumb:
                    w.thumb_view.selectionModel().setCurrentIndex(
                        thumb, QItemSelectionModel.SelectionFlag.ClearAndSelect)

    def on_thumb_current(self, current: QModelIndex, _previous=None) -> None:
        if current.isValid():
            path = self.window.thumbs.data(current, ThumbnailModel.PathRole)
            if path != self.current_path():
                self.select_photo(path)

    def show_current(self) -> None:
        path = self.current_path()
        if path:
            self.show_photo(path, reload_preview=False)

    def show_photo(self, path: str, reload_preview: bool = True) -> None:
        w = self.window
        row = w.results.row(path)
        if row is None:
            return
        if reload_preview and path != self.preview_path:
            self.preview_path = path
            w.preview.setText(f"Loading {Path(path).name}…")
            w.loader.request(path, PREVIEW_SIZE)
        runs = w.runs
        if w.running and path == runs.live_path and row.status == RowStatus.RUNNING:
            if w.reasoning.path != path:  # back on the running photo: its text so far
                w.reasoning.show_text(path, Path(path).name, "".join(runs.live_text))
        else:
            text, analysis, note = "", None, ""
            if row.result is not None:
                outputs = row.result.outputs
                text = "".join(guess_heading(k, len(outputs)) + o.get("text", "")
                               for k, o in enumerate(outputs))
                analysis = row.result.analysis
                if len(outputs) > 1:
                    note = f"The consensus of {len(outputs)} guesses; the raw text has them all."
            w.reasoning.show_text(path, Path(path).name, text or row.message, analysis, note)
        w.answer.show_result(row.result, row.message)
        self.show_on_map(row)

    def on_gps(self, path: str, gps) -> None:
        known = path in self.photo_gps
        self.photo_gps[path] = gps
        if not known and gps is not None and path == self.current_path():
            row = self.window.results.row(path)
            if row is not None:
                self.show_on_map(row)

    def show_on_map(self, row) -> None:
        w = self.window
        r = row.result
        truth = None
        if r is not None and r.truth_lat is not None:
            truth = (r.truth_lat, r.truth_lon)
        elif row.status != RowStatus.ERROR:
            truth = self.photo_gps.get(str(row.path))
        w.map.set_truth(*(truth or (None, None)))
        if truth and (r is None or r.truth_km is None):
            w.answer.error.setText(f"photo's GPS: {truth[0]:.5f}, {truth[1]:.5f}")
        if r is not None and r.has_point:
            w.map.set_prediction(r.latitude, r.longitude, f"{row.path.name}: prediction")
            guesses = [(o["latitude"], o["longitude"]) for o in r.outputs
                       if o.get("latitude") is not None and o.get("longitude") is not None]
            if len(guesses) > 1:
                w.map.set_guesses(guesses, (r.latitude, r.longitude), r.radius_km)
            else:
                w.map.set_guesses([])
            points = [(r.latitude, r.longitude)] + ([truth] if truth else []) + \
                (guesses if len(guesses) > 1 else [])
            w.map.fit_points(points, min_span_km=200.0)
        else:
            w.map.set_prediction(None, None)
            w.map.set_guesses([])
            if truth:
                w.map.fit_points([truth], min_span_km=500.0)

    def on_image_loaded(self, path: str, size: int, image: QImage) -> None:
        if size == PREVIEW_SIZE and path == self.preview_path:
            self.preview_image = image
            self.scale_preview()

    def on_image_failed(self, path: str, size: int, message: str) -> None:
        w = self.window
        if size == PREVIEW_SIZE and path == self.preview_path:
            self.preview_image = None
            w.preview.setText(message)
        if size != PREVIEW_SIZE:
            w.results.update(path, status=RowStatus.ERROR, message=message)

    def scale_preview(self) -> None:
        if self.preview_image is None:
            return
        preview = self.window.preview
        pixmap = QPixmap.fromImage(self.preview_image).scaled(
            preview.size(), Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation)
        preview.setPixmap(pixmap)

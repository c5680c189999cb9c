"""Photos decoded off the GUI thread: a QThreadPool of tasks that open a photo with the core's
`geolocsft.images.open_preview` (reduced JPEG decoding, a lower pixel cap, EXIF orientation
applied so photos are upright) and hand back a QImage (QPixmap may only be made on the GUI
thread). The thumbnail list model asks for an image only when the view first paints that item,
so a folder of thousands of photos opens at once.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import (QAbstractListModel, QModelIndex, QObject, QRunnable, QSize, Qt,
                            QThreadPool, Signal)
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap

THUMB_SIZE = 128
PREVIEW_SIZE = 1400


def pil_to_qimage(image) -> QImage:
    image = image.convert("RGB")
    data = image.tobytes("raw", "RGB")
    qimage = QImage(data, image.width, image.height, 3 * image.width, QImage.Format.Format_RGB888)
    return qimage.copy()  # own the pixels: `data` goes away with this function


class _Signals(QObject):
    loaded = Signal(str, int, QImage)  # path, requested size, image
    failed = Signal(str, int, str)  # path, requested size, message
    gps = Signal(str, object)  # path, (lat, lon) from its EXIF or None; before `loaded`


class _LoadTask(QRunnable):
    def __init__(self, path: str, size: int, signals: _Signals):
        super().__init__()
        self.path, self.size, self.signals = path, size, signals

    def run(self) -> None:
        from geolocsft.images import open_preview, read_gps, read_photo_bytes

        try:
            # One read: the EXIF GPS (the photo's ground truth, for the map) and the pixels
            # come from the same bytes, off the GUI thread; reduced decoding (JPEG draft), so
            # a folder of 24 MP photos costs a few MB each.
            data = read_photo_bytes(self.path)
            try:
                gps = read_gps(data)
            except Exception:  # unreadable header: no ground truth; the decode says why
                gps = None
            self.signals.gps.emit(self.path, gps)
            result = pil_to_qimage(open_preview(data, self.size, label=self.path))
        except Exception as exc:  # any unreadable file: reported, never raised in a pool thread
            text = str(exc) or type(exc).__name__
            self.signals.failed.emit(self.path, self.size, text if self.path in text
                                     else f"{self.path}: {text}")
            return
        self.signals.loaded.emit(self.path, self.size, result)


class ImageLoader(QObject):
    """Decodes photos on a small thread pool; results arrive as signals on the GUI thread."""

    loaded = Signal(str, int, QImage)
    failed = Signal(str, int, str)
    gps = Signal(str, object)  # path, (lat, lon) or None: read with the pixels, once per load

    def __init__(self, parent=None, threads: int = 2):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._signals = _Signals()
        self._signals.loaded.connect(self.loaded)
        self._signals.failed.connect(self.failed)
        self._signals.gps.connect(self.gps)

    def request(self, path: str | Path, size: int) -> None:
        self.pool.start(_LoadTask(str(path), size, self._signals))

    def clear(self) -> None:
        self.pool.clear()  # drop queued work (a folder was closed)

    def wait(self, ms: int = 5000) -> bool:
        return self.pool.waitForDone(ms)


def _placeholder(color: str, size: int = THUMB_SIZE) -> QIcon:
    pixmap = QPixmap(size, size * 3 // 4)
    pixmap.fill(QColor(color))
    painter = QPainter(pixmap)
    painter.setPen(QColor("#9aa0a6"))
    painter.drawRect(0, 0, pixmap.width() - 1, pixmap.height() - 1)
    painter.end()
    return QIcon(pixmap)


class ThumbnailModel(QAbstractListModel):
    """The photos of the open folder; icons load lazily as the view asks for them."""

    PathRole = Qt.ItemDataRole.UserRole + 1

    def __init__(self, loader: ImageLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.paths: list[Path] = []
        self.icons: dict[str, QIcon] = {}
        self.errors: dict[str, str] = {}
        self._requested: set[str] = set()
        self._rows: dict[str, int] = {}
        self._loading_icon = _placeholder("#eceff1")
        self._error_icon = _placeholder("#f8d7da")
        loader.loaded.connect(self._on_loaded)
        loader.failed.connect(self._on_failed)

    def set_paths(self, paths: list[Path]) -> None:
        self.beginResetModel()
        self.loader.clear()
        self.paths = list(paths)
        self.icons.clear()
        self.errors.clear()
        self._requested.clear()
        self._rows = {str(p): i for i, p in enumerate(self.paths)}
        self.endResetModel()

    @property
    def loaded_count(self) -> int:
        return len(self.icons)

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.paths)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.paths):
            return None
        path = self.paths[index.row()]
        key = str(path)
        if role == Qt.ItemDataRole.DisplayRole:
            return path.name
        if role == Qt.ItemDataRole.DecorationRole:
            if key in self.icons:
                return self.icons[key]
            if key in self.errors:
                return self._error_icon
            if key not in self._requested:
                self._requested.add(key)
                self.loader.request(path, THUMB_SIZE)
            return self._loading_icon
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.errors.get(key, key)
        if role == self.PathRole:
            return key
        return None

    def _on_loaded(self, path: str, size: int, image: QImage) -> None:
        row = self._rows.get(path)
        if size != THUMB_SIZE or row is None:
            return
        self.icons[path] = QIcon(QPixmap.fromImage(image))
        index = self.index(row)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def _on_failed(self, path: str, size: int, message: str) -> None:
        row = self._rows.get(path)
        if size != THUMB_SIZE or row is None:
            return
        self.errors[path] = message
        index = self.index(row)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole,
                                             Qt.ItemDataRole.ToolTipRole])

    def icon_size(self) -> QSize:
        return QSize(THUMB_SIZE, THUMB_SIZE * 3 // 4)

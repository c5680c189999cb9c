"""The offline map: a QGraphicsView over the shipped Natural Earth basemap, in Web Mercator.

Scene units: the world is a WORLD×WORLD square (see `desktop.projection`), so the view's scale
is 2^zoom in slippy-map terms. Detail follows zoom: level 0 (110 m countries) at world scale,
level 1 (10 m simplified to ~2 km: land, lakes, borders, admin-1) from ZOOM_LEVELS[0], level 2
(~200 m) from ZOOM_LEVELS[1]. Levels 1 and 2 are prepared on a pool thread at start
(`prepare_level`); until one is ready the finest level at hand is shown.
Overlays (prediction, EXIF truth, geodesic error line with its distance, guesses and their
confidence circle, all results of the folder) keep a constant size on screen.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import (QByteArray, QDataStream, QIODevice, QObject, QPointF, QRectF,
                            QRunnable, Qt, QThreadPool, Signal)
from PySide6.QtGui import (QBrush, QColor, QFont, QKeyEvent, QPainter, QPainterPath, QPen,
                           QPixmap, QWheelEvent)
from PySide6.QtWidgets import (QGraphicsItem, QGraphicsPathItem,
                               QGraphicsPixmapItem, QGraphicsRectItem, QGraphicsScene,
                               QGraphicsSimpleTextItem, QGraphicsView, QApplication)

from desktop.basemap import Basemap, Layer
from desktop.projection import (MAX_LAT, WORLD, geodesic_circle, geodesic_line,
                                geodesic_midpoint, project, unproject)

# Zoom (log2 of pixels per scene unit) at which levels 1 and 2 take over.
ZOOM_LEVELS = (3.5, 6.0)
ADMIN1_ZOOM = 4.5  # state/province lines clutter the map below this
MIN_ZOOM, MAX_ZOOM = 0.0, 19.0
WHEEL_STEP = 2 ** 0.5  # one wheel notch: half a zoom level
KEY_PAN_FRACTION = 0.2

OCEAN = QColor("#cfe0ec")
LAND = QColor("#f3f0e6")
LAKE = QColor("#cfe0ec")
COAST = QColor("#6d8ea6")
BORDER = QColor("#8d7a9c")
ADMIN1 = QColor("#b9aec4")
PREDICTION = QColor("#d7263d")
TRUTH = QColor("#1b998b")
GUESS = QColor("#f49d37")
RESULT = QColor("#3066be")
RESULT_BAD = QColor("#8a8a8a")

# z-values, bottom to top.
Z_LAND, Z_LAKE, Z_TILES, Z_ADMIN1, Z_BORDER, Z_COAST = 1, 2, 3, 4, 5, 6
Z_RESULTS, Z_CIRCLE, Z_GUESS, Z_ERROR, Z_TRUTH, Z_PREDICTION, Z_LABEL = 10, 11, 12, 13, 14, 15, 16

_ELEMENT = np.dtype([("type", ">i4"), ("x", ">f8"), ("y", ">f8")])


def project_arrays(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `projection.project`."""
    lat = np.clip(lat, -MAX_LAT, MAX_LAT)
    s = np.sin(np.radians(lat))
    return (lon + 180.0) / 360.0 * WORLD, (0.5 - np.log((1 + s) / (1 - s)) / (4 * np.pi)) * WORLD


def painter_path(x: np.ndarray, y: np.ndarray, starts: np.ndarray) -> QPainterPath:
    """One QPainterPath with a subpath starting at each index in `starts`, built in one go
    through QPainterPath's QDataStream form (per-point Python calls are ~100× slower)."""
    n = int(x.size)
    elements = np.empty(n, _ELEMENT)
    elements["type"] = 1  # LineTo
    elements["type"][starts] = 0  # MoveTo
    elements["x"] = x
    elements["y"] = y
    # count, elements, cStart, fill rule (Qt::OddEvenFill = 0: holes in land stay holes).
    raw = np.array([n], ">i4").tobytes() + elements.tobytes() + np.array([0, 0], ">i4").tobytes()
    path = QPainterPath()
    buffer = QByteArray(raw)  # must outlive the stream, which reads it in place
    stream = QDataStream(buffer, QIODevice.OpenModeFlag.ReadOnly)
    stream >> path
    return path


def _chunks(offsets: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and offsets that cut lines into pieces of at most `max_points` points (a piece
    repeats the last point of the one before), so each piece has a small bounding box."""
    offsets = np.asarray(offsets, np.int64)
    starts, sizes = offsets[:-1], np.diff(offsets)
    starts, sizes = starts[sizes >= 2], sizes[sizes >= 2]
    if sizes.size == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    step = max_points - 1
    pieces = -(-(sizes - 1) // step)  # ceil
    line = np.repeat(np.arange(sizes.size), pieces)
    k = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_start = starts[line] + k * step
    piece_end = np.minimum(piece_start + step, starts[line] + sizes[line] - 1)  # inclusive
    return _ranges(piece_start, piece_end - piece_start + 1)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [starts[i], starts[i] + lengths[i]) and their offsets."""
    new_offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    index = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1] - starts, lengths)
    return index, new_offsets


def _pen(color: QColor, width: float, style=Qt.PenStyle.SolidLine) -> QPen:
    """Cosmetic pen. Width 0 (a 1-pixel hairline) for the basemap: Qt then takes an item's
    bounds from its points; any other width makes it stroke every path to index it (seconds)."""
    pen = QPen(color, width, style)
    pen.setCosmetic(True)  # width in screen pixels whatever the zoom
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    return pen


def prepare_level(basemap: Basemap, level: int) -> list[tuple]:
    """(role, layer name, z, QPainterPath) for every item of one level. No graphics items, so
    it may run on a worker thread. Lines are grouped per grid cell (finer for finer levels):
    few items, and a repaint touches only the cells on screen."""
    cell = WORLD / (8 * 4 ** level)
    parts: list[tuple] = []
    for name in basemap.layer_names(level):
        layer = basemap.layer(name, level)
        if layer.kind == "polygon":
            parts += _fill_parts(layer, Z_LAKE if name == "lakes" else Z_LAND)
            parts += _line_parts(*layer.outlines(), "coast", name, Z_COAST, cell)
        elif name == "borders":
            parts += _line_parts(layer.lon, layer.lat, layer.ring_offsets, "border", name,
                                 Z_BORDER, cell)
        elif name == "admin1":
            parts += _line_parts(layer.lon, layer.lat, layer.ring_offsets, "admin1", name,
                                 Z_ADMIN1, cell)
        else:
            parts += _line_parts(layer.lon, layer.lat, layer.ring_offsets, "coast", name,
                                 Z_COAST, cell)
    return parts


def _fill_parts(layer: Layer, z: float) -> list[tuple]:
    x, y = project_arrays(layer.lat, layer.lon)
    ring_offsets = layer.ring_offsets
    parts = []
    for p in range(layer.n_paths):
        r0, r1 = layer.path_offsets[p], layer.path_offsets[p + 1]
        a, b = ring_offsets[r0], ring_offsets[r1]
        parts.append(("fill", layer.name, z, painter_path(x[a:b], y[a:b], ring_offsets[r0:r1] - a)))
    return parts


def _line_parts(lon, lat, offsets, role: str, name: str, z: float, cell: float) -> list[tuple]:
    index, offsets = _chunks(np.asarray(offsets), 48)
    if index.size == 0:
        return []
    x, y = project_arrays(lat[index], lon[index])
    firsts = offsets[:-1]
    keys = (np.floor(x[firsts] / cell).astype(np.int64) * 1_000_000
            + np.floor(y[firsts] / cell).astype(np.int64))
    order = np.argsort(keys, kind="stable")
    sizes = np.diff(offsets)[order]
    # Reorder the pieces so each cell's pieces sit together, then one path per cell.
    idx, sorted_offsets = _ranges(offsets[:-1][order], sizes)
    x, y = x[idx], y[idx]
    sorted_keys = keys[order]
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(sorted_keys)) + 1, [order.size]))
    parts = []
    for g0, g1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        a, b = sorted_offsets[g0], sorted_offsets[g1]
        parts.append((role, name, z, painter_path(x[a:b], y[a:b], sorted_offsets[g0:g1] - a)))
    return parts


class _JobSignals(QObject):
    ready = Signal(int, object)


class _LevelJob(QRunnable):
    def __init__(self, basemap: Basemap, level: int, signals: _JobSignals):
        super().__init__()
        self.basemap, self.level, self.signals = basemap, level, signals

    def run(self) -> None:
        try:
            parts = prepare_level(self.basemap, self.level)
        except Exception:  # a damaged layer: the GUI thread will raise it when it needs it
            parts = None
        self.signals.ready.emit(self.level, parts)


class _FillItem(QGraphicsPathItem):
    """A land or lake fill, painted without antialiasing: fills of neighbouring cells then
    meet without a visible seam, and no outline is needed (an outline would also trace the
    zero-width edges that cutting into cells leaves along cell borders)."""

    def paint(self, painter, option, widget=None) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self.brush())
        painter.drawPath(self.path())
        painter.restore()


class _Container(QGraphicsRectItem):
    """An invisible parent: hiding it hides one level's (or one overlay's) items."""

    def __init__(self, z: float = 0):
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)
        self.setZValue(z)


def _marker(color: QColor, shape: str, size: float, tooltip: str = "") -> QGraphicsPathItem:
    path = QPainterPath()
    if shape == "pin":
        path.addEllipse(QPointF(0, 0), size / 2, size / 2)
    elif shape == "diamond":
        h = size / 2 + 1
        path.moveTo(0, -h)
        path.lineTo(h, 0)
        path.lineTo(0, h)
        path.lineTo(-h, 0)
        path.closeSubpath()
    else:
        path.addEllipse(QPointF(0, 0), size / 2, size / 2)
    item = QGraphicsPathItem(path)
    item.setBrush(QBrush(color))
    item.setPen(QPen(QColor("white"), 2 if size >= 10 else 1))
    item.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
    if tooltip:
        item.setToolTip(tooltip)
    return item


class _Label(QGraphicsRectItem):
    """Text on a white box, constant size on screen."""

    def __init__(self, text: str, color: QColor):
        super().__init__()
        self.text = QGraphicsSimpleTextItem(text, self)
        font = QFont()
        font.setBold(True)
        self.text.setFont(font)
        self.text.setBrush(QBrush(color))
        rect = self.text.boundingRect()
        self.text.setPos(-rect.width() / 2, -rect.height() - 10)
        self.setRect(rect.translated(self.text.pos()).adjusted(-4, -2, 4, 2))
        self.setBrush(QBrush(QColor(255, 255, 255, 230)))
        self.setPen(QPen(color, 1))
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self.setZValue(Z_LABEL)


def format_km(km: float) -> str:
    if km < 1:
        return f"{km * 1000:.0f} m"
    if km < 100:
        return f"{km:.1f} km"
    return f"{km:,.0f} km"


class MapView(QGraphicsView):
    """The map widget. Public API in degrees; `scene_pos`/`lat_lon_at` convert."""

    levelChanged = Signal(int)
    zoomChanged = Signal(float)

    def __init__(self, basemap: Basemap | None = None, parent=None, *, background: bool = True):
        """background: prepare the finer levels on a pool thread right away (the app);
        False builds each level when first needed, synchronously (deterministic for tests)."""
        super().__init__(parent)
        self._levels: dict[int, _Container] = {}
        self._level = -1
        self._prepared: dict[int, list] = {}
        self._jobs: dict[int, _LevelJob] = {}
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._job_signals = _JobSignals(self)
        self._job_signals.ready.connect(self._on_level_ready)
        self.tiles = None  # MBTiles, set before anything can scroll
        self._tile_items: dict[tuple[int, int, int], QGraphicsPixmapItem] = {}
        self._tile_zoom: int | None = None
        self.basemap = basemap if basemap is not None else Basemap()
        self._scene = QGraphicsScene(self)
        # A margin around the world so the edges can be panned to the middle of the view.
        self._scene.setSceneRect(QRectF(-WORLD / 2, -WORLD / 2, 2 * WORLD, 2 * WORLD))
        self._scene.setBackgroundBrush(QBrush(OCEAN))
        self.setScene(self._scene)
        self.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(200, 150)
        self._overlays: dict[str, _Container] = {}
        self.prediction: tuple[float, float] | None = None
        self.truth: tuple[float, float] | None = None
        self.error_km: float | None = None
        self.error_label: _Label | None = None
        self.result_points: list[tuple[float, float]] = []
        self.setTransform(self.transform().fromScale(4, 4))
        self.centerOn(WORLD / 2, WORLD / 2)
        self._update_level()
        if background:
            self.prepare_levels_in_background()

    # ------------------------------------------------------------------ coordinates and zoom
    @staticmethod
    def scene_pos(lat: float, lon: float) -> QPointF:
        return QPointF(*project(lat, lon))

    @staticmethod
    def lat_lon_at(point: QPointF) -> tuple[float, float]:
        return unproject(point.x(), point.y())

    @property
    def zoom(self) -> float:
        """log2 of pixels per scene unit: the slippy-map zoom level (world = 256·2^zoom px)."""
        return math.log2(max(self.transform().m11(), 1e-9))

    @property
    def level(self) -> int:
        return self._level

    @staticmethod
    def level_for_zoom(zoom: float) -> int:
        return sum(1 for threshold in ZOOM_LEVELS if zoom >= threshold)

    def center(self) -> tuple[float, float]:
        return self.lat_lon_at(self.mapToScene(self.viewport().rect().center()))

    def min_fill_zoom(self) -> float:
        """The zoom at which the world is as wide as the view (no empty space beside it)."""
        return math.log2(max(self.viewport().width(), 1) / WORLD)

    def set_zoom(self, zoom: float) -> None:
        """Zoom about the view centre."""
        zoom = max(MIN_ZOOM, min(MAX_ZOOM, zoom))
        centre = self.mapToScene(self.viewport().rect().center())
        self.setTransform(self.transform().fromScale(2 ** zoom, 2 ** zoom))
        self.centerOn(centre)
        self._view_changed()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Multiply the scale by `factor`, keeping the scene point under `anchor` (a viewport
        position; default the centre) where it is."""
        target = max(MIN_ZOOM, min(MAX_ZOOM, self.zoom + math.log2(factor)))
        factor = 2 ** target / self.transform().m11()
        if abs(factor - 1) < 1e-9:
            return
        anchor = anchor if anchor is not None else QPointF(self.viewport().rect().center())
        before = self.mapToScene(anchor.toPoint())
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.scale(factor, factor)
        after = self.mapToScene(anchor.toPoint())
        delta = after - before
        self.translate(delta.x(), delta.y())
        # translate() does not move a view whose scene fits; recentre by scrolling instead.
        moved = self.mapToScene(anchor.toPoint()) - before
        if abs(moved.x()) > 1e-9 or abs(moved.y()) > 1e-9:
            centre = self.mapToScene(self.viewport().rect().center())
            self.centerOn(centre - moved)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self._view_changed()

    def center_on(self, lat: float, lon: float, zoom: float | None = None) -> None:
        if zoom is not None:
            self.set_zoom(zoom)
        self.centerOn(self.scene_pos(lat, lon))
        self._view_changed()

    def show_world(self) -> None:
        """Fit the whole world (as far as the view allows): the Home key."""
        view = self.viewport().rect()
        side = min(view.width(), view.height() * 1.6)
        self.set_zoom(math.log2(max(side, 1) / WORLD))
        self.centerOn(WORLD / 2, WORLD * 0.42)
        self._view_changed()

    def fit_points(self, points: list[tuple[float, float]], min_span_km: float = 50.0) -> None:
        """Show all (lat, lon) points, at least `min_span_km` across."""
        if not points:
            self.show_world()
            return
        xy = [project(lat, lon) for lat, lon in points]
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        lat_mid = sum(p[0] for p in points) / len(points)
        # Scene units per km at this latitude (Mercator stretches by 1/cos(lat)).
        units_per_km = WORLD / 40075.0 / max(math.cos(math.radians(lat_mid)), 0.05)
        span = max(max(xs) - min(xs), max(ys) - min(ys), min_span_km * units_per_km)
        view = self.viewport().rect()
        zoom = math.log2(min(view.width(), view.height()) / (span * 1.4))
        self.set_zoom(max(zoom, self.min_fill_zoom()))
        self.centerOn(QPointF((max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2))
        self._view_changed()

    def pan_by(self, dx_pixels: float, dy_pixels: float) -> None:
        scale = self.transform().m11()
        centre = self.mapToScene(self.viewport().rect().center())
        self.centerOn(centre + QPointF(dx_pixels / scale, dy_pixels / scale))
        self._view_changed()

    # ------------------------------------------------------------------ events
    def wheelEvent(self, event: QWheelEvent) -> None:
        notches = event.angleDelta().y() / 120.0
        if notches:
            self.zoom_by(WHEEL_STEP ** notches, event.position())
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        view = self.viewport().rect()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(2.0)
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_by(0.5)
        elif key == Qt.Key.Key_Left:
            self.pan_by(-view.width() * KEY_PAN_FRACTION, 0)
        elif key == Qt.Key.Key_Right:
            self.pan_by(view.width() * KEY_PAN_FRACTION, 0)
        elif key == Qt.Key.Key_Up:
            self.pan_by(0, -view.height() * KEY_PAN_FRACTION)
        elif key == Qt.Key.Key_Down:
            self.pan_by(0, view.height() * KEY_PAN_FRACTION)
        elif key == Qt.Key.Key_Home:
            self.show_world()
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self._update_tiles()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._update_tiles()

    def _view_changed(self) -> None:
        self._update_level()
        self._update_admin1()
        self._update_tiles()
        self.zoomChanged.emit(self.zoom)

    # ------------------------------------------------------------------ basemap
    def _update_level(self) -> None:
        wanted = min(self.level_for_zoom(self.zoom), max(self.basemap.levels))
        level = wanted
        if wanted not in self._levels:
            parts = self._prepared.pop(wanted, None)
            if parts is None and wanted in self._jobs:
                # Still being prepared on the pool: show the finest level at hand meanwhile;
                # _on_level_ready comes back here.
                ready = [lv for lv in self._levels if lv <= wanted]
                level = max(ready) if ready else 0
            if parts is None and level == wanted:
                parts = prepare_level(self.basemap, wanted)
            if parts is not None:
                self._levels[wanted] = self._make_items(parts)
            if level not in self._levels:
                self._levels[level] = self._make_items(prepare_level(self.basemap, level))
        if level == self._level:
            return
        for other, container in self._levels.items():
            container.setVisible(other == level)
        self._level = level
        self._update_admin1()
        self.levelChanged.emit(level)

    def prepare_levels_in_background(self) -> None:
        """Decode and project the finer levels on a pool thread, so the first zoom-in does not
        stall the window (level 2 takes about a second to prepare)."""
        for level in self.basemap.levels:
            if level not in self._levels and level not in self._jobs:
                job = _LevelJob(self.basemap, level, self._job_signals)
                self._jobs[level] = job
                self._pool.start(job)

    def _on_level_ready(self, level: int, parts) -> None:
        self._jobs.pop(level, None)
        if level not in self._levels:
            self._prepared[level] = parts
        self._update_level()

    def wait_for_levels(self, ms: int = 30_000) -> None:
        self._pool.waitForDone(ms)
        QApplication.processEvents()

    def _update_admin1(self) -> None:
        show = self.zoom >= ADMIN1_ZOOM
        for container in self._levels.values():
            for child in container.childItems():
                if child.data(0) == "admin1-group":
                    child.setVisible(show)

    def _make_items(self, parts: list[tuple]) -> _Container:
        """Graphics items from prepared parts (GUI thread; the heavy work is done)."""
        container = _Container()
        admin = _Container(Z_ADMIN1)
        admin.setParentItem(container)
        admin.setData(0, "admin1-group")
        styles = {
            "fill": lambda name: (QPen(Qt.PenStyle.NoPen), QBrush(LAKE if name == "lakes" else LAND)),
            "coast": lambda name: (_pen(COAST, 0), None),
            "border": lambda name: (_pen(BORDER, 0), None),
            "admin1": lambda name: (_pen(ADMIN1, 0, Qt.PenStyle.DashLine), None),
        }
        cache = {}
        for role, name, z, path in parts:
            key = (role, name)
            if key not in cache:
                cache[key] = styles[role](name)
            pen, brush = cache[key]
            kind = _FillItem if role == "fill" else QGraphicsPathItem
            item = kind(path, admin if role == "admin1" else container)
            item.setPen(pen)
            if brush is not None:
                item.setBrush(brush)
            item.setZValue(z)
            item.setData(0, f"{name}-fill" if role == "fill" else name)
        # Added to the scene once complete: indexing item by item is several times slower.
        self._scene.addItem(container)
        return container

    def basemap_items(self, level: int | None = None) -> list[QGraphicsItem]:
        """The drawn items of a level (the current one by default), for tests and diagnostics."""
        container = self._levels.get(self._level if level is None else level)
        if container is None:
            return []
        items = []
        for child in container.childItems():
            items.extend(child.childItems() if child.data(0) == "admin1-group" else [child])
        return items

    # ------------------------------------------------------------------ raster tiles
    def set_mbtiles(self, path: str | Path | None) -> None:
        """Use an MBTiles raster file as the base layer (None: vector only). Raises
        MBTilesError for an unusable file."""
        from desktop.mbtiles import MBTiles

        for item in self._tile_items.values():
            self._scene.removeItem(item)
        self._tile_items.clear()
        self._tile_zoom = None
        if self.tiles is not None:
            self.tiles.close()
            self.tiles = None
        if path:
            self.tiles = MBTiles(path)
        self._update_tiles()

    def _update_tiles(self) -> None:
        if self.tiles is None:
            return
        z = int(round(self.zoom))
        z = max(self.tiles.min_zoom, min(self.tiles.max_zoom, z))
        if z != self._tile_zoom:
            for item in self._tile_items.values():
                self._scene.removeItem(item)
            self._tile_items.clear()
            self._tile_zoom = z
        n = 1 << z
        size = WORLD / n
        rect = self.mapToScene(self.viewport().rect()).boundingRect()
        x0, x1 = max(0, int(rect.left() // size)), min(n - 1, int(rect.right() // size))
        y0, y1 = max(0, int(rect.top() // size)), min(n - 1, int(rect.bottom() // size))
        if (x1 - x0 + 1) * (y1 - y0 + 1) > 400:  # a wildly zoomed-out request: skip
            return
        for tx in range(x0, x1 + 1):
            for ty in range(y0, y1 + 1):
                key = (z, tx, ty)
                if key in self._tile_items:
                    continue
                data = self.tiles.tile(z, tx, ty)
                pixmap = QPixmap()
                if data is None or not pixmap.loadFromData(data):
                    continue
                item = QGraphicsPixmapItem(pixmap)
                item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
                item.setScale(size / max(pixmap.width(), 1))
                item.setPos(tx * size, ty * size)
                item.setZValue(Z_TILES)
                self._scene.addItem(item)
                self._tile_items[key] = item

    @property
    def tile_keys(self) -> list[tuple[int, int, int]]:
        return sorted(self._tile_items)

    # ------------------------------------------------------------------ overlays
    def _overlay(self, name: str, z: float) -> _Container:
        """A fresh (emptied) container for one overlay."""
        old = self._overlays.pop(name, None)
        if old is not None:
            self._scene.removeItem(old)
        container = _Container(z)
        self._scene.addItem(container)
        self._overlays[name] = container
        return container

    def overlay_items(self, name: str) -> list[QGraphicsItem]:
        container = self._overlays.get(name)
        return container.childItems() if container else []

    def _geo_path(self, parts: list[list[tuple[float, float]]]) -> QPainterPath:
        path = QPainterPath()
        for part in parts:
            path.moveTo(self.scene_pos(*part[0]))
            for lat, lon in part[1:]:
                path.lineTo(self.scene_pos(lat, lon))
        return path

    def set_prediction(self, lat: float | None, lon: float | None, tooltip: str = "") -> None:
        container = self._overlay("prediction", Z_PREDICTION)
        self.prediction = None if lat is None or lon is None else (lat, lon)
        if self.prediction:
            marker = _marker(PREDICTION, "pin", 14, tooltip or "prediction")
            marker.setParentItem(container)
            marker.setPos(self.scene_pos(lat, lon))
        self._update_error()

    def set_truth(self, lat: float | None, lon: float | None) -> None:
        container = self._overlay("truth", Z_TRUTH)
        self.truth = None if lat is None or lon is None else (lat, lon)
        if self.truth:
            marker = _marker(TRUTH, "diamond", 14, "ground truth (photo's EXIF GPS)")
            marker.setParentItem(container)
            marker.setPos(self.scene_pos(lat, lon))
        self._update_error()

    def _update_error(self) -> None:
        container = self._overlay("error", Z_ERROR)
        self.error_km = None
        self.error_label = None
        if not (self.prediction and self.truth):
            return
        km, parts = geodesic_line(*self.truth, *self.prediction)
        self.error_km = km
        line = QGraphicsPathItem(self._geo_path(parts), container)
        line.setPen(_pen(PREDICTION, 2.0, Qt.PenStyle.DashLine))
        label = _Label(f"error {format_km(km)}", PREDICTION)
        label.setParentItem(container)
        label.setPos(self.scene_pos(*geodesic_midpoint(*self.truth, *self.prediction)))
        self.error_label = label

    def set_guesses(self, points: list[tuple[float, float]],
                    center: tuple[float, float] | None = None,
                    radius_km: float | None = None) -> None:
        """The cloud of sampled guesses and, when given, the geodesic confidence circle."""
        container = self._overlay("guesses", Z_GUESS)
        for lat, lon in points:
            dot = _marker(GUESS, "dot", 7, f"guess {lat:.4f}, {lon:.4f}")
            dot.setParentItem(container)
            dot.setPos(self.scene_pos(lat, lon))
        circle_container = self._overlay("circle", Z_CIRCLE)
        if center is not None and radius_km:
            circle = QGraphicsPathItem(self._geo_path(geodesic_circle(*center, radius_km)),
                                       circle_container)
            circle.setPen(_pen(GUESS, 1.5))
            fill = QColor(GUESS)
            fill.setAlpha(28)
            circle.setBrush(QBrush(fill))
            circle.setToolTip(f"spread of the guesses: {format_km(radius_km)}")

    def set_results(self, points: list[tuple[float, float, str, bool]]) -> None:
        """All results of the folder: (lat, lon, tooltip, highlighted)."""
        container = self._overlay("results", Z_RESULTS)
        self.result_points = [(lat, lon) for lat, lon, _, _ in points]
        for lat, lon, tooltip, ok in points:
            dot = _marker(RESULT if ok else RESULT_BAD, "dot", 8, tooltip)
            dot.setParentItem(container)
            dot.setPos(self.scene_pos(lat, lon))

    def clear_photo(self) -> None:
        self.set_prediction(None, None)
        self.set_truth(None, None)
        self.set_guesses([])

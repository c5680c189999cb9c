"""The results table: one row per photo of the open folder, its status in this session and its
stored result (`geolocsft.store.PhotoResult`); sortable by value and filterable by text and
status through `ResultsProxy`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor


class RowStatus:
    NOT_RUN = ""
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    NO_ANSWER = "no answer"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass
class PhotoRow:
    path: Path
    status: str = RowStatus.NOT_RUN
    result: object = None  # PhotoResult
    message: str = ""


COLUMNS = ["Photo", "Status", "Latitude", "Longitude", "Place", "Error vs EXIF", "Confidence"]
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_FILTERS = {
    "All photos": None,
    "Located": {RowStatus.DONE},
    "Errors and no answer": {RowStatus.ERROR, RowStatus.NO_ANSWER},
    "Not run": {RowStatus.NOT_RUN, RowStatus.QUEUED, RowStatus.CANCELLED},
}


def place_text(result) -> str:
    if result is None:
        return ""
    parts = [result.place_city, result.place_state, result.place_country]
    text = ", ".join(p for p in parts if p)
    return text or ", ".join(p for p in (result.region, result.country) if p)


def status_of(result) -> str:
    if result is None:
        return RowStatus.NOT_RUN
    if result.status == "error":
        return RowStatus.ERROR
    return RowStatus.DONE if result.has_point else RowStatus.NO_ANSWER


class ResultsModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[PhotoRow] = []
        self._index: dict[str, int] = {}

    def set_photos(self, paths: list[Path]) -> None:
        self.beginResetModel()
        self.rows = [PhotoRow(Path(p)) for p in paths]
        self._index = {str(r.path): i for i, r in enumerate(self.rows)}
        self.endResetModel()

    def row_of(self, path) -> int | None:
        return self._index.get(str(path))

    def row(self, path) -> PhotoRow | None:
        i = self.row_of(path)
        return self.rows[i] if i is not None else None

    def update(self, path, *, status: str | None = None, result=None, message: str | None = None,
               keep_result: bool = True) -> None:
        i = self.row_of(path)
        if i is None:
            return
        row = self.rows[i]
        if status is not None:
            row.status = status
        if result is not None or not keep_result:
            row.result = result
        if message is not None:
            row.message = message
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def _value(self, row: PhotoRow, column: int):
        """(display text, sort key) of a cell."""
        r = row.result
        point = r is not None and r.has_point
        if column == 0:
            return row.path.name, row.path.name.lower()
        if column == 1:
            return row.status or "—", row.status
        if column == 2:
            return (f"{r.latitude:.5f}", r.latitude) if point else ("", float("inf"))
        if column == 3:
            return (f"{r.longitude:.5f}", r.longitude) if point else ("", float("inf"))
        if column == 4:
            text = place_text(r)
            return text, text.lower()
        if column == 5:
            if r is not None and r.truth_km is not None:
                return f"{r.truth_km:,.1f} km", r.truth_km
            return "", float("inf")
        if column == 6:
            if r is not None and r.confidence is not None:
                return f"{r.confidence:.2f}", r.confidence
            return "", -1.0
        return "", ""

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._value(row, index.column())[0]
        if role == SORT_ROLE:
            return self._value(row, index.column())[1]
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.message or str(row.path)
        if role == Qt.ItemDataRole.ForegroundRole and row.status == RowStatus.ERROR:
            return QColor("#b00020")
        if role == Qt.ItemDataRole.BackgroundRole:
            if row.status == RowStatus.ERROR:
                return QColor("#fdecee")
            if row.status == RowStatus.RUNNING:
                return QColor("#fff4d6")
        if role == Qt.ItemDataRole.UserRole:
            return str(row.path)
        return None


class ResultsProxy(QSortFilterProxyModel):
    """Text filter over every column plus a status filter (`STATUS_FILTERS`)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)
        self._statuses: set[str] | None = None

    def set_status_filter(self, name: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9; invalidateFilter is deprecated
            self.beginFilterChange()
            self._statuses = STATUS_FILTERS.get(name)
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self._statuses = STATUS_FILTERS.get(name)
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row, source_parent) -> bool:
        model = self.sourceModel()
        if self._statuses is not None and model.rows[source_row].status not in self._statuses:
            return False
        return super().filterAcceptsRow(source_row, source_parent)

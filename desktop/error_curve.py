"""The cumulative error curve, drawn live with QPainter: the share of photos whose guess is
within x km (log scale), as the report's error_cdf.png draws it at the end, with the published
accuracies of the dataset as markers at the five radii."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from geolocsft.geo import THRESHOLDS_KM

X_MIN_KM, X_MAX_KM = 0.1, 20050.0  # the report's axis: 100 m to half the Earth's circumference
CURVE = QColor("#1f5fa8")
PUBLISHED = QColor("#9a9a9a")


class ErrorCurve(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.errors: list[float] = []  # km of the photos with an answer, sorted
        self.total = 0  # finished photos (the curve's 100 %); photos with no answer never rise
        self.published: list[dict] = []
        self.setMinimumSize(320, 200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_errors(self, errors: list[float | None], total: int | None = None) -> None:
        self.errors = sorted(e for e in errors if e is not None)
        self.total = len(errors) if total is None else total
        self.update()

    def set_published(self, published: list[dict]) -> None:
        self.published = list(published)
        self.update()

    def share_within(self, km: float) -> float:
        """The curve's height at `km` (what the accuracy table says at a radius)."""
        if not self.total:
            return 0.0
        return sum(1 for e in self.errors if e <= km) / self.total

    def _plot_rect(self) -> QRectF:
        return QRectF(52, 22, max(self.width() - 70, 10), max(self.height() - 64, 10))

    def _x(self, rect: QRectF, km: float) -> float:
        span = math.log10(X_MAX_KM) - math.log10(X_MIN_KM)
        return rect.left() + rect.width() * (math.log10(max(km, X_MIN_KM)) - math.log10(X_MIN_KM)) / span

    @staticmethod
    def _y(rect: QRectF, share: float) -> float:
        return rect.bottom() - rect.height() * share

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("white"))
        rect = self._plot_rect()
        small = QFont(self.font())
        small.setPointSizeF(max(self.font().pointSizeF() - 1, 7))
        painter.setFont(small)
        grid = QPen(QColor("#dddddd"), 1, Qt.PenStyle.DotLine)
        text = QColor("#444444")
        for share in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = self._y(rect, share)
            painter.setPen(grid)
            painter.drawLine(QPointF(rect.left(), y), QPointF(rect.right(), y))
            painter.setPen(text)
            painter.drawText(QRectF(0, y - 8, rect.left() - 6, 16),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             f"{share:.0%}")
        for km in THRESHOLDS_KM:
            x = self._x(rect, km)
            painter.setPen(grid)
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            painter.setPen(text)
            painter.drawText(QRectF(x - 40, rect.top() - 18, 80, 16), Qt.AlignmentFlag.AlignCenter,
                             f"{km:,} km")
        for km in (1, 10, 100, 1000, 10000):
            painter.drawText(QRectF(self._x(rect, km) - 40, rect.bottom() + 2, 80, 16),
                             Qt.AlignmentFlag.AlignCenter, f"{km:,}")
        painter.drawText(QRectF(rect.left(), rect.bottom() + 18, rect.width(), 18),
                         Qt.AlignmentFlag.AlignCenter,
                         "error (km, log scale) → share of photos within it")
        painter.setPen(QPen(QColor("#888888"), 1))
        painter.drawRect(rect)

        # Published accuracies: one grey marker per method and radius.
        painter.setPen(QPen(PUBLISHED, 1))
        painter.setBrush(PUBLISHED)
        for entry in self.published:
            for km, acc in zip(THRESHOLDS_KM, entry.get("acc", [])):
                painter.drawEllipse(QPointF(self._x(rect, km), self._y(rect, acc / 100)), 2.5, 2.5)

        if self.total and self.errors:
            path = QPainterPath(QPointF(rect.left(), rect.bottom()))
            for i, km in enumerate(self.errors):
                x = self._x(rect, km)
                path.lineTo(x, self._y(rect, i / self.total))
                path.lineTo(x, self._y(rect, (i + 1) / self.total))
            path.lineTo(rect.right(), self._y(rect, len(self.errors) / self.total))
            painter.setPen(QPen(CURVE, 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(path)
        painter.setPen(text)
        legend = (f"this run: {self.total} photos, {len(self.errors)} with an answer"
                  if self.total else "the curve fills in as photos finish")
        if self.published:
            legend += " · grey dots: published results"
        painter.drawText(QRectF(rect.left() + 6, rect.top() + 4, rect.width() - 12, 16),
                         Qt.AlignmentFlag.AlignLeft, legend)
        painter.end()

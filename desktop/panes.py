"""The answer pane (coordinates, place, confidence, timings) and the reasoning pane (the model's
analysis as a short report, its raw text one click away and live while it streams)."""

from __future__ import annotations

import html

from PySide6.QtGui import QFont, QGuiApplication, QTextCursor
from PySide6.QtWidgets import (QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit,
                               QPushButton, QStackedWidget, QTextBrowser, QVBoxLayout, QWidget)

from desktop.results_model import place_text


def timings_text(result) -> str:
    """Image work apart from token generation: local-LLM apps often fold the vision encoder's
    time into 'prompt processing' and hide it."""
    parts = []
    if result.image_prepare_s is not None:
        parts.append(f"image prep {result.image_prepare_s:.2f} s")
    if result.image_encode_s is not None:
        tokens = f" ({result.image_tokens} tokens)" if result.image_tokens else ""
        parts.append(f"image encode {result.image_encode_s:.2f} s{tokens}")
    if result.prompt_s is not None:
        parts.append(f"prompt {result.prompt_s:.2f} s")
    if result.generated_tokens:
        rate = f" at {result.tokens_per_s:.1f} tok/s" if result.tokens_per_s else ""
        parts.append(f"{result.generated_tokens} tokens{rate}")
    return " · ".join(parts)


class AnswerPane(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(6, 6, 6, 6)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.decimal = QLineEdit()
        self.decimal.setReadOnly(True)
        self.decimal.setFont(mono)
        self.decimal.setPlaceholderText("no answer yet")
        self.decimal.setMinimumWidth(170)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the coordinates (Ctrl+Shift+C)")
        self.copy_button.clicked.connect(self.copy_coordinates)
        row = QHBoxLayout()
        row.addWidget(self.decimal, 1)
        row.addWidget(self.copy_button)
        form.addRow("Coordinates", row)
        self.dms = QLineEdit()
        self.dms.setReadOnly(True)
        self.dms.setFont(mono)
        form.addRow("DMS", self.dms)
        self.place = QLabel()
        self.place.setWordWrap(True)
        self.place.setTextInteractionFlags(self.place.textInteractionFlags().TextSelectableByMouse)
        form.addRow("Place", self.place)
        self.confidence = QLabel()
        form.addRow("Confidence", self.confidence)
        self.error = QLabel()
        form.addRow("vs EXIF GPS", self.error)
        self.timings = QLabel()
        self.timings.setWordWrap(True)
        form.addRow("Timings", self.timings)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #b00020")
        form.addRow(self.status)

    def clear(self) -> None:
        for widget in (self.decimal, self.dms):
            widget.clear()
        for label in (self.place, self.confidence, self.error, self.timings, self.status):
            label.clear()

    def show_result(self, result, message: str = "") -> None:
        from geolocsft.geo import to_dms

        self.clear()
        if result is None:
            self.status.setText(message)
            return
        if result.has_point:
            self.decimal.setText(f"{result.latitude:.6f}, {result.longitude:.6f}")
            self.dms.setText(to_dms(result.latitude, result.longitude))
            for edit in (self.decimal, self.dms):
                edit.setCursorPosition(0)  # show the start, not the end, of a long value
        elif result.status == "error":
            self.status.setText(result.error or message)
        else:
            self.status.setText(f"no usable answer: {result.parse_status} {result.parse_reason}".strip())
        place = place_text(result)
        if result.place_country_code:
            place += f" ({result.place_country_code})"
        self.place.setText(place)
        if result.confidence is not None:
            self.confidence.setText(f"{result.confidence:.2f} (the model's own)")
        if result.radius_km:
            extra = f"guesses within {result.radius_km:,.0f} km"
            self.confidence.setText(", ".join(t for t in (self.confidence.text(), extra) if t))
        if result.truth_km is not None:
            self.error.setText(f"{result.truth_km:,.1f} km from the photo's GPS")
        elif result.truth_lat is None:
            self.error.setText("the photo has no GPS")
        self.timings.setText(timings_text(result))

    def copy_coordinates(self) -> None:
        if self.decimal.text():
            QGuiApplication.clipboard().setText(self.decimal.text())


# The analysis's sections, in the order the prompt asks for them (geolocsft.protocol).
SECTIONS = (("regional_25km", "Regional clues (~25 km)"), ("micro_1km", "Local clues (~1 km)"),
            ("eliminated", "Ruled out"), ("conclusion", "Conclusion"))


def report_html(analysis: dict, note: str = "") -> str:
    """The analysis JSON as labelled sections: clue tables, the regions ruled out with the
    reason for each, the conclusion. Values are the model's words, escaped."""
    esc = html.escape
    parts = [f"<p><i>{esc(note)}</i></p>"] if note else []
    for key, title in SECTIONS:
        value = analysis.get(key)
        if not value:
            continue
        parts.append(f"<h4>{title}</h4>")
        if isinstance(value, dict):
            rows = "".join(f"<tr><td><b>{esc(str(k).replace('_', ' '))}</b>&nbsp;</td>"
                           f"<td>{esc(str(v))}</td></tr>" for k, v in value.items() if v)
            parts.append(f"<table>{rows}</table>")
        elif isinstance(value, list):
            items = "".join(
                f"<li><b>{esc(str(i.get('region', '')))}</b>: {esc(str(i.get('why', '')))}</li>"
                if isinstance(i, dict) else f"<li>{esc(str(i))}</li>" for i in value)
            parts.append(f"<ul>{items}</ul>")
        else:
            parts.append(f"<p>{esc(str(value))}</p>")
    return "".join(parts)


class ReasoningPane(QWidget):
    """The model's reasoning for one photo: a report of its analysis once there is one, the raw
    text (tokens appending as they arrive) while it streams or when the user asks for it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        header = QHBoxLayout()
        self.title = QLabel("Reasoning")
        self.title.setStyleSheet("font-weight: bold; padding: 2px 4px")
        header.addWidget(self.title, 1)
        self.raw_button = QPushButton("Raw text")
        self.raw_button.setCheckable(True)
        self.raw_button.setToolTip("Show the model's own words, every guess, as generated")
        self.raw_button.toggled.connect(self._show_view)
        header.addWidget(self.raw_button)
        layout.addLayout(header)
        self.report = QTextBrowser()
        self.report.setPlaceholderText("The model's analysis appears here once it has answered.")
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setPlaceholderText("The model's reasoning streams here while it works.")
        self.views = QStackedWidget()
        self.views.addWidget(self.report)
        self.views.addWidget(self.text)
        layout.addWidget(self.views)
        self.path = ""
        self.has_report = False

    def _show_view(self, raw: bool | None = None) -> None:
        raw = self.raw_button.isChecked() if raw is None else raw
        self.views.setCurrentWidget(self.text if raw or not self.has_report else self.report)
        self.raw_button.setEnabled(self.has_report)

    def start(self, path: str, title: str) -> None:
        """A new photo: streaming text shows live in the raw view."""
        self.path = path
        self.title.setText(f"Reasoning — {title}")
        self.text.clear()
        self.report.clear()
        self.has_report = False
        self._show_view()

    def append(self, piece: str) -> None:
        cursor = self.text.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(piece)
        self.text.setTextCursor(cursor)
        self.text.ensureCursorVisible()

    def show_text(self, path: str, title: str, text: str, analysis: dict | None = None,
                  note: str = "") -> None:
        """A finished photo: the report of `analysis` (when it has one) over its raw text."""
        self.start(path, title)
        self.text.setPlainText(text)
        if analysis:
            self.report.setHtml(report_html(analysis, note))
            self.has_report = True
        self._show_view()

    def plain_text(self) -> str:
        return self.text.toPlainText()

    def report_text(self) -> str:
        return self.report.toPlainText() if self.has_report else ""

    def showing_report(self) -> bool:
        return self.views.currentWidget() is self.report

"""Persistent settings (QSettings) and the settings dialog.

Stored: models folder, threads, image budget (max image tokens; 0 = the model's budget, the
paper's 1,280 for Qwen2.5-VL), photos decoded together (throughput mode), GPU layers, samples
per photo, recent folders, MBTiles base map, last model,
the benchmark form.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QSpinBox, QWidget)

ORGANIZATION = "geolocsft"
APPLICATION = "geolocsft-desktop"
MAX_RECENT = 8


class AppSettings:
    def __init__(self, qsettings: QSettings | None = None):
        self.q = qsettings or QSettings(ORGANIZATION, APPLICATION)

    def _get(self, key, default, kind):
        value = self.q.value(key, default)
        try:
            return kind(value) if value is not None else default
        except (TypeError, ValueError):
            return default

    @property
    def models_dir(self) -> str:
        from geolocsft.paths import models_dir

        return self._get("models/folder", "", str) or str(models_dir())

    @models_dir.setter
    def models_dir(self, value: str) -> None:
        self.q.setValue("models/folder", value)

    @property
    def last_model(self) -> str:
        return self._get("models/last", "", str)

    @last_model.setter
    def last_model(self, value: str) -> None:
        self.q.setValue("models/last", value)

    @property
    def threads(self) -> int:
        return self._get("engine/threads", 0, int)

    @threads.setter
    def threads(self, value: int) -> None:
        self.q.setValue("engine/threads", int(value))

    @property
    def image_max_tokens(self) -> int:
        return self._get("engine/image_max_tokens", 0, int)

    @image_max_tokens.setter
    def image_max_tokens(self, value: int) -> None:
        self.q.setValue("engine/image_max_tokens", int(value))

    @property
    def parallel(self) -> int:
        return max(1, self._get("engine/parallel", 1, int))

    @parallel.setter
    def parallel(self, value: int) -> None:
        self.q.setValue("engine/parallel", max(1, int(value)))

    @property
    def gpu_layers(self) -> int:
        return self._get("engine/gpu_layers", -1, int)

    @gpu_layers.setter
    def gpu_layers(self, value: int) -> None:
        self.q.setValue("engine/gpu_layers", int(value))

    @property
    def samples(self) -> int:
        return max(1, self._get("engine/samples", 1, int))

    @samples.setter
    def samples(self, value: int) -> None:
        self.q.setValue("engine/samples", max(1, int(value)))

    @property
    def mbtiles(self) -> str:
        return self._get("map/mbtiles", "", str)

    @mbtiles.setter
    def mbtiles(self, value: str) -> None:
        self.q.setValue("map/mbtiles", value)

    @property
    def recent_folders(self) -> list[str]:
        value = self.q.value("folders/recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def add_recent_folder(self, folder: str) -> None:
        folders = [folder] + [f for f in self.recent_folders if f != folder]
        self.q.setValue("folders/recent", folders[:MAX_RECENT])

    # The benchmark form (dataset kind, metadata file, images folder, report folder): what the
    # user ran last is there again next time.
    BENCH_FIELDS = ("kind", "meta", "images", "out")

    def bench_form(self) -> dict[str, str]:
        return {name: self._get(f"bench/{name}", "", str) for name in self.BENCH_FIELDS}

    def set_bench_form(self, values: dict[str, str]) -> None:
        for name in self.BENCH_FIELDS:
            if name in values:
                self.q.setValue(f"bench/{name}", str(values[name]))

    def engine_options(self):
        from desktop.worker import EngineOptions

        return EngineOptions(threads=self.threads or None,
                             image_max_tokens=self.image_max_tokens or None,
                             samples=self.samples,
                             engine_kwargs={"parallel": self.parallel,
                                            "n_gpu_layers": self.gpu_layers})

    def sync(self) -> None:
        self.q.sync()


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        form = QFormLayout(self)
        self.models_dir = QLineEdit(settings.models_dir)
        form.addRow("Models folder", self._with_browse(self.models_dir, folder=True))
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText("automatic")
        self.threads.setValue(settings.threads)
        form.addRow("CPU threads", self.threads)
        self.image_tokens = QSpinBox()
        self.image_tokens.setRange(0, 16384)
        self.image_tokens.setSpecialValueText("model's budget")
        self.image_tokens.setValue(settings.image_max_tokens)
        form.addRow("Max image tokens", self.image_tokens)
        self.parallel = QSpinBox()
        self.parallel.setRange(1, 16)
        self.parallel.setValue(settings.parallel)
        self.parallel.setToolTip("Throughput mode for Locate all: several photos decoded "
                                 "together (same answers, more photos per hour)")
        form.addRow("Photos decoded together", self.parallel)
        self.gpu_layers = QSpinBox()
        self.gpu_layers.setRange(-1, 1024)
        self.gpu_layers.setSpecialValueText("all")
        self.gpu_layers.setValue(settings.gpu_layers)
        self.gpu_layers.setToolTip("Layers on the GPU when llama.cpp was built with CUDA or "
                                   "Metal; 0 = CPU only")
        form.addRow("GPU layers", self.gpu_layers)
        self.samples = QSpinBox()
        self.samples.setRange(1, 32)
        self.samples.setValue(settings.samples)
        form.addRow("Guesses per photo", self.samples)
        note = QLabel("One guess is the paper's greedy single pass; several guesses are sampled "
                      "and fused into a consensus with a confidence circle.")
        note.setWordWrap(True)
        form.addRow(note)
        self.mbtiles = QLineEdit(settings.mbtiles)
        self.mbtiles.setPlaceholderText("none: the built-in Natural Earth map")
        form.addRow("MBTiles base map", self._with_browse(self.mbtiles, folder=False))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _with_browse(self, edit: QLineEdit, folder: bool) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        button = QPushButton("Browse…")
        row.addWidget(button)

        def browse():
            if folder:
                chosen = QFileDialog.getExistingDirectory(self, "Models folder", edit.text())
            else:
                chosen, _ = QFileDialog.getOpenFileName(
                    self, "MBTiles file", str(Path(edit.text()).parent) if edit.text() else "",
                    "MBTiles (*.mbtiles);;All files (*)")
            if chosen:
                edit.setText(chosen)

        button.clicked.connect(browse)
        return box

    def apply(self) -> None:
        self.settings.models_dir = self.models_dir.text().strip()
        self.settings.threads = self.threads.value()
        self.settings.image_max_tokens = self.image_tokens.value()
        self.settings.parallel = self.parallel.value()
        self.settings.gpu_layers = self.gpu_layers.value()
        self.settings.samples = self.samples.value()
        self.settings.mbtiles = self.mbtiles.text().strip()
        self.settings.sync()

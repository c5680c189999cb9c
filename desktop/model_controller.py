"""The model picker: the model folders found (`geolocsft.catalog.list_local`), loading one on
the worker thread, and what the About box says about it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt


class ModelController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window

    def refresh_models(self) -> None:
        from geolocsft.catalog import list_local

        w = self.window
        models, problems = list_local(w.settings.models_dir)
        for line in problems:
            w.report_problem(line)
        w.model_combo.clear()
        for model in models:
            m = model.manifest
            size = model.size_bytes
            size_text = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
            w.model_combo.addItem(f"{m.name} · {m.family} · {m.quant} · {size_text}",
                                  str(model.folder))
            index = w.model_combo.count() - 1
            w.model_combo.setItemData(index, self._model_tooltip(model), Qt.ItemDataRole.ToolTipRole)
        if not models:
            w.model_combo.addItem(f"no models in {w.settings.models_dir}", "")
            return
        last = w.settings.last_model
        index = w.model_combo.findData(last) if last else -1
        w.model_combo.setCurrentIndex(max(index, 0))
        self.load_model(w.model_combo.currentData())

    @staticmethod
    def _model_tooltip(model) -> str:
        m = model.manifest
        need = model.memory_need
        return (f"{model.folder}\nbase: {m.base_model}\nprompt: {m.prompt_version}\n"
                f"needs about {need / 1e9:.1f} GB of memory")

    def on_model_chosen(self, index: int) -> None:
        w = self.window
        folder = w.model_combo.itemData(index)
        if folder:
            self.load_model(folder)

    def load_model(self, folder: str) -> None:
        w = self.window
        if not folder:
            return
        if w.running:
            w.report_problem("a run is in progress: cancel it before changing the model")
            return
        w.spec = None
        # What the store has for this model shows now, not after the load (the manifest names
        # the model's hash; a demo's results appear at once).
        w.shown_model_sha256 = _manifest_sha256(folder)
        w.load_stored_results()
        w.update_actions()
        w.model_label.setText(f"loading {Path(folder).name}…")
        w.settings.last_model = folder
        w.requestLoad.emit(folder, w.engine_options())

    def on_model_loaded(self, spec) -> None:
        w = self.window
        w.spec = spec
        w.model_label.setText(f"model: {spec.name} ({spec.family})")
        w.statusBar().showMessage(f"Model {spec.name} loaded", 5000)
        w.load_stored_results()
        w.update_actions()

    def on_model_failed(self, message: str) -> None:
        w = self.window
        w.spec = None
        w.model_label.setText("model failed to load")
        w.report_problem(message)
        w.update_actions()

    def about_text(self) -> str:
        import importlib.metadata

        from PySide6 import __version__ as pyside_version

        import geolocsft

        w = self.window
        try:
            llama = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            llama = "not installed"
        lines = [f"geolocsft {geolocsft.__version__}", f"llama-cpp-python {llama}",
                 f"PySide6 {pyside_version}"]
        if w.spec is not None:
            lines.append(f"model: {w.spec.name} ({w.spec.family}, prompt "
                         f"{w.spec.prompt_version})")
            try:
                from geolocsft.manifest import read_manifest

                manifest = read_manifest(w.spec.gguf.parent)
                version = getattr(manifest, "llama_cpp_version", "")
                lines.append(f"model quantization {manifest.quant}"
                             + (f", converted with llama.cpp {version}" if version else ""))
            except Exception:
                pass
        lines.append(f"map: {w.map.basemap.provenance}")
        return "\n".join(lines)


def _manifest_sha256(folder: str) -> str | None:
    from geolocsft.engine import ModelSpec

    try:
        return ModelSpec.from_folder(folder).model_sha256
    except Exception:  # not a readable model folder: the load reports why
        return None

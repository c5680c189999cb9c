"""The app's one background worker: loads a model and runs the core batch runner
(`geolocsft.locate.LocateRunner` over `geolocsft.engine.Engine`) on its own QThread, and reports
through signals. The GUI observes; all geolocation happens in the core.

Cancel is a `threading.Event` the GUI sets directly: the engine checks it before every token,
so a run stops within one token.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot


@dataclass(frozen=True)
class EngineOptions:
    """What the user set in the settings; None means the engine's/model's default."""

    threads: int | None = None
    image_max_tokens: int | None = None
    samples: int = 1
    temperature: float | None = None  # None: 0 for one sample, the CLI's default for several
    engine_kwargs: dict = field(default_factory=dict)  # any other Engine keyword argument


class LocateWorker(QObject):
    modelLoaded = Signal(object)  # ModelSpec
    modelFailed = Signal(str)
    progress = Signal(object)  # geolocsft.locate.Progress
    photoStarted = Signal(str)  # path
    token = Signal(str, str)  # path, piece
    outcome = Signal(object)  # geolocsft.locate.PhotoOutcome
    runFinished = Signal(object)  # RunSummary, or None when the run could not start
    runFailed = Signal(str)

    def __init__(self, store):
        super().__init__()
        self.store = store
        self.engine = None
        self.spec = None
        self.cancel_event = threading.Event()
        self._options = EngineOptions()

    @Slot(str, object)
    def load_model(self, folder: str, options: EngineOptions) -> None:
        from geolocsft.engine import Engine, EngineError, ModelSpec

        self.close_engine()
        try:
            spec = ModelSpec.from_folder(Path(folder))
            kwargs = dict(options.engine_kwargs)
            if options.threads:
                kwargs["n_threads"] = options.threads
            if options.image_max_tokens:
                kwargs["image_max_tokens"] = options.image_max_tokens
            self.engine = Engine(spec, **kwargs)
        except EngineError as exc:
            self.modelFailed.emit(str(exc))
            return
        except Exception as exc:  # an unexpected library failure must not kill the thread
            self.modelFailed.emit(f"{folder}: cannot load the model: {exc}")
            return
        self.spec = spec
        self._options = options
        self._warm_up_places()
        self.modelLoaded.emit(spec)

    @staticmethod
    def _warm_up_places() -> None:
        """Load the offline place names now (about a second of pure Python holding the GIL)
        rather than after the first photo, when the window is busy showing the answer."""
        try:
            from geolocsft.places import lookup

            lookup(0.0, 0.0)
        except Exception:  # missing data is reported by the run itself, as a warning
            pass

    @Slot(list, object)
    def run(self, paths: list, options: EngineOptions) -> None:
        from geolocsft.locate import LocateRunner, find_photos

        if self.engine is None:
            self.runFailed.emit("no model is loaded")
            self.runFinished.emit(None)
            return
        self.cancel_event.clear()
        items, problems = find_photos(paths)
        for line in problems:
            self.runFailed.emit(line)
        temperature = options.temperature
        if temperature is None:
            from geolocsft.locate_cli import DEFAULT_SAMPLED_TEMPERATURE

            temperature = DEFAULT_SAMPLED_TEMPERATURE if options.samples > 1 else 0.0
        last_current = [None]

        def on_progress(progress):
            if progress.current is not None and progress.current != last_current[0]:
                last_current[0] = progress.current
                self.photoStarted.emit(str(progress.current))
            self.progress.emit(progress)

        try:
            runner = LocateRunner(
                self.engine, self.store, samples=max(1, options.samples), temperature=temperature,
                on_progress=on_progress, on_outcome=self.outcome.emit,
                on_token=lambda item, piece: self.token.emit(str(item.path), piece),
                cancel=self.cancel_event)
            summary = runner.run(items)
        except Exception as exc:
            self.runFailed.emit(f"the run stopped: {exc}")
            self.runFinished.emit(None)
            return
        self.runFinished.emit(summary)

    def close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            self.spec = None


class WorkerThread(QThread):
    """Owns the worker; `stop()` cancels any run and waits for the thread (a run stops within
    a token; a model still loading is waited for, as llama.cpp cannot abandon a load)."""

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.worker = LocateWorker(store)
        self.worker.moveToThread(self)

    def stop(self) -> None:
        self.worker.cancel_event.set()
        self.quit()
        self.wait()
        self.worker.close_engine()

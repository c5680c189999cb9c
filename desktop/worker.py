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

from geolocsft.workflow import default_temperature


@dataclass(frozen=True)
class EngineOptions:
    """What the user set in the settings; None means the engine's/model's default."""

    threads: int | None = None
    image_max_tokens: int | None = None
    samples: int = 1
    temperature: float | None = None  # None: 0 for one sample, the CLI's default for several
    engine_kwargs: dict = field(default_factory=dict)  # any other Engine keyword argument


@dataclass(frozen=True)
class BenchRequest:
    """A benchmark run as `geolocsft bench run` takes it."""

    kind: str  # one of geolocsft.bench_run.DATASETS
    meta: Path | None  # the metadata CSV (None for an EXIF folder)
    images: Path
    out_dir: Path  # the report folder; its results store makes a rerun resume
    samples: int = 1


class LocateWorker(QObject):
    modelLoaded = Signal(object)  # ModelSpec
    modelFailed = Signal(str)
    progress = Signal(object)  # geolocsft.locate.Progress
    photoStarted = Signal(str)  # path
    token = Signal(str, str)  # path, piece
    outcome = Signal(object)  # geolocsft.locate.PhotoOutcome
    runFinished = Signal(object)  # RunSummary, or None when the run could not start
    runFailed = Signal(str)  # a problem to show; the run may go on
    # Benchmark mode: the same flow through geolocsft.bench_run.run_benchmark.
    benchSamples = Signal(object)  # geolocsft.datasets.DatasetResult, before any outcome
    benchProgress = Signal(object)
    benchPhotoStarted = Signal(str)
    benchToken = Signal(str, str)
    benchOutcome = Signal(object)
    benchFinished = Signal(object)  # BenchResult, or None when the run could not start/failed

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
        temperature = default_temperature(options.temperature, options.samples)
        try:
            runner = LocateRunner(
                self.engine, self.store, samples=max(1, options.samples), temperature=temperature,
                on_progress=self._progress_relay(self.photoStarted, self.progress),
                on_outcome=self.outcome.emit,
                on_token=lambda item, piece: self.token.emit(str(item.path), piece),
                on_guess=self._guess_relay(self.token),
                cancel=self.cancel_event)
            summary = runner.run(items)
        except Exception as exc:
            self.runFailed.emit(f"the run stopped: {exc}")
            self.runFinished.emit(None)
            return
        self.runFinished.emit(summary)

    @staticmethod
    def _guess_relay(token):
        """on_guess for the runner: with several guesses, each one's text opens with a heading
        in the streamed reasoning (the same one a finished photo shows)."""
        from geolocsft.locate import guess_heading

        def relay(item, k, samples):
            heading = guess_heading(k, samples)
            if heading:
                token.emit(str(item.path), heading)
        return relay

    def _progress_relay(self, started, progress):
        """on_progress for the runner: a photo-started signal when the current photo changes,
        and the progress itself."""
        last = [None]

        def on_progress(value):
            if value.current is not None and value.current != last[0]:
                last[0] = value.current
                started.emit(str(value.current))
            progress.emit(value)

        return on_progress

    @Slot(object, object)
    def run_benchmark(self, request: BenchRequest, options: EngineOptions) -> None:
        """Read the benchmark set (an EXIF folder is walked here, off the GUI thread), then
        `bench_run.run_benchmark`, which writes the report folder at the end."""
        from geolocsft import bench_run
        from geolocsft.datasets import DatasetError

        if self.engine is None:
            self.runFailed.emit("no model is loaded")
            self.benchFinished.emit(None)
            return
        self.cancel_event.clear()
        try:
            data = bench_run.read_benchmark(request.kind, request.meta, request.images)
        except (DatasetError, OSError) as exc:
            self.runFailed.emit(str(exc))
            self.benchFinished.emit(None)
            return
        for line in data.warnings:
            self.runFailed.emit(line)
        if not data.samples:
            self.runFailed.emit(f"{data.source}: no usable photos")
            self.benchFinished.emit(None)
            return
        self.benchSamples.emit(data)
        samples_k = max(1, request.samples)
        try:
            result = bench_run.run_benchmark(
                data.samples, self.engine, request.out_dir, dataset=request.kind,
                images_root=request.images, samples_k=samples_k,
                temperature=default_temperature(options.temperature, samples_k),
                on_progress=self._progress_relay(self.benchPhotoStarted, self.benchProgress),
                on_outcome=self.benchOutcome.emit,
                on_token=lambda item, piece: self.benchToken.emit(str(item.path), piece),
                on_guess=self._guess_relay(self.benchToken),
                cancel=self.cancel_event)
        except Exception as exc:  # a failing library or a full disk must not kill the thread
            self.runFailed.emit(f"the benchmark stopped: {exc}")
            self.benchFinished.emit(None)
            return
        self.benchFinished.emit(result)

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

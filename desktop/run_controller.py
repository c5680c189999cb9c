"""A photo run: queue the photos, follow the worker's signals (the photo in progress, its
streamed text, each outcome, the ETA), and say how it ended. The batch loop itself is
`geolocsft.locate.LocateRunner` on the worker thread."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Qt

from desktop.results_model import RowStatus, status_of
from desktop.worker import EngineOptions
from geolocsft import workflow


class RunController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.live_path = ""  # the photo being located now, and its text so far
        self.live_text: list[str] = []

    def connect_worker(self, worker) -> None:
        self.window.requestRun.connect(worker.run)
        worker.photoStarted.connect(self.on_photo_started)
        worker.token.connect(self.on_token)
        worker.outcome.connect(self.on_outcome)
        worker.progress.connect(self.on_progress)
        worker.runFinished.connect(self.on_run_finished)
        worker.runFailed.connect(self.window.report_problem)

    def selected_paths(self) -> list[str]:
        w = self.window
        rows = w.table.selectionModel().selectedRows()
        paths = [w.proxy.data(index, Qt.ItemDataRole.UserRole) for index in rows]
        if not paths and w.current_path():
            paths = [w.current_path()]
        return paths

    def locate_selected(self) -> None:
        self.start_run(self.selected_paths())

    def locate_all(self) -> None:
        self.start_run([str(row.path) for row in self.window.results.rows])

    def start_run(self, paths: list[str], options: EngineOptions | None = None) -> bool:
        w = self.window
        if w.running or w.spec is None or not paths:
            if w.spec is None:
                w.report_problem("choose a model first (it loads in the background)")
            return False
        w.running = True
        w.run_kind = "photos"
        self.live_path = ""
        self.live_text = []
        w.run_started = time.perf_counter()
        for path in paths:
            w.results.update(path, status=RowStatus.QUEUED, message="")
        w.progress.setRange(0, len(paths))
        w.progress.setValue(0)
        w.progress.setVisible(True)
        w.eta_label.setText("starting…")
        w.update_actions()
        w.requestRun.emit(list(paths), options or w.engine_options())
        return True

    def cancel_run(self) -> None:
        if self.window.running:
            self.window.thread.worker.cancel_event.set()
            self.window.eta_label.setText("cancelling…")

    def on_photo_started(self, path: str) -> None:
        # Follow the run only while the user is on the photo the run was on (or on nothing):
        # someone who selected another photo to look at keeps it.
        w = self.window
        follow = w.current_path() in ("", self.live_path) or not self.live_path
        self.live_path = path
        self.live_text = []
        w.results.update(path, status=RowStatus.RUNNING)
        if follow:
            w.reasoning.start(path, Path(path).name)
            w.select_photo(path)

    def on_token(self, path: str, piece: str) -> None:
        if path == self.live_path:
            self.live_text.append(piece)
        if path == self.window.reasoning.path:
            self.window.reasoning.append(piece)

    def on_outcome(self, outcome) -> None:
        w = self.window
        path = str(outcome.item.path)
        if outcome.action == "cancelled":
            w.results.update(path, status=RowStatus.CANCELLED, message="cancelled")
        elif outcome.action == "error":
            w.results.update(path, status=RowStatus.ERROR, result=outcome.result,
                             message=outcome.message)
            w.report_problem(outcome.message)
        else:
            result = outcome.result
            w.results.update(path, status=status_of(result), result=result,
                             message=result.error if result is not None else "")
        w.refresh_map_results()
        if path == w.current_path():
            w.photos.show_photo(path, reload_preview=False)

    def on_progress(self, progress) -> None:
        from geolocsft.locate import format_eta

        w = self.window
        w.progress.setMaximum(max(progress.total, 1))
        w.progress.setValue(progress.processed)
        rate = f" · {progress.s_per_photo:.1f} s/photo" if progress.s_per_photo else ""
        w.eta_label.setText(f"{progress.processed}/{progress.total} · ETA "
                            f"{format_eta(progress.eta_s)}{rate}")

    def on_run_finished(self, summary) -> None:
        w = self.window
        w.running = False
        w.run_kind = ""
        self.live_path = ""
        w.last_summary = summary
        for row in w.results.rows:
            if row.status in (RowStatus.QUEUED, RowStatus.RUNNING):
                w.results.update(row.path, status=status_of(row.result) if row.result else
                                 RowStatus.CANCELLED if summary and summary.cancelled else
                                 RowStatus.NOT_RUN)
        w.progress.setVisible(False)
        if summary is None:
            w.eta_label.setText("run failed")
        else:
            counts = workflow.run_counts(summary)
            what = "cancelled" if summary.cancelled else "finished"
            w.eta_label.setText(
                f"{what}: {counts['computed']} located, {counts['skipped']} from the store, "
                f"{summary.count('error')} errors in {summary.elapsed_s:.1f} s")
            for warning in summary.warnings:
                w.report_problem(warning)
        w.update_actions()
        w.runDone.emit(summary)

"""Benchmark mode's run and report: start a run on the worker, follow it, copy the report.
The work is `geolocsft.bench_run.run_benchmark` on the worker thread; this only wires it."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QMessageBox

from desktop.benchmark import REPORT_FILES, copy_report
from desktop.worker import BenchRequest


class BenchController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.request: BenchRequest | None = None
        bench = window.bench
        bench.runRequested.connect(self.start_benchmark)
        bench.cancelRequested.connect(window.runs.cancel_run)
        bench.saveRequested.connect(self.save_report)

    def connect_worker(self, worker) -> None:
        w, bench = self.window, self.window.bench
        w.requestBench.connect(worker.run_benchmark)
        worker.benchSamples.connect(self._on_bench_samples)
        worker.benchProgress.connect(w.runs.on_progress)
        worker.benchPhotoStarted.connect(bench.photo_started)
        worker.benchToken.connect(bench.token)
        worker.benchOutcome.connect(bench.add_outcome)
        worker.benchFinished.connect(self._on_bench_finished)

    def start_benchmark(self, request: BenchRequest | None = None, confirm_replace=None) -> bool:
        """Run a benchmark set through `bench_run.run_benchmark` on the worker (the form's
        run when `request` is None). A report folder that already holds a report is resumed
        into (its store skips finished photos; the report is rewritten) only when
        `confirm_replace(report_json)` says yes."""
        w = self.window
        if w.running:
            w.report_problem("a run is in progress: cancel it first")
            return False
        if w.spec is None:
            w.report_problem("choose a model first (it loads in the background)")
            return False
        if request is None:
            try:
                request = w.bench.request(w.spec.name)
            except ValueError as exc:
                w.report_problem(str(exc))
                return False
            w.settings.set_bench_form(w.bench.form_values())
            confirm_replace = confirm_replace or self._confirm_report_replace
        existing = Path(request.out_dir) / "report.json"
        if existing.exists() and not (confirm_replace and confirm_replace(existing)):
            w.report_problem(f"{existing}: a report is there; not replaced")
            return False
        w.running = True
        w.run_kind = "benchmark"
        w.run_started = time.perf_counter()
        self.request = request
        w.progress.setRange(0, 0)
        w.progress.setVisible(True)
        w.eta_label.setText("reading the benchmark set…")
        w.update_actions()
        w.requestBench.emit(request, w.engine_options())
        return True

    def _on_bench_samples(self, data) -> None:
        self.window.bench.start(data, self.request.samples)
        self.window.progress.setRange(0, len(data.samples))
        self.window.progress.setValue(0)

    def _on_bench_finished(self, result) -> None:
        w = self.window
        w.running = False
        w.run_kind = ""
        w.progress.setVisible(False)
        if result is None:
            w.eta_label.setText("benchmark failed")
        else:
            what = "cancelled" if result.cancelled else "finished"
            w.eta_label.setText(f"benchmark {what} in "
                                f"{time.perf_counter() - w.run_started:.1f} s")
            w.statusBar().showMessage(f"report: {result.out_dir / 'report.md'}", 15000)
        w.bench.finish(result)
        w.update_actions()
        w.benchDone.emit(result)

    def _confirm_report_replace(self, existing: Path) -> bool:
        answer = QMessageBox.question(
            self.window, "Resume into this report folder?",
            f"{existing} exists. Run into this folder anyway? Photos already in its results "
            f"store are not run again, and its report files are rewritten.")
        return answer == QMessageBox.StandardButton.Yes

    def save_report(self) -> None:
        result = self.window.bench.result
        if result is None:
            self.window.report_problem("no benchmark report yet: run one first")
            return
        folder = QFileDialog.getExistingDirectory(self.window, "Save the report to",
                                                  str(result.out_dir))
        if folder:
            self.save_report_to(folder, confirm_replace=self.window.exports._confirm_replace)

    def save_report_to(self, folder: str | Path, confirm_replace=None) -> list[Path]:
        """Copy the last benchmark's report files (report.md/json, predictions.csv, plots)."""
        result = self.window.bench.result
        if result is None:
            self.window.report_problem("no benchmark report yet: run one first")
            return []
        folder = Path(folder)
        if folder.resolve() == Path(result.out_dir).resolve():
            return [folder / name for name in REPORT_FILES if (folder / name).exists()]
        try:
            written = copy_report(Path(result.out_dir), folder, confirm_replace)
        except (OSError, FileExistsError) as exc:
            self.window.report_problem(str(exc))
            return []
        self.window.statusBar().showMessage(f"report saved to {folder}", 8000)
        return written

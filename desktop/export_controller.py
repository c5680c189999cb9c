"""The File menu's exports and tags: ask the user, call `geolocsft.workflow` (the same functions
`geolocsft locate` calls), report what happened in the status bar. No file logic of its own."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QMessageBox

from geolocsft import workflow


class ExportController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window

    def _located(self) -> list[workflow.Located]:
        rows = ((row.path, row.result) for row in self.window.results.rows)
        return workflow.located_photos(rows, self.window.folder)

    def _ask_about(self, title: str, existing: list[Path], question: str) -> bool:
        """One yes/no for a batch: "<first file> and N more exist. <question>"."""
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        answer = QMessageBox.question(self.window, title, f"{existing[0]}{more} exist. {question}")
        return answer == QMessageBox.StandardButton.Yes

    def _report_tags(self, what: str, outcomes: list) -> None:
        for outcome in outcomes:
            if outcome.action == "error":
                self.window.report_problem(f"{outcome.path}: {outcome.message}")
        counts = workflow.tag_counts(outcomes)
        summary = f"{what}: " + workflow.format_counts(counts)
        skipped = [o for o in outcomes if o.action == "skipped"]
        if skipped:
            summary += f" ({skipped[0].path.name}: {skipped[0].message})"
        if "error" not in counts:
            self.window.statusBar().showMessage(summary, 10000)

    # ------------------------------------------------------------------ CSV, GeoJSON, KML
    def export_results(self) -> None:
        if not any(row.result is not None for row in self.window.results.rows):
            self.window.report_problem("nothing to export yet")
            return
        folder = QFileDialog.getExistingDirectory(self.window, "Export results to",
                                                  str(self.window.folder or ""))
        if folder:
            self.export_to(folder, confirm_replace=self._confirm_replace)

    def _confirm_replace(self, existing: Path) -> bool:
        answer = QMessageBox.question(self.window, "Replace files?",
                                      f"{existing} exists. Replace the export files?")
        return answer == QMessageBox.StandardButton.Yes

    def export_to(self, folder: str | Path, confirm_replace=None) -> list[Path]:
        """CSV, GeoJSON and KML of the folder's results, recorded in the store as the CLI
        records its own (so `geolocsft locate` refreshes them without --force). Files the
        store did not write are replaced only when `confirm_replace(path)` says yes."""
        from geolocsft.export import ExportError

        results = [row.result for row in self.window.results.rows if row.result is not None]
        foreign = workflow.foreign_exports(self.window.store, folder)
        if foreign and not (confirm_replace and confirm_replace(foreign[0])):
            self.window.report_problem(f"{foreign[0]}: exists; not replaced")
            return []
        try:
            written = workflow.export_results(results, folder, self.window.store)
        except ExportError as exc:
            self.window.report_problem(str(exc))
            return []
        self.window.statusBar().showMessage("exported " + ", ".join(map(str, written)), 8000)
        return written

    # ------------------------------------------------------------------ XMP sidecars
    def write_xmp(self) -> None:
        self.write_xmp_sidecars(confirm_replace=self._confirm_sidecars)

    def _confirm_sidecars(self, existing: list[Path]) -> bool:
        return self._ask_about("Replace XMP sidecars?", existing,
                               "Write the model's estimate into them? Their other properties "
                               "are kept; GPS and place fields are replaced.")

    def write_xmp_sidecars(self, confirm_replace=None) -> list:
        """`photo.ext.xmp` for every located photo, as `geolocsft locate --xmp` writes them.
        Existing sidecars are written (with force, like `--xmp --force`) only when
        `confirm_replace(existing sidecars)` says yes; otherwise skipped. Returns TagOutcomes."""
        located = self._located()
        if not located:
            self.window.report_problem("no located photos to write sidecars for yet")
            return []
        existing = workflow.existing_sidecars(located)
        replace = bool(existing) and bool(confirm_replace and confirm_replace(existing))
        outcomes = workflow.write_sidecars(located, force=replace, skip_existing=not replace)
        self._report_tags("XMP sidecars", outcomes)
        return outcomes

    # ------------------------------------------------------------------ EXIF GPS in copies
    def write_exif_copies_dialog(self) -> None:
        folder = self.window.folder
        chosen = QFileDialog.getExistingDirectory(self.window, "Write photos with GPS into",
                                                  str(folder.parent if folder else ""))
        if chosen:
            self.write_exif_copies(chosen, confirm_replace=self._confirm_copies)

    def _confirm_copies(self, existing: list[Path]) -> bool:
        return self._ask_about("Replace files?", existing,
                               "geolocsft did not write them. Replace them with copies of the "
                               "photos carrying the estimate?")

    def write_exif_copies(self, out_dir: str | Path, confirm_replace=None) -> list:
        """Copies of the located photos under `out_dir` (same sub-folders as in the opened
        folder) with the estimate in EXIF GPS, as `geolocsft locate --write-exif` writes them.
        The originals are never written: a target inside the opened folder is refused. Photos
        with their own GPS keep it (skipped); files in `out_dir` that geolocsft did not write
        are replaced only when `confirm_replace(paths)` says yes. Returns the TagOutcomes."""
        out_dir = Path(out_dir).resolve()
        located = self._located()
        if not located:
            self.window.report_problem("no located photos to write yet")
            return []
        root = self.window.folder.resolve() if self.window.folder else None
        if root is not None and (out_dir == root or root in out_dir.parents):
            self.window.report_problem(f"{out_dir}: inside the photo folder; choose a folder "
                                       f"outside it so the originals stay as they are")
            return []
        targets = workflow.gps_copy_targets(located, out_dir)
        try:
            foreign = workflow.foreign_files(targets)
        except Exception as exc:  # the photo tools' library is missing from this install
            self.window.report_problem(str(exc))
            return []
        replace = bool(foreign) and bool(confirm_replace and confirm_replace(foreign))
        # A photo's own GPS is kept (no force): the estimate never hides a real fix.
        outcomes = workflow.write_gps_copies(targets, replace_target=replace,
                                             skip=() if replace else foreign)
        self._report_tags("GPS copies", outcomes)
        return outcomes

"""The driver's loop: the same batch semantics as `geolocsft.locate.LocateRunner` (skip what the
store has, one error row per bad photo, one store transaction per photo, progress with ETA,
cancel), with the photos computed by the cluster. Only this process writes the store."""

from __future__ import annotations

import dataclasses
import pickle
import time

from cluster.backend import WorkerStats
from geolocsft.locate import (LocateRunner, PhotoItem, PhotoOutcome, Progress, RunSummary,
                              _Prepared)
from geolocsft.store import ResultKey, Status


class RayLocateRunner(LocateRunner):
    """Takes LocateRunner's arguments with a `cluster.backend.ClusterEngine` as the engine.
    Tokens do not stream across the cluster: on_token/on_guess are not called."""

    def __init__(self, engine, store, **kwargs):
        kwargs.pop("on_token", None)
        kwargs.pop("on_guess", None)
        super().__init__(engine, store, **kwargs)
        self.stats = engine.stats

    def _key(self, sha: str) -> ResultKey:
        return ResultKey(sha, self.model_sha256, self.prompt_version, self.settings_hash)

    def _skipped(self, item: PhotoItem, existing) -> PhotoOutcome:
        if existing.path != str(item.path):  # moved, renamed or a copy
            self.store.update_path(existing.key, str(item.path))
            existing = dataclasses.replace(existing, path=str(item.path))
        return PhotoOutcome(item, "skipped", existing)

    def _done_hashes(self) -> set[str]:
        """Photos (by content) the store has under this run's key: the preparation tasks skip
        them after hashing, so copies and moved photos are not recomputed either."""
        return {r.photo_sha256 for r in self.store.results(model_sha256=self.model_sha256)
                if r.status == Status.DONE and r.prompt_version == self.prompt_version
                and r.settings_hash == self.settings_hash}

    def _outcome(self, row: dict, item: PhotoItem) -> PhotoOutcome:
        prepared = _Prepared(item, key=self._key(row["sha256"]) if row["sha256"] else None,
                             prepare_s=float(row["prepare_s"] or 0.0))
        if row["truth_lat"] is not None and row["truth_lon"] is not None:
            prepared.truth = (float(row["truth_lat"]), float(row["truth_lon"]))
        if row["skip"]:
            existing = self.store.get(prepared.key)
            if existing is not None and existing.status == Status.DONE:
                return self._skipped(item, existing)
            return self._record_error(prepared, f"{item.path}: its stored result vanished "
                                      "during the run; rerun to compute it")
        if row["error"]:
            return self._record_error(prepared, row["error"])
        if row["settings_hash"] != self.settings_hash:
            return self._record_error(prepared, f"{item.path}: worker {row['worker']} runs other "
                                      "engine settings than the driver (another llama-cpp-python "
                                      "or model build on that node?)")
        located = pickle.loads(bytes(row["located"]))
        return PhotoOutcome(item, "computed", self._store_located(prepared, located))

    def run(self, items: list[PhotoItem]) -> RunSummary:
        summary = RunSummary()
        progress = Progress(total=len(items))
        start = time.perf_counter()
        by_path = {str(item.path): item for item in items}
        todo = []
        for item in items:  # judged from the hash cache, without reading the photo
            sha = self.store.cached_sha256(item.path)
            existing = self.store.get(self._key(sha)) if sha else None
            if existing is not None and existing.status == Status.DONE:
                self._finish(summary, progress, self._skipped(item, existing))
            else:
                todo.append(item)
        self._emit_progress(progress, start)
        seen: set[str] = set()
        compute_start = time.perf_counter()
        stream = self.engine.stream(todo, self._done_hashes(), samples=self.samples,
                                    temperature=self.temperature, cancel=self.cancel)
        try:
            for row in stream:
                began = time.perf_counter()
                if row["path"] in seen:  # a retried task delivered this photo again
                    continue
                seen.add(row["path"])
                item = by_path[row["path"]]
                outcome = self._outcome(row, item)
                self._count_worker(row, outcome, began - start)
                self._finish(summary, progress, outcome)
                progress.current = item.path
                if progress.computed:
                    progress.s_per_photo = (time.perf_counter() - compute_start) / progress.computed
                    progress.eta_s = progress.s_per_photo * (progress.total - progress.processed)
                self._emit_progress(progress, start)
                self._notify(outcome)
                self.stats.driver_s += time.perf_counter() - began
                self.stats.rows += 1
        finally:
            stream.close()
        summary.cancelled = self.cancel.is_set() and progress.processed < progress.total
        progress.current = None
        self._emit_progress(progress, start)
        summary.elapsed_s = self.stats.wall_s = time.perf_counter() - start
        if self._places_warning:
            summary.warnings.append(self._places_warning)
        return summary

    def _finish(self, summary: RunSummary, progress: Progress, outcome: PhotoOutcome) -> None:
        summary.outcomes.append(outcome)
        progress.processed += 1
        if outcome.action == "computed":
            progress.computed += 1
        elif outcome.action == "skipped":
            progress.skipped += 1
        else:
            progress.errors += 1

    def _count_worker(self, row: dict, outcome: PhotoOutcome, at_s: float) -> None:
        if outcome.action != "computed":
            return
        worker = self.stats.workers.setdefault(row["worker"], WorkerStats())
        worker.photos += 1
        worker.infer_s += float(row["infer_s"] or 0.0)
        worker.first_s = at_s if worker.first_s is None else worker.first_s
        worker.last_s = at_s


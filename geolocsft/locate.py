"""The batch runner behind `geolocsft locate` and the desktop app: find photos, skip the ones
the store already has, prepare the next photo on a worker thread while the model works on this
one, record per-photo errors and go on, report progress with an ETA, stop on cancel.

One photo = one store transaction, written right after the model answers, so a killed run loses
at most the photo in flight.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from geolocsft.fsutil import not_a_regular_file
from geolocsft.store import PhotoResult, ResultKey, ResultStore, Status, settings_hash

# What `locate` picks up in folders (explicitly named files are always tried).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif"})


@dataclass(frozen=True)
class PhotoItem:
    path: Path  # absolute
    root: Path  # the folder (or file) named on the command line it was found under

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root) if self.root != self.path else Path(self.path.name)


# Folders our own runs write (`locate`'s default export folder, its EXIF-GPS copies under it):
# never scanned as input, or a rerun would read its own estimates back as "EXIF truth".
OWN_OUTPUT_FOLDERS = frozenset({"geolocsft-results"})  # = locate_cli.EXPORT_FOLDER

def _is_within(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def find_photos(paths: Iterable[str | os.PathLike], *,
                exclude: Iterable[str | os.PathLike] = ()) -> tuple[list[PhotoItem], list[str]]:
    """Photos under the given files/folders (recursive, sorted, each once) and one problem line
    per argument that does not exist and per file that is not a regular file (FIFO, socket,
    device, broken symlink). Hidden folders (e.g. .geolocsft, .thumbnails), folders named in
    OWN_OUTPUT_FOLDERS and sub-folders that are in `exclude` (our export folder) are skipped."""
    items: list[PhotoItem] = []
    problems: list[str] = []
    seen: set[Path] = set()
    excluded = [Path(os.path.realpath(e)) for e in exclude]
    for raw in paths:
        top = Path(os.path.abspath(raw))
        if top.is_dir():
            found = []
            # A folder named on the command line is scanned even when it is an excluded one.
            skip = [e for e in excluded if not _is_within(Path(os.path.realpath(top)), [e])]
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = sorted(
                    d for d in dirnames
                    if not d.startswith(".") and d not in OWN_OUTPUT_FOLDERS
                    and not _is_within(Path(os.path.realpath(os.path.join(dirpath, d))), skip))
                for name in sorted(filenames):
                    if not name.startswith(".") and Path(name).suffix.lower() in PHOTO_SUFFIXES:
                        found.append(Path(dirpath) / name)
            root = top
        elif os.path.lexists(top):
            found = [top]
            root = top.parent
        else:
            problems.append(f"{raw}: no such file or folder")
            continue
        for path in found:
            why = not_a_regular_file(path)
            if why:
                problems.append(f"{path}: {why}; skipped")
                continue
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            items.append(PhotoItem(path, root))
    return items, problems


@dataclass
class Progress:
    total: int
    processed: int = 0  # computed + skipped + errors
    computed: int = 0
    skipped: int = 0
    errors: int = 0
    current: Path | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None  # None until one photo has been computed
    s_per_photo: float | None = None


@dataclass
class PhotoOutcome:
    item: PhotoItem
    action: str  # "computed", "skipped" (already in the store), "error", "cancelled"
    result: PhotoResult | None
    message: str = ""


@dataclass
class RunSummary:
    outcomes: list[PhotoOutcome] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for o in self.outcomes if o.action == action)

    @property
    def results(self) -> list[PhotoResult]:
        return [o.result for o in self.outcomes if o.result is not None]


@dataclass
class _Prepared:
    item: PhotoItem
    key: ResultKey | None = None
    existing: PhotoResult | None = None
    image: object = None  # PIL image at the model's budget
    truth: tuple[float, float] | None = None
    prepare_s: float = 0.0
    error: str = ""


def _error_text(exc: BaseException, path: Path) -> str:
    text = str(exc) or type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"


class LocateRunner:
    """Runs an Engine over photos into a ResultStore. Callbacks run on the calling thread:
    on_progress(Progress), on_outcome(PhotoOutcome), on_token(PhotoItem, piece),
    on_guess(PhotoItem, k, samples) before guess k of a photo starts."""

    def __init__(
        self,
        engine,
        store: ResultStore,
        *,
        samples: int = 1,
        temperature: float = 0.0,
        places: bool = True,
        on_progress: Callable[[Progress], None] | None = None,
        on_outcome: Callable[[PhotoOutcome], None] | None = None,
        on_token: Callable[[PhotoItem, str], None] | None = None,
        on_guess: Callable[[PhotoItem, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ):
        if samples < 1:
            raise ValueError("samples must be at least 1")
        self.engine = engine
        self.store = store
        self.samples = samples
        self.temperature = temperature
        self.places = places
        self.on_progress = on_progress
        self.on_outcome = on_outcome
        self.on_token = on_token
        self.on_guess = on_guess
        self.cancel = cancel or threading.Event()
        spec = engine.spec
        self.model_sha256 = spec.model_sha256
        self.prompt_version = spec.prompt_version
        self.model_name = spec.name
        self.budget = spec.budget
        # Sampling settings change the answer as much as engine settings do; the engine
        # includes them when asked.
        self.settings = engine.settings(samples=samples, temperature=temperature)
        self.settings_json = json.dumps(self.settings, sort_keys=True, default=str)
        self.settings_hash = settings_hash(self.settings)
        self._places_warning = ""

    # -- preparation (worker thread)
    def _prepare(self, item: PhotoItem) -> _Prepared:
        from geolocsft.images import prepare_photo, read_photo_bytes

        prepared = _Prepared(item)
        start = time.perf_counter()
        try:
            # One read per photo: the hash, the EXIF GPS and the pixels come from the same
            # bytes. A photo the hash cache knows (same size and mtime) is not read at all
            # unless it still has to be computed.
            data = None
            sha = self.store.cached_sha256(item.path)
            if sha is None:
                # An empty file is keyed too, so its error row is stored like any bad photo's.
                data = read_photo_bytes(item.path, allow_empty=True)
                sha = self.store.photo_sha256(item.path, data)
            prepared.key = ResultKey(sha, self.model_sha256, self.prompt_version, self.settings_hash)
            existing = self.store.get(prepared.key)
            if existing is not None and existing.status == Status.DONE:
                prepared.existing = existing
                return prepared
            if not data:  # not read yet (hash from the cache), or an empty file
                data = read_photo_bytes(item.path)
            prepared.image, prepared.truth = prepare_photo(data, self.budget, str(item.path))
        except Exception as exc:  # any bad file is one error line; the batch goes on
            prepared.error = _error_text(exc, item.path)
        prepared.prepare_s = time.perf_counter() - start
        return prepared

    def _known_done(self, items: list[PhotoItem]) -> set[Path]:
        """Photos the store already has, judged without reading them (hash cache by size+mtime),
        so the ETA of a resumed run counts only the work left."""
        done = set()
        for item in items:
            sha = self.store.cached_sha256(item.path)
            if sha and self.store.is_done(
                ResultKey(sha, self.model_sha256, self.prompt_version, self.settings_hash)
            ):
                done.add(item.path)
        return done

    # -- the loop
    def run(self, items: list[PhotoItem]) -> RunSummary:
        summary = RunSummary()
        progress = Progress(total=len(items))
        start = time.perf_counter()
        known_done = self._known_done(items)
        compute_s = 0.0
        group: list[_Prepared] = []

        def update_eta() -> None:
            """Seconds per computed photo so far, times the photos left to compute."""
            if progress.computed:
                progress.s_per_photo = compute_s / progress.computed
                left = max(0, progress.total - progress.processed - len(known_done))
                progress.eta_s = progress.s_per_photo * left

        def run_group() -> bool:
            """Decode the held group; False when cancelled."""
            nonlocal compute_s
            began = time.perf_counter()
            outcomes = self._compute_group(group)
            group.clear()
            compute_s += time.perf_counter() - began
            for outcome in outcomes:
                if outcome.action == "cancelled":
                    summary.outcomes.append(outcome)
                    summary.cancelled = True
                    self._notify(outcome)
                    return False
                summary.outcomes.append(outcome)
                progress.processed += 1
                progress.computed += outcome.action == "computed"
                progress.errors += outcome.action == "error"
                self._notify(outcome)
            update_eta()
            return True

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geolocsft-prepare")
        try:
            pending: Future | None = pool.submit(self._prepare, items[0]) if items else None
            for index, item in enumerate(items):
                prepared = self._wait(pending)
                if prepared is None:
                    summary.cancelled = True
                    break
                # Start on the next photo now: it decodes while the model works on this one.
                pending = pool.submit(self._prepare, items[index + 1]) if index + 1 < len(items) else None
                progress.current = item.path
                self._emit_progress(progress, start)
                known_done.discard(item.path)
                if prepared.existing is not None:
                    existing = prepared.existing
                    if existing.path != str(item.path):  # moved, renamed or a copy
                        self.store.update_path(existing.key, str(item.path))
                        existing = dataclasses.replace(existing, path=str(item.path))
                    outcome = PhotoOutcome(item, "skipped", existing)
                    progress.skipped += 1
                elif prepared.error:
                    outcome = self._record_error(prepared, prepared.error)
                    progress.errors += 1
                elif self._batch_size() > 1:
                    # Throughput mode: hold photos until a group is full (or the run ends),
                    # then decode them together; their outcomes follow as one step.
                    group.append(prepared)
                    if len(group) < self._batch_size() and pending is not None:
                        continue
                    if not run_group():
                        break
                    continue
                else:
                    began = time.perf_counter()
                    outcome = self._compute(prepared)
                    if outcome.action == "cancelled":
                        summary.outcomes.append(outcome)
                        summary.cancelled = True
                        self._notify(outcome)
                        break
                    if outcome.action == "computed":
                        compute_s += time.perf_counter() - began
                        progress.computed += 1
                    else:
                        progress.errors += 1
                summary.outcomes.append(outcome)
                progress.processed += 1
                update_eta()
                self._notify(outcome)
            if group and not summary.cancelled and not self.cancel.is_set():
                run_group()  # the last photos, held while skipped or failed ones went by
            if pending is not None:
                pending.cancel()
        finally:
            # Cancel must not wait for a photo still decoding (a slow share, a huge TIFF): the
            # worker thread finishes it in the background and its result is dropped.
            pool.shutdown(wait=not self.cancel.is_set(), cancel_futures=True)
        progress.current = None
        self._emit_progress(progress, start)
        summary.elapsed_s = time.perf_counter() - start
        if self._places_warning:
            summary.warnings.append(self._places_warning)
        return summary

    def _wait(self, pending: Future) -> _Prepared | None:
        """The prepared photo, or None once cancel is set (checked every 0.1 s, so a Cancel
        stops the run within a second whatever the photo's decoding is doing)."""
        while not self.cancel.is_set():
            try:
                return pending.result(timeout=0.1)
            except FutureTimeout:
                continue
        return None

    def _emit_progress(self, progress: Progress, start: float) -> None:
        progress.elapsed_s = time.perf_counter() - start
        if self.on_progress:
            self.on_progress(progress)

    def _notify(self, outcome: PhotoOutcome) -> None:
        if self.on_outcome:
            self.on_outcome(outcome)

    def _base_result(self, prepared: _Prepared) -> PhotoResult:
        key = prepared.key or ResultKey("", self.model_sha256, self.prompt_version, self.settings_hash)
        return PhotoResult(
            photo_sha256=key.photo_sha256,
            model_sha256=key.model_sha256,
            prompt_version=key.prompt_version,
            settings_hash=key.settings_hash,
            path=str(prepared.item.path),
            model_name=self.model_name,
            settings_json=self.settings_json,
            samples=self.samples,
            temperature=self.temperature,
            image_prepare_s=round(prepared.prepare_s, 4),
        )

    def _record_error(self, prepared: _Prepared, message: str) -> PhotoOutcome:
        result = self._base_result(prepared)
        result.status = Status.ERROR
        result.error = message
        if prepared.key is not None:  # unreadable files have no content hash: nothing to key
            self.store.put(result)
        return PhotoOutcome(prepared.item, "error", result, message)

    def _compute(self, prepared: _Prepared) -> PhotoOutcome:
        item = prepared.item
        on_token = (lambda piece: self.on_token(item, piece)) if self.on_token else None
        on_guess = ((lambda k: self.on_guess(item, k, self.samples)) if self.on_guess else None)
        try:
            located = self.engine.locate(
                prepared.image,
                on_token=on_token,
                on_guess=on_guess,
                cancel=self.cancel,
                samples=self.samples,
                temperature=self.temperature,
            )
        except Exception as exc:  # EngineError and friends: this photo fails, the batch goes on
            return self._record_error(prepared, _error_text(exc, item.path))
        finally:
            prepared.image = None  # free the pixels before the next photo arrives
        if located.cancelled:
            return PhotoOutcome(item, "cancelled", None, "cancelled")
        return PhotoOutcome(item, "computed", self._store_located(prepared, located))

    def _batch_size(self) -> int:
        """Photos decoded together: the engine's `parallel` (throughput mode), one guess each."""
        return getattr(self.engine, "parallel", 1) if self.samples == 1 else 1

    def _compute_group(self, group: list[_Prepared]) -> list[PhotoOutcome]:
        on_token = None
        if self.on_token:
            on_token = lambda i, piece: self.on_token(group[i].item, piece)  # noqa: E731
        try:
            located = self.engine.locate_many([p.image for p in group], on_token=on_token,
                                              cancel=self.cancel, temperature=self.temperature)
        except Exception:  # one photo failed the group: find it, one at a time
            return [self._compute(prepared) for prepared in group]
        finally:
            for prepared in group:
                prepared.image = None
        outcomes = []
        for prepared, result in zip(group, located):
            if result.cancelled:
                outcomes.append(PhotoOutcome(prepared.item, "cancelled", None, "cancelled"))
            else:
                outcomes.append(PhotoOutcome(prepared.item, "computed",
                                             self._store_located(prepared, result)))
        return outcomes

    def _store_located(self, prepared: _Prepared, located) -> PhotoResult:
        result = self._base_result(prepared)
        fill_from_locate(result, located)
        if prepared.truth is not None:
            result.truth_lat, result.truth_lon = prepared.truth
        self._fill_derived(result)
        self.store.put(result)
        return result

    def store_result(self, item: PhotoItem, located) -> PhotoResult:
        """Record an engine LocateResult for one photo under this runner's key, exactly as the
        batch loop does (for a photo located outside the loop, e.g. one the app re-ran)."""
        from geolocsft.images import read_gps

        prepared = _Prepared(item)
        prepared.key = ResultKey(self.store.photo_sha256(item.path), self.model_sha256,
                                 self.prompt_version, self.settings_hash)
        try:
            prepared.truth = read_gps(item.path)
        except Exception:  # an unreadable header has no ground truth; the result still counts
            prepared.truth = None
        return self._store_located(prepared, located)

    def _fill_derived(self, result: PhotoResult) -> None:
        from geolocsft.geo import distance_km

        if not result.has_point:
            return
        if result.truth_lat is not None:
            result.truth_km = round(
                distance_km(result.truth_lat, result.truth_lon, result.latitude, result.longitude), 3
            )
        if self.places:
            from geolocsft.places import PlacesError, lookup

            try:
                place = lookup(result.latitude, result.longitude)
            except PlacesError as exc:
                self._places_warning = f"place names unavailable: {exc}"
                return
            result.place_city = place.city
            result.place_state = place.state
            result.place_country = place.country
            result.place_country_code = place.country_code


def fill_from_locate(result: PhotoResult, located) -> None:
    """Copy an engine LocateResult into a store row: every guess, the point and fields of the
    guess `LocateResult.best` picks (the consensus's medoid with several samples, else the
    first parsed guess), the consensus radius, the timings summed over the guesses."""
    guesses = list(located.guesses)
    outputs = []
    for guess in guesses:
        parsed = guess.parsed
        outputs.append({
            "text": guess.text,
            "status": getattr(parsed.status, "value", str(parsed.status)),
            "reason": parsed.reason,
            "latitude": parsed.latitude,
            "longitude": parsed.longitude,
            "timings": _timings_dict(guess.timings),
        })
    result.outputs_json = json.dumps(outputs, ensure_ascii=False)
    best = located.best
    if best is not None:
        result.latitude, result.longitude = located.point
    if located.consensus is not None:
        result.consensus_lat, result.consensus_lon = result.latitude, result.longitude
        result.radius_km = round(float(located.radius_km), 3)
    chosen = best or (guesses[0] if guesses else None)  # no answer: say why the first failed
    if chosen is not None:
        parsed = chosen.parsed
        result.parse_status = getattr(parsed.status, "value", str(parsed.status))
        result.parse_reason = parsed.reason
        result.region = parsed.region or ""
        result.country = parsed.country or ""
        result.confidence = parsed.confidence
        result.analysis_json = json.dumps(parsed.analysis, ensure_ascii=False) if parsed.analysis else ""
    if guesses:
        total = located.timings
        for name in ("image_encode_s", "prompt_s", "generate_s", "prompt_tokens", "image_tokens",
                     "generated_tokens"):
            setattr(result, name, getattr(total, name))
        if total.generated_tokens and total.generate_s:
            result.tokens_per_s = round(total.tokens_per_s, 3)


def _timings_dict(timings) -> dict:
    if dataclasses.is_dataclass(timings):
        return dataclasses.asdict(timings)
    return dict(getattr(timings, "__dict__", {}))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def guess_heading(k: int, samples: int) -> str:
    """The line that opens guess k (0-based) of `samples` in a shown reasoning text; none when
    there is one guess."""
    if samples <= 1:
        return ""
    return ("\n\n" if k else "") + f"— guess {k + 1} of {samples} —\n"

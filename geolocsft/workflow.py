"""What the `locate` command and the desktop app both do with results, written once: the
sampling default, exports (recorded in the results store, so either one refreshes the other's
exports instead of calling them someone else's files), XMP sidecars, EXIF GPS in copies, and
the counts both report. Callers decide how to ask and how to show; nothing here prints or
touches a widget."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from geolocsft.store import PhotoResult

# With several guesses per photo and no temperature chosen: sample at this temperature (one
# guess is greedy). `locate`, `bench run` and the app all follow this rule.
DEFAULT_SAMPLED_TEMPERATURE = 0.7
# Where `locate` writes its exports unless told otherwise (inside the first photo folder).
EXPORT_FOLDER = "geolocsft-results"
COPIES_FOLDER = "with-gps"  # --write-exif copies, under the export folder


def default_temperature(chosen: float | None, samples: int) -> float:
    """The temperature to run at: the chosen one, else greedy for one guess and
    DEFAULT_SAMPLED_TEMPERATURE for several."""
    if chosen is not None:
        return float(chosen)
    return DEFAULT_SAMPLED_TEMPERATURE if samples > 1 else 0.0


def latest_results(store, model_sha256: str) -> dict[str, PhotoResult]:
    """{photo path: its newest result under this model}: what the app shows for a folder
    before (or instead of) a run."""
    latest: dict[str, PhotoResult] = {}
    for result in store.results(model_sha256=model_sha256):
        previous = latest.get(result.path)
        if previous is None or result.created_at >= previous.created_at:
            latest[result.path] = result
    return latest


# ---------------------------------------------------------------- exports

def foreign_exports(store, out_dir: str | os.PathLike) -> list[Path]:
    """Export files in `out_dir` that the store did not write or that changed since: replacing
    them needs the user's word (--force, or a yes in the app)."""
    from geolocsft.export import export_paths

    return [p for p in export_paths(out_dir) if p.exists() and not store.is_our_unchanged_export(p)]


def export_results(results: list[PhotoResult], out_dir: str | os.PathLike, store, *,
                   flag_km: float | None = None) -> list[Path]:
    """CSV, GeoJSON and KML of `results` in `out_dir`, each recorded in the store as ours.
    Raises export.ExportError. The caller has checked `foreign_exports` first."""
    from geolocsft.export import DEFAULT_FLAG_KM, write_exports

    written = write_exports(results, out_dir, force=True,
                            flag_km=DEFAULT_FLAG_KM if flag_km is None else flag_km)
    for path in written:
        store.record_export(path)
    return written


# ---------------------------------------------------------------- tags

@dataclass(frozen=True)
class Located:
    """A photo with a predicted point: where it is and where it sits below its folder."""

    photo: Path
    relative: Path
    result: PhotoResult


def located_photos(rows: Iterable[tuple[Path, PhotoResult | None]],
                   root: Path | None = None) -> list[Located]:
    """The (photo, result) pairs that have a point; `relative` is below `root` (the photo's
    name when it is not under it)."""
    out = []
    for photo, result in rows:
        if result is None or not result.has_point:
            continue
        photo = Path(photo)
        try:
            relative = photo.resolve().relative_to(root.resolve()) if root else Path(photo.name)
        except ValueError:
            relative = Path(photo.name)
        out.append(Located(photo, relative, result))
    return out


def existing_sidecars(located: list[Located]) -> list[Path]:
    from geolocsft.export_xmp import sidecar_path

    return [sidecar_path(item.photo) for item in located if sidecar_path(item.photo).exists()]


def write_sidecars(located: list[Located], *, force: bool = False,
                   skip_existing: bool = False):
    """`photo.ext.xmp` for each photo (`export_xmp.write_sidecar`: an existing sidecar is
    merged into, its own GPS kept unless force). skip_existing: leave existing sidecars alone.
    One TagOutcome per photo; a failure is an outcome, never an exception."""
    from geolocsft.export_xmp import TagOutcome, sidecar_path, write_sidecar

    outcomes = []
    for item in located:
        target = sidecar_path(item.photo)
        if skip_existing and target.exists():
            outcomes.append(TagOutcome(target, "skipped", "exists; not replaced"))
            continue
        try:
            outcomes.append(write_sidecar(item.photo, item.result, force=force))
        except Exception as exc:  # e.g. pyexiv2 missing: say so, go on with the batch
            outcomes.append(TagOutcome(target, "error", str(exc)))
    return outcomes


def gps_copy_targets(located: list[Located], out_dir: str | os.PathLike,
                     in_place: bool = False) -> list[tuple[Located, Path]]:
    """Where each photo's copy with GPS goes: `out_dir/<relative>` (or the photo itself)."""
    return [(item, item.photo if in_place else Path(out_dir) / item.relative) for item in located]


def foreign_files(targets: list[tuple[Located, Path]]) -> list[Path]:
    """Targets already holding a file geolocsft did not write (raises when pyexiv2 is
    missing, which is the caller's one-line error)."""
    from geolocsft.export_xmp import written_by_geolocsft

    return [t for item, t in targets if t.exists() and t != item.photo and not written_by_geolocsft(t)]


def write_gps_copies(targets: list[tuple[Located, Path]], *, force: bool = False,
                     replace_target: bool | None = None, skip: Iterable[Path] = (),
                     in_place: bool | None = None):
    """EXIF GPS into each target (`export_xmp.write_exif_gps`: a photo's own GPS is kept unless
    force; a foreign file at the target is replaced only with replace_target). Targets in
    `skip` are left alone. One TagOutcome per photo."""
    from geolocsft.export_xmp import TagOutcome, write_exif_gps

    skip = set(skip)
    outcomes = []
    for item, target in targets:
        if target in skip:
            outcomes.append(TagOutcome(target, "skipped", "a file is already there"))
            continue
        try:
            outcomes.append(write_exif_gps(item.photo, target, item.result, force=force,
                                           replace_target=replace_target, in_place=in_place))
        except Exception as exc:  # one bad photo: say so, go on with the batch
            outcomes.append(TagOutcome(target, "error", str(exc)))
    return outcomes


# ---------------------------------------------------------------- counts

def tag_counts(outcomes, kind: str = "") -> dict[str, int]:
    """{"<kind> <action>": n} ("xmp created": 3, ...); without kind just the action."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = f"{kind} {outcome.action}" if kind else outcome.action
        counts[key] = counts.get(key, 0) + 1
    return counts


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def run_counts(summary, flag_km: float | None = None) -> dict[str, int]:
    """What a finished run did: the results' counts (`export.summary_counts`: located,
    unparsed, errors, flagged) plus how many were computed now and taken from the store."""
    from geolocsft.export import DEFAULT_FLAG_KM, summary_counts

    counts = summary_counts(summary.results, DEFAULT_FLAG_KM if flag_km is None else flag_km)
    counts["computed"] = summary.count("computed")
    counts["skipped"] = summary.count("skipped")
    return counts

"""`bench run`: a benchmark set through the engine and the results store, then a report.

The batch runner (`geolocsft.locate`) does the work, so a benchmark is resumable exactly like a
locate run: the store lives in the report folder and a rerun skips finished photos. The CLI and
the desktop app's benchmark mode both call `run_benchmark`.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from geolocsft import datasets, geo, report
from geolocsft.locate import LocateRunner, PhotoItem, PhotoOutcome, Progress
from geolocsft.store import ResultStore

DATASETS = ("im2gps3k", "yfcc4k", "csv", "exif")
STORE_NAME = "results.sqlite"


def read_benchmark(kind: str, meta: Path | None, images: Path) -> datasets.DatasetResult:
    """The samples of a benchmark set: `meta` is the metadata CSV (not needed for an EXIF
    folder, whose photos carry their own GPS)."""
    if kind == "exif":
        return datasets.read_exif_folder(images)
    if meta is None:
        raise datasets.DatasetError(images, f"--dataset {kind} needs its metadata CSV (--meta FILE)")
    reader = {"im2gps3k": datasets.read_im2gps3k, "yfcc4k": datasets.read_yfcc4k,
              "csv": datasets.read_csv}[kind]
    return reader(meta, images)


@dataclass
class BenchResult:
    rows: list[report.PredictionRow]
    scores: geo.Scores
    out_dir: Path
    cancelled: bool
    computed: int
    skipped: int
    errors: int


def prediction_row(sample: datasets.Sample, outcome: PhotoOutcome | None) -> report.PredictionRow:
    result = outcome.result if outcome else None
    if result is None:
        status = "error" if outcome else "not run"
        return report.PredictionRow(sample.id, None, None, sample.lat, sample.lon, status,
                                    outcome.message if outcome else "")
    outputs = result.outputs
    guesses = [(o["latitude"], o["longitude"]) for o in outputs
               if o.get("latitude") is not None and o.get("longitude") is not None]
    oracle = (min(geo.distance_km(lat, lon, sample.lat, sample.lon) for lat, lon in guesses)
              if len(outputs) > 1 and guesses else None)
    status = result.parse_status or result.status
    if result.error:
        status = "error"
    raw = outputs[0]["text"] if outputs else result.error
    return report.PredictionRow(sample.id, result.latitude, result.longitude, sample.lat,
                                sample.lon, status, raw, oracle)


def _timings(rows_results) -> dict:
    """Mean per-photo timings of computed photos (image encoding apart from token speed)."""
    done = [r for r in rows_results if r is not None and r.generate_s]
    if not done:
        return {}

    def mean(name):
        values = [getattr(r, name) for r in done if getattr(r, name) is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {"photos timed": len(done), "image prepare s": mean("image_prepare_s"),
            "image encode s": mean("image_encode_s"), "prompt s": mean("prompt_s"),
            "generate s": mean("generate_s"), "generated tokens": mean("generated_tokens"),
            "tokens per s": mean("tokens_per_s")}


def run_benchmark(samples: list[datasets.Sample], engine, out_dir: Path, *, dataset: str,
                  images_root: Path, samples_k: int = 1, temperature: float = 0.0,
                  strict: bool = False, unparsed: str = "miss",
                  on_progress: Callable[[Progress], None] | None = None,
                  on_outcome: Callable[[PhotoOutcome], None] | None = None,
                  on_token=None, on_guess=None, cancel=None,
                  extra_record: dict | None = None, runner_class=None) -> BenchResult:
    """runner_class: what runs the photos (default LocateRunner in this process; cluster/
    passes its Ray runner, which takes the same arguments)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_path: dict[Path, list[datasets.Sample]] = {}
    items = []
    for sample in samples:
        path = Path(sample.image).resolve()
        if path not in by_path:
            items.append(PhotoItem(path, Path(images_root).resolve()))
        by_path.setdefault(path, []).append(sample)
    outcomes: dict[Path, PhotoOutcome] = {}
    with ResultStore(out_dir / STORE_NAME) as store:
        runner = (runner_class or LocateRunner)(
            engine, store, samples=samples_k, temperature=temperature, places=False,
            on_progress=on_progress, on_outcome=on_outcome, on_token=on_token,
            on_guess=on_guess, cancel=cancel)
        summary = runner.run(items)
        for outcome in summary.outcomes:
            outcomes[outcome.item.path] = outcome
        record = {
            "dataset": dataset, "photos": len(samples), "model": engine.spec.name,
            "model_sha256": engine.spec.model_sha256, "family": str(engine.spec.family),
            "prompt_version": engine.spec.prompt_version, "samples": samples_k,
            "temperature": temperature, "settings": runner.settings,
            "versions": _versions(), **(extra_record or {}),
        }
    rows = [prediction_row(s, outcomes.get(Path(s.image).resolve())) for s in samples]
    results = [o.result for o in outcomes.values() if o.action == "computed"]
    scores = report.write_report(out_dir, rows, dataset=dataset, record=record,
                                 timings=_timings(results), strict=strict, unparsed=unparsed)
    return BenchResult(rows, scores, out_dir, summary.cancelled, summary.count("computed"),
                       summary.count("skipped"), summary.count("error"))


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("geolocsft", "llama-cpp-python"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def errors_by_id(path: Path) -> dict[str, float | None]:
    """{photo id: error km or None} of a report folder or a predictions CSV, for `compare`."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.csv"
    predictions = datasets.read_predictions(path)
    return {i: (None if plat is None else geo.distance_km(plat, plon, tlat, tlon))
            for i, (plat, plon, tlat, tlon) in zip(predictions.ids, predictions.rows)}

"""`curate`: choose N photos (default 2,700, the paper's size) from a pool, spread over the globe.

Spread: the globe is cut into equal-area cells — `bands` latitude bands with equal steps of
sin(latitude) (so every band has the same area), each cut into `sectors` equal longitude
sectors. Picks are taken round-robin over the cells (cell order and order within a cell
shuffled by the seed): every occupied cell gives one photo per round, so dense places (cities,
tourist sites) cannot crowd out sparse ones. `per_cell_cap` stops a cell early; without it the
rounds simply go on until N are picked (the fair-share cap is whatever that needs).

Each candidate is checked when its turn comes — decodable (core `open_image`), shorter side at
least `min_side`, and not a near-duplicate (perceptual hash within `hash_distance` bits) of a
photo already picked — and a failure is reported and the next candidate of that cell tried.
The same pool, settings and seed always give the same picks.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geolocsft.images import ImageError, open_image
from trainer.continents import continent_of
from trainer.jsonl import write_bytes_atomic, write_json_atomic
from trainer.picks import Pick, write_picks

DEFAULT_N = 2700
DEFAULT_BANDS = 18  # 18 x 36 = 648 cells of ~787,000 km² each (about 890 km across)
DEFAULT_SECTORS = 36
DEFAULT_MIN_SIDE = 256
# pHash (64 bits): re-encodes and resizes of one photo differ by a few bits, different scenes
# by ~32. 6 bits catches recompressed and slightly cropped copies.
DEFAULT_HASH_DISTANCE = 6

OUTPUT_NAMES = ("picks.csv", "coverage.json", "coverage.md", "coverage.png")


@dataclass
class CurateSettings:
    n: int = DEFAULT_N
    seed: int = 0
    bands: int = DEFAULT_BANDS
    sectors: int = DEFAULT_SECTORS
    per_cell_cap: int | None = None
    min_side: int = DEFAULT_MIN_SIDE
    hash_distance: int = DEFAULT_HASH_DISTANCE

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.bands < 1 or self.sectors < 1:
            raise ValueError("the grid needs at least one band and one sector")
        if self.per_cell_cap is not None and self.per_cell_cap < 1:
            raise ValueError("per-cell cap must be at least 1")
        if not 0 <= self.hash_distance <= 64:
            raise ValueError("hash distance must be between 0 and 64 bits")


def cell_of(lat: float, lon: float, bands: int, sectors: int) -> int:
    """The equal-area cell holding a point: band from sin(latitude), sector from longitude."""
    band = min(int((math.sin(math.radians(lat)) + 1.0) / 2.0 * bands), bands - 1)
    sector = min(int((lon + 180.0) / 360.0 * sectors), sectors - 1)
    return band * sectors + sector


def cell_bounds(cell: int, bands: int, sectors: int) -> tuple[float, float, float, float]:
    """(south, north, west, east) degrees of a cell."""
    band, sector = divmod(cell, sectors)
    south = math.degrees(math.asin(2.0 * band / bands - 1.0))
    north = math.degrees(math.asin(2.0 * (band + 1) / bands - 1.0))
    west = -180.0 + 360.0 * sector / sectors
    return south, north, west, west + 360.0 / sectors


@dataclass
class Candidate:
    pick: Pick
    cell: int


@dataclass
class Chosen:
    pick: Pick
    cell: int
    phash: int
    width: int
    height: int


@dataclass
class CurateResult:
    chosen: list[Chosen] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    warnings: list[str] = field(default_factory=list)  # from reading the pool
    pool_size: int = 0
    pool_cells: Counter = field(default_factory=Counter)


def check_candidate(pick: Pick, min_side: int) -> tuple[int, int, int]:
    """(phash, width, height) of a usable photo; raises ImageError saying why it is not."""
    import imagehash

    image = open_image(pick.image)
    if min(image.size) < min_side:
        raise ImageError(pick.image, f"too small: {image.width}x{image.height}, shorter side "
                                     f"under {min_side} px")
    return int(str(imagehash.phash(image)), 16), image.width, image.height


def near_duplicate(phash: int, chosen: list[Chosen], max_bits: int) -> tuple[Chosen, int] | None:
    for other in chosen:
        bits = (phash ^ other.phash).bit_count()
        if bits <= max_bits:
            return other, bits
    return None


def checked(pick: Pick, min_side: int) -> tuple[int, int, int] | str:
    """check_candidate as a value: (phash, width, height), or the reason it is skipped."""
    try:
        return check_candidate(pick, min_side)
    except ImageError as exc:
        return exc.reason
    except OSError as exc:
        return f"unreadable: {exc}"


class Checker:
    """Candidate checks, decoded ahead on a thread pool (Pillow decodes without the GIL).
    Which candidates are prefetched never changes the picks: results are looked up in the
    same order the sequential algorithm asks for them."""

    def __init__(self, min_side: int, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.min_side = min_side
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self.pending: dict[str, object] = {}

    def prefetch(self, picks: list[Pick]) -> None:
        if self.pool is None:
            return
        for pick in picks:
            if pick.id not in self.pending:
                self.pending[pick.id] = self.pool.submit(checked, pick, self.min_side)

    def result(self, pick: Pick) -> tuple[int, int, int] | str:
        future = self.pending.pop(pick.id, None)
        return future.result() if future is not None else checked(pick, self.min_side)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def curate(pool: list[Pick], settings: CurateSettings, warnings: list[str] | None = None,
           progress=None, workers: int = 1) -> CurateResult:
    """Choose the picks. Bad rows and photos are reported in the result, never raised.
    `workers` > 1 decodes candidates in parallel; the picks are the same for any value."""
    result = CurateResult(warnings=list(warnings or []))
    seen: set[str] = set()
    candidates: dict[int, list[Candidate]] = defaultdict(list)
    for pick in pool:
        if pick.id in seen:
            result.skipped.append((pick.id, "duplicate id (first row kept)"))
            continue
        seen.add(pick.id)
        if not (math.isfinite(pick.lat) and math.isfinite(pick.lon)
                and abs(pick.lat) <= 90 and abs(pick.lon) <= 180):
            result.skipped.append((pick.id, f"no usable GPS ({pick.lat}, {pick.lon})"))
            continue
        cell = cell_of(pick.lat, pick.lon, settings.bands, settings.sectors)
        candidates[cell].append(Candidate(pick, cell))
    result.pool_size = sum(len(c) for c in candidates.values())
    result.pool_cells = Counter({cell: len(c) for cell, c in candidates.items()})

    rng = random.Random(settings.seed)
    order = sorted(candidates)
    rng.shuffle(order)
    for cell in order:  # sort first: the pool's row order must not change the outcome
        candidates[cell].sort(key=lambda c: c.pick.id)
        rng.shuffle(candidates[cell])
        candidates[cell].reverse()  # pop() from the end takes them in shuffled order
    taken: Counter = Counter()
    cap = settings.per_cell_cap
    checker = Checker(settings.min_side, workers)
    try:
        while len(result.chosen) < settings.n:
            open_cells = [cell for cell in order if candidates[cell]
                          and (cap is None or taken[cell] < cap)]
            # the next round's first candidates, as many as could still be picked
            checker.prefetch([candidates[c][-1].pick for c in open_cells
                              ][:settings.n - len(result.chosen)])
            progressed = False
            for cell in open_cells:
                if len(result.chosen) >= settings.n:
                    break
                queue = candidates[cell]
                while queue:
                    candidate = queue.pop()
                    outcome = checker.result(candidate.pick)
                    if isinstance(outcome, str):
                        result.skipped.append((candidate.pick.id, outcome))
                        checker.prefetch([c.pick for c in queue[-1:]])  # this cell's next one
                        continue
                    phash, width, height = outcome
                    duplicate = near_duplicate(phash, result.chosen, settings.hash_distance)
                    if duplicate is not None:
                        other, bits = duplicate
                        result.skipped.append((candidate.pick.id, f"near-duplicate of "
                                               f"{other.pick.id} ({bits} bits apart)"))
                        checker.prefetch([c.pick for c in queue[-1:]])
                        continue
                    result.chosen.append(Chosen(candidate.pick, cell, phash, width, height))
                    taken[cell] += 1
                    progressed = True
                    if progress is not None:
                        progress(len(result.chosen), settings.n)
                    break
            if not progressed:
                break
    finally:
        checker.close()
    return result


# ------------------------------------------------------------------ outputs


def skip_reason_kind(reason: str) -> str:
    for key in ("duplicate id", "no usable GPS", "near-duplicate", "too small"):
        if reason.startswith(key):
            return key
    return "unreadable"


def coverage(result: CurateResult, settings: CurateSettings) -> tuple[dict, list[dict]]:
    """The coverage report and the pick rows (with place and cell) for picks.csv."""
    from geolocsft.places import lookup

    rows, by_country, by_continent = [], Counter(), Counter()
    for chosen in result.chosen:
        pick = chosen.pick
        try:
            place = lookup(pick.lat, pick.lon)
            country, code = place.country or "(unknown)", place.country_code
        except Exception:  # offline data missing: the report says unknown, picks still stand
            country, code = "(unknown)", ""
        continent = country if not code and country.startswith("(") else continent_of(code)
        by_country[country] += 1
        by_continent[continent] += 1
        rows.append({"id": pick.id, "image": pick.image, "lat": pick.lat, "lon": pick.lon,
                     "cell": chosen.cell, "country": country, "country_code": code,
                     "continent": continent, "width": chosen.width, "height": chosen.height,
                     "phash": f"{chosen.phash:016x}"})
    per_cell = Counter(c.cell for c in result.chosen)
    report = {
        "picks": len(result.chosen),
        "requested": settings.n,
        "pool_rows_with_gps": result.pool_size,
        "settings": asdict(settings),
        "grid": {
            "scheme": "equal-area: latitude bands with equal steps of sin(latitude), "
                      "equal longitude sectors",
            "cells": settings.bands * settings.sectors,
            "cell_area_km2": round(4 * math.pi * 6371.0088**2 / (settings.bands * settings.sectors)),
            "occupied_in_pool": len(result.pool_cells),
            "occupied_in_picks": len(per_cell),
            "most_picks_in_a_cell": max(per_cell.values(), default=0),
        },
        "by_continent": dict(by_continent.most_common()),
        "by_country": dict(by_country.most_common()),
        "skipped": dict(Counter(skip_reason_kind(r) for _, r in result.skipped).most_common()),
        "skipped_items": [{"id": i, "reason": r} for i, r in result.skipped],
        "warnings": result.warnings,
    }
    return report, rows


def markdown(report: dict) -> str:
    lines = ["# Curation coverage", "",
             f"{report['picks']} picks of {report['requested']} requested, from "
             f"{report['pool_rows_with_gps']} pool rows with GPS.", "",
             f"Grid: {report['grid']['cells']} equal-area cells of ~"
             f"{report['grid']['cell_area_km2']:,} km²; {report['grid']['occupied_in_pool']} "
             f"occupied in the pool, {report['grid']['occupied_in_picks']} in the picks; at most "
             f"{report['grid']['most_picks_in_a_cell']} picks in one cell.", "",
             "![map of the picks](coverage.png)", "", "## By continent", "",
             "| continent | picks |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["by_continent"].items()]
    lines += ["", "## By country", "", "| country | picks |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["by_country"].items()]
    lines += ["", "## Skipped", ""]
    if report["skipped"]:
        lines += ["| reason | rows |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report["skipped"].items()]
        lines += [""] + [f"- `{s['id']}`: {s['reason']}" for s in report["skipped_items"]]
    else:
        lines.append("Nothing was skipped.")
    if report["warnings"]:
        lines += ["", "## Warnings from reading the pool", ""]
        lines += [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def draw_map(path: Path, result: CurateResult, pool: list[Pick], max_pool_dots: int = 50_000) -> None:
    """Dots on a plain lon/lat plot: the pool in grey, the picks in red, country outlines
    (the core's Natural Earth 1:110m file) underneath when available."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 6.2), dpi=100)
    axes = figure.add_subplot()
    try:
        from matplotlib.collections import LineCollection

        from geolocsft.places import COUNTRIES_FILE

        countries = json.loads(COUNTRIES_FILE.read_text(encoding="utf-8"))["countries"]
        rings = [ring for country in countries for ring in country["rings"]]
        axes.add_collection(LineCollection(rings, colors="#9aa5b1", linewidths=0.4, zorder=1))
    except Exception:  # the outline is decoration; a plain plot still says what matters
        pass
    shown = pool if len(pool) <= max_pool_dots else random.Random(0).sample(pool, max_pool_dots)
    if shown:
        axes.scatter([p.lon for p in shown], [p.lat for p in shown], s=2, color="#c8c8c8",
                     label=f"pool ({len(pool)})", zorder=2, linewidths=0)
    axes.scatter([c.pick.lon for c in result.chosen], [c.pick.lat for c in result.chosen], s=5,
                 color="#d62728", label=f"picks ({len(result.chosen)})", zorder=3, linewidths=0)
    axes.set_xlim(-180, 180)
    axes.set_ylim(-90, 90)
    axes.set_aspect("equal")
    axes.set_xlabel("longitude")
    axes.set_ylabel("latitude")
    axes.set_title("Curated picks")
    axes.legend(loc="lower left", markerscale=3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())


def existing_outputs(out_dir: Path) -> list[Path]:
    return [out_dir / name for name in OUTPUT_NAMES if (out_dir / name).exists()]


def write_outputs(out_dir: Path, result: CurateResult, settings: CurateSettings,
                  pool: list[Pick]) -> dict:
    """picks.csv, coverage.json, coverage.md, coverage.png in `out_dir` (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report, rows = coverage(result, settings)
    write_picks(out_dir / "picks.csv", rows)
    write_json_atomic(out_dir / "coverage.json", report)
    write_bytes_atomic(out_dir / "coverage.md", markdown(report).encode("utf-8"))
    draw_map(out_dir / "coverage.png", result, pool)
    return report

"""Geodesy and the benchmark metrics: WGS84 geodesic distance, accuracy at the paper's radii,
median/mean error with bootstrap intervals, and the consensus of several guesses.

Scoring rules (see docs/protocol.md):
- a prediction is within radius r when `distance <= r` (GeoCLIP's evaluation); `strict=True`
  uses `distance < r` as PIGEON and G3 do;
- an unparsed prediction (None coordinates) is a miss at every radius and is counted in
  `n - parsed`; `unparsed="origin"` instead scores it as a guess of (0, 0), as G3 does;
- median and mean error are over the parsed rows (over all rows in origin mode).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from geographiclib.geodesic import Geodesic

THRESHOLDS_KM: tuple[int, ...] = (1, 25, 200, 750, 2500)
UNPARSED_MODES = ("miss", "origin")


def _check_coordinates(lat: float, lon: float, what: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ValueError(f"{what} coordinates are not finite numbers: ({lat}, {lon})")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"{what} coordinates out of range: ({lat}, {lon})")


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Geodesic distance on the WGS84 ellipsoid in kilometres (Karney's algorithm; the same
    numbers as geopy's `geodesic`)."""
    _check_coordinates(lat1, lon1, "first")
    _check_coordinates(lat2, lon2, "second")
    return Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)["s12"] / 1000.0


def _valid_prediction(lat: float | None, lon: float | None) -> bool:
    if lat is None or lon is None:
        return False
    try:
        _check_coordinates(float(lat), float(lon), "predicted")
    except (TypeError, ValueError):
        return False
    return True


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


@dataclass(frozen=True)
class Scores:
    """Benchmark scores. `acc` and `intervals` are keyed by threshold in km; accuracies are
    fractions in [0, 1]; intervals are 95 % percentile-bootstrap bounds (None when bootstrap=0)."""

    n: int
    parsed: int
    acc: dict[int, float]
    median_km: float | None
    mean_km: float | None
    intervals: dict[int, tuple[float, float]] | None = None
    strict: bool = False
    unparsed: str = "miss"
    bootstrap: int = 1000
    seed: int = 0
    thresholds: tuple[int, ...] = field(default=THRESHOLDS_KM)

    @property
    def parse_failure_rate(self) -> float:
        return (self.n - self.parsed) / self.n if self.n else 0.0

    def to_json(self) -> dict:
        """The one official JSON object (what `bench score --json` prints)."""
        return {
            "n": self.n,
            "parsed": self.parsed,
            "acc": {str(r): self.acc[r] for r in self.thresholds},
            "median_km": self.median_km,
            "mean_km": self.mean_km,
        }

    def to_dict(self) -> dict:
        """Everything, for reports and stored results: the official object plus the scoring
        options and the intervals."""
        out = self.to_json()
        out.update(
            parse_failure_rate=self.parse_failure_rate,
            intervals=(
                None
                if self.intervals is None
                else {str(r): list(self.intervals[r]) for r in self.thresholds}
            ),
            strict=self.strict,
            unparsed=self.unparsed,
            bootstrap=self.bootstrap,
            seed=self.seed,
        )
        return out

    def format_table(self) -> str:
        """A plain-text accuracy table (percentages) for the terminal."""
        rule = "<" if self.strict else "<="
        miss = "scored at (0, 0)" if self.unparsed == "origin" else "misses at every radius"
        lines = [
            f"rows: {self.n}   parsed: {self.parsed}   parse failures: {self.n - self.parsed}"
            f" ({100 * self.parse_failure_rate:.1f}%)",
            f"hit = distance {rule} radius; unparsed rows are {miss}",
            "",
            f"{'radius':>8}  {'accuracy':>8}  {'95% interval':>15}",
        ]
        for r in self.thresholds:
            if self.intervals is None:
                ci = "-"
            else:
                lo, hi = self.intervals[r]
                ci = f"[{100 * lo:5.1f}, {100 * hi:5.1f}]"
            lines.append(f"{r:>5} km  {100 * self.acc[r]:7.1f}%  {ci:>15}")
        lines.append("")
        over = "all rows" if self.unparsed == "origin" else f"{self.parsed} parsed rows"
        if self.median_km is None:
            lines.append("median / mean error: - (nothing parsed)")
        else:
            lines.append(
                f"median error: {self.median_km:.1f} km   mean error: {self.mean_km:.1f} km"
                f"   (over {over})"
            )
        return "\n".join(lines)


def score(
    rows: Iterable[Sequence[float | None]],
    strict: bool = False,
    unparsed: str = "miss",
    bootstrap: int = 1000,
    seed: int = 0,
    thresholds: Sequence[int] = THRESHOLDS_KM,
) -> Scores:
    """Score `(pred_lat|None, pred_lon|None, true_lat, true_lon)` rows. Raises ValueError for
    no rows, bad truth coordinates or an unknown `unparsed` mode."""
    if unparsed not in UNPARSED_MODES:
        raise ValueError(f"unparsed must be one of {UNPARSED_MODES}, got {unparsed!r}")
    if bootstrap < 0:
        raise ValueError("bootstrap must be >= 0")
    thresholds = tuple(sorted(thresholds))
    distances: list[float | None] = []  # None: unparsed and not scored
    parsed = 0
    for i, row in enumerate(rows):
        if len(row) != 4:
            raise ValueError(f"row {i}: expected 4 values, got {len(row)}")
        pred_lat, pred_lon, true_lat, true_lon = row
        _check_coordinates(float(true_lat), float(true_lon), f"row {i}: true")
        if _valid_prediction(pred_lat, pred_lon):
            parsed += 1
            distances.append(distance_km(float(pred_lat), float(pred_lon), true_lat, true_lon))
        elif unparsed == "origin":
            distances.append(distance_km(0.0, 0.0, true_lat, true_lon))
        else:
            distances.append(None)
    n = len(distances)
    if n == 0:
        raise ValueError("no rows to score")

    def hit(d: float | None, r: float) -> bool:
        return d is not None and (d < r if strict else d <= r)

    # The radii are nested, so each row is summarised by the first radius it hits
    # (len(thresholds) = none); the bootstrap then only resamples these small integers.
    levels = [next((k for k, r in enumerate(thresholds) if hit(d, r)), len(thresholds))
              for d in distances]

    def accuracies(sample: Sequence[int]) -> list[float]:
        counts = [0] * (len(thresholds) + 1)
        for level in sample:
            counts[level] += 1
        out, running = [], 0
        for k in range(len(thresholds)):
            running += counts[k]
            out.append(running / len(sample))
        return out

    acc = dict(zip(thresholds, accuracies(levels)))
    intervals = None
    if bootstrap:
        rng = random.Random(seed)
        draws = [accuracies(rng.choices(levels, k=n)) for _ in range(bootstrap)]
        intervals = {}
        for k, r in enumerate(thresholds):
            column = sorted(d[k] for d in draws)
            intervals[r] = (_percentile(column, 0.025), _percentile(column, 0.975))

    scored = [d for d in distances if d is not None]
    return Scores(
        n=n,
        parsed=parsed,
        acc=acc,
        median_km=statistics.median(scored) if scored else None,
        mean_km=statistics.fmean(scored) if scored else None,
        intervals=intervals,
        strict=strict,
        unparsed=unparsed,
        bootstrap=bootstrap,
        seed=seed,
        thresholds=thresholds,
    )


class Consensus(NamedTuple):
    """The fused answer of several guesses: which guess is the medoid, its point, and the
    spread radius."""

    index: int  # position of the medoid in the points given
    latitude: float
    longitude: float
    radius_km: float


def consensus(points: Sequence[tuple[float, float]]) -> Consensus:
    """Fuse several guesses: the geodesic medoid (the guess with the smallest summed distance
    to the others; ties go to the earliest) and a spread radius, the median distance of the
    other guesses to it (0 for a single guess). The medoid is one of the guesses, named by its
    index, so its other fields (region, analysis) go with the point."""
    points = [(float(lat), float(lon)) for lat, lon in points]
    if not points:
        raise ValueError("consensus needs at least one point")
    for lat, lon in points:
        _check_coordinates(lat, lon, "guess")
    k = len(points)
    dist = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            dist[i][j] = dist[j][i] = distance_km(*points[i], *points[j])
    best = min(range(k), key=lambda i: (sum(dist[i]), i))
    others = [dist[best][j] for j in range(k) if j != best]
    radius = statistics.median(others) if others else 0.0
    return Consensus(best, points[best][0], points[best][1], radius)


def _dms(value: float, positive: str, negative: str) -> str:
    # Work in tenths of an arc-second so rounding carries into minutes and degrees correctly.
    tenths = round(abs(value) * 36000)
    degrees, rest = divmod(tenths, 36000)
    minutes, tenth_seconds = divmod(rest, 600)
    hemisphere = negative if value < 0 and tenths else positive
    return f"{degrees}°{minutes:02d}'{tenth_seconds // 10:02d}.{tenth_seconds % 10}\"{hemisphere}"


def to_dms(lat: float, lon: float) -> str:
    """Degrees-minutes-seconds, e.g. `48°51'23.8"N 2°21'07.9"E`."""
    _check_coordinates(lat, lon, "DMS")
    return f"{_dms(lat, 'N', 'S')} {_dms(lon, 'E', 'W')}"

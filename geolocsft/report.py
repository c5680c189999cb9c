"""Benchmark reports: a folder with report.md, report.json, predictions.csv and two plots
(cumulative error curve; world map of errors), plus the published numbers side by side and the
paired comparison of two runs. matplotlib (the app extra) is imported only when plotting."""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from geolocsft import geo
from geolocsft.fsutil import atomic_write
from geolocsft.textsafe import csv_safe

DATA_DIR = Path(__file__).resolve().parent / "data"
PUBLISHED_FILE = DATA_DIR / "published.toml"
COUNTRIES_FILE = DATA_DIR / "countries-ne110m.json"
PREDICTION_COLUMNS = ["id", "pred_lat", "pred_lon", "true_lat", "true_lon", "error_km",
                      "parse_status", "oracle_km", "raw"]


@dataclass
class PredictionRow:
    id: str
    pred_lat: float | None
    pred_lon: float | None
    true_lat: float
    true_lon: float
    parse_status: str
    raw: str = ""
    oracle_km: float | None = None  # best of several guesses

    @property
    def error_km(self) -> float | None:
        if self.pred_lat is None or self.pred_lon is None:
            return None
        return geo.distance_km(self.pred_lat, self.pred_lon, self.true_lat, self.true_lon)


def predictions_csv(rows: list[PredictionRow]) -> str:
    """The official GeoLocSFT columns (pred_lat, pred_lon, true_lat, true_lon) plus id, error,
    parse status and raw output; `bench score` reads it back to the same numbers."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(PREDICTION_COLUMNS)
    for r in rows:
        err = r.error_km
        # csv_safe: an id or a model's raw answer is text a spreadsheet must not run.
        writer.writerow([csv_safe(r.id), _num(r.pred_lat), _num(r.pred_lon), repr(r.true_lat),
                         repr(r.true_lon), "" if err is None else f"{err:.3f}", r.parse_status,
                         "" if r.oracle_km is None else f"{r.oracle_km:.3f}", csv_safe(r.raw)])
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def score_rows(rows: list[PredictionRow], **options) -> geo.Scores:
    return geo.score([(r.pred_lat, r.pred_lon, r.true_lat, r.true_lon) for r in rows], **options)


def oracle_accuracy(rows: list[PredictionRow], strict: bool = False) -> dict[int, float] | None:
    """Oracle@K: a photo counts when its best guess of K is within the radius (paper, Table 3)."""
    if not rows or all(r.oracle_km is None for r in rows):
        return None
    hit = (lambda d, r: d < r) if strict else (lambda d, r: d <= r)
    return {t: sum(1 for r in rows if r.oracle_km is not None and hit(r.oracle_km, t)) / len(rows)
            for t in geo.THRESHOLDS_KM}


def load_published(dataset: str, path: Path = PUBLISHED_FILE) -> list[dict]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [r for r in data.get("result", []) if r.get("dataset") == dataset.lower()]


def markdown(title: str, scores: geo.Scores, record: dict, published: list[dict],
             oracle: dict[int, float] | None, timings: dict | None) -> str:
    ths = geo.THRESHOLDS_KM
    head = "| method | " + " | ".join(f"{t} km" for t in ths) + " |"
    rule = "|---|" + "---:|" * len(ths)
    lines = [f"# {title}", "", "## Accuracy", "", head, rule,
             "| **this run** | " + " | ".join(f"**{100 * scores.acc[t]:.1f}**" for t in ths) + " |"]
    if scores.intervals:
        lines.append("| 95 % interval | " + " | ".join(
            f"{100 * scores.intervals[t][0]:.1f}–{100 * scores.intervals[t][1]:.1f}"
            for t in ths) + " |")
    if oracle:
        lines.append(f"| Oracle@{record.get('samples', 'K')} (best guess) | "
                     + " | ".join(f"{100 * oracle[t]:.1f}" for t in ths) + " |")
    for p in published:
        lines.append(f"| {p['method']} ({p['source']}) | "
                     + " | ".join(f"{a:.1f}" for a in p["acc"]) + " |")
    median = "–" if scores.median_km is None else f"{scores.median_km:.1f} km"
    rule_text = "<" if scores.strict else "<="
    lines += [
        "",
        f"Photos: {scores.n}; parsed: {scores.parsed} (parse failures "
        f"{100 * scores.parse_failure_rate:.1f} %, counted as misses"
        f"{' scored at (0, 0)' if scores.unparsed == 'origin' else ''}); hit = distance "
        f"{rule_text} radius; median error {median}.",
        "",
        "![cumulative error](error_cdf.png)",
        "",
        "![error map](error_map.png)",
    ]
    if timings:
        lines += ["", "## Timings (per photo, mean)", ""]
        lines += [f"- {k}: {v}" for k, v in timings.items()]
    lines += ["", "## Run record", "", "```json", json.dumps(record, indent=2), "```", ""]
    return "\n".join(lines)


def plot_cdf(rows: list[PredictionRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = sorted(e for e in (r.error_km for r in rows) if e is not None)
    n = len(rows)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if errors:
        xs = [max(e, 0.01) for e in errors]
        ys = [(i + 1) / n for i in range(len(errors))]
        ax.step(xs, ys, where="post", color="#1f5fa8", lw=2, label="this run")
    for t in geo.THRESHOLDS_KM:
        ax.axvline(t, color="#999", lw=0.8, ls=":")
        ax.text(t, 1.01, f"{t} km", ha="center", va="bottom", fontsize=8, color="#555")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20050)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("error (km, log scale)")
    ax.set_ylabel("share of photos within error")
    ax.set_title(title, fontsize=10, pad=16)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def plot_map(rows: list[PredictionRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    for country in json.loads(COUNTRIES_FILE.read_text(encoding="utf-8"))["countries"]:
        for ring in country["rings"]:
            ax.fill([p[0] for p in ring], [p[1] for p in ring], color="#e9e6df", lw=0.3,
                    ec="#b5b0a5")
    buckets = [(25, "#2e9d45", "≤ 25 km"), (750, "#e0a31f", "≤ 750 km"),
               (math.inf, "#c8362b", "> 750 km")]
    for limit, colour, label in buckets:
        lower = {25: -1, 750: 25, math.inf: 750}[limit]
        sel = [r for r in rows if r.error_km is not None and lower < r.error_km <= limit]
        for r in sel:
            if r.error_km > 25:  # the line from truth to guess (short hops would only clutter)
                ax.plot([r.true_lon, r.pred_lon], [r.true_lat, r.pred_lat], color=colour,
                        lw=0.5, alpha=0.5)
        ax.scatter([r.true_lon for r in sel], [r.true_lat for r in sel], s=9, color=colour,
                   label=f"{label} ({len(sel)})", zorder=3)
    missing = [r for r in rows if r.error_km is None]
    if missing:
        ax.scatter([r.true_lon for r in missing], [r.true_lat for r in missing], s=12,
                   marker="x", color="#555", label=f"no answer ({len(missing)})", zorder=3)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_report(out_dir: Path, rows: list[PredictionRow], *, dataset: str, record: dict,
                 timings: dict | None = None, strict: bool = False,
                 unparsed: str = "miss") -> geo.Scores:
    """Write the whole report folder; returns the scores."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = score_rows(rows, strict=strict, unparsed=unparsed)
    oracle = oracle_accuracy(rows, strict=strict)
    published = load_published(dataset)
    title = f"{record.get('model', 'model')} on {dataset} ({scores.n} photos)"
    atomic_write(out_dir / "predictions.csv", predictions_csv(rows))
    summary = {"scores": scores.to_dict(), "oracle": None if oracle is None else
               {str(k): v for k, v in oracle.items()}, "published": published,
               "timings": timings, "record": record}
    atomic_write(out_dir / "report.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out_dir / "report.md", markdown(title, scores, record, published, oracle, timings))
    plot_cdf(rows, out_dir / "error_cdf.png", title)
    plot_map(rows, out_dir / "error_map.png", title)
    return scores


# -- paired comparison -------------------------------------------------------------------------

def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: b and c are the discordant pairs (A hit/B miss, A miss/B
    hit). Under the null each discordant pair is a fair coin."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(a: dict[str, float | None], b: dict[str, float | None],
            strict: bool = False) -> list[dict]:
    """Per-threshold paired comparison of two runs' errors by photo id (None = no answer, a
    miss). Only photos present in both are compared."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("the two runs share no photo ids")
    hit = (lambda d, r: d is not None and d < r) if strict else (
        lambda d, r: d is not None and d <= r)
    out = []
    for t in geo.THRESHOLDS_KM:
        ha = [hit(a[i], t) for i in ids]
        hb = [hit(b[i], t) for i in ids]
        only_a = sum(1 for x, y in zip(ha, hb) if x and not y)
        only_b = sum(1 for x, y in zip(ha, hb) if y and not x)
        out.append({"km": t, "n": len(ids), "acc_a": sum(ha) / len(ids),
                    "acc_b": sum(hb) / len(ids), "diff": (sum(hb) - sum(ha)) / len(ids),
                    "only_a": only_a, "only_b": only_b, "p_value": mcnemar_p(only_a, only_b)})
    return out

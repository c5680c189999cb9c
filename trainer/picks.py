"""The pick list: what `curate` chose and `caption` works through.

A CSV with the columns `id,image,lat,lon` first (then curate's extras: cell, country,
continent, phash). `image` is an absolute path, so the list works from any folder. `caption`
also accepts any pool the core readers understand (a CSV or an EXIF-tagged folder).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from geolocsft.textsafe import csv_safe, csv_unguard
from trainer.jsonl import write_bytes_atomic

PICK_COLUMNS = ("id", "image", "lat", "lon")


@dataclass(frozen=True)
class Pick:
    id: str
    image: str
    lat: float
    lon: float


class PicksError(ValueError):
    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_pick_list(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    return tuple(h.strip() for h in header[:4]) == PICK_COLUMNS


def load_picks(path: str | Path) -> tuple[list[Pick], list[str]]:
    """Picks and warnings (bad rows, duplicate ids: skipped, never fatal). A file or folder
    that holds nothing usable raises PicksError / the core's DatasetError."""
    path = Path(path)
    if not path.exists():
        raise PicksError(path, "not found")
    if not is_pick_list(path):
        from geolocsft.datasets import read_dataset

        result = read_dataset(path)
        picks = [Pick(s.id, str(Path(s.image).resolve()), s.lat, s.lon) for s in result.samples]
        return picks, list(result.warnings)
    picks, warnings, seen = [], [], set()
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            ident = csv_unguard((row.get("id") or "").strip())
            image = csv_unguard((row.get("image") or "").strip())
            try:
                lat, lon = float(row.get("lat") or "nan"), float(row.get("lon") or "nan")
            except ValueError:
                lat = lon = math.nan
            if not ident or not image:
                warnings.append(f"{path}:{line}: no id or image; skipped")
            elif not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
                warnings.append(f"{path}:{line}: {ident}: missing or invalid coordinates; skipped")
            elif ident in seen:
                warnings.append(f"{path}:{line}: duplicate id {ident!r}; first kept")
            else:
                seen.add(ident)
                if not Path(image).is_absolute():  # relative to the list's own folder
                    image = str((path.parent / image).resolve())
                picks.append(Pick(ident, image, lat, lon))
    if not picks:
        raise PicksError(path, "no usable rows" + (f" ({len(warnings)} skipped)" if warnings else ""))
    return picks, warnings


def write_picks(path: str | Path, rows: list[dict]) -> None:
    """Write dict rows (PICK_COLUMNS first, then any extras in first-seen order) atomically."""
    columns = list(PICK_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_safe(v) for k, v in row.items()} for row in rows)
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))

"""Readers for benchmark and training sets and for prediction files.

Every reader returns the rows it could use plus the warnings it raised (skipped rows, missing
images, a swapped header); a file that cannot be used at all raises DatasetError naming the
file and the problem.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from geolocsft.images import ImageError, read_gps

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif"})
IMAGE_COLUMNS = (
    "image", "image_path", "path", "file", "filename", "img_id", "photo_id", "id",
)
LAT_COLUMNS = ("lat", "latitude")
LON_COLUMNS = ("lon", "lng", "long", "longitude")
PREDICTION_COLUMNS = ("pred_lat", "pred_lon", "true_lat", "true_lon")
MAX_LISTED = 5  # how many offending items a warning names before "..."


class DatasetError(ValueError):
    """A dataset or prediction file that cannot be used; `str()` is "<path>: <reason>"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Sample:
    id: str
    image: Path
    lat: float
    lon: float


@dataclass
class DatasetResult:
    """Samples a reader produced, and what it had to say about the rest."""

    source: Path
    samples: list[Sample] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    without_gps: list[Path] = field(default_factory=list)  # EXIF folders only

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)


@dataclass
class PredictionFile:
    """An official-format prediction file. `rows` feed `geo.score` directly:
    `(pred_lat|None, pred_lon|None, true_lat, true_lon)`."""

    source: Path
    rows: list[tuple[float | None, float | None, float, float]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def unparsed(self) -> int:
        return sum(1 for row in self.rows if row[0] is None)


# --- CSV plumbing ----------------------------------------------------------------------------


def _listing(items: list, limit: int = MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (stripped, as written) and rows keyed by lower-cased header, each with its line
    number. Handles a UTF-8 BOM and comma, semicolon or tab separators."""
    if not path.exists():
        raise DatasetError(path, "file not found")
    if path.is_dir():
        raise DatasetError(path, "is a folder, expected a CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        raise DatasetError(path, f"cannot read: {exc.strerror or exc}")
    lines = text.splitlines()
    if not text.strip():
        raise DatasetError(path, "file is empty")
    first = next(line for line in lines if line.strip())
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        first_row = next((r for r in reader if any(c.strip() for c in r)), None)
        if first_row is None:
            raise DatasetError(path, "file has no header row")
        header = [h.strip() for h in first_row]
        keys = [h.lower() for h in header]
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            rows.append((reader.line_num, dict(zip(keys, (c.strip() for c in row)))))
    except csv.Error as exc:
        raise DatasetError(path, f"malformed CSV at line {reader.line_num}: {exc}")
    if not rows:
        raise DatasetError(path, "has a header but no data rows")
    return header, rows


def _pick_column(path: Path, header: list[str], wanted: str | None, candidates: tuple[str, ...],
                 what: str) -> str:
    keys = [h.lower() for h in header]
    if wanted is not None:
        if wanted.lower() not in keys:
            raise DatasetError(path, f"no column {wanted!r} (columns: {', '.join(header)})")
        return wanted.lower()
    for name in candidates:
        if name in keys:
            return name
    raise DatasetError(
        path, f"no {what} column: expected one of {', '.join(candidates)} "
              f"(columns: {', '.join(header)})"
    )


def _number(text: str | None) -> float | None:
    """A finite float, or None for empty/non-numeric/NaN/inf cells."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _in_range(lat: float, lon: float) -> bool:
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0


def _swapped(values_lat: list[float], values_lon: list[float]) -> bool:
    """True when the column headed "lat" holds longitudes and the one headed "lon" holds
    latitudes: some "lat" values are beyond +-90 while every "lon" value is within +-90."""
    return (any(abs(v) > 90 for v in values_lat)
            and all(abs(v) <= 90 for v in values_lon))


def _read_located_csv(path, images_dir, image_column, lat_column, lon_column,
                      require_images: bool, detect_swap: bool) -> DatasetResult:
    path = Path(path)
    header, rows = _read_table(path)
    id_key = _pick_column(path, header, image_column, IMAGE_COLUMNS, "image")
    lat_key = _pick_column(path, header, lat_column, LAT_COLUMNS, "latitude")
    lon_key = _pick_column(path, header, lon_column, LON_COLUMNS, "longitude")
    base = Path(images_dir) if images_dir is not None else path.parent
    result = DatasetResult(source=path)

    parsed, bad_truth, no_id = [], [], []
    for line, row in rows:
        lat, lon = _number(row.get(lat_key)), _number(row.get(lon_key))
        name = row.get(id_key, "")
        if not name:
            no_id.append(line)
        elif lat is None or lon is None:
            bad_truth.append(line)
        else:
            parsed.append((line, name, lat, lon))
    if not parsed:
        raise DatasetError(
            path, f"no row has numeric coordinates in columns {lat_key!r}/{lon_key!r}"
                  + (f" (bad rows at lines {_listing(bad_truth)})" if bad_truth else "")
        )
    if detect_swap and _swapped([p[2] for p in parsed], [p[3] for p in parsed]):
        parsed = [(line, name, lon, lat) for line, name, lat, lon in parsed]
        result.warnings.append(
            f"{path}: the {lat_key!r} column holds longitudes and {lon_key!r} latitudes "
            f"(values beyond +-90 under {lat_key!r}): headers are swapped, read as "
            f"latitude={lon_key!r}, longitude={lat_key!r}"
        )
    out_of_range = [line for line, _, lat, lon in parsed if not _in_range(lat, lon)]
    bad_truth += out_of_range
    parsed = [p for p in parsed if _in_range(p[2], p[3])]

    missing, seen, duplicates = [], set(), []
    for line, name, lat, lon in parsed:
        if name in seen:
            duplicates.append(name)
            continue
        seen.add(name)
        image = Path(name) if Path(name).is_absolute() else base / name
        if require_images and not image.is_file():
            missing.append(name)
            continue
        result.samples.append(Sample(id=name, image=image, lat=lat, lon=lon))

    if no_id:
        result.warnings.append(f"{path}: {len(no_id)} rows without an image name skipped "
                               f"(lines {_listing(no_id)})")
    if bad_truth:
        result.warnings.append(
            f"{path}: {len(bad_truth)} rows with missing, non-numeric or out-of-range "
            f"coordinates skipped (lines {_listing(sorted(bad_truth))})")
    if duplicates:
        result.warnings.append(f"{path}: {len(duplicates)} duplicate image names, first row "
                               f"kept ({_listing(duplicates)})")
    if missing:
        result.warnings.append(f"{path}: {len(missing)} of {len(missing) + len(result.samples)}"
                               f" images not found under {base}, rows skipped "
                               f"({_listing(missing)})")
    if not result.samples:
        raise DatasetError(path, "no usable rows: " + "; ".join(result.warnings))
    return result


# --- the readers -----------------------------------------------------------------------------


def read_im2gps3k(csv_path, images_dir=None, require_images: bool = True) -> DatasetResult:
    """Im2GPS3k (`im2gps3k_places365.csv`: IMG_ID, AUTHOR, LAT, LON, ...). One public copy
    has the LAT and LON headers swapped; that is detected from the value ranges and named in
    a warning. Images are looked up in `images_dir` (default: the CSV's folder)."""
    return _read_located_csv(csv_path, images_dir, None, None, None,
                             require_images, detect_swap=True)


def read_yfcc4k(csv_path, images_dir=None, require_images: bool = True) -> DatasetResult:
    """YFCC4k in the same style (IMG_ID, LAT, LON, ...; other spellings are detected as in
    `read_csv`); only rows whose image exists are
    kept, with a warning giving how many were missing."""
    return _read_located_csv(csv_path, images_dir, None, None, None,
                             require_images, detect_swap=True)


def read_csv(csv_path, images_dir=None, image_column: str | None = None,
             lat_column: str | None = None, lon_column: str | None = None,
             require_images: bool = True) -> DatasetResult:
    """Any CSV with an image column (image/path/file/filename/id...) and latitude/longitude
    columns (lat/latitude, lon/lng/long/longitude), found case-insensitively unless named."""
    return _read_located_csv(csv_path, images_dir, image_column, lat_column, lon_column,
                             require_images, detect_swap=False)


def read_exif_folder(folder) -> DatasetResult:
    """Every photo under `folder` (recursively) that carries EXIF GPS. Photos without GPS are
    listed in `without_gps`; unreadable ones in the warnings."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(folder, "folder not found" if not folder.exists() else "not a folder")
    result = DatasetResult(source=folder)
    unreadable = []
    photos = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not photos:
        raise DatasetError(folder, f"no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) found")
    for photo in photos:
        try:
            gps = read_gps(photo)
        except ImageError as exc:
            unreadable.append(f"{photo.relative_to(folder).as_posix()} ({exc.reason})")
            continue
        if gps is None:
            result.without_gps.append(photo)
        else:
            result.samples.append(Sample(id=photo.relative_to(folder).as_posix(), image=photo,
                                         lat=gps[0], lon=gps[1]))
    if result.without_gps:
        names = [p.relative_to(folder).as_posix() for p in result.without_gps]
        result.warnings.append(f"{folder}: {len(names)} of {len(photos)} photos have no EXIF "
                               f"GPS and were skipped ({_listing(names)})")
    if unreadable:
        result.warnings.append(f"{folder}: {len(unreadable)} files could not be read "
                               f"({_listing(unreadable)})")
    if not result.samples:
        raise DatasetError(folder, f"none of the {len(photos)} photos carries EXIF GPS")
    return result


def read_dataset(path, images_dir=None) -> DatasetResult:
    """Pick the reader from the path: a folder is read for EXIF GPS; a CSV named like
    im2gps3k*/yfcc4k* gets that reader; any other CSV the generic one."""
    path = Path(path)
    if path.is_dir():
        return read_exif_folder(path)
    name = path.name.lower()
    if name.startswith("im2gps3k"):
        return read_im2gps3k(path, images_dir)
    if name.startswith("yfcc4k"):
        return read_yfcc4k(path, images_dir)
    return read_csv(path, images_dir)


def read_predictions(csv_path) -> PredictionFile:
    """A prediction file in the official GeoLocSFT evaluation format: columns pred_lat,
    pred_lon, true_lat, true_lon (any case, any order; extra columns such as id, raw or
    parse_status are kept out of the way). Empty, non-numeric or out-of-range predictions are
    unparsed rows; rows with bad truth are skipped with a warning."""
    path = Path(csv_path)
    header, rows = _read_table(path)
    keys = [h.lower() for h in header]
    missing = [c for c in PREDICTION_COLUMNS if c not in keys]
    if missing:
        raise DatasetError(path, f"missing column(s) {', '.join(missing)}: the official format "
                                 f"needs {', '.join(PREDICTION_COLUMNS)} (columns: "
                                 f"{', '.join(header)})")
    id_key = next((k for k in ("id", "img_id", "image", "image_path", "path") if k in keys), None)
    result = PredictionFile(source=path)
    bad_truth = []
    for line, row in rows:
        true_lat, true_lon = _number(row.get("true_lat")), _number(row.get("true_lon"))
        if true_lat is None or true_lon is None or not _in_range(true_lat, true_lon):
            bad_truth.append(line)
            continue
        pred_lat, pred_lon = _number(row.get("pred_lat")), _number(row.get("pred_lon"))
        if pred_lat is None or pred_lon is None or not _in_range(pred_lat, pred_lon):
            pred_lat = pred_lon = None
        result.rows.append((pred_lat, pred_lon, true_lat, true_lon))
        result.ids.append(row.get(id_key, "") if id_key else str(line))
    if not result.rows:
        raise DatasetError(path, "no row has numeric true_lat/true_lon within range "
                                 f"(bad rows at lines {_listing(bad_truth)})")
    if bad_truth:
        result.warnings.append(f"{path}: {len(bad_truth)} rows with missing, non-numeric or "
                               f"out-of-range true_lat/true_lon skipped "
                               f"(lines {_listing(bad_truth)})")
    return result

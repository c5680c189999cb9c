"""Exports of a locate run: CSV (spreadsheets), GeoJSON (GIS tools, web maps) and KML (Google
Earth). XMP sidecars and EXIF GPS live in export_xmp.py.

Every file is written atomically (temp file in the same folder, fsync, os.replace) and an
existing file is replaced only with force=True: it may be a user's.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from xml.sax.saxutils import escape

from geolocsft.fsutil import atomic_write
from geolocsft.store import PhotoResult, Status
from geolocsft.textsafe import csv_safe, utf8_text, xml_text

DEFAULT_FLAG_KM = 500.0  # EXIF GPS farther than this from the prediction is flagged
EXPORT_BASENAME = "geolocsft"
EXPORT_SUFFIXES = (".csv", ".geojson", ".kml")


class ExportError(RuntimeError):
    """An export cannot be written; the message names the file."""


class ExportExistsError(ExportError):
    """The target exists and force was not given."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, force: bool = False,
                       like: str | os.PathLike | None = None) -> None:
    """fsutil.atomic_write with the export errors: a user's file is kept unless force."""
    path = Path(path)
    try:
        atomic_write(path, data, force=force, like=like)
    except FileExistsError:
        raise ExportExistsError(f"{path}: exists; not replacing it without --force") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def is_flagged(result: PhotoResult, flag_km: float = DEFAULT_FLAG_KM) -> bool:
    """The photo's own EXIF GPS is far from the prediction: doctored, mislabeled, or a miss."""
    return result.truth_km is not None and result.truth_km > flag_km


CSV_COLUMNS = [
    "path", "status", "error", "latitude", "longitude", "place", "place_country",
    "place_country_code", "model_region", "model_country", "confidence", "parse_status",
    "parse_reason", "samples", "temperature", "consensus_lat", "consensus_lon", "radius_km",
    "exif_lat", "exif_lon", "exif_km", "flagged", "model", "prompt_version",
    "image_prepare_s", "image_encode_s", "prompt_s", "generate_s", "image_tokens",
    "generated_tokens", "tokens_per_s", "photo_sha256", "model_sha256", "created_at",
]


def _place(result: PhotoResult) -> str:
    return ", ".join(p for p in (result.place_city, result.place_state) if p)


def _row(result: PhotoResult, flag_km: float) -> dict:
    """One photo's export fields; text as valid UTF-8 (a non-UTF-8 file name shows as \\xNN)."""
    row = {
        "path": result.path,
        "status": result.status,
        "error": result.error,
        "latitude": result.latitude,
        "longitude": result.longitude,
        "place": _place(result),
        "place_country": result.place_country,
        "place_country_code": result.place_country_code,
        "model_region": result.region,
        "model_country": result.country,
        "confidence": result.confidence,
        "parse_status": result.parse_status,
        "parse_reason": result.parse_reason,
        "samples": result.samples,
        "temperature": result.temperature,
        "consensus_lat": result.consensus_lat,
        "consensus_lon": result.consensus_lon,
        "radius_km": result.radius_km,
        "exif_lat": result.truth_lat,
        "exif_lon": result.truth_lon,
        "exif_km": result.truth_km,
        "flagged": "yes" if is_flagged(result, flag_km) else "",
        "model": result.model_name,
        "prompt_version": result.prompt_version,
        "image_prepare_s": result.image_prepare_s,
        "image_encode_s": result.image_encode_s,
        "prompt_s": result.prompt_s,
        "generate_s": result.generate_s,
        "image_tokens": result.image_tokens,
        "generated_tokens": result.generated_tokens,
        "tokens_per_s": result.tokens_per_s,
        "photo_sha256": result.photo_sha256,
        "model_sha256": result.model_sha256,
        "created_at": result.created_at,
    }
    return {k: utf8_text(v) if isinstance(v, str) else v for k, v in row.items()}


_TIMING_COLUMNS = {"image_prepare_s", "image_encode_s", "prompt_s", "generate_s", "tokens_per_s"}


def _csv_cell(column: str, value):
    if value is None:
        return ""
    if column in _TIMING_COLUMNS and isinstance(value, float):
        return round(value, 4)
    # Text a spreadsheet would run as a formula (a model's region, a file name): keep it text.
    return csv_safe(value)


def csv_text(results: list[PhotoResult], flag_km: float = DEFAULT_FLAG_KM) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({k: _csv_cell(k, v) for k, v in _row(result, flag_km).items()})
    return buffer.getvalue()


def geojson_text(results: list[PhotoResult], flag_km: float = DEFAULT_FLAG_KM) -> str:
    """A FeatureCollection of the photos that got a point; coordinates are [lon, lat] (RFC 7946)."""
    features = []
    for result in results:
        if not result.has_point:
            continue
        properties = {k: v for k, v in _row(result, flag_km).items() if k not in ("latitude", "longitude")}
        properties["flagged"] = is_flagged(result, flag_km)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [result.longitude, result.latitude]},
            "properties": properties,
        })
    return json.dumps({"type": "FeatureCollection", "features": features},
                      ensure_ascii=False, indent=1) + "\n"


def _kml_description(result: PhotoResult, flag_km: float) -> str:
    lines = [f"Path: {result.path}"]
    place = ", ".join(p for p in (_place(result), result.place_country) if p)
    if place:
        lines.append(f"Place: {place}")
    if result.radius_km is not None:
        lines.append(f"Consensus of {result.samples} guesses, radius {result.radius_km:.1f} km")
    if result.truth_km is not None:
        flag = " — FLAGGED" if is_flagged(result, flag_km) else ""
        lines.append(f"EXIF GPS {result.truth_km:.1f} km away{flag}")
    analysis = result.analysis
    if analysis and isinstance(analysis.get("conclusion"), str):
        lines.append(f"Reasoning: {analysis['conclusion']}")
    lines.append(f"Model: {result.model_name} ({result.prompt_version})")
    return "\n".join(lines)


def kml_text(results: list[PhotoResult], flag_km: float = DEFAULT_FLAG_KM) -> str:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<kml xmlns="http://www.opengis.net/kml/2.2">',
        "<Document>",
        "<name>geolocsft predictions</name>",
        '<Style id="flagged"><IconStyle><color>ff0000ff</color></IconStyle></Style>',
    ]
    for result in results:
        if not result.has_point:
            continue
        out.append("<Placemark>")
        out.append(f"<name>{escape(xml_text(Path(result.path).name))}</name>")
        if is_flagged(result, flag_km):
            out.append("<styleUrl>#flagged</styleUrl>")
        out.append(f"<description>{escape(xml_text(_kml_description(result, flag_km)))}</description>")
        # KML's order is lon,lat[,alt] too.
        out.append(f"<Point><coordinates>{result.longitude:.6f},{result.latitude:.6f},0</coordinates></Point>")
        out.append("</Placemark>")
    out += ["</Document>", "</kml>", ""]
    return "\n".join(out)


def export_paths(out_dir: str | os.PathLike, basename: str = EXPORT_BASENAME) -> list[Path]:
    return [Path(out_dir) / f"{basename}{suffix}" for suffix in EXPORT_SUFFIXES]


def write_exports(
    results: list[PhotoResult],
    out_dir: str | os.PathLike,
    *,
    flag_km: float = DEFAULT_FLAG_KM,
    force: bool = False,
    basename: str = EXPORT_BASENAME,
) -> list[Path]:
    """Write CSV, GeoJSON and KML into out_dir; refuse (before writing any) if one exists."""
    paths = export_paths(out_dir, basename)
    if not force:
        existing = [p for p in paths if p.exists()]
        if existing:
            raise ExportExistsError(f"{existing[0]}: exists; not replacing it without --force")
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot create folder ({exc.strerror or exc})") from exc
    ordered = sorted(results, key=lambda r: r.path)
    texts = [csv_text(ordered, flag_km), geojson_text(ordered, flag_km), kml_text(ordered, flag_km)]
    for path, text in zip(paths, texts):
        atomic_write_bytes(path, text.encode("utf-8"), force=True)
    return paths


def summary_counts(results: list[PhotoResult], flag_km: float = DEFAULT_FLAG_KM) -> dict:
    return {
        "photos": len(results),
        "located": sum(1 for r in results if r.has_point),
        "unparsed": sum(1 for r in results if r.status == Status.DONE and not r.has_point),
        "errors": sum(1 for r in results if r.status == Status.ERROR),
        "flagged": sum(1 for r in results if is_flagged(r, flag_km)),
    }

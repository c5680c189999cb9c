"""The map's projection and geodesic shapes, Qt-free.

Web Mercator (as OpenStreetMap and MBTiles use), with the whole world a square of WORLD scene
units: zoom level z shows the world 256·2^z pixels wide, so a raster tile (z, x, y) covers
exactly [x, x+1]·WORLD/2^z. Latitudes are clamped to ±MAX_LAT, where the square ends.

Lines on the map that stand for distances (the error line, the confidence circle) are geodesics
on the WGS84 ellipsoid sampled with geographiclib, not straight lines in the projection, and
are split where they cross 180° so they do not streak across the world.
"""

from __future__ import annotations

import math

WORLD = 256.0
MAX_LAT = 85.05112878


def project(lat: float, lon: float) -> tuple[float, float]:
    """(lat, lon) in degrees → (x, y) scene units; y grows southwards."""
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    x = (lon + 180.0) / 360.0 * WORLD
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * WORLD
    return x, y


def unproject(x: float, y: float) -> tuple[float, float]:
    """(x, y) scene units → (lat, lon) in degrees."""
    lon = x / WORLD * 360.0 - 180.0
    n = math.pi * (1 - 2 * y / WORLD)
    lat = math.degrees(math.atan(math.sinh(n)))
    return lat, lon


def wrap_lon(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def _split(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Break a (lat, lon) sequence where consecutive longitudes jump across 180°."""
    parts: list[list[tuple[float, float]]] = [[]]
    for lat, lon in points:
        lon = wrap_lon(lon)
        if parts[-1] and abs(lon - parts[-1][-1][1]) > 180:
            # Close this part at the edge and open the next one there, interpolating the
            # latitude where the segment meets 180°.
            plat, plon = parts[-1][-1]
            edge = 180.0 if plon > 0 else -180.0
            span = (lon + 360 if plon > 0 else lon - 360) - plon
            t = (edge - plon) / span if span else 0.0
            mid = plat + (lat - plat) * t
            parts[-1].append((mid, edge))
            parts.append([(mid, -edge)])
        parts[-1].append((lat, lon))
    return [p for p in parts if len(p) >= 2]


def geodesic_line(lat1: float, lon1: float, lat2: float, lon2: float,
                  max_step_km: float | None = None) -> tuple[float, list[list[tuple[float, float]]]]:
    """(distance km, parts): the shortest path on WGS84 sampled every `max_step_km` (default:
    200 samples), as (lat, lon) parts split at 180°."""
    from geographiclib.geodesic import Geodesic

    line = Geodesic.WGS84.InverseLine(lat1, lon1, lat2, lon2)
    distance_m = line.s13
    n = 200 if not max_step_km else max(2, int(math.ceil(distance_m / 1000 / max_step_km)))
    n = max(2, min(n, 2000))
    points = []
    for i in range(n + 1):
        pos = line.Position(distance_m * i / n, Geodesic.LATITUDE | Geodesic.LONGITUDE)
        points.append((pos["lat2"], pos["lon2"]))
    return distance_m / 1000.0, _split(points)


def geodesic_midpoint(lat1: float, lon1: float, lat2: float, lon2: float) -> tuple[float, float]:
    from geographiclib.geodesic import Geodesic

    line = Geodesic.WGS84.InverseLine(lat1, lon1, lat2, lon2)
    pos = line.Position(line.s13 / 2)
    return pos["lat2"], wrap_lon(pos["lon2"])


def geodesic_circle(lat: float, lon: float, radius_km: float,
                    samples: int = 180) -> list[list[tuple[float, float]]]:
    """Points at `radius_km` along every azimuth from the centre (a closed ring), split at 180°.
    Circles that contain a pole are not closed rings in the projection; they are returned as
    the split parts all the same."""
    from geographiclib.geodesic import Geodesic

    points = []
    for i in range(samples + 1):
        out = Geodesic.WGS84.Direct(lat, lon, 360.0 * i / samples, radius_km * 1000.0)
        points.append((out["lat2"], out["lon2"]))
    return _split(points)

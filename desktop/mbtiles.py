"""Read raster tiles from an MBTiles file (SQLite), Qt-free.

MBTiles 1.3: table `tiles(zoom_level, tile_column, tile_row, tile_data)` with rows numbered
from the south (TMS), table `metadata(name, value)`. The map asks in XYZ (rows from the north,
as Web Mercator scene y grows southwards), so `tile()` flips the row: tms_row = 2^z - 1 - y.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


# Untrusted files (a download, a share): limits so a crafted one cannot hang or flood the app.
MAX_ZOOM = 24  # deepest zoom any tile server publishes (2^24 tiles a side)
MAX_TILE_BYTES = 4 << 20  # a 256/512 px raster tile is tens of KB
MAX_METADATA_ROWS = 1000
QUERY_STEPS = 1_000_000  # SQLite VM steps one query may take (a tile lookup takes a few dozen)


class MBTilesError(ValueError):
    """An unusable MBTiles file; the message names the file and the problem."""


def _zoom(value, fallback: int) -> int:
    try:
        return min(max(int(value), 0), MAX_ZOOM)
    except (TypeError, ValueError):
        return min(max(int(fallback), 0), MAX_ZOOM)


class MBTiles:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.problem = ""  # the last tile read that failed, for a status line
        if not self.path.is_file():
            raise MBTilesError(f"{self.path}: no such file")
        try:
            # Read-only: the app never writes to a user's tile file.
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise MBTilesError(f"{self.path}: cannot open ({exc})") from None
        try:
            self._harden()
            tables = {r[0]: r[1] for r in self._query(
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')")}
            if tables.get("tiles") != "table":
                raise MBTilesError(f"{self.path}: not an MBTiles file (no 'tiles' table"
                                   + ("; a 'tiles' view is not read from untrusted files)"
                                      if "tiles" in tables else ")"))
            self.metadata: dict[str, str] = {}
            if tables.get("metadata") == "table":
                self.metadata = {str(k): str(v)[:1000] for k, v in self._query(
                    "SELECT name, value FROM metadata LIMIT ?", (MAX_METADATA_ROWS,))}
            # Indexed in any real file; a full scan of a big unindexed one gets more steps.
            zooms = self._query("SELECT MIN(zoom_level), MAX(zoom_level) FROM tiles",
                                steps=100 * QUERY_STEPS).fetchone()
        except MBTilesError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise MBTilesError(f"{self.path}: not a readable MBTiles file ({exc})") from None
        if zooms[0] is None:
            self._db.close()
            raise MBTilesError(f"{self.path}: holds no tiles")
        self.min_zoom = _zoom(self.metadata.get("minzoom", zooms[0]), zooms[0])
        self.max_zoom = max(self.min_zoom, _zoom(self.metadata.get("maxzoom", zooms[1]), zooms[1]))

    def _harden(self) -> None:
        """No SQL functions with side effects from the file's own schema (views, triggers),
        no writes, and every query cut off after QUERY_STEPS steps of SQLite's VM."""
        self._db.execute("PRAGMA trusted_schema=OFF")
        self._db.execute("PRAGMA query_only=ON")
        self._steps_left = QUERY_STEPS

        def budget() -> int:  # called every 1000 VM steps; non-zero aborts the query
            self._steps_left -= 1000
            return 1 if self._steps_left < 0 else 0

        self._db.set_progress_handler(budget, 1000)

    def _query(self, sql: str, args=(), steps: int = QUERY_STEPS):
        self._steps_left = steps
        return self._db.execute(sql, args)

    @property
    def name(self) -> str:
        return self.metadata.get("name") or self.path.stem

    @property
    def attribution(self) -> str:
        return self.metadata.get("attribution", "")

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        """The image bytes of XYZ tile (z, x, y), or None when the file lacks it, the request is
        out of range, the tile is oversized or the read fails (said in `problem`)."""
        if not (0 <= z <= MAX_ZOOM and 0 <= x < (1 << z) and 0 <= y < (1 << z)):
            return None
        try:
            row = self._query(
                "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?"
                " AND length(tile_data) <= ?", (z, x, (1 << z) - 1 - y, MAX_TILE_BYTES)).fetchone()
        except sqlite3.Error as exc:
            self.problem = f"{self.path}: tile {z}/{x}/{y} unreadable ({exc})"
            return None
        return bytes(row[0]) if row and isinstance(row[0], bytes) else None

    def close(self) -> None:
        self._db.close()

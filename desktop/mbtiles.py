"""Read raster tiles from an MBTiles file (SQLite), Qt-free.

MBTiles 1.3: table `tiles(zoom_level, tile_column, tile_row, tile_data)` with rows numbered
from the south (TMS), table `metadata(name, value)`. The map asks in XYZ (rows from the north,
as Web Mercator scene y grows southwards), so `tile()` flips the row: tms_row = 2^z - 1 - y.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class MBTilesError(ValueError):
    """An unusable MBTiles file; the message names the file and the problem."""


class MBTiles:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise MBTilesError(f"{self.path}: no such file")
        try:
            # Read-only: the app never writes to a user's tile file.
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False)
            tables = {r[0] for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        except sqlite3.DatabaseError as exc:
            raise MBTilesError(f"{self.path}: not an SQLite file ({exc})") from None
        if "tiles" not in tables:
            self._db.close()
            raise MBTilesError(f"{self.path}: not an MBTiles file (no 'tiles' table)")
        self.metadata: dict[str, str] = {}
        if "metadata" in tables:
            self.metadata = {str(k): str(v) for k, v in self._db.execute(
                "SELECT name, value FROM metadata")}
        zooms = self._db.execute("SELECT MIN(zoom_level), MAX(zoom_level) FROM tiles").fetchone()
        if zooms[0] is None:
            self._db.close()
            raise MBTilesError(f"{self.path}: holds no tiles")
        self.min_zoom = int(self.metadata.get("minzoom", zooms[0]))
        self.max_zoom = int(self.metadata.get("maxzoom", zooms[1]))

    @property
    def name(self) -> str:
        return self.metadata.get("name") or self.path.stem

    @property
    def attribution(self) -> str:
        return self.metadata.get("attribution", "")

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        """The image bytes of XYZ tile (z, x, y), or None when the file lacks it."""
        row = self._db.execute(
            "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
            (z, x, (1 << z) - 1 - y)).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self._db.close()

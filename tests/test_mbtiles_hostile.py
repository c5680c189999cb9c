"""Untrusted MBTiles (issue 14): only a real `tiles` table is read, with trusted_schema off,
zoom levels clamped, every query bounded, and every failure a message naming the file."""

import io
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

from desktop.mbtiles import MAX_TILE_BYTES, MAX_ZOOM, MBTiles, MBTilesError

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def make(path: Path, *, tiles_sql: str | None = None, metadata: dict | None = None,
         rows=((1, 0, 0),), blob: bytes | None = None) -> Path:
    db = sqlite3.connect(path)
    if tiles_sql:
        db.execute(tiles_sql)
    else:
        db.execute("CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER,"
                   " tile_data BLOB)")
        db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                       [(z, x, y, blob or png()) for z, x, y in rows])
    db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
    db.executemany("INSERT INTO metadata VALUES (?, ?)", list((metadata or {}).items()))
    db.commit()
    db.close()
    return path


def test_a_tiles_view_is_refused_at_once(tmp_path):
    path = make(tmp_path / "view.mbtiles", tiles_sql=(
        "CREATE VIEW tiles AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT x AS zoom_level, x AS tile_column, x AS tile_row, x AS tile_data FROM c"))
    began = time.monotonic()
    with pytest.raises(MBTilesError, match=r"view.mbtiles: not an MBTiles file .*view"):
        MBTiles(path)
    assert time.monotonic() - began < 2


def test_absurd_zoom_metadata_is_clamped_and_requests_are_bounded(tmp_path):
    path = make(tmp_path / "z.mbtiles", metadata={"minzoom": "-5", "maxzoom": "99999"})
    tiles = MBTiles(path)
    assert (tiles.min_zoom, tiles.max_zoom) == (0, MAX_ZOOM)
    assert tiles.tile(1, 0, 1) == png()
    assert tiles.tile(MAX_ZOOM + 10, 0, 0) is None and tiles.tile(1, 5, 0) is None
    assert tiles.tile(-1, 0, 0) is None
    tiles.close()
    tiles = MBTiles(make(tmp_path / "text.mbtiles", metadata={"minzoom": "abc", "maxzoom": "[]"}))
    assert (tiles.min_zoom, tiles.max_zoom) == (1, 1)  # from the tiles themselves
    tiles.close()


def test_schema_is_untrusted_and_queries_are_bounded(tmp_path):
    tiles = MBTiles(make(tmp_path / "t.mbtiles"))
    assert tiles._db.execute("PRAGMA trusted_schema").fetchone()[0] == 0
    assert tiles._db.execute("PRAGMA query_only").fetchone()[0] == 1
    began = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupt"):
        tiles._query(ENDLESS).fetchone()
    assert time.monotonic() - began < 2
    assert tiles.tile(1, 0, 1) == png()  # still usable
    tiles.close()


def test_oversized_and_odd_tiles_are_skipped_not_fatal(tmp_path):
    big = make(tmp_path / "big.mbtiles", blob=b"\0" * (MAX_TILE_BYTES + 1))
    tiles = MBTiles(big)
    assert tiles.tile(1, 0, 1) is None
    tiles.close()
    text = tmp_path / "text.mbtiles"
    make(text)
    db = sqlite3.connect(text)
    db.execute("UPDATE tiles SET tile_data = 'not a blob'")
    db.commit()
    db.close()
    tiles = MBTiles(text)
    assert tiles.tile(1, 0, 1) is None
    tiles.close()


def test_corrupt_file_is_one_message(tmp_path):
    path = make(tmp_path / "c.mbtiles", rows=[(z, x, 0) for z in range(3) for x in range(200)])
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page
    path.write_bytes(bytes(data))
    with pytest.raises(MBTilesError, match="c.mbtiles: "):
        MBTiles(path)

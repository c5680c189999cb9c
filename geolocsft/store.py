"""The results store: one SQLite file holding every prediction, so a rerun skips finished photos
and a killed run loses at most the photo in flight.

Key: (photo content sha256, model sha256, prompt version, settings hash). Content, not path, so
renamed or copied photos are not recomputed; a different model, prompt or sampling setting is a
different result.

Durability: WAL journal with synchronous=FULL. In WAL mode NORMAL already survives a killed
process; FULL also survives power loss / OS crash, at the price of one fsync per commit, i.e.
per photo — a few milliseconds next to seconds of model time, so the cheap guarantee wins.
Each photo's result is one transaction: it is in the store entirely or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from geolocsft.manifest import sha256_file
from geolocsft.paths import data_dir

SCHEMA_VERSION = 1
STORE_FILENAME = "results.sqlite"


class StoreError(RuntimeError):
    """The store file cannot be opened or is not a geolocsft store; the message names it."""


def default_store_path() -> Path:
    """One store for all folders: results are keyed by content, so a single file serves every
    photo folder and never writes into a (possibly read-only) photo folder."""
    return data_dir() / STORE_FILENAME


def settings_hash(settings: dict) -> str:
    """A stable short hash of everything that changes a model's output."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ResultKey:
    photo_sha256: str
    model_sha256: str
    prompt_version: str
    settings_hash: str


class Status:
    DONE = "done"  # the model answered (parsed or not): skipped on rerun
    ERROR = "error"  # preparing or running failed: retried on rerun


@dataclass
class PhotoResult:
    """One row: a photo's prediction under one model, prompt and settings."""

    photo_sha256: str
    model_sha256: str
    prompt_version: str
    settings_hash: str
    path: str
    status: str = Status.DONE
    error: str = ""
    model_name: str = ""
    settings_json: str = "{}"
    # The best point: the consensus with several samples, else the first parsed guess.
    parse_status: str = ""
    parse_reason: str = ""
    latitude: float | None = None
    longitude: float | None = None
    region: str = ""
    country: str = ""
    confidence: float | None = None
    analysis_json: str = ""
    # Every guess: [{"text", "status", "reason", "latitude", "longitude", "timings": {...}}].
    outputs_json: str = "[]"
    samples: int = 1
    temperature: float = 0.0
    consensus_lat: float | None = None
    consensus_lon: float | None = None
    radius_km: float | None = None
    # Timings summed over the guesses (prepare is ours: decoding + resizing the photo).
    image_prepare_s: float | None = None
    image_encode_s: float | None = None
    prompt_s: float | None = None
    generate_s: float | None = None
    prompt_tokens: int | None = None
    image_tokens: int | None = None
    generated_tokens: int | None = None
    tokens_per_s: float | None = None
    # Ground truth from the photo's own EXIF GPS, and its distance to the prediction.
    truth_lat: float | None = None
    truth_lon: float | None = None
    truth_km: float | None = None
    place_city: str = ""
    place_state: str = ""
    place_country: str = ""
    place_country_code: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def key(self) -> ResultKey:
        return ResultKey(self.photo_sha256, self.model_sha256, self.prompt_version, self.settings_hash)

    @property
    def outputs(self) -> list[dict]:
        return json.loads(self.outputs_json or "[]")

    @property
    def analysis(self) -> dict | None:
        return json.loads(self.analysis_json) if self.analysis_json else None

    @property
    def has_point(self) -> bool:
        return self.latitude is not None and self.longitude is not None


_KEY_COLUMNS = ("photo_sha256", "model_sha256", "prompt_version", "settings_hash")

def _column_type(annotation: str) -> str:
    for name, sql in (("float", "REAL"), ("int", "INTEGER")):
        if annotation.startswith(name):
            return sql
    return "TEXT"


_COLUMNS = [(f.name, _column_type(str(f.type))) for f in dataclasses.fields(PhotoResult)]
_COLUMN_NAMES = [name for name, _ in _COLUMNS]
_PATH_INDEX = _COLUMN_NAMES.index("path")


def db_path(path: str | os.PathLike) -> str | bytes:
    """A file path as the store keeps it. A name that is not valid UTF-8 (an old camera card, a
    seized disk; Python holds it with surrogate escapes) is stored as its raw bytes (a BLOB),
    so it round-trips exactly instead of failing the write."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def path_from_db(value) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _result_from_row(row) -> PhotoResult:
    row = list(row)
    row[_PATH_INDEX] = path_from_db(row[_PATH_INDEX])
    return PhotoResult(*row)


class ResultStore:
    """Thread-safe (one connection behind a lock): the locate runner writes from its loop while a
    preparation thread and the desktop app read."""

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 30.0):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=FULL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable results store ({exc})") from exc
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open results store ({exc.strerror or exc})") from exc
        if str(mode).lower() != "wal":
            # e.g. a network file system without shared memory: still correct, just say so.
            self.journal_mode = str(mode)
        else:
            self.journal_mode = "wal"

    # -- schema
    def _init_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer geolocsft (schema {version} > {SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "results" not in tables:
            raise StoreError(f"{self.path}: an SQLite file, but not a geolocsft results store")
        columns = ",\n  ".join(f"{name} {sql}" for name, sql in _COLUMNS)
        with self._transaction():
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS results (\n  {columns},\n"
                f"  PRIMARY KEY ({', '.join(_KEY_COLUMNS)}))"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS results_path ON results(path)")
            # Path → content hash cache so a rerun does not re-read every photo to know it is done.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER,"
                " mtime_ns INTEGER, sha256 TEXT)"
            )
            # Export files we wrote, with their hash: a rerun may replace an export that is still
            # exactly as we left it, but never one a person has edited or made.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS exports (path TEXT PRIMARY KEY, sha256 TEXT,"
                " written_at TEXT)"
            )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    class _Tx:
        """One write transaction. Whatever fails (BEGIN: another process holds the write lock
        past the timeout; COMMIT: disk full, I/O error), the transaction is rolled back, the
        thread lock is released and one StoreError naming the file is raised: the store stays
        usable and a rerun continues from the rows already committed."""

        def __init__(self, store):
            self.store = store

        def __enter__(self):
            store = self.store
            store._lock.acquire()
            try:
                store._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                store._rollback_quietly()
                store._lock.release()
                raise store._error("cannot start a write", exc) from None
            except BaseException:
                store._lock.release()
                raise

        def __exit__(self, exc_type, exc, tb):
            store = self.store
            try:
                if exc_type is not None:
                    store._rollback_quietly()
                    return False
                try:
                    store._db.execute("COMMIT")
                except sqlite3.Error as error:
                    store._rollback_quietly()
                    raise store._error("cannot save", error) from None
                return False
            finally:
                store._lock.release()

    def _rollback_quietly(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back already (e.g. SQLITE_FULL)
                pass

    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            why = (f"another program holds the store's write lock ({text}); close the other "
                   "geolocsft run or app, or use --store FILE")
        elif "full" in text or "I/O" in text:
            why = f"{text} (disk full or failing?); free space and rerun to continue"
        else:
            why = text
        return StoreError(f"{self.path}: {doing}: {why}")

    def _transaction(self):
        return ResultStore._Tx(self)

    # -- results
    def put(self, result: PhotoResult) -> None:
        """Insert or replace one result in its own committed transaction."""
        values = [getattr(result, name) for name in _COLUMN_NAMES]
        values[_PATH_INDEX] = db_path(values[_PATH_INDEX])
        placeholders = ",".join("?" for _ in values)
        with self._transaction():
            self._db.execute(
                f"INSERT OR REPLACE INTO results ({','.join(_COLUMN_NAMES)}) VALUES ({placeholders})",
                values,
            )

    def get(self, key: ResultKey) -> PhotoResult | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_COLUMN_NAMES)} FROM results WHERE "
                + " AND ".join(f"{c}=?" for c in _KEY_COLUMNS),
                (key.photo_sha256, key.model_sha256, key.prompt_version, key.settings_hash),
            ).fetchone()
        return _result_from_row(row) if row else None

    def is_done(self, key: ResultKey) -> bool:
        found = self.get(key)
        return found is not None and found.status == Status.DONE

    def results(self, *, model_sha256: str | None = None) -> list[PhotoResult]:
        sql = f"SELECT {','.join(_COLUMN_NAMES)} FROM results"
        args: tuple = ()
        if model_sha256:
            sql += " WHERE model_sha256=?"
            args = (model_sha256,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY path, created_at", args).fetchall()
        return [_result_from_row(row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def update_path(self, key: ResultKey, path: str) -> None:
        """The same content was found at another path (moved, renamed, copied)."""
        with self._transaction():
            self._db.execute(
                "UPDATE results SET path=? WHERE " + " AND ".join(f"{c}=?" for c in _KEY_COLUMNS),
                (db_path(path), key.photo_sha256, key.model_sha256, key.prompt_version,
                 key.settings_hash),
            )

    # -- exports we wrote
    def record_export(self, path: str | os.PathLike) -> None:
        path = os.path.abspath(path)
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO exports (path, sha256, written_at) VALUES (?,?,?)",
                (db_path(path), sha256_file(path),
                 datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )

    def is_our_unchanged_export(self, path: str | os.PathLike) -> bool:
        path = os.path.abspath(path)
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM exports WHERE path=?",
                                   (db_path(path),)).fetchone()
        try:
            return row is not None and row[0] == sha256_file(path)
        except OSError:
            return False

    # -- path → hash cache
    def cached_sha256(self, path: str | os.PathLike) -> str | None:
        """The cached hash if the file's size and mtime still match; never reads the file."""
        path = os.path.abspath(path)
        try:
            stat = os.stat(path)
        except OSError:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path=?", (db_path(path),)
            ).fetchone()
        if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return row[2]
        return None

    def photo_sha256(self, path: str | os.PathLike, data: bytes | None = None) -> str:
        """The content hash of a photo, from the cache when size and mtime are unchanged.
        `data`: the file's bytes when the caller has read them already (not read again)."""
        cached = self.cached_sha256(path)
        if cached:
            return cached
        path = os.path.abspath(path)
        stat = os.stat(path)
        digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256) VALUES (?,?,?,?)",
                (db_path(path), stat.st_size, stat.st_mtime_ns, digest),
            )
        return digest

    # -- maintenance
    def integrity_check(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

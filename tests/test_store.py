"""The SQLite results store: keys, round trips, resume bookkeeping, durability under SIGKILL."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from geolocsft.manifest import sha256_file
from geolocsft.store import (
    PhotoResult,
    ResultKey,
    ResultStore,
    Status,
    StoreError,
    default_store_path,
    settings_hash,
)


def make_result(n: int = 0, **overrides) -> PhotoResult:
    fields = dict(
        photo_sha256=f"{n:064x}",
        model_sha256="m" * 64,
        prompt_version="gls-v1",
        settings_hash=settings_hash({"temperature": 0.0}),
        path=f"/photos/ünï cödé {n}.jpg",
        model_name="tiny",
        latitude=48.85 + n,
        longitude=2.35,
        parse_status="ok",
        outputs_json='[{"text": "…"}]',
        analysis_json='{"conclusion": "Paris"}',
        generated_tokens=42,
        tokens_per_s=12.5,
        truth_lat=48.0,
        truth_lon=2.0,
        truth_km=95.1,
        place_city="Paris",
    )
    fields.update(overrides)
    return PhotoResult(**fields)


def test_round_trip_keeps_every_field(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        original = make_result(1)
        store.put(original)
        again = store.get(original.key)
    assert again == original
    assert again.analysis == {"conclusion": "Paris"}
    assert again.outputs == [{"text": "…"}]


def test_store_persists_across_reopen_and_uses_wal_full(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(make_result(1))
        assert store.journal_mode == "wal"
    with ResultStore(path) as store:
        assert store.count() == 1
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.integrity_check() == "ok"


def test_done_versus_error_and_every_key_part_matters(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        done = make_result(1)
        store.put(done)
        assert store.is_done(done.key)
        failed = make_result(2, status=Status.ERROR, error="x.jpg: truncated", latitude=None)
        store.put(failed)
        assert not store.is_done(failed.key)  # errors are retried on rerun
        k = done.key
        for other in (
            ResultKey("f" * 64, k.model_sha256, k.prompt_version, k.settings_hash),
            ResultKey(k.photo_sha256, "n" * 64, k.prompt_version, k.settings_hash),
            ResultKey(k.photo_sha256, k.model_sha256, "gls-v2", k.settings_hash),
            ResultKey(k.photo_sha256, k.model_sha256, k.prompt_version, settings_hash({"t": 1})),
        ):
            assert store.get(other) is None
        # The same key again replaces, never duplicates.
        store.put(make_result(1, latitude=10.0))
        assert store.count() == 2
        assert store.get(k).latitude == 10.0


def test_settings_hash_is_order_independent_and_sensitive():
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def test_photo_hash_is_cached_and_follows_changes(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"one")
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.cached_sha256(photo) is None
        first = store.photo_sha256(photo)
        assert first == sha256_file(photo)
        assert store.cached_sha256(photo) == first
        photo.write_bytes(b"two!")
        os.utime(photo, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert store.cached_sha256(photo) is None
        assert store.photo_sha256(photo) == sha256_file(photo) != first


def test_not_a_store_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="junk.sqlite"):
        ResultStore(junk)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE photos (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a geolocsft results store"):
        ResultStore(other)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer geolocsft"):
        ResultStore(path)


def test_default_store_follows_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOCSFT_DATA", str(tmp_path / "data"))
    assert default_store_path() == tmp_path / "data" / "results.sqlite"


WRITER = textwrap.dedent("""
    import sys
    from geolocsft.store import PhotoResult, ResultStore
    store = ResultStore(sys.argv[1])
    n = 0
    while True:
        store.put(PhotoResult(photo_sha256=f"{n:064x}", model_sha256="m", prompt_version="v",
                              settings_hash="s", path=f"/p/{n}.jpg", latitude=float(n % 90),
                              longitude=1.0, outputs_json="x" * 2000))
        n += 1
        if n == 5:
            print("ready", flush=True)
""")


def test_sigkill_mid_write_never_corrupts(tmp_path):
    path = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with ResultStore(path) as store:
        assert store.integrity_check() == "ok"
        rows = store.results()
        assert len(rows) >= 5
        # Every committed row is whole: one per photo, numbered without gaps.
        numbers = sorted(int(r.photo_sha256, 16) for r in rows)
        assert numbers == list(range(len(numbers)))
        assert all(r.outputs_json == "x" * 2000 for r in rows)


def test_exports_are_recognised_only_while_unchanged(tmp_path):
    export = tmp_path / "geolocsft.csv"
    export.write_text("a,b\n")
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert not store.is_our_unchanged_export(export)
        store.record_export(export)
        assert store.is_our_unchanged_export(export)
        export.write_text("a,b\nedited\n")
        assert not store.is_our_unchanged_export(export)
        export.unlink()
        assert not store.is_our_unchanged_export(export)


def test_update_path_follows_moved_content(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        row = make_result(3)
        store.put(row)
        store.update_path(row.key, "/elsewhere/renamed.jpg")
        assert store.get(row.key).path == "/elsewhere/renamed.jpg"
        assert store.count() == 1

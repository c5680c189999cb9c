"""The results store never wedges (issue 14): a write lock held by another process past the
timeout, a disk that fills mid-run, a model file replaced in place."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from geolocsft.store import PhotoResult, ResultStore, StoreError

REPO = Path(__file__).resolve().parent.parent


def row(i: int, payload: str = "") -> PhotoResult:
    return PhotoResult(f"{i:064x}", "m" * 64, "v1", "s", f"/photos/{i}.jpg",
                       latitude=1.0, longitude=2.0, outputs_json=payload or "[]")


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()  # hold the write lock until told
db.execute("ROLLBACK")
"""


def test_write_lock_held_by_another_process_is_one_error_and_the_store_recovers(tmp_path):
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        store.put(row(1))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = ResultStore(path, timeout_s=0.3)
        with pytest.raises(StoreError) as caught:
            store.put(row(2))
        message = str(caught.value)
        assert str(path) in message and "another program holds" in message
        assert "\n" not in message
        # Nothing is left locked in this process: another thread can read at once.
        seen = []
        reader = threading.Thread(target=lambda: seen.append(store.count()))
        reader.start()
        reader.join(2)
        assert seen == [1]
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(10)
    store.put(row(2))  # the same store object works once the lock is free
    assert store.count() == 2
    assert store.integrity_check() == "ok"
    store.close()


DISK_FULL = """
import resource, signal, sys
from geolocsft.store import PhotoResult, ResultStore, StoreError

path, limit = sys.argv[1], int(sys.argv[2])
store = ResultStore(path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
stored = 0
error = ""
for i in range(1000):
    try:
        store.put(PhotoResult(f"{i:064x}", "m" * 64, "v1", "s", f"/p/{i}.jpg",
                              outputs_json="x" * 20000))
        stored += 1
    except StoreError as exc:
        error = str(exc)
        break
print(stored)
print(error)
# The disk has room again (a rerun): the same store goes on from where it stopped.
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
for i in range(stored, stored + 3):
    store.put(PhotoResult(f"{i:064x}", "m" * 64, "v1", "s", f"/p/{i}.jpg"))
print(store.count())
store.close()
"""


def test_disk_full_mid_run_keeps_stored_rows_and_a_rerun_continues(tmp_path):
    path = tmp_path / "s.sqlite"
    ResultStore(path).close()
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(path), str(200_000)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    stored, error, total = done.stdout.splitlines()
    assert 0 < int(stored) < 1000
    assert error.startswith(f"{path}: cannot save: ") or error.startswith(f"{path}: cannot start")
    assert "Traceback" not in done.stderr
    assert int(total) == int(stored) + 3
    with ResultStore(path) as store:
        assert store.count() == int(stored) + 3
        assert store.integrity_check() == "ok"


def test_a_model_file_replaced_in_place_is_a_different_model(tmp_path, monkeypatch):
    from geolocsft.manifest import current_sha256, sha256_file

    monkeypatch.setenv("GEOLOCSFT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "models" / "m" / "model-Q4_K_M.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF" + b"a" * 1000)
    first = current_sha256(model)
    assert first == sha256_file(model)
    # Cached by size+mtime: an unchanged file is not read again (an unreadable file proves it).
    os.chmod(model, 0)
    if os.access(model, os.R_OK):  # root reads anyway: check the cache file instead
        assert str(model) in (tmp_path / "cache" / "file-hashes.json").read_text()
    assert current_sha256(model) == first
    os.chmod(model, 0o644)
    # Same name, same size, new content and mtime: noticed.
    stat = model.stat()
    model.write_bytes(b"GGUF" + b"b" * 1000)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert current_sha256(model) == sha256_file(model) != first


def test_engine_spec_keys_results_by_the_file_as_it_is_now(tmp_path, tiny_qwen_folder, monkeypatch):
    import shutil

    from geolocsft.engine import ModelSpec
    from geolocsft.manifest import read_manifest, sha256_file

    monkeypatch.setenv("GEOLOCSFT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen_folder, folder)
    spec = ModelSpec.from_folder(folder)
    assert spec.model_sha256 == read_manifest(folder).files[spec.gguf.name]
    with open(spec.gguf, "ab") as handle:  # replaced in place (here: grown by one byte)
        handle.write(b"\0")
    changed = ModelSpec.from_folder(folder)
    assert changed.model_sha256 == sha256_file(spec.gguf) != spec.model_sha256

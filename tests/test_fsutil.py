import subprocess
import sys
import threading
from pathlib import Path

import pytest

from geolocsft.fsutil import atomic_open, atomic_write, file_lock, read_json


def test_writes_bytes_and_text_exactly(tmp_path):
    target = tmp_path / "out.csv"
    assert atomic_write(target, b"\x00\xffraw") == target
    assert target.read_bytes() == b"\x00\xffraw"
    atomic_write(target, "a,b\r\nü,1\n")  # CSV line ends and UTF-8 kept as given
    assert target.read_bytes() == "a,b\r\nü,1\n".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_refuses_to_replace_without_force(tmp_path):
    target = tmp_path / "user.txt"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match="user.txt: exists"):
        atomic_write(target, "theirs", force=False)
    assert target.read_text() == "mine"
    atomic_write(tmp_path / "new.txt", "x", force=False)
    assert (tmp_path / "new.txt").read_text() == "x"


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_open(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("midway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no-such-folder" / "x", b"1")
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"1")  # the rename onto a folder fails; its temp is removed
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_threads_writing_one_file_never_mix(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "ab"):
            pass


class _Broken(ValueError):
    pass


def test_read_json_names_the_file_in_the_callers_error(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, "ü"]}', encoding="utf-8")
    assert read_json(good) == {"a": [1, "ü"]}
    with pytest.raises(_Broken, match=r"none.json: missing \(not a model folder\)$"):
        read_json(tmp_path / "none.json", _Broken, missing="missing (not a model folder)")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(_Broken, match=r"bad.json: not readable JSON \(Expecting"):
        read_json(tmp_path / "bad.json", _Broken)
    with pytest.raises(ValueError, match=r"bad.json: corrupt config \("):
        read_json(tmp_path / "bad.json", unreadable="corrupt config")
    with pytest.raises(_Broken, match=r": not readable JSON \(.*directory"):
        read_json(tmp_path, _Broken)


def test_file_lock_makes_another_process_wait(tmp_path):
    lock, done = tmp_path / "sub" / "x.lock", tmp_path / "child-done"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib\n"
         "from geolocsft.fsutil import file_lock\n"
         "with file_lock(sys.argv[1]):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(0.5)\n"
         "    pathlib.Path(sys.argv[2]).write_text('1')\n",
         str(lock), str(done)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with file_lock(lock):
            assert done.exists()  # we got the lock only after the child let go
    finally:
        child.wait(timeout=30)
    assert child.returncode == 0


@pytest.mark.parametrize("platform, env, data, cache", [
    ("linux", {"XDG_DATA_HOME": "/x/data", "XDG_CACHE_HOME": "/x/cache"},
     "/x/data/geolocsft", "/x/cache/geolocsft"),
    ("linux", {}, "~/.local/share/geolocsft", "~/.cache/geolocsft"),
    ("win32", {"LOCALAPPDATA": "/w/Local"}, "/w/Local/geolocsft", "/w/Local/geolocsft/Cache"),
    ("darwin", {}, "~/Library/Application Support/geolocsft", "~/Library/Caches/geolocsft"),
])
def test_user_folders_follow_the_platform(tmp_path, monkeypatch, platform, env, data, cache):
    from geolocsft import paths

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("GEOLOCSFT_DATA", "GEOLOCSFT_CACHE", "XDG_DATA_HOME", "XDG_CACHE_HOME",
                 "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(paths.sys, "platform", platform)
    home = str(tmp_path)
    assert paths._user_base("data") == Path(data.replace("~", home))
    assert paths._user_base("cache") == Path(cache.replace("~", home))
    monkeypatch.setenv("GEOLOCSFT_DATA", str(tmp_path / "mine"))
    assert paths.data_dir() == tmp_path / "mine"

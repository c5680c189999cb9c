"""Files the one way every part of geolocsft does it.

Atomic writes: write a temp file in the same folder (so the rename cannot cross file systems),
fsync it, `os.replace` it over the target. A reader then sees the old file or the new one, never
half of one, and a failed write leaves no temp file behind.
JSON reads: a missing or broken file becomes the caller's error class, naming the file.
Lock files: one process at a time builds a cached thing.
Folders: built in a temp folder beside the target, renamed into place when complete."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from pathlib import Path
from typing import IO, Iterator

# Distinct temp names for writers in one process (threads); the pid separates processes.
_serial = itertools.count()


def temp_path(path: Path) -> Path:
    """`name.tmp-<pid>-<n>` next to `path`."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{next(_serial)}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, force: bool = True) -> Iterator[IO]:
    """Open a temp file for writing; on a clean exit it is fsynced and renamed to `path`, on an
    error it is removed. Text modes write UTF-8 with no newline translation. With
    force=False an existing `path` raises FileExistsError (it may be a user's file)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    if not force and path.exists():
        raise FileExistsError(f"{path}: exists; not replacing it")
    tmp = temp_path(path)
    text = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
    try:
        with open(tmp, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, force: bool = True) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) in one step; see atomic_open."""
    with atomic_open(path, "wb", force=force) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError, *,
              missing: str = "missing", unreadable: str = "not readable JSON"):
    """The parsed JSON of `path`. A missing file raises `error("<path>: <missing>")`, an
    unreadable or invalid one `error("<path>: <unreadable> (<why>)")`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: {unreadable} ({exc})") from None


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (made if missing) for the block; another process
    asking for it waits. POSIX only (fcntl): used by build caches, not by the app."""
    import fcntl  # not on Windows; imported here so the rest of this module works there

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def build_folder(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder whole, then put it in place: yields an empty temp folder
    `.<name>.tmp-<random>` beside `final` (same file system, so the rename is atomic); on a
    clean exit it is made readable to all (0o755, like any folder) and renamed to `final`, on
    an error it is removed and nothing appears at `final`. An existing `final` raises
    FileExistsError, or with replace=True is swapped out and removed after the rename, so a
    reader never finds the folder missing or half-built."""
    import shutil
    import tempfile

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    old: Path | None = None
    try:
        yield temp
        os.chmod(temp, 0o755)  # mkdtemp makes it private
        if final.exists() or final.is_symlink():
            if not replace:
                raise FileExistsError(f"{final}: exists; not replacing it")
            old = final.with_name(f"{temp.name}-old")
            os.replace(final, old)
        os.replace(temp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)  # the swap failed half-way: put the old one back
            old = None
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

"""Files the one way every part of geolocsft does it.

Atomic writes: write a temp file in the same folder (so the rename cannot cross file systems),
created exclusively under a random name (a planted symlink cannot redirect it), fsync it,
`os.replace` it over the target, fsync the folder. A reader then sees the old file or the new
one, never half of one, and a failed write leaves no temp file behind.
JSON reads: a missing or broken file becomes the caller's error class, naming the file.
Lock files: one process at a time builds a cached thing.
Folders: built in a temp folder beside the target, renamed into place when complete."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"))


def not_a_regular_file(path: str | os.PathLike) -> str:
    """Why `path` cannot be read as a data file ("" when it can): only regular files (or
    symlinks to them) are photos or models. A FIFO named x.jpg would block a reader forever,
    a device would stream without end. Judged by stat, which never blocks."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "no such file or folder"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return kind if kind == "not a regular file" else f"{kind}, not a regular file"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (POSIX: the new directory entry survives a crash only
    once the folder itself is fsynced). A no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse it: best effort
        pass
    finally:
        os.close(fd)


def copy_file_metadata(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give `target` the mode, owner and extended attributes of `source` (for a file rewritten
    in place through a temp file). Owner and xattrs are best effort: an unprivileged user
    cannot give a file away, and some xattr namespaces (security.*) are the kernel's."""
    st = os.stat(source)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    if hasattr(os, "chown"):
        with contextlib.suppress(OSError):
            os.chown(target, st.st_uid, st.st_gid)
    if hasattr(os, "listxattr"):
        try:
            names = os.listxattr(source)
        except OSError:
            names = []
        for name in names:
            with contextlib.suppress(OSError):
                os.setxattr(target, name, os.getxattr(source, name))


def create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file in `folder` for writing `name`, created with O_CREAT|O_EXCL|O_NOFOLLOW
    and a random suffix (tempfile.mkstemp): a file or symlink someone planted under a guessable
    name can never redirect the write. Hidden (leading dot) so folder scans pass it by."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    return fd, Path(tmp)


def create_temp_dir(folder: Path, name: str) -> Path:
    """A new, empty staging folder in `folder` for building `name` (tempfile.mkdtemp: a fresh
    random name, never an existing folder or a planted symlink), with the usual umask mode so
    it can be renamed into place as is."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def folder_is_writable(folder: str | os.PathLike) -> bool:
    """Probe by writing a fresh temp file (not os.access: that lies for root, read-only mounts
    and some ACLs). A folder that does not exist yet is probed in its nearest existing parent,
    so a failed run leaves no empty folder behind."""
    probe_in = Path(folder)
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            return False
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        return False
    try:
        fd, probe = create_temp(probe_in, "geolocsft-probe")
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()
    return True


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, force: bool = True,
                like: str | os.PathLike | None = None) -> Iterator[IO]:
    """Open a temp file for writing; on a clean exit it is fsynced and renamed to `path` (and
    the folder fsynced), on an error it is removed. Text modes write UTF-8 with no newline
    translation. With force=False an existing `path` (or a symlink there) raises
    FileExistsError (it may be a user's file). A symlink at `path` is replaced, never written
    through. `like`: copy mode, owner and xattrs from that file (rewriting it in place)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    if not force and os.path.lexists(path):
        raise FileExistsError(f"{path}: exists; not replacing it")
    fd, tmp = create_temp(path.parent, path.name)
    text = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
    try:
        with open(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if like is not None:
            copy_file_metadata(like, tmp)
        else:  # mkstemp makes 0600; a new file gets the usual umask-based mode
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# The process umask, read once at import (os.umask can only be read by setting it, which is not
# safe once threads write files).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, data: bytes | str, *, force: bool = True,
                 like: str | os.PathLike | None = None) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) in one step; see atomic_open."""
    with atomic_open(path, "wb", force=force, like=like) as handle:
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
    # O_NOFOLLOW: a symlink planted at the lock's name cannot make us create a file elsewhere.
    fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with open(fd, "a") as handle:
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
        fsync_dir(temp)
        os.replace(temp, final)
        fsync_dir(final.parent)  # the rename itself survives a crash
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

"""Append-only JSON Lines files that survive being killed at any moment.

The caption run writes one line per finished image and nothing else, so a rerun can tell what is
done by reading the ids back. Each record goes out in a single `os.write` on an `O_APPEND`
descriptor followed by `fsync`: a crash leaves at most one truncated last line, which the reader
drops (and `repair` cuts off before anything new is appended after it).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from geolocsft.fsutil import atomic_write


@dataclass
class JsonlContents:
    records: list[dict] = field(default_factory=list)
    # Lines that could not be read back, as "<file>:<line>: <problem>".
    warnings: list[str] = field(default_factory=list)
    # Byte offset just past the last complete line; anything after it is a torn write.
    good_length: int = 0
    torn_tail: bool = False
    missing_newline: bool = False  # the last record is whole but has no newline after it


def read_jsonl(path: str | os.PathLike) -> JsonlContents:
    """Read every complete record; a missing file is simply empty."""
    path = Path(path)
    out = JsonlContents()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    end = data.rfind(b"\n") + 1  # 0 when there is no complete line at all
    out.good_length = end
    tail = data[end:]
    if tail.strip():
        try:  # a whole record that only lacks its newline (an edited file) is kept
            complete = isinstance(json.loads(tail), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if complete:
            out.missing_newline = True
            end = len(data)
        else:
            out.torn_tail = True
            out.warnings.append(f"{path}: last line is incomplete ({len(tail)} bytes, an "
                                "interrupted write); ignored")
    for number, raw in enumerate(data[:end].split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            out.warnings.append(f"{path}:{number}: not valid JSON ({exc}); ignored")
            continue
        if not isinstance(record, dict):
            out.warnings.append(f"{path}:{number}: not a JSON object; ignored")
            continue
        out.records.append(record)
    return out


def repair(path: str | os.PathLike) -> JsonlContents:
    """Read the file and cut off a torn last line, so appends start on a fresh line."""
    contents = read_jsonl(path)
    if contents.torn_tail:
        with open(path, "r+b") as handle:
            handle.truncate(contents.good_length)
            handle.flush()
            os.fsync(handle.fileno())
    elif contents.missing_newline:
        with open(path, "ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    return contents


class JsonlAppender:
    """Appends whole records, one write + fsync each; safe to share between threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            written = os.write(self._fd, line)
            while written < len(line):  # short writes are rare but legal
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """Replace a small JSON file (state, reports) in one step: temp file, fsync, os.replace."""
    write_bytes_atomic(path, (json.dumps(value, ensure_ascii=False, indent=2) + "\n").encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """geolocsft.fsutil.atomic_write into a folder made if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)

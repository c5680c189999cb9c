"""Build-once folders in the cache: a builder writes into a temp folder beside the final one,
which is renamed into place when complete. A lock file keeps two processes (two pytest runs,
two engineers) from building the same thing at once; the second one waits and reuses."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from geolocsft.fsutil import build_folder, file_lock


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, calling `build(temp_dir)` first if it does not exist yet. `build` fills
    the empty temp folder; on any error the temp folder is removed and nothing appears at
    `final`."""
    final = Path(final)
    if final.is_dir():
        return final
    with file_lock(final.parent / (final.name + ".lock")):
        if final.is_dir():  # another process finished while we waited
            return final
        with build_folder(final) as temp:
            build(temp)
    return final


def prune_stale(final: Path, pattern: str, max_age_s: float = 3600.0) -> None:
    """Remove siblings of `final` matching `pattern` (older builds of the same thing, made by
    older code) that have not been touched for `max_age_s`; a run still using one is spared."""
    import time

    now = time.time()
    for old in Path(final).parent.glob(pattern):
        if old == final or not old.is_dir() or ".tmp-" in old.name:
            continue
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
                Path(str(old) + ".lock").unlink(missing_ok=True)
        except OSError:
            continue

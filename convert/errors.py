"""Errors the converter raises for bad input; every message names the file and the problem."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class ConvertError(RuntimeError):
    """A conversion step failed for a reason the user can act on."""


class AdapterError(ConvertError):
    """A missing, corrupt or mismatched LoRA adapter."""


def check_writable_dir(folder: Path) -> None:
    """Fail early, with the folder's name, when we cannot create files in `folder`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ConvertError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Never replace a user's file or folder unless asked."""
    path = Path(path)
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise ConvertError(f"{path}: already exists (pass overwrite / --force to replace it)")


def remove_path(path: Path) -> None:
    import shutil

    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        os.unlink(path)

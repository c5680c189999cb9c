"""Where geolocsft keeps things on disk. Every location can be moved with an environment
variable, so tests and CI can point caches somewhere disposable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _user_base(kind: str) -> Path:
    """The platform's folder for `kind` ("cache" or "data"): XDG on Linux and other Unixes,
    %LOCALAPPDATA% on Windows (not the roaming %APPDATA%: model files are gigabytes),
    ~/Library on macOS."""
    home = Path(os.path.expanduser("~"))
    if sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "geolocsft"
        return root / "Cache" if kind == "cache" else root
    if sys.platform == "darwin":
        sub = "Caches" if kind == "cache" else "Application Support"
        return home / "Library" / sub / "geolocsft"
    if kind == "cache":
        return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "geolocsft"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "geolocsft"


def cache_dir() -> Path:
    """Rebuildable things: llama.cpp source package, tiny test models, demo model
    ($GEOLOCSFT_CACHE, else the platform's cache folder)."""
    path = Path(os.environ.get("GEOLOCSFT_CACHE") or _user_base("cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The user's geolocsft data folder: results store, exports of read-only folders, models
    outside a checkout ($GEOLOCSFT_DATA, else the platform's data folder)."""
    if os.environ.get("GEOLOCSFT_DATA"):
        return Path(os.environ["GEOLOCSFT_DATA"])
    return _user_base("data")


def models_dir() -> Path:
    """Default folder of model folders: the repository's models/ when running from a checkout,
    else the user's data folder. GEOLOCSFT_MODELS overrides both."""
    if os.environ.get("GEOLOCSFT_MODELS"):
        return Path(os.environ["GEOLOCSFT_MODELS"])
    # A frozen bundle sits in no checkout, whatever lies beside it.
    if not getattr(sys, "frozen", False) and (PROJECT_ROOT / "models" / "catalog.toml").exists():
        return PROJECT_ROOT / "models"
    return data_dir() / "models"

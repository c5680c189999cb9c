"""Where geolocsft keeps things on disk. Every location can be moved with an environment
variable, so tests and CI can point caches somewhere disposable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Rebuildable things: llama.cpp source package, tiny test models, demo model."""
    base = os.environ.get("GEOLOCSFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "geolocsft"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The user's geolocsft data folder: results store, exports of read-only folders, models
    outside a checkout ($GEOLOCSFT_DATA, else $XDG_DATA_HOME/geolocsft)."""
    if os.environ.get("GEOLOCSFT_DATA"):
        return Path(os.environ["GEOLOCSFT_DATA"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "geolocsft"


def models_dir() -> Path:
    """Default folder of model folders: the repository's models/ when running from a checkout,
    else the user's data folder. GEOLOCSFT_MODELS overrides both."""
    if os.environ.get("GEOLOCSFT_MODELS"):
        return Path(os.environ["GEOLOCSFT_MODELS"])
    # A frozen bundle sits in no checkout, whatever lies beside it.
    if not getattr(sys, "frozen", False) and (PROJECT_ROOT / "models" / "catalog.toml").exists():
        return PROJECT_ROOT / "models"
    return data_dir() / "models"

"""manifest.json of a model folder: what the model is, how it expects to be asked, and the
checksum of every file, so the app can find models and tell a complete folder from a broken one.

A model folder is `<name>/model-<QUANT>.gguf`, `<name>/mmproj-<type>.gguf`, `<name>/manifest.json`.
Core module: standard library only."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from geolocsft.fsutil import atomic_write, read_json

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A missing or unreadable manifest; the message names the file."""


@dataclass
class Manifest:
    name: str  # the folder's name when written
    family: str  # geolocsft.images.Family value: "qwen2.5-vl" or "gemma3"
    base_model: str  # Hugging Face id (or path) of the base checkpoint
    quant: str  # "Q4_K_M", "Q5_K_M", "Q8_0", "F16"
    model_file: str  # "model-<QUANT>.gguf"
    mmproj_file: str  # "mmproj-<type>.gguf"
    prompt_version: str  # geolocsft.protocol.PROMPT_VERSION the model was trained with
    image_budget: dict  # geolocsft.images.ImageBudget.to_dict()
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    adapter: str | None = None  # path of the LoRA adapter folder (None: base model as is)
    adapter_sha256: str | None = None  # sha256 of its adapter_model.safetensors
    llama_cpp_version: str = ""  # llama-cpp-python version whose converter wrote the files
    llama_cpp_commit: str | None = None  # llama.cpp commit that release vendors, if known
    created: str = ""  # ISO 8601 UTC
    notes: list[str] = field(default_factory=list)  # e.g. K-quant fallbacks
    manifest_version: int = MANIFEST_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ManifestError(f"{source}: missing fields {missing}")
        version = data.get("manifest_version", MANIFEST_VERSION)
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise ManifestError(
                f"{source}: manifest_version {version!r} is newer than this program understands "
                f"({MANIFEST_VERSION}); update geolocsft"
            )
        if not isinstance(data.get("files", {}), dict):
            raise ManifestError(f"{source}: 'files' must map file names to sha256")
        # Unknown keys come from newer writers; keep reading.
        return cls(**{k: v for k, v in data.items() if k in known})



def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    data = read_json(path, ManifestError, missing="missing (not a model folder)")
    return Manifest.from_dict(data, source=str(path))


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` atomically (temp file, fsync, rename)."""
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return atomic_write(Path(folder) / MANIFEST_NAME, text)


def checksum_files(folder: str | os.PathLike, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(Path(folder) / name) for name in names}


def verify_files(folder: str | os.PathLike) -> list[str]:
    """Problems with a model folder's files (missing, changed); an empty list means every file
    the manifest lists is present with its recorded sha256."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    for required in (manifest.model_file, manifest.mmproj_file):
        if required not in manifest.files:
            problems.append(f"{folder / MANIFEST_NAME}: {required} is not listed in 'files'")
    for name, expected in sorted(manifest.files.items()):
        path = folder / name
        if Path(name).name != name:
            problems.append(f"{folder / MANIFEST_NAME}: file name {name!r} is not a plain name")
            continue
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(f"{path}: sha256 {actual} does not match the manifest ({expected})")
    return problems

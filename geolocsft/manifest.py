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
    family: str  # a geolocsft.families name
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
    # Where a pulled build came from: {"repo", "revision", "commit" (resolved), "files"}.
    source: dict | None = None
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


HASH_CACHE_NAME = "file-hashes.json"


def _hash_cache_path() -> Path:
    from geolocsft.paths import cache_dir

    return cache_dir() / HASH_CACHE_NAME


def _load_hash_cache() -> dict:
    try:
        data = json.loads(_hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_sha256(path: str | os.PathLike, digest: str) -> None:
    """Record `digest` for `path` at its current size and modification time."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
        cache = _load_hash_cache()
        cache[path] = [st.st_size, st.st_mtime_ns, digest]
        atomic_write(_hash_cache_path(), json.dumps(cache, indent=0, sort_keys=True))
    except (OSError, UnicodeEncodeError):  # a cache: losing an entry only costs a re-hash
        pass


def current_sha256(path: str | os.PathLike) -> str:
    """The sha256 of the file as it is now: from the hash cache while its size and mtime are
    those recorded with it, else read in full (and recorded). A model file replaced in place
    under the same name thus gets its new hash, and results keyed by the old one are not
    served as done; an unchanged multi-GB model is not re-read on every start."""
    path = os.path.abspath(path)
    st = os.stat(path)
    entry = _load_hash_cache().get(path)
    if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
        return str(entry[2])
    digest = sha256_file(path)
    remember_sha256(path, digest)
    return digest


def read_manifest(folder: str | os.PathLike) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    data = read_json(path, ManifestError, missing="missing (not a model folder)")
    return Manifest.from_dict(data, source=str(path))


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` atomically (temp file, fsync, rename)."""
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return atomic_write(Path(folder) / MANIFEST_NAME, text)


def checksum_files(folder: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """sha256 of each file; recorded in the hash cache only by `current_sha256` (a staging
    folder's paths are not the final ones)."""
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

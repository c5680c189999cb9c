"""Model folders and the catalog of fetchable builds.

A model folder (`<models_dir>/<name>/`) holds `model-<QUANT>.gguf`, `mmproj-<type>.gguf` and
`manifest.json`; the converter writes them, `import_model` makes one from any GGUF + projector
pair, and `geolocsft.hub.pull` from a catalog entry. Nothing appears under a folder's final
name until it is complete: folders are built under a hidden temporary name and renamed.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from geolocsft import families, images, protocol
from geolocsft.fsutil import build_folder
from geolocsft.gguf_header import GGUFFormatError, Keys, read_gguf
from geolocsft.manifest import (
    Manifest,
    ManifestError,
    checksum_files,
    now_utc,
    read_manifest,
    remember_sha256,
    write_manifest,
)
from geolocsft.paths import PROJECT_ROOT, models_dir

CATALOG_FILE = "catalog.toml"

# GGUF general.file_type (llama_ftype) → the quantization name users know.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}


class CatalogError(ValueError):
    """A bad catalog, model folder or model file; the message names the file."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    family: str
    base_model: str
    repo: str
    model: str  # glob over the repository's files
    mmproj: str
    quant: str
    size_gb: float
    memory_gb: float
    revision: str = "main"
    license: str = ""
    gated: bool = False
    sha256_model: str = ""
    sha256_mmproj: str = ""

    def pick(self, filenames: list[str]) -> tuple[str, str]:
        """The model and projector file names among a repository's files."""
        model = [f for f in filenames if fnmatch.fnmatch(f, self.model)
                 and not fnmatch.fnmatch(f, self.mmproj)]
        mmproj = [f for f in filenames if fnmatch.fnmatch(f, self.mmproj)]
        for what, pattern, found in (("model", self.model, model),
                                     ("projector", self.mmproj, mmproj)):
            if len(found) != 1:
                raise CatalogError(
                    f"{self.repo}: expected one {what} file matching {pattern!r}, found "
                    f"{found or 'none'}")
        return model[0], mmproj[0]


def plain_folder_name(name, what: str = "model name") -> str:
    """`name` if it is one plain folder name (no separators, not hidden, not '..', no control
    characters): a catalog entry or --name can never place a folder outside the models folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or any(c in name for c in '/\\') or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or len(name.encode("utf-8", "surrogateescape")) > 255):
        raise CatalogError(f"{what} {name!r} is not a plain folder name")
    return name


def catalog_path() -> Path:
    """The catalog beside the model folders, else the one shipped with the project."""
    local = models_dir() / CATALOG_FILE
    return local if local.exists() else PROJECT_ROOT / "models" / CATALOG_FILE


def load_catalog(path: str | os.PathLike | None = None) -> list[CatalogEntry]:
    path = Path(path) if path else catalog_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: not a readable TOML catalog ({exc})") from None
    known = {f.name for f in fields(CatalogEntry)}
    entries = []
    for i, raw in enumerate(data.get("model", [])):
        try:
            entry = CatalogEntry(**{k: v for k, v in raw.items() if k in known})
            plain_folder_name(entry.name, "name")
        except TypeError as exc:
            raise CatalogError(f"{path}: model entry {i + 1}: {exc}") from None
        except CatalogError as exc:
            raise CatalogError(f"{path}: model entry {i + 1}: {exc}") from None
        entries.append(entry)
    return entries


def find_entry(name: str, entries: list[CatalogEntry] | None = None) -> CatalogEntry:
    entries = load_catalog() if entries is None else entries
    for entry in entries:
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in entries) or "none"
    raise CatalogError(f"no catalog entry named {name!r} (known: {names})")


@dataclass(frozen=True)
class LocalModel:
    folder: Path
    manifest: Manifest

    @property
    def size_bytes(self) -> int:
        return sum((self.folder / name).stat().st_size for name in self.manifest.files
                   if (self.folder / name).exists())

    @property
    def memory_need(self) -> int:
        """memory_need_bytes of this folder's model and projector."""
        m = self.manifest
        sizes = [(self.folder / n).stat().st_size if (self.folder / n).exists() else 0
                 for n in (m.model_file, m.mmproj_file)]
        return memory_need_bytes(*sizes)


def list_local(root: str | os.PathLike | None = None) -> tuple[list[LocalModel], list[str]]:
    """Every folder under `root` with a readable manifest, and a problem line for each folder
    that has a manifest but cannot be read."""
    root = Path(root) if root else models_dir()
    found, problems = [], []
    if not root.is_dir():
        return found, problems
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "manifest.json").exists():
            continue
        try:
            found.append(LocalModel(folder, read_manifest(folder)))
        except ManifestError as exc:
            problems.append(str(exc))
    return found, problems


def resolve_model(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A model folder given as a path or as a name under the models folder."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    root = Path(root) if root else models_dir()
    if (root / str(name_or_path)).is_dir():
        return root / str(name_or_path)
    known = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    hint = f"models in {root}: {', '.join(known)}" if known else f"{root} has none"
    raise CatalogError(f"{name_or_path}: no such model folder ({hint}; `geolocsft models list` "
                       "shows what can be pulled)")


def memory_need_bytes(model_bytes: int, mmproj_bytes: int, n_ctx: int = 4096) -> int:
    """A rough need for loading and running: weights, projector, and ~25 % + 0.5 GB for the KV
    cache and compute buffers at a 4k context (measured orders of magnitude, not a promise)."""
    return int((model_bytes + mmproj_bytes) * 1.25 + 0.5e9 * max(1, n_ctx / 4096))


def system_memory_bytes() -> int | None:
    """Total physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gguf_quant(path: Path) -> tuple[str, object]:
    """(quantization name, GGUF info) of a GGUF file; CatalogError when it isn't one."""
    try:
        info = read_gguf(path)
    except GGUFFormatError as exc:
        raise CatalogError(str(exc)) from None
    file_type = info.get(Keys.General.FILE_TYPE)
    return FILE_TYPES.get(file_type, f"type{file_type}" if file_type is not None else "F32"), info


def import_model(gguf: str | os.PathLike, mmproj: str | os.PathLike, *, name: str | None = None,
                 root: str | os.PathLike | None = None, family: str | None = None,
                 base_model: str | None = None, budget: images.ImageBudget | None = None,
                 prompt_version: str = protocol.PROMPT_VERSION, move: bool = False,
                 notes: list[str] | None = None, source: dict | None = None) -> Path:
    """Turn a GGUF + projector pair from anywhere into a model folder under `root`. The files
    are copied (moved with `move=True`, used by `pull` for its own downloads); an existing
    folder of the same name is never replaced. `source`: where the files came from (repo,
    revision, resolved commit), kept in the manifest."""
    from geolocsft.engine import EngineError, check_pair, family_of

    gguf, mmproj = Path(gguf), Path(mmproj)
    quant, info = gguf_quant(gguf)
    mm_type, mm_info = gguf_quant(mmproj)
    try:
        family = families.get(family).name if family else family_of(info)
        check_pair(info, mm_info, family)
    except (EngineError, families.UnknownFamilyError) as exc:
        raise CatalogError(str(exc)) from None
    name = plain_folder_name(name or gguf.stem, "--name")
    root = Path(root) if root else models_dir()
    final = root / name
    if final.exists():
        raise CatalogError(f"{final}: already exists; choose another --name or remove it")
    model_file, mmproj_file = f"model-{quant}.gguf", f"mmproj-{mm_type.lower()}.gguf"
    with build_folder(final) as staging:
        place = shutil.move if move else shutil.copyfile
        place(gguf, staging / model_file)
        place(mmproj, staging / mmproj_file)
        manifest = Manifest(
            name=name, family=family,
            base_model=base_model or str(info.get(Keys.General.NAME) or gguf.name),
            quant=quant, model_file=model_file, mmproj_file=mmproj_file,
            prompt_version=prompt_version,
            image_budget=(budget or images.default_budget(family)).to_dict(),
            files=checksum_files(staging, [model_file, mmproj_file]),
            created=now_utc(), notes=list(notes or []), source=source,
        )
        write_manifest(staging, manifest)
    remember_sha256(final / model_file, manifest.files[model_file])  # no re-read on load
    return final

"""Tiny random checkpoints for tests and the demo, built once per version of the code that
builds them and cached under `cache_dir()/tiny/<family>-<hash>/`."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
from pathlib import Path

from convert.cache import build_once, prune_stale
from convert.families import family_module, module_files
from geolocsft import families
from geolocsft.paths import cache_dir


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def factory_hash(family) -> str:
    """Changes when the family's factory code or the libraries that shape its files change."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in module_files(family)))
    for package in ("transformers", "tokenizers", "sentencepiece", "llama-cpp-python"):
        digest.update(f"{package}={_version(package)}".encode())
    return digest.hexdigest()[:12]


def tiny_model(family) -> Path:
    """Path of the tiny Hugging Face checkpoint of `family` (a geolocsft.families name)."""
    family = families.get(family)
    module = family_module(family)
    final = cache_dir() / "tiny" / f"{family.name}-{factory_hash(family)}"
    final.parent.mkdir(parents=True, exist_ok=True)
    built = build_once(final, lambda temp: module.make_tiny(temp))
    prune_stale(final, f"{family.name}-" + "?" * 12)
    return built


# The modules whose code shapes a model folder's files (the factories, the cache, the checks
# and the CLI only read or drive them). A new module of the converter that writes into a folder
# belongs here.
FOLDER_MODULES = ("build.py", "errors.py", "gguf.py", "llamacpp.py", "merge.py", "quantize.py")


def pipeline_hash(family) -> str:
    """Changes when any code that shapes a model folder of `family` changes (its own converter
    module and those it borrows from: adding a family does not rebuild the others' folders)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    sources = [root / name for name in FOLDER_MODULES]
    sources += [root / "families" / "__init__.py", *module_files(family)]
    sources.append(root.parent / "geolocsft" / "manifest.py")
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(repr(families.get(family)).encode())
    return digest.hexdigest()[:12]


def tiny_model_folder(family, quant: str = "Q8_0") -> Path:
    """A model folder (model-<QUANT>.gguf + mmproj-f16.gguf + manifest.json) of the untrained
    tiny model, built once per version of the factory and converter code."""
    from convert.build import build_model_folder

    family = families.get(family)
    ckpt = tiny_model(family)
    key = hashlib.sha256(f"{ckpt.name}/{pipeline_hash(family)}/{quant}".encode()).hexdigest()[:12]
    final = cache_dir() / "tiny" / f"{family.name}-folder-{quant}-{key}"
    name = f"tiny-{family.name}-{quant}"
    built = build_once(final, lambda temp: build_model_folder(
        temp, base=ckpt, quant=quant, check_logits=False, answer=False, name=name,
        overwrite=True, progress=None))
    prune_stale(final, f"{family.name}-folder-{quant}-" + "?" * 12)
    return built

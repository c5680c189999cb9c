"""`geolocsft models list|import|pull|verify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geolocsft import families
from geolocsft.cli import CliError


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="list, import, fetch and check model folders")
    models.add_argument("--dir", type=Path, default=None,
                        help="folder of model folders (default: GEOLOCSFT_MODELS or models/)")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="installed model folders and fetchable catalog builds")
    p.set_defaults(handler=run_list)

    p = sub.add_parser("import", help="make a model folder from a GGUF + projector pair")
    p.add_argument("gguf", type=Path, help="the language model GGUF")
    p.add_argument("mmproj", type=Path, help="the vision projector GGUF")
    p.add_argument("--name", help="folder name (default: the GGUF's file name)")
    p.add_argument("--family", choices=families.names(),
                   help="model family (default: from the GGUF's architecture)")
    p.add_argument("--base-model", help="what the model is, for the manifest")
    p.set_defaults(handler=run_import)

    p = sub.add_parser("pull", help="download a catalog build (resumable, checksummed)")
    p.add_argument("name", help="catalog name (see `geolocsft models list`)")
    p.add_argument("--endpoint", help="hub address (default: HF_ENDPOINT or the public hub)")
    p.add_argument("--ask-token", action="store_true",
                   help="prompt for an access token for gated models (default: HF_TOKEN); "
                   "never given on the command line, where other users and shell history see it")
    p.add_argument("--token", help=argparse.SUPPRESS)  # refused with a pointer to the above
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_pull)

    p = sub.add_parser("verify", help="re-check a model folder's checksums and load it")
    p.add_argument("model", help="model folder path or name")
    p.add_argument("--no-load", action="store_true", help="check checksums only")
    p.set_defaults(handler=run_verify)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def run_list(args: argparse.Namespace) -> int:
    from geolocsft import catalog

    root = args.dir or catalog.models_dir()
    installed, problems = catalog.list_local(root)
    total = catalog.system_memory_bytes()
    print(f"Installed in {root}:")
    if not installed:
        print("  (none)")
    for model in installed:
        m = model.manifest
        need = model.memory_need
        fits = "" if total is None else ("  fits" if need <= total else "  TOO BIG for this machine")
        print(f"  {model.folder.name:36s} {m.family:10s} {m.quant:7s} {_gb(model.size_bytes):>8s}  "
              f"needs ~{_gb(need)}{fits}")
    for line in problems:
        print(f"  ! {line}")
    print("\nAvailable to pull (geolocsft models pull NAME):")
    names = {m.folder.name for m in installed}
    for entry in catalog.load_catalog():
        state = "installed" if entry.name in names else ""
        fits = "" if total is None else ("fits" if entry.memory_gb * 1e9 <= total else "TOO BIG")
        print(f"  {entry.name:36s} {entry.family:10s} {entry.quant:7s} {entry.size_gb:6.1f} GB  "
              f"needs ~{entry.memory_gb:.1f} GB  {fits:7s} {state}")
    if total is not None:
        print(f"\nThis machine has {_gb(total)} of memory.")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from geolocsft import catalog

    for path in (args.gguf, args.mmproj):
        if not path.is_file():
            raise CliError(f"{path}: file not found")
    try:
        folder = catalog.import_model(args.gguf, args.mmproj, name=args.name, root=args.dir,
                                      family=args.family, base_model=args.base_model)
    except (catalog.CatalogError, OSError) as exc:
        raise CliError(str(exc)) from None
    print(f"imported into {folder}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from geolocsft import catalog, hub

    if args.token:
        raise CliError("--token: a token on the command line is visible to other users (ps) "
                       "and kept in shell history; set HF_TOKEN or use --ask-token")
    token = None
    if args.ask_token:
        import getpass

        try:
            token = getpass.getpass("Hugging Face token: ").strip() or None
        except (EOFError, KeyboardInterrupt):
            raise CliError("--ask-token: no token entered") from None

    def warn(line: str) -> None:
        print(f"geolocsft: warning: {line}", file=sys.stderr)

    try:
        entry = catalog.find_entry(args.name)
        folder = hub.pull(entry, root=args.dir, endpoint=args.endpoint, token=token,
                          progress=not args.quiet, warn=warn)
    except (catalog.CatalogError, hub.PullError) as exc:
        raise CliError(str(exc)) from None
    print(f"pulled {entry.name} into {folder}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from geolocsft import catalog, manifest

    try:
        folder = catalog.resolve_model(args.model, args.dir)
        problems = manifest.verify_files(folder)
    except (catalog.CatalogError, manifest.ManifestError) as exc:
        raise CliError(str(exc)) from None
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"checksums ok: {folder}")
    if args.no_load:
        return 0
    from geolocsft.engine import Engine, EngineError, ModelSpec

    try:
        Engine(ModelSpec.from_folder(folder)).close()
    except EngineError as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    print("loads ok")
    return 0

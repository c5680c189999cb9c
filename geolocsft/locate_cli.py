"""`geolocsft locate PATH... --model M`: geolocate photo folders offline and write the results
where people and photo tools read them. See docs/locate.md."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading
from pathlib import Path

from geolocsft.cli import CliError, extend_command
from geolocsft.workflow import COPIES_FOLDER, DEFAULT_SAMPLED_TEMPERATURE, EXPORT_FOLDER


def add_speed_options(group) -> None:
    """Engine options that change speed, never the greedy answer (docs/performance.md)."""
    group.add_argument("--parallel", type=int, default=None, metavar="N",
                       help="throughput mode: decode N photos together in one context "
                            "(default 1; try 2-4 for folders; one guess per photo)")
    group.add_argument("--gpu-layers", type=int, default=None, metavar="N",
                       help="layers offloaded to the GPU when llama.cpp was built with CUDA or "
                            "Metal (default all; 0 = CPU only)")
    group.add_argument("--jump-forward", action=argparse.BooleanOptionalAction, default=None,
                       help="decode text the answer grammar forces as one verified batch "
                            "(default on)")


def speed_kwargs(args) -> dict:
    return {"parallel": args.parallel, "n_gpu_layers": args.gpu_layers,
            "jump_forward": args.jump_forward}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "locate",
        help="geolocate photos offline and export CSV/GeoJSON/KML (and XMP/EXIF on request)",
        description="Geolocate every photo under PATH (recursive; JPEG, PNG, WebP, TIFF, HEIC) "
        "with a local model. Results go to a resumable store; a rerun skips finished photos.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders")
    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="M", help="a model folder, or a model name under the models folder")
    model.add_argument("--gguf", metavar="FILE", help="the model GGUF (with --mmproj, instead of --model)")
    model.add_argument("--mmproj", metavar="FILE", help="the vision projector GGUF")
    run = p.add_argument_group("inference")
    run.add_argument("--samples", type=int, default=1, metavar="K",
                     help="guesses per photo; K > 1 exports a consensus point and radius (default 1)")
    run.add_argument("--temperature", type=float, default=None, metavar="T",
                     help=f"sampling temperature (default 0 = greedy for one guess, "
                     f"{DEFAULT_SAMPLED_TEMPERATURE} with --samples > 1)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's)")
    run.add_argument("--ctx", type=int, default=None, help="context size in tokens")
    run.add_argument("--max-tokens", type=int, default=None, help="most tokens generated per guess")
    run.add_argument("--grammar", action=argparse.BooleanOptionalAction, default=None,
                     help="constrain output with a grammar so the answer always parses "
                     "(default: the engine's)")
    add_speed_options(run)
    out = p.add_argument_group("output")
    out.add_argument("--store", metavar="FILE", help="results store (default: the user data "
                     "folder's geolocsft/results.sqlite)")
    out.add_argument("--out", metavar="DIR", help=f"folder for geolocsft.csv/.geojson/.kml "
                     f"(default: <first PATH>/{EXPORT_FOLDER}, or the user data folder if read-only)")
    out.add_argument("--force", action="store_true",
                     help="replace existing exports, sidecar GPS and copies")
    out.add_argument("--xmp", action="store_true", help="write photo.ext.xmp sidecars (digiKam, darktable)")
    out.add_argument("--write-exif", action="store_true",
                     help="write GPS into copies of the photos under <out>/with-gps/")
    out.add_argument("--in-place", action="store_true",
                     help="with --write-exif: write into the original photos instead of copies")
    out.add_argument("--flag-km", type=float, default=None, metavar="KM",
                     help="flag photos whose own EXIF GPS is farther than KM from the prediction (default 500)")
    out.add_argument("--no-places", action="store_true", help="skip offline place names")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=handle)
    extend_command("locate", p)


# ---------------------------------------------------------------- model and folders

def resolve_model(args):
    from geolocsft.catalog import CatalogError, resolve_model
    from geolocsft.engine import EngineError, ModelSpec

    try:
        if args.gguf or args.mmproj:
            if args.model:
                raise CliError("give either --model or --gguf/--mmproj, not both")
            if not (args.gguf and args.mmproj):
                raise CliError("--gguf and --mmproj go together")
            return ModelSpec.from_files(Path(args.gguf), Path(args.mmproj))
        if not args.model:
            raise CliError("name a model: --model M (folder or name) or --gguf F --mmproj F")
        return ModelSpec.from_folder(resolve_model(args.model))
    except (CatalogError, EngineError) as exc:
        raise CliError(str(exc)) from exc


def choose_out_dir(args, first_root: Path) -> tuple[Path, str]:
    """The export folder and a message when it is not where the user would look first."""
    from geolocsft.fsutil import folder_is_writable
    from geolocsft.paths import data_dir

    if args.out:
        out = Path(args.out)
        if not folder_is_writable(out):
            raise CliError(f"{out}: cannot write exports there (read-only or not a folder)")
        return out, ""
    preferred = first_root / EXPORT_FOLDER
    if folder_is_writable(preferred):
        return preferred, ""
    tag = hashlib.sha256(str(first_root).encode("utf-8")).hexdigest()[:8]
    fallback = data_dir() / "exports" / f"{first_root.name or 'root'}-{tag}"
    if not folder_is_writable(fallback):
        raise CliError(f"{first_root} is read-only and {fallback} cannot be written either; use --out DIR")
    return fallback, f"{first_root} is read-only: writing exports to {fallback}"


# ---------------------------------------------------------------- progress bar

class ProgressBar:
    """One self-rewriting line on stderr; prints nothing when stderr is not a terminal."""

    def __init__(self, stream, enabled: bool):
        self.stream = stream
        self.enabled = enabled
        self.width = 0

    def update(self, progress) -> None:
        if not self.enabled:
            return
        from geolocsft.locate import format_eta

        total = max(progress.total, 1)
        filled = int(24 * progress.processed / total)
        bar = "#" * filled + "." * (24 - filled)
        rate = f"{progress.s_per_photo:.1f} s/photo" if progress.s_per_photo else "-- s/photo"
        name = progress.current.name if progress.current else ""
        line = (f"[{bar}] {progress.processed}/{progress.total}  {rate}  "
                f"ETA {format_eta(progress.eta_s)}  {name}")[:118]
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def clear(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def say(self, line: str) -> None:
        self.clear()
        print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the command

def handle(args) -> int:
    from geolocsft.engine import Engine, EngineError
    from geolocsft import workflow
    from geolocsft.export import DEFAULT_FLAG_KM, ExportError
    from geolocsft.locate import LocateRunner, find_photos
    from geolocsft.store import ResultStore, StoreError, default_store_path

    if args.samples < 1:
        raise CliError("--samples must be at least 1")
    if args.in_place and not args.write_exif:
        raise CliError("--in-place only makes sense with --write-exif")
    temperature = workflow.default_temperature(args.temperature, args.samples)
    flag_km = DEFAULT_FLAG_KM if args.flag_km is None else args.flag_km
    bar = ProgressBar(sys.stderr, enabled=not args.quiet and sys.stderr.isatty())

    # Our own outputs (the export folder and its EXIF-GPS copies) are never input.
    own_out = [args.out, os.path.join(args.out, COPIES_FOLDER)] if args.out else []
    items, problems = find_photos(args.paths, exclude=own_out)
    for line in problems:
        bar.say(f"geolocsft: {line}")
    if not items:
        raise CliError("no photos found in " + ", ".join(args.paths))

    # Everything that can fail cheaply fails before the model loads.
    out_dir, out_message = choose_out_dir(args, items[0].root)
    own = [out_dir, out_dir / COPIES_FOLDER]
    items = [i for i in items if not any(_inside(i.path, f) and not _inside(i.root, f) for f in own)]
    if not items:
        raise CliError(f"no photos found outside the export folder {out_dir}")
    spec = resolve_model(args)
    store_path = Path(args.store) if args.store else default_store_path()
    try:
        store = ResultStore(store_path)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    if not args.force:
        # Exports an earlier run wrote and nobody has touched since are ours to refresh.
        blocking = workflow.foreign_exports(store, out_dir)
        if blocking:
            store.close()
            raise CliError(f"{blocking[0]} exists and was not written by this store's last "
                           "export; pass --force to replace it or --out DIR")
    if out_message:
        bar.say(f"geolocsft: {out_message}")

    engine_kwargs = {k: v for k, v in {
        "n_threads": args.threads, "n_ctx": args.ctx, "max_tokens": args.max_tokens,
        "grammar": args.grammar, **speed_kwargs(args),
    }.items() if v is not None}
    # A part may run the photos elsewhere (cluster/: --ray): it sets args.backend, an object
    # with open_engine(spec, **engine_kwargs) and runner(engine, store, **LocateRunner kwargs).
    backend = getattr(args, "backend", None)
    open_engine = backend.open_engine if backend else Engine
    make_runner = backend.runner if backend else LocateRunner
    try:
        engine = open_engine(spec, **engine_kwargs)
    except EngineError as exc:
        store.close()
        raise CliError(str(exc)) from exc

    cancel = threading.Event()

    def on_sigint(signum, frame):
        if cancel.is_set():  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        cancel.set()
        bar.say("geolocsft: stopping; the photo in progress is redone next time (Ctrl-C again to abort)")

    def on_outcome(outcome):
        if outcome.action == "error":
            bar.say(f"geolocsft: {outcome.message}")

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        runner = make_runner(engine, store, samples=args.samples, temperature=temperature,
                              places=not args.no_places, on_progress=bar.update,
                              on_outcome=on_outcome, cancel=cancel)
        try:
            summary = runner.run(items)
        except StoreError as exc:  # lock held elsewhere, disk full: what is stored stays
            raise CliError(f"{exc}; the photos done so far are kept, rerun to continue") from exc
        bar.clear()
        results = summary.results
        for warning in summary.warnings:
            print(f"geolocsft: warning: {warning}", file=sys.stderr)
        try:
            written = workflow.export_results(results, out_dir, store, flag_km=flag_km)
        except ExportError as exc:
            raise CliError(str(exc)) from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        bar.clear()
        engine.close()
        store.close()
    tag_problems = _write_tags(args, summary, out_dir)

    counts = workflow.run_counts(summary, flag_km)
    skipped = counts["skipped"]
    print(f"located {counts['located']} of {len(items)} photos"
          f" ({skipped} already in the store, {counts['unparsed']} without an answer,"
          f" {counts['errors']} errors) in {summary.elapsed_s:.1f} s", file=sys.stderr)
    if counts["flagged"]:
        print(f"flagged {counts['flagged']} photos: their EXIF GPS is more than {flag_km:g} km "
              f"from the prediction (column 'flagged')", file=sys.stderr)
    print("exports: " + ", ".join(str(p) for p in written), file=sys.stderr)
    print(f"store: {store_path}", file=sys.stderr)
    if summary.cancelled:
        print("geolocsft: cancelled; rerun the same command to continue", file=sys.stderr)
        return 130
    return 1 if (counts["errors"] or tag_problems) else 0


def _inside(path: Path, folder: Path) -> bool:
    real, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return folder == real or folder in real.parents


def _write_tags(args, summary, out_dir: Path) -> int:
    """XMP sidecars and EXIF GPS; one line per photo that could not be tagged. Returns the
    number of failures (skips with a reason are reported but are not failures)."""
    if not (args.xmp or args.write_exif):
        return 0
    from geolocsft import workflow

    located = [workflow.Located(o.item.path, o.item.relative, o.result)
               for o in summary.outcomes if o.result is not None and o.result.has_point]
    tagged = []
    if args.xmp:
        tagged.append(("xmp", workflow.write_sidecars(located, force=args.force)))
    if args.write_exif:
        targets = workflow.gps_copy_targets(located, out_dir / COPIES_FOLDER, args.in_place)
        tagged.append(("exif", workflow.write_gps_copies(targets, force=args.force,
                                                         in_place=args.in_place)))
    failures = 0
    counts: dict[str, int] = {}
    for kind, outcomes in tagged:
        for kind_action, n in workflow.tag_counts(outcomes, kind).items():
            counts[kind_action] = counts.get(kind_action, 0) + n
        for tag in outcomes:
            if tag.action in ("skipped", "error"):
                reason = tag.message.removeprefix(f"{tag.path}: ")  # say the path once
                print(f"geolocsft: {tag.path}: {kind} {tag.action}: {reason}", file=sys.stderr)
                failures += tag.action == "error"
    if counts:
        print("tags: " + workflow.format_counts(counts), file=sys.stderr)
    return failures

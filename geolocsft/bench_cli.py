"""`geolocsft bench ...`: benchmark commands. `bench score` scores a prediction file in the
official GeoLocSFT evaluation format (pred_lat, pred_lon, true_lat, true_lon)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geolocsft.locate_cli import add_speed_options, speed_kwargs
from geolocsft.cli import extend_command


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="score predictions and run benchmarks",
                                  description="Benchmark commands.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")
    bench.set_defaults(handler=lambda args: bench.print_help())

    score = bench_sub.add_parser(
        "score",
        help="accuracy table for a prediction CSV",
        description="Score predictions in the official GeoLocSFT format (columns pred_lat, "
                    "pred_lon, true_lat, true_lon; extra columns allowed). Empty or "
                    "non-numeric predictions count as unparsed.",
    )
    score.add_argument("predictions", metavar="PREDICTIONS.csv")
    score.add_argument("--json", action="store_true",
                       help='print only the JSON object {"n", "parsed", "acc", "median_km", '
                            '"mean_km"} (accuracies as fractions)')
    score.add_argument("--strict", action="store_true",
                       help="count a hit when distance < radius (PIGEON, G3) instead of <= "
                            "(GeoCLIP, the default)")
    score.add_argument("--unparsed", choices=("miss", "origin"), default="miss",
                       help="unparsed rows are misses at every radius (default) or scored "
                            "as a guess of (0, 0) like G3")
    score.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                       help="bootstrap resamples for the 95%% intervals (0: none; default "
                            "%(default)s)")
    score.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    score.set_defaults(handler=run_score)

    run = bench_sub.add_parser(
        "run",
        help="run a benchmark set through a model and write a report",
        description="Geolocate a benchmark set with a local model (resumable: the results "
                    "store lives in the report folder) and write predictions.csv, report.md, "
                    "report.json and plots, beside published numbers.",
    )
    run.add_argument("--dataset", choices=("im2gps3k", "yfcc4k", "csv", "exif"), required=True)
    run.add_argument("--images", type=Path, required=True, metavar="DIR",
                     help="folder of the benchmark's photos")
    run.add_argument("--meta", type=Path, metavar="CSV",
                     help="metadata CSV (im2gps3k_places365.csv, yfcc4k's CSV, or any CSV "
                          "with image and lat/lon columns); not needed for --dataset exif")
    run.add_argument("--model", required=True, metavar="M", help="model folder or name")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="report folder (default: runs/bench-<dataset>-<model>)")
    run.add_argument("--limit", type=int, metavar="N", help="only the first N photos")
    run.add_argument("--samples", type=int, default=1, metavar="K",
                     help="guesses per photo: K > 1 reports the consensus and Oracle@K")
    run.add_argument("--temperature", type=float, default=None, metavar="T",
                     help="sampling temperature (default 0 for one guess, 0.7 for several)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads")
    run.add_argument("--max-tokens", type=int, default=None, help="most tokens per guess")
    add_speed_options(run)
    run.add_argument("--strict", action="store_true", help="hit = distance < radius")
    run.add_argument("--unparsed", choices=("miss", "origin"), default="miss")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=run_run)
    extend_command("bench run", run)

    compare = bench_sub.add_parser(
        "compare",
        help="paired comparison of two runs (e.g. a fine-tune against its zero-shot base)",
        description="Per-threshold accuracy differences of run B over run A on the photos "
                    "both answered, with an exact McNemar test (paired by photo id).",
    )
    compare.add_argument("a", type=Path, metavar="A", help="report folder or predictions CSV")
    compare.add_argument("b", type=Path, metavar="B", help="report folder or predictions CSV")
    compare.add_argument("--strict", action="store_true", help="hit = distance < radius")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(handler=run_compare)


def run_score(args: argparse.Namespace) -> int:
    from geolocsft.cli import CliError
    from geolocsft.datasets import DatasetError, read_predictions
    from geolocsft.geo import score

    if args.bootstrap < 0:
        raise CliError("--bootstrap must be 0 or more")
    try:
        predictions = read_predictions(args.predictions)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc
    for warning in predictions.warnings:
        print(f"geolocsft: warning: {warning}", file=sys.stderr)
    scores = score(predictions.rows, strict=args.strict, unparsed=args.unparsed,
                   bootstrap=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps(scores.to_json()))
    else:
        print(f"predictions: {args.predictions}")
        print(scores.format_table())
    return 0


def run_run(args: argparse.Namespace) -> int:
    import threading

    from geolocsft import bench_run
    from geolocsft.cli import CliError
    from geolocsft.datasets import DatasetError
    from geolocsft.catalog import CatalogError, resolve_model
    from geolocsft.engine import Engine, EngineError, ModelSpec
    from geolocsft.locate_cli import ProgressBar
    from geolocsft.workflow import default_temperature

    if args.samples < 1:
        raise CliError("--samples must be at least 1")
    try:
        data = bench_run.read_benchmark(args.dataset, args.meta, args.images)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc
    for warning in data.warnings:
        print(f"geolocsft: warning: {warning}", file=sys.stderr)
    samples = data.samples[: args.limit] if args.limit else data.samples
    if not samples:
        raise CliError(f"{data.source}: no usable photos")
    try:
        spec = ModelSpec.from_folder(resolve_model(args.model))
    except (CatalogError, EngineError) as exc:
        raise CliError(str(exc)) from exc
    out = args.out or Path("runs") / f"bench-{args.dataset}-{spec.name}"
    temperature = default_temperature(args.temperature, args.samples)
    # A part may run the photos elsewhere (cluster/: --ray); see locate_cli.handle.
    backend = getattr(args, "backend", None)
    try:
        options = {"n_threads": args.threads, "max_tokens": args.max_tokens, **speed_kwargs(args)}
        engine = (backend.open_engine if backend else Engine)(
            spec, **{k: v for k, v in options.items() if v is not None})
    except EngineError as exc:
        raise CliError(str(exc)) from exc
    bar = ProgressBar(sys.stderr, enabled=not args.quiet and sys.stderr.isatty())
    cancel = threading.Event()

    def on_outcome(outcome):
        if outcome.action == "error":
            bar.say(f"geolocsft: {outcome.message}")

    try:
        result = bench_run.run_benchmark(
            samples, engine, out, dataset=args.dataset, images_root=args.images,
            samples_k=args.samples, temperature=temperature, strict=args.strict,
            unparsed=args.unparsed, on_progress=bar.update, on_outcome=on_outcome,
            cancel=cancel, runner_class=backend.runner if backend else None)
    except KeyboardInterrupt:
        bar.clear()
        print("geolocsft: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    finally:
        bar.clear()
        engine.close()
    print(f"{args.dataset}: {len(samples)} photos ({result.computed} run now, "
          f"{result.skipped} from the store, {result.errors} errors)")
    print(result.scores.format_table())
    print(f"report: {result.out_dir / 'report.md'}")
    return 130 if result.cancelled else 0


def run_compare(args: argparse.Namespace) -> int:
    from geolocsft import bench_run, report
    from geolocsft.cli import CliError
    from geolocsft.datasets import DatasetError

    try:
        a, b = bench_run.errors_by_id(args.a), bench_run.errors_by_id(args.b)
        rows = report.compare(a, b, strict=args.strict)
    except (DatasetError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"A: {args.a}\nB: {args.b}\n{rows[0]['n']} photos in both\n")
    print(f"{'radius':>8}  {'A':>7}  {'B':>7}  {'B - A':>7}  {'only A':>6}  {'only B':>6}  "
          f"{'McNemar p':>9}")
    for r in rows:
        print(f"{r['km']:>5} km  {100 * r['acc_a']:6.1f}%  {100 * r['acc_b']:6.1f}%  "
              f"{100 * r['diff']:+6.1f}%  {r['only_a']:>6}  {r['only_b']:>6}  {r['p_value']:9.4f}")
    return 0

"""`geolocsft train …`: curate, caption (here) and sft (`trainer.sft_cli`).

Cheap to import: anthropic, imagehash, matplotlib and the like load inside the handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="build a fine-tune: curate photos, caption them with a teacher, LoRA SFT",
        description="The GeoLocSFT recipe: curate -> caption -> sft. See docs/training.md.")
    steps = train.add_subparsers(dest="train_step", metavar="STEP")
    train.set_defaults(handler=lambda args: train.print_help())
    _register_curate(steps)
    _register_caption(steps)
    from trainer import sft_cli

    sft_cli.register(steps)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and wrappers replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging(quiet: bool = False) -> None:
    logger = logging.getLogger("trainer")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _grid(text: str) -> tuple[int, int]:
    try:
        bands, sectors = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 18x36, got {text!r}") from None
    return bands, sectors


# ------------------------------------------------------------------ curate


def _register_curate(steps) -> None:
    from trainer import curate as c  # light: no heavy imports at its top

    p = steps.add_parser(
        "curate", help="choose N photos from a pool, spread over the globe",
        description="Pick N photos from a pool (CSV with image/lat/lon columns, or a folder of "
                    "photos with EXIF GPS) over equal-area cells, dropping unreadable, too small "
                    "and near-duplicate photos. Writes picks.csv and a coverage report.")
    p.add_argument("pool", type=Path, help="pool CSV or folder of geotagged photos")
    p.add_argument("--out", type=Path, default=Path("curated"), help="output folder (default: curated)")
    p.add_argument("-n", type=int, default=c.DEFAULT_N, help=f"how many to pick (default {c.DEFAULT_N})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=_grid, default=(c.DEFAULT_BANDS, c.DEFAULT_SECTORS),
                   help=f"equal-area latitude bands x longitude sectors (default "
                        f"{c.DEFAULT_BANDS}x{c.DEFAULT_SECTORS})")
    p.add_argument("--per-cell-cap", type=int, default=None,
                   help="at most this many picks per cell (default: no fixed cap, round-robin)")
    p.add_argument("--min-side", type=int, default=c.DEFAULT_MIN_SIDE,
                   help=f"drop photos whose shorter side is under this (default {c.DEFAULT_MIN_SIDE})")
    p.add_argument("--hash-distance", type=int, default=c.DEFAULT_HASH_DISTANCE,
                   help="perceptual-hash bits within which two photos are near-duplicates "
                        f"(default {c.DEFAULT_HASH_DISTANCE}; 0 = identical hash only)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="photos decoded in parallel (default: CPU cores, at most 8); the picks "
                        "do not depend on it")
    p.add_argument("--force", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_curate)


def _curate(args) -> int:
    from geolocsft.cli import CliError
    from geolocsft.datasets import DatasetError
    from trainer import curate as c
    from trainer.picks import PicksError, load_picks

    _setup_logging(args.quiet)
    log = logging.getLogger("trainer.curate")
    existing = c.existing_outputs(args.out)
    if existing and not args.force:
        raise CliError(f"{existing[0]} already exists; use --force to replace the outputs in {args.out}")
    try:
        settings = c.CurateSettings(n=args.n, seed=args.seed, bands=args.grid[0],
                                    sectors=args.grid[1], per_cell_cap=args.per_cell_cap,
                                    min_side=args.min_side, hash_distance=args.hash_distance)
        pool, warnings = load_picks(args.pool)
    except (PicksError, DatasetError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for warning in warnings:
        log.warning("%s", warning)

    def progress(done: int, total: int) -> None:
        if done % 100 == 0:
            log.info("picked %d of %d", done, total)

    result = c.curate(pool, settings, warnings, progress=progress, workers=max(1, args.workers))
    for ident, reason in result.skipped:
        log.info("skipped %s: %s", ident, reason)
    report = c.write_outputs(args.out, result, settings, pool)
    print(f"picked {report['picks']} of {settings.n} from {report['pool_rows_with_gps']} pool rows "
          f"({report['grid']['occupied_in_picks']} cells); skipped {len(result.skipped)}; "
          f"wrote {args.out / 'picks.csv'} and {args.out / 'coverage.md'}")
    if report["picks"] < settings.n:
        print(f"note: the pool could give only {report['picks']} picks under these settings")
    return 0


# ------------------------------------------------------------------ caption


def _register_caption(steps) -> None:
    from geolocsft import families
    from geolocsft.images import IMAGE_PRESETS
    from geolocsft.protocol import PROMPT_VERSION, PROMPTS
    from trainer import pricing, teacher

    p = steps.add_parser(
        "caption", help="write a geo-caption for every pick with a teacher model (Claude)",
        description="Ask the teacher (Claude, through the anthropic SDK; key from "
                    "ANTHROPIC_API_KEY) for a geo-caption of every pick and write the SFT "
                    "dataset as JSONL. Resumable: rerun the same command to continue.")
    p.add_argument("picks", type=Path, help="picks.csv from curate (or any pool CSV/folder)")
    p.add_argument("--out", type=Path, default=None,
                   help="dataset JSONL (default: captions.jsonl beside the picks)")
    p.add_argument("--rejects", type=Path, default=None,
                   help="rejects JSONL (default: <out>.rejects.jsonl)")
    p.add_argument("--model", default=teacher.DEFAULT_MODEL,
                   help=f"teacher model id (default {teacher.DEFAULT_MODEL})")
    p.add_argument("--base-url", default=None, help="API base URL (default: the SDK's, or ANTHROPIC_BASE_URL)")
    p.add_argument("--max-km", type=float, default=teacher.DEFAULT_MAX_KM,
                   help=f"reject answers farther than this from the truth (default {teacher.DEFAULT_MAX_KM:g})")
    p.add_argument("--attempts", type=int, default=3, help="teacher replies per image before rejecting (default 3)")
    p.add_argument("--answer-from", choices=[s.value for s in teacher.AnswerSource],
                   default=teacher.AnswerSource.TRUTH.value,
                   help="coordinates in the target's <answer>: the true GPS (default) or the teacher's")
    p.add_argument("--family", default=families.DEFAULT, choices=families.names(),
                   help=f"whose image budget the teacher's photo is prepared with (default {families.DEFAULT})")
    p.add_argument("--prompt-version", choices=sorted(PROMPTS), default=PROMPT_VERSION,
                   help=f"the student's prompt and caption format the teacher writes (default "
                        f"{PROMPT_VERSION}, the seed's; gls-c1 is the fast preset's compact one). "
                        f"Train with the same version")
    p.add_argument("--image-preset", choices=IMAGE_PRESETS, default="seed",
                   help="image budget of the photo the teacher sees: seed (default) or fast "
                        "(256 image tokens for Qwen-VL). Train with the same preset")
    p.add_argument("--image-format", choices=["jpeg", "png"], default="jpeg")
    p.add_argument("--max-tokens", type=int, default=teacher.DEFAULT_MAX_TOKENS)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--max-retries", type=int, default=4, help="SDK retries per request (default 4)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument("--max-usd", type=float, default=None,
                   help="stop starting requests once spent + in-flight estimate would pass this")
    p.add_argument("--price-input", type=float, default=None, help="$ per million input tokens")
    p.add_argument("--price-output", type=float, default=None, help="$ per million output tokens")
    p.add_argument("--est-output-tokens", type=int, default=pricing.DEFAULT_OUTPUT_TOKENS,
                   help="output tokens per image assumed by the estimate")
    p.add_argument("--retry-rejects", action="store_true", help="try earlier rejects again")
    p.add_argument("--dry-run", action="store_true", help="print the plan and cost; call nothing")
    p.add_argument("--batch", action="store_true", help="use the Message Batches API (half price)")
    p.add_argument("--state", type=Path, default=None,
                   help="batch state file (default: <out>.batch-state.json)")
    p.add_argument("--poll-seconds", type=float, default=30.0)
    p.add_argument("--batch-max-mb", type=float, default=200.0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_caption)


def _caption(args) -> int:
    from geolocsft.cli import CliError
    from geolocsft.datasets import DatasetError
    from trainer import captions as cap
    from trainer.caption_plan import ContractMismatch, load_progress, make_plan
    from trainer.picks import PicksError, load_picks
    from trainer.teacher import MissingApiKey, api_key_from_env

    _setup_logging(args.quiet)
    log = logging.getLogger("trainer.captions")
    try:
        settings = cap.CaptionSettings(
            model=args.model, base_url=args.base_url, max_km=args.max_km, attempts=args.attempts,
            concurrency=args.concurrency, max_retries=args.max_retries, timeout=args.timeout,
            max_tokens=args.max_tokens, family=args.family, image_format=args.image_format,
            prompt_version=args.prompt_version, image_preset=args.image_preset,
            answer_source=args.answer_from, max_usd=args.max_usd, price_input=args.price_input,
            price_output=args.price_output, est_output_tokens=args.est_output_tokens,
            retry_rejects=args.retry_rejects, poll_seconds=args.poll_seconds,
            batch_max_mb=args.batch_max_mb)
        picks, warnings = load_picks(args.picks)
    except (PicksError, DatasetError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for warning in warnings:
        log.warning("%s", warning)
    if args.out is not None:
        out = args.out
    elif args.picks.is_dir():
        out = args.picks / "captions.jsonl"
    else:
        out = args.picks.with_name("captions.jsonl")
    rejects = args.rejects or cap.rejects_path_for(out)
    progress = load_progress(out, rejects)
    state = args.state or cap.state_path_for(out)
    try:
        progress.check_contract(settings.prompt_version, settings.image_preset)
        if args.batch and state.exists():
            from trainer.caption_batch import BatchState

            BatchState(state, settings.model, settings.prompt_version, settings.image_preset)
    except ValueError as exc:  # another contract, model or an unreadable state
        raise CliError(str(exc)) from None
    try:
        plan = make_plan(picks, progress, settings, batch=args.batch)
    except ValueError as exc:  # a price override without its pair
        raise CliError(str(exc)) from None
    for line in plan.lines(settings.model):
        print(line)
    print(f"contract: prompt version {settings.prompt_version}, image preset "
          f"{settings.image_preset} (train sft with the same)")
    if args.batch and state.exists():
        print(f"resuming the batches recorded in {state} (already paid for; the estimate "
              "above counts their images again)")
    if settings.max_usd is not None and plan.price is None:
        raise CliError(f"--max-usd needs a price for {settings.model}: give --price-input and --price-output")
    if args.dry_run:
        print("dry run: nothing was sent")
        return 0
    if not plan.pending:
        print(f"nothing to do: {out} is complete")
        return 0
    try:
        api_key_from_env()
    except MissingApiKey as exc:
        raise CliError(str(exc)) from None
    try:
        summary = cap.caption(picks, out, settings, rejects=rejects, batch=args.batch,
                              state=state)
    except cap.Fatal as exc:
        raise CliError(f"teacher: {exc}") from None
    except ContractMismatch as exc:  # the files changed since the check above
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"interrupted: everything finished is in {out}; rerun the same command to continue",
              file=sys.stderr)
        raise
    for line in summary.lines():
        print(line)
    print(f"dataset: {out}; rejects: {rejects}")
    return 0

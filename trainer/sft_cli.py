"""`geolocsft train sft`: LoRA SFT from the command line.

Every field of `trainer.sft_config.SFTConfig` is a flag (`lora_rank` -> `--lora-rank`); flags
override the config file, which overrides the preset. Nothing heavy is imported here.
"""

from __future__ import annotations

import argparse
import json

from trainer.sft_config import FIELD_TYPES, PRESETS, SFTConfig

HELP = {
    "model": "base model folder (Hugging Face format)",
    "data": "SFT JSONL from `geolocsft train caption`",
    "output_dir": "run folder: adapter/, checkpoints/, log.jsonl, tensorboard/, eval/",
    "resume": "checkpoint folder, or 'latest'",
    "train_projector": "also train the vision-to-text projector in full (off by default)",
    "expect_world_size": "stop unless exactly this many processes were launched",
    "eval_fraction": "share of the data held out for the end-of-run evaluation (0: none)",
    "prompt_version": "prompt version the data was captioned with and the model will be "
                      "prompted with (gls-c1: the fast preset's compact caption)",
    "image_preset": "named image budget: seed, or fast (256 image tokens)",
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = SFTConfig()
    for name, kind in FIELD_TYPES.items():
        flag = "--" + name.replace("_", "-")
        text = HELP.get(name, "")
        shown = f"{text} (seed preset: {getattr(defaults, name)!r})".strip()
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=shown)
        else:
            convert = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, dest=name, type=convert, default=None, help=shown)


def register(train_subparsers) -> None:
    parser = train_subparsers.add_parser(
        "sft",
        help="LoRA SFT of Qwen2.5-VL or Gemma 3 on geo-captions",
        description="LoRA SFT on the SFT JSONL. Values come from the preset, then --config, "
        "then flags. Multi-GPU: accelerate launch --config_file trainer/configs/<...>.yaml "
        "-m trainer.sft_cli ... (see docs/training.md).",
    )
    parser.add_argument("--preset", choices=PRESETS, default="seed",
                        help="seed: the paper (rank 32, 1 epoch); official: the released code; "
                             "fast: the seed's recipe with prompt gls-c1 and image preset fast")
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="TOML file of settings (top level or under [sft])")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and stop")
    add_config_flags(parser)
    parser.set_defaults(handler=run)


def overrides_from(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in FIELD_TYPES if getattr(args, name) is not None}


def run(args: argparse.Namespace) -> int:
    from geolocsft.cli import CliError
    from trainer.collate import SFTDataError
    from trainer.lora import LoraTargetError
    from trainer.sft_config import ConfigError, build_config

    try:
        config = build_config(args.preset, args.config_file, overrides_from(args))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from trainer.sft import SFTError, train

    try:
        summary = train(config)
    except (SFTError, SFTDataError, LoraTargetError, ConfigError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"adapter": f"{config.output_dir}/adapter", "steps": summary["steps"],
                      "final_loss": summary["final_loss"], "eval": summary["eval"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `accelerate launch -m trainer.sft_cli` and `torchrun -m trainer.sft_cli`:
    the same flags as `geolocsft train sft`."""
    import sys

    from geolocsft.cli import CliError

    parser = argparse.ArgumentParser(prog="trainer.sft_cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["sft", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except CliError as exc:
        print(f"trainer.sft_cli: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

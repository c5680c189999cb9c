"""LoRA SFT configuration: plain values, in three layers.

    defaults of `SFTConfig`  <  preset (trainer/configs/<preset>.toml)  <  --config FILE  <  flags

Presets: `seed` (the paper), `official` (the released code's hyper-parameters), `fast` (the
seed's recipe under the fast preset's contract: prompt gls-c1, image preset fast).

Every field is a command-line flag of `geolocsft train sft` (`lora_rank` -> `--lora-rank`), so
any value of a preset or config file can be overridden for one run. The dataclass defaults are
the `seed` preset (the paper), and a test keeps `configs/seed.toml` equal to them.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from geolocsft import families
from geolocsft.protocol import PROMPT_VERSION

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRESETS = ("seed", "official", "fast")


class ConfigError(ValueError):
    """A bad preset, config file or value; the message names the file or the key."""


@dataclass
class SFTConfig:
    # --- what to train on -------------------------------------------------------------------
    model: str = ""  # base model: local folder (or a hub id already in the local cache)
    data: str = ""  # SFT JSONL written by `geolocsft train caption`
    output_dir: str = "runs/sft"
    family: str = ""  # a geolocsft.families name; empty: read from the model's config.json
    allow_prompt_mismatch: bool = False  # train on records from another prompt version
    # The contract the model is trained for, recorded in training_record.json and from there
    # in the model folder's manifest, which inference follows (train = infer): the prompt
    # version the records must be written with, and the named image budget ("seed": the
    # paper's; "fast": 256 image tokens, see geolocsft.images.preset_budget).
    prompt_version: str = PROMPT_VERSION
    image_preset: str = "seed"
    # Image budget; 0 keeps the preset's budget from geolocsft.images (what inference uses).
    max_pixels: int = 0
    min_pixels: int = 0

    # --- held-out evaluation at the end of the run -------------------------------------------
    eval_data: str = ""  # a separate JSONL; empty: hold out eval_fraction of `data`
    eval_fraction: float = 0.02  # divergence from the paper (it trains on all ~2.7k): 0 = off
    eval_max_samples: int = 200
    eval_max_new_tokens: int = 768

    # --- LoRA ---------------------------------------------------------------------------------
    lora_rank: int = 32  # paper: rank 32
    lora_alpha: int = 64  # our choice: alpha = 2 x rank, the same ratio as the official code
    lora_dropout: float = 0.05  # our choice; the paper does not say
    # Also train the vision-to-text projector (Qwen's merger, Gemma's multi_modal_projector)
    # in full, through peft's modules_to_save. Off in both presets.
    train_projector: bool = False

    # --- optimisation -------------------------------------------------------------------------
    epochs: int = 1  # paper: one epoch suffices
    max_steps: int = 0  # > 0 stops after this many optimizer steps (tests, smoke runs)
    batch_size: int = 2  # per device
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4  # our choice for rank-32 LoRA; the paper does not say
    lr_scheduler: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 20
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 on a bf16 GPU, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: bool = False
    seed: int = 0

    # --- distributed --------------------------------------------------------------------------
    # 0: expect the WORLD_SIZE the launcher set (1 without a launcher). The run stops if the
    # processes it finds differ: accelerate quietly runs every rank alone otherwise.
    expect_world_size: int = 0

    # --- checkpoints and logs -----------------------------------------------------------------
    save_every_steps: int = 100  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    resume: str = ""  # a checkpoint folder, or "latest" (newest in output_dir/checkpoints)
    log_every_steps: int = 1
    tensorboard: bool = True
    overwrite: bool = False  # replace an adapter already in output_dir

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        checks = [
            (self.lora_rank > 0, "lora_rank must be > 0"),
            (self.lora_alpha > 0, "lora_alpha must be > 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (self.epochs > 0 or self.max_steps > 0, "epochs or max_steps must be > 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.grad_accum_steps > 0, "grad_accum_steps must be > 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.lr_scheduler in ("cosine", "linear", "constant"),
             "lr_scheduler must be cosine, linear or constant"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
            (0.0 <= self.eval_fraction < 1.0, "eval_fraction must be in [0, 1)"),
            (self.family in ("", *families.names()),
             f"family must be one of {', '.join(families.names())}"),
            (self.keep_checkpoints > 0, "keep_checkpoints must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from geolocsft.images import IMAGE_PRESETS
        from geolocsft.protocol import PROMPTS

        if self.prompt_version not in PROMPTS:
            raise ConfigError(f"prompt_version must be one of {', '.join(sorted(PROMPTS))}, "
                              f"got {self.prompt_version!r}")
        if self.image_preset not in IMAGE_PRESETS:
            raise ConfigError(f"image_preset must be one of {', '.join(IMAGE_PRESETS)}, got "
                              f"{self.image_preset!r}")


FIELD_TYPES = {f.name: f.type for f in fields(SFTConfig)}


def coerce(key: str, value: Any, source: str) -> Any:
    """Convert a TOML or command-line value to the field's type; errors name the source."""
    if key not in FIELD_TYPES:
        known = ", ".join(sorted(FIELD_TYPES))
        raise ConfigError(f"{source}: unknown setting {key!r} (known: {known})")
    kind = FIELD_TYPES[key]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Settings may sit at the top level or under [sft], so one file can hold several parts.
    table = dict(table.get("sft", table))
    return {key: coerce(key, value, str(path)) for key, value in table.items()}


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return read_toml(CONFIG_DIR / f"{name}.toml")


def build_config(
    preset: str = "seed",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> SFTConfig:
    """The layered config: preset, then the config file, then explicit overrides (flags)."""
    values: dict[str, Any] = {}
    values.update(preset_values(preset))
    if config_file:
        values.update(read_toml(Path(config_file)))
    for key, value in (overrides or {}).items():
        values[key] = coerce(key, value, "command line")
    config = SFTConfig(**values)
    config.validate()
    return config

"""LoRA SFT of a vision-language model on geo-captions: one loop, top to bottom.

    data (JSONL) -> checks -> held-out split -> base model + LoRA (language model only)
    -> AdamW + schedule -> steps (grad accumulation, clipping) -> logs, checkpoints
    -> adapter + processor + training record -> greedy evaluation on the held-out split

Runs alone (`geolocsft train sft ...`) or under `accelerate launch` / `torchrun` on several
processes (DDP; FSDP for the 27B through an accelerate config). The data order is ours, not a
DataLoader's: a seeded permutation per epoch, cut into global batches, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from geolocsft import __version__
from geolocsft import families
from geolocsft.families import FamilySpec
from geolocsft.images import ImageBudget, preset_budget
from trainer.collate import SFTCollator, load_records, split_holdout
from trainer.jsonl import write_json_atomic
from trainer.lora import apply_lora, family_from_model_type
from trainer.loss import next_token_loss
from trainer.sft_config import SFTConfig

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
RECORD_NAME = "training_record.json"


class SFTError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def log(message: str) -> None:
    print(f"[sft] {message}", file=sys.stderr, flush=True)


# --- the model, its family and its image budget ----------------------------------------------

def read_family(cfg: SFTConfig) -> FamilySpec:
    if cfg.family:
        return families.get(cfg.family)
    from transformers import AutoConfig

    if (os.path.isabs(cfg.model) or cfg.model.startswith(".")) and not Path(cfg.model).is_dir():
        raise SFTError(f"{cfg.model}: base model folder not found")
    try:  # a local folder, or a hub id already in the local cache
        model_type = AutoConfig.from_pretrained(cfg.model).model_type
    except (OSError, ValueError) as exc:
        raise SFTError(f"{cfg.model}: cannot read the model's config ({exc})") from None
    return family_from_model_type(model_type, cfg.model)


def image_budget(family, processor: Any, cfg: SFTConfig) -> ImageBudget:
    """The budget of the configured image preset (what inference uses), never more than the
    checkpoint's processor accepts (tiny test models have tiny processors), unless the config
    sets pixels explicitly."""
    family = families.get(family)
    image_processor = processor.image_processor
    size = getattr(image_processor, "size", None) or {}
    default = preset_budget(family, cfg.image_preset)
    resize = family.image.resize
    if resize == "square":
        side = size.get("height") or default.fixed_side
        return ImageBudget(family.name, fixed_side=int(side))
    if resize == "fit":  # the processor states its budget in tokens
        tokens = getattr(image_processor, "max_soft_tokens", None)
        processor_max = tokens * default.factor ** 2 if tokens else default.max_pixels
        max_pixels = cfg.max_pixels or min(default.max_pixels, processor_max)
        return ImageBudget(family.name, max_pixels=int(max_pixels), factor=default.factor)
    max_pixels = cfg.max_pixels or min(default.max_pixels,
                                       size.get("longest_edge") or default.max_pixels)
    min_pixels = cfg.min_pixels or max(default.min_pixels, size.get("shortest_edge") or 0)
    return ImageBudget(family.name, max_pixels=int(max_pixels),
                       min_pixels=int(min(min_pixels, max_pixels)), factor=default.factor)


def choose_dtype(cfg: SFTConfig):
    import torch

    if cfg.precision == "bf16" or (
        cfg.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return torch.float32


def load_model(cfg: SFTConfig, dtype):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype)
    model.config.use_cache = False  # no KV cache while training (and required with checkpointing)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs and LoRA, no input-grad hooks.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    return model


# --- processes ------------------------------------------------------------------------------

def make_accelerator(cfg: SFTConfig, dtype):
    """An Accelerator that really spans the launched processes. Without a GPU accelerate must be
    told cpu=True, or every rank quietly trains alone; we check the count either way."""
    import torch
    from accelerate import Accelerator

    use_cpu = not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=use_cpu, mixed_precision="bf16" if dtype == torch.bfloat16 else "no"
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    expected = cfg.expect_world_size or launched
    if accelerator.num_processes != expected:
        raise SFTError(
            f"expected {expected} training processes but accelerate set up "
            f"{accelerator.num_processes} (distributed type {accelerator.distributed_type}); "
            f"check the launcher and the accelerate config"
        )
    return accelerator


# --- data order -----------------------------------------------------------------------------

def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def step_indices(order: list[int], step_in_epoch: int, global_batch: int) -> list[int]:
    """The samples of one optimizer step. The last step of an epoch is filled up from the start
    of the epoch's order (as DistributedSampler pads), so every process always gets a full share
    and DDP never waits on a rank with nothing to do."""
    start = step_in_epoch * global_batch
    picked = order[start:start + global_batch]
    while len(picked) < global_batch:
        picked += order[: global_batch - len(picked)]
    return picked


def micro_batches(indices: list[int], rank: int, world: int, batch_size: int) -> list[list[int]]:
    mine = indices[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


# --- checkpoints ----------------------------------------------------------------------------

def rng_state() -> dict:
    """Every RNG's state as tensors, ints, strings and tuples only, so a checkpoint loads with
    torch.load(weights_only=True): a numpy array would need the full unpickler."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, model, optimizer, scheduler, run_dir: Path, state: dict,
                    keep: int) -> Path:
    """checkpoints/step-NNNNNN: trainable weights, per-rank optimizer and RNG, scheduler, state.
    Written into a temporary folder and renamed, so a crash never leaves half a checkpoint."""
    import torch
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINTS
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-step-{state['step']:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    torch.save(optimizer.state_dict(), tmp / f"optimizer-rank{rank}.pt")
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    accelerator.wait_for_everyone()
    names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    full = accelerator.get_state_dict(model)  # every rank takes part (gathers under FSDP)
    if accelerator.is_main_process:
        weights = {n: t.detach().to("cpu").contiguous() for n, t in full.items() if n in names}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json_atomic(tmp / "state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    if resume == "latest":
        found = sorted((run_dir / CHECKPOINTS).glob("step-*"))
        if not found:
            raise SFTError(f"{run_dir / CHECKPOINTS}: no checkpoint to resume from")
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise SFTError(f"{path}: not a checkpoint folder (no state.json)")
    return path


def load_checkpoint(accelerator, model, optimizer, scheduler, path: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        raise SFTError("resuming under FSDP is not supported yet: the checkpoint holds full "
                       "weights and per-rank optimizer shards that need FSDP state-dict loading")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state["world_size"] != accelerator.num_processes:
        raise SFTError(
            f"{path}: written by {state['world_size']} processes, resumed with "
            f"{accelerator.num_processes}; the data order and optimizer shards need the same count"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(accelerator.unwrap_model(model).named_parameters())
    missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise SFTError(f"{path}: trainable weights do not match this model: {missing[:5]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    rank = accelerator.process_index
    optimizer.load_state_dict(load_tensors_only(path / f"optimizer-rank{rank}.pt"))
    scheduler.load_state_dict(load_tensors_only(path / "scheduler.pt"))
    state["rng"] = load_tensors_only(path / f"rng-rank{rank}.pt")
    return state


def load_tensors_only(path: Path):
    """torch.load with weights_only=True: tensors and plain containers, never arbitrary
    objects (a checkpoint folder someone else made could run code when unpickled)."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SFTError(f"{path}: not loading this checkpoint file: it holds more than tensors "
                       f"and plain values ({first[:200]})") from None
    except OSError as exc:
        raise SFTError(f"{path}: cannot read ({exc.strerror or exc})") from None


# --- the record written beside the adapter --------------------------------------------------

def data_fingerprint(data_path: Path, records: list) -> str:
    """sha256 over the JSONL and, in order, every kept image's bytes."""
    digest = hashlib.sha256(Path(data_path).read_bytes())
    for record in records:
        digest.update(record.id.encode())
        with open(record.image, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "geolocsft": __version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


def save_adapter(accelerator, model, processor, adapter_dir: Path, base_model: str) -> None:
    """peft's save_pretrained (adapter_config.json records the base model path) plus the
    processor and chat template, so the converter's merge reads base + this folder alone.
    Written next to the target and renamed into place."""
    state_dict = accelerator.get_state_dict(model)  # gathers shards under FSDP
    if not accelerator.is_main_process:
        return
    tmp = adapter_dir.with_name(f"{adapter_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.peft_config["default"].base_model_name_or_path = base_model
    unwrapped.save_pretrained(tmp, state_dict=state_dict)
    processor.save_pretrained(tmp)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(tmp, adapter_dir)


# --- the run --------------------------------------------------------------------------------

def check_output_dir(run_dir: Path, cfg: SFTConfig) -> None:
    if (run_dir / ADAPTER).exists() and not (cfg.overwrite or cfg.resume):
        raise SFTError(f"{run_dir / ADAPTER} already exists; pass --overwrite to replace it "
                       f"or choose another --output-dir")
    if list((run_dir / CHECKPOINTS).glob("step-*")) and not (cfg.resume or cfg.overwrite):
        raise SFTError(f"{run_dir / CHECKPOINTS} holds checkpoints; pass --resume latest to "
                       f"continue, --overwrite to start over, or another --output-dir")


def train(cfg: SFTConfig) -> dict:
    """Run one SFT job; returns the summary also stored in the training record."""
    import torch
    from accelerate.utils import DistributedType
    from transformers import AutoProcessor, get_scheduler

    cfg.validate()
    if not cfg.model or not cfg.data:
        raise SFTError("both a base model (--model) and SFT data (--data) are required")
    run_dir = Path(cfg.output_dir).resolve()
    dtype = choose_dtype(cfg)
    accelerator = make_accelerator(cfg, dtype)
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    check_output_dir(run_dir, cfg)
    if is_main and cfg.overwrite and not cfg.resume:
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    # Data: checked once, split deterministically; every process computes the same lists.
    family = read_family(cfg)
    processor = AutoProcessor.from_pretrained(cfg.model)
    budget = image_budget(family, processor, cfg)
    records, report = load_records(cfg.data, budget, cfg.allow_prompt_mismatch,
                                   cfg.prompt_version, cfg.image_preset)
    if is_main:
        log(report.summary())
        write_json_atomic(run_dir / "data_report.json", report.to_dict())
    if cfg.eval_data:
        train_records = records
        eval_records, eval_report = load_records(cfg.eval_data, budget, cfg.allow_prompt_mismatch,
                                                 cfg.prompt_version, cfg.image_preset)
        if is_main:
            log(eval_report.summary())
    else:
        train_records, eval_records = split_holdout(records, cfg.eval_fraction, cfg.seed)
    # The cap limits evaluation time only; it never moves records back into training.
    eval_records = eval_records[: cfg.eval_max_samples or None]
    collator = SFTCollator(processor, family, budget)

    # Model: base weights frozen, LoRA on the language model's projections only.
    torch.manual_seed(cfg.seed)  # the same LoRA initialisation on every process
    model = load_model(cfg, dtype)
    model, targets = apply_lora(model, family, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                cfg.train_projector)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    model = accelerator.prepare(model)

    # Optimiser and schedule over the whole run.
    global_batch = cfg.batch_size * world * cfg.grad_accum_steps
    steps_per_epoch = math.ceil(len(train_records) / global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:  # a cap (or, with epochs = 0, the length of the run)
        total_steps = min(total_steps, cfg.max_steps) if total_steps else cfg.max_steps
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    optimizer = accelerator.prepare(optimizer)
    schedule = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=total_steps)

    step = 0
    if cfg.resume:
        checkpoint = find_checkpoint(run_dir, cfg.resume)
        state = load_checkpoint(accelerator, model, optimizer, scheduler, checkpoint)
        ours = {"global_batch": global_batch, "n_train": len(train_records), "seed": cfg.seed}
        differ = {k: (state[k], v) for k, v in ours.items() if state[k] != v}
        if differ:
            raise SFTError(f"{checkpoint}: the data order would differ from the interrupted "
                           f"run (checkpoint vs now: {differ}); resume with the same data, "
                           f"batch size, accumulation, process count and seed")
        step = state["step"]
        set_rng_state(state["rng"])
        if is_main:
            log(f"resumed from {checkpoint} at step {step}")
    else:
        # Dropout differs between processes (as it would between GPUs); LoRA init does not.
        torch.manual_seed(cfg.seed + 1 + rank)
        random.seed(cfg.seed + rank)

    writer = None
    if is_main and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
    log_path = run_dir / "log.jsonl"
    if is_main:
        log(f"{family.name}: {len(targets)} LoRA targets, {n_trainable:,} of {n_total:,} "
            f"parameters trainable; {len(train_records)} train / {len(eval_records)} held out; "
            f"{world} process(es), global batch {global_batch}, {total_steps} steps, "
            f"{str(dtype).removeprefix('torch.')}")

    # The loop: one optimizer step per global batch.
    device = accelerator.device
    model.train()
    losses: list[float] = []
    started = time.time()
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(train_records), cfg.seed, epoch)
        chunks = micro_batches(step_indices(order, step_in_epoch, global_batch), rank, world,
                               cfg.batch_size)
        step_loss = torch.zeros((), device=device)
        n_tokens = 0
        for i, chunk in enumerate(chunks):
            batch = collator([train_records[j] for j in chunk])
            n_tokens += int((batch["labels"] != -100).sum())
            batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                     for k, v in batch.items()}
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with sync:
                with accelerator.autocast():
                    loss = next_token_loss(model, batch) / len(chunks)
                accelerator.backward(loss)
            step_loss += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        mean_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        losses.append(mean_loss)
        if is_main and (step % cfg.log_every_steps == 0 or step == total_steps):
            entry = {"step": step, "epoch": epoch, "loss": mean_loss,
                     "lr": lr, "grad_norm": float(grad_norm),
                     "tokens": n_tokens, "elapsed_s": round(time.time() - started, 3)}
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
            if writer:
                for key in ("loss", "lr", "grad_norm"):
                    writer.add_scalar(f"train/{key}", entry[key], step)
        if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < total_steps:
            save_checkpoint(accelerator, model, optimizer, scheduler, run_dir,
                            {"step": step, "world_size": world, "global_batch": global_batch,
                             "n_train": len(train_records), "seed": cfg.seed},
                            cfg.keep_checkpoints)

    # Adapter, processor and the training record; then the held-out evaluation.
    adapter_dir = run_dir / ADAPTER
    base_model = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
    save_adapter(accelerator, model, processor, adapter_dir, base_model)
    summary: dict[str, Any] = {
        "config": cfg.to_dict(), "family": family.name, "base_model": base_model,
        # The contract the converter copies into the manifest (inference follows it).
        "prompt_version": cfg.prompt_version, "image_preset": cfg.image_preset,
        "image_budget": budget.to_dict(),
        "data": {"path": str(Path(cfg.data).resolve()),
                 "sha256": data_fingerprint(Path(cfg.data), records) if is_main else "",
                 "records": report.kept, "skipped": len(report.skipped),
                 "train": len(train_records), "held_out": len(eval_records)},
        "lora_targets": len(targets), "trainable_parameters": n_trainable,
        "world_size": world, "global_batch": global_batch, "steps": step,
        "dtype": str(dtype).removeprefix("torch."), "final_loss": losses[-1] if losses else None,
        "git_revision": git_revision(), "versions": versions(),
        "train_seconds": round(time.time() - started, 1), "eval": None,
    }
    if is_main:
        write_json_atomic(adapter_dir / RECORD_NAME, summary)
        if writer:
            writer.close()
    accelerator.wait_for_everyone()  # the adapter is complete before any process leaves

    # Evaluation on the main process alone; the others finish now rather than wait at a
    # barrier that could outlast the collective timeout on a long evaluation.
    if eval_records and accelerator.distributed_type == DistributedType.FSDP:
        eval_records = []  # generate() on one rank would wait forever for the other shards
        if is_main:
            log("held-out evaluation skipped under FSDP: merge the adapter and run "
                "`geolocsft bench` on the held-out set instead")
    if is_main and eval_records:
        from trainer.evaluate import evaluate

        summary["eval"] = evaluate(accelerator.unwrap_model(model), processor, eval_records,
                                   budget, run_dir / "eval", cfg.eval_max_new_tokens)
        log(f"held-out ({len(eval_records)}): acc@25km {summary['eval']['acc']['25']:.3f}, "
            f"parsed {summary['eval']['parsed']}/{summary['eval']['n']}")
        write_json_atomic(adapter_dir / RECORD_NAME, summary)
    accelerator.end_training()
    return summary


__all__ = ["SFTError", "train", "epoch_order", "step_indices", "micro_batches"]

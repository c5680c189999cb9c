"""SFT settings (presets < config file < flags), the `train sft` command line, the data order,
and LoRA target selection on the real tiny models."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from trainer.sft_config import (CONFIG_DIR, ConfigError, SFTConfig, build_config,
                                preset_values)


def test_seed_preset_file_equals_the_dataclass_defaults():
    defaults = SFTConfig()
    values = preset_values("seed")
    assert values, "seed.toml is empty"
    for key, value in values.items():
        assert getattr(defaults, key) == value, key
    assert (defaults.lora_rank, defaults.epochs) == (32, 1)  # the paper


def test_official_preset_is_the_released_recipe():
    cfg = build_config("official")
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.0)
    assert (cfg.learning_rate, cfg.lr_scheduler, cfg.warmup_steps) == (2e-5, "cosine", 20)
    assert (cfg.epochs, cfg.batch_size) == (3, 2)


def test_layers_config_file_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[sft]\nlora_rank = 4\nlearning_rate = 3e-4\ntrain_projector = true\n')
    cfg = build_config("official", path, {"learning_rate": "5e-5", "epochs": "2"})
    assert cfg.lora_rank == 4 and cfg.train_projector is True  # from the file
    assert cfg.learning_rate == 5e-5 and cfg.epochs == 2  # flags win
    assert cfg.lora_alpha == 32  # still the preset's


@pytest.mark.parametrize("content, message", [
    ("lora_rnak = 4\n", "unknown setting 'lora_rnak'"),
    ("lora_rank = 'four'\n", "lora_rank: invalid literal"),
    ("epochs = 1.5\n", "not an integer"),
    ("lora_rank = [\n", "not valid TOML"),
    ("precision = 'fp16'\n", "precision must be"),
])
def test_bad_config_names_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        build_config("seed", path)
    if "precision" not in content:
        assert str(path) in str(info.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'paper'"):
        build_config("paper")
    with pytest.raises(ConfigError, match="config file not found"):
        build_config("seed", tmp_path / "none.toml")


def test_every_setting_is_a_flag_of_train_sft():
    from trainer import sft_cli

    parser = argparse.ArgumentParser()
    sft_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sft", "--preset", "official", "--lora-rank", "8",
                              "--no-tensorboard", "--train-projector", "--max-pixels", "12544"])
    assert sft_cli.overrides_from(args) == {"lora_rank": 8, "tensorboard": False,
                                            "train_projector": True, "max_pixels": 12544}
    flags = {a.dest for a in parser._subparsers._group_actions[0].choices["sft"]._actions}
    assert {f.name for f in dataclasses.fields(SFTConfig)} <= flags


def test_print_config_through_the_train_command(capsys):
    import geolocsft.cli
    from trainer import cli as train_cli

    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "sft", "--preset", "official", "--epochs", "1",
                              "--print-config"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs"] == 1 and printed["lora_rank"] == 16
    bad = parser.parse_args(["train", "sft", "--lr-scheduler", "step", "--print-config"])
    with pytest.raises(geolocsft.cli.CliError, match="lr_scheduler must be"):
        bad.handler(bad)


def test_accelerate_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(CONFIG_DIR / "accelerate-ddp-8gpu.yaml"))
    fsdp = load_config_from_file(str(CONFIG_DIR / "accelerate-fsdp-8gpu.yaml"))
    assert (ddp.distributed_type.value, ddp.num_processes) == ("MULTI_GPU", 8)
    assert (fsdp.distributed_type.value, fsdp.num_processes) == ("FSDP", 8)
    assert fsdp.fsdp_config["fsdp_version"] == 2
    assert "Gemma3DecoderLayer" in fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    assert ddp.mixed_precision == fsdp.mixed_precision == "bf16"


# --- data order ----------------------------------------------------------------------------

def test_every_rank_gets_a_full_share_and_each_epoch_covers_everything():
    from trainer.sft import epoch_order, micro_batches, step_indices

    n, world, batch, accum = 7, 2, 1, 2
    global_batch = world * batch * accum
    order = epoch_order(n, seed=1, epoch=0)
    assert sorted(order) == list(range(n)) and order != epoch_order(n, seed=1, epoch=1)
    steps = -(-n // global_batch)
    seen = []
    for step in range(steps):
        picked = step_indices(order, step, global_batch)
        assert len(picked) == global_batch
        shares = [micro_batches(picked, r, world, batch) for r in range(world)]
        assert all(len(s) == accum and all(len(m) == batch for m in s) for s in shares)
        seen += picked
    assert set(seen) == set(range(n))


# --- LoRA targets ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2.5-vl", "gemma3"])
def test_targets_are_the_language_model_projections_only(family, request):
    import torch
    from transformers import AutoModelForImageTextToText

    from geolocsft import families
    from trainer.lora import LoraTargetError, apply_lora, select_targets

    model_dir = request.getfixturevalue("tiny_qwen_dir" if family == "qwen2.5-vl"
                                        else "tiny_gemma_dir")
    fam = families.get(family)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    layout = fam.layout
    layers = model.config.text_config.num_hidden_layers
    targets = select_targets(model, fam)
    assert len(targets) == layers * 7
    assert all(t.startswith(layout.language_model + ".layers.") for t in targets)
    # The trap: the vision tower has modules with the same short names.
    suffixes = {t.rsplit(".", 1)[1] for t in targets}
    vision_same_names = [n for n, _ in model.named_modules()
                         if n.startswith(layout.vision_tower) and n.rsplit(".", 1)[-1] in suffixes]
    assert vision_same_names
    vision_before = {n: p.clone() for n, p in model.named_parameters()
                     if n.startswith(layout.vision_tower)}
    peft_model, _ = apply_lora(model, fam, rank=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == layers * 7 * 2 and all("lora_" in n for n in trainable)
    # A step on every trainable weight leaves the vision tower bit-for-bit unchanged.
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    after = dict(peft_model.base_model.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in vision_before.items())
    # A model whose layer count disagrees with its config is refused, not half-adapted.
    model.config.text_config.num_hidden_layers = layers + 1
    with pytest.raises(LoraTargetError, match="expected"):
        select_targets(model, fam)

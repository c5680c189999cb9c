"""LoRA SFT end to end on the tiny random models, on CPU: loss falls, LoRA stays in the
language model, checkpoints resume exactly, the adapter and its record are complete, and the
held-out evaluation runs through the core parser and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convert.families.qwen25vl import TINY_TEXT
from tests.test_sft_data import PLACES, make_dataset, record

# LoRA targets of the tiny Qwen: 7 projections in each decoder layer.
QWEN_TARGETS = TINY_TEXT["num_hidden_layers"] * 7

pytestmark = pytest.mark.slow


def run_config(model_dir: Path, data: Path, out: Path, **changes):
    from trainer.sft_config import build_config

    values = dict(
        model=str(model_dir), data=str(data), output_dir=str(out),
        batch_size=1, grad_accum_steps=2,  # accumulation exercised
        learning_rate=2e-3, warmup_steps=1, lora_rank=8, lora_alpha=16,
        lora_dropout=0.1,  # > 0 so resuming must restore the RNG to match
        eval_max_new_tokens=12, save_every_steps=2, tensorboard=True,
    )
    values.update(changes)
    return build_config("seed", overrides=values)


def read_log(run_dir: Path) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def qwen_run(tiny_qwen_dir, tmp_path_factory):
    """One real run: 8 good rows and 2 bad ones; 2 held out, 6 trained on for 2 epochs of
    3 steps (global batch 2 = batch 1 x accumulation 2), a checkpoint every 2 steps."""
    from trainer.sft import train

    root = tmp_path_factory.mktemp("qwen-run")
    bad = [json.dumps(record("no-gps", "images/tromso-0.jpg", PLACES[0], longitude=None)),
           json.dumps(record("gone", "images/missing.jpg", PLACES[1]))]
    data = make_dataset(root / "data", per_place=2, extra_rows=bad)
    cfg = run_config(tiny_qwen_dir, data, root / "run", epochs=2, eval_fraction=0.25)
    summary = train(cfg)
    return cfg, summary, root / "run"


def test_qwen_loss_falls_and_run_is_recorded(qwen_run, tiny_qwen_dir):
    cfg, summary, run_dir = qwen_run
    log = read_log(run_dir)
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
    losses = [e["loss"] for e in log]
    assert losses[-1] < losses[0] - 0.5, losses
    # Bad rows were skipped with a report, not fatal.
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["kept"] == 8 and {s["id"] for s in report["skipped"]} == {"no-gps", "gone"}
    # Adapter folder: peft adapter (base recorded), processor with chat template, record.
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(tiny_qwen_dir).resolve()
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert (adapter / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (adapter / "processor_config.json").read_text())
    rec = json.loads((adapter / "training_record.json").read_text())
    assert rec["family"] == "qwen2.5-vl" and rec["steps"] == 6 and rec["world_size"] == 1
    assert rec["data"]["train"] == 6 and rec["data"]["held_out"] == 2
    assert len(rec["data"]["sha256"]) == 64 and rec["git_revision"]
    assert rec["versions"]["peft"] and rec["config"]["learning_rate"] == 2e-3
    assert rec["image_budget"]["family"] == "qwen2.5-vl" and rec["lora_targets"] == QWEN_TARGETS
    # TensorBoard got the same scalars.
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_qwen_lora_lives_in_the_language_model_only(qwen_run):
    _, _, run_dir = qwen_run
    tensors = adapter_tensors(run_dir)
    # 7 projections per layer x (A, B); nothing from the vision tower or the merger.
    assert len(tensors) == QWEN_TARGETS * 2
    assert all(".language_model.layers." in name for name in tensors)
    assert not any("visual" in name for name in tensors)
    # Training moved the B matrices away from their zero initialisation.
    assert all(float(t.abs().sum()) > 0 for n, t in tensors.items() if "lora_B" in n)


def test_qwen_adapter_goes_through_the_converter_merge(qwen_run, tiny_qwen_dir, tmp_path):
    """The converter's merge reads base + our adapter folder as written; afterwards every
    vision-tower and merger weight equals the base's, and the language projections moved."""
    import torch
    from safetensors.torch import load_file

    from convert.merge import merge_adapter

    _, _, run_dir = qwen_run
    merged = merge_adapter(tiny_qwen_dir, run_dir / "adapter", tmp_path / "merged",
                           dtype="float32")
    base = load_file(str(Path(tiny_qwen_dir) / "model.safetensors"))
    after = load_file(str(Path(merged) / "model.safetensors"))
    assert base.keys() == after.keys()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert len(changed) == QWEN_TARGETS
    # (checkpoint names: language model "model.layers.N...", vision "visual.blocks.N...")
    assert all(k.startswith("model.layers.") and k.endswith("proj.weight") for k in changed)
    assert any(k.startswith("visual.blocks.") and "mlp.up_proj" in k for k in base)


def test_qwen_held_out_evaluation_uses_core_parser_and_metrics(qwen_run):
    _, summary, run_dir = qwen_run
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    assert scores == summary["eval"]
    assert scores["n"] == 2 and set(scores["acc"]) == {"1", "25", "200", "750", "2500"}
    predictions = [json.loads(l) for l in
                   (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2
    for p in predictions:
        assert p["status"] in {"ok", "empty", "no_answer", "malformed", "out_of_range"}
        assert "output" in p


def test_resume_matches_the_uninterrupted_run(qwen_run, tmp_path):
    """Continue from the step-4 checkpoint in a fresh folder: steps 5 and 6 and the final
    weights must equal the uninterrupted run's (optimizer, schedule, RNG and order restored)."""
    import torch

    from trainer.sft import SFTError, train

    cfg, _, run_dir = qwen_run
    checkpoint = run_dir / "checkpoints" / "step-000004"
    assert (checkpoint / "state.json").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-000002", "step-000004"]
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed_dir / "checkpoints" / checkpoint.name)
    resumed = run_config(Path(cfg.model), Path(cfg.data), resumed_dir, epochs=2,
                         eval_fraction=0.25, resume="latest")
    summary = train(resumed)
    assert summary["steps"] == 6
    a, b = read_log(run_dir), read_log(resumed_dir)
    assert [e["step"] for e in b] == [5, 6]
    for x, y in zip(a[4:], b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-6)
        assert y["lr"] == pytest.approx(x["lr"])
    first, second = adapter_tensors(run_dir), adapter_tensors(resumed_dir)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-5, atol=1e-6)
    # A resume that would see other batches (another seed here) is refused, not run.
    other = run_config(Path(cfg.model), Path(cfg.data), tmp_path / "other", epochs=2,
                       eval_fraction=0.25, resume=str(checkpoint), seed=1)
    with pytest.raises(SFTError, match="data order would differ"):
        train(other)


def test_existing_run_folder_is_not_overwritten(qwen_run):
    from trainer.sft import SFTError, train

    cfg, _, _ = qwen_run
    with pytest.raises(SFTError, match="already exists; pass --overwrite"):
        train(cfg)


def test_gemma_trains_with_projector_option(tiny_gemma_dir, tmp_path):
    """Gemma 3: loss falls; --train-projector adds the projector (and only it) in full."""
    from trainer.sft import train

    data = make_dataset(tmp_path / "data", per_place=1)
    cfg = run_config(tiny_gemma_dir, data, tmp_path / "run", epochs=2, eval_fraction=0,
                     batch_size=2, grad_accum_steps=1, train_projector=True, warmup_steps=0,
                     save_every_steps=0, tensorboard=False, gradient_checkpointing=True)
    summary = train(cfg)
    losses = [e["loss"] for e in read_log(tmp_path / "run")]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
    tensors = adapter_tensors(tmp_path / "run")
    lora = [n for n in tensors if "lora_" in n]
    others = [n for n in tensors if "lora_" not in n]
    assert len(lora) == 6 * 7 * 2 and all(".language_model.layers." in n for n in lora)
    assert others and all("multi_modal_projector" in n for n in others)
    assert not any("vision_tower" in n for n in tensors)
    assert summary["eval"] is None

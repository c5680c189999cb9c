"""Several processes: a real 2-process run (torchrun, gloo, CPU) must equal one process with
gradient accumulation over the same global batch, and a launch that does not match the
expected world size must stop instead of quietly training each rank alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_sft_data import make_dataset

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


def settings(model: Path, data: Path, out: Path, **extra) -> dict:
    values = dict(model=str(model), data=str(data), output_dir=str(out), max_steps=2,
                  lora_rank=8, lora_alpha=16, lora_dropout=0.0, learning_rate=2e-3,
                  warmup_steps=0, eval_fraction=0, save_every_steps=0, seed=5, tensorboard=False)
    values.update(extra)
    return values


def flags(values: dict) -> list[str]:
    args = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


@pytest.mark.slow
def test_two_processes_equal_one_with_accumulation(tiny_gemma_dir, tmp_path):
    from safetensors.torch import load_file
    import torch

    data = make_dataset(tmp_path / "data", per_place=1)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trainer.sft_cli",
           *flags(settings(tiny_gemma_dir, data, two, batch_size=1, expect_world_size=2))]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((two / "adapter" / "training_record.json").read_text())
    assert record["world_size"] == 2 and record["global_batch"] == 2 and record["steps"] == 2

    from trainer.sft import train
    from trainer.sft_config import build_config

    one = tmp_path / "one"
    train(build_config("seed", overrides=settings(tiny_gemma_dir, data, one, batch_size=1,
                                                  grad_accum_steps=2)))

    log_two = [json.loads(l) for l in (two / "log.jsonl").read_text().splitlines()]
    log_one = [json.loads(l) for l in (one / "log.jsonl").read_text().splitlines()]
    assert [e["loss"] for e in log_two] == pytest.approx([e["loss"] for e in log_one], rel=1e-4)
    a = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # a subprocess that imports torch and transformers: ~15 s
def test_world_size_mismatch_stops_the_run(tmp_path):
    data = make_dataset(tmp_path / "data", per_place=1)
    cmd = [sys.executable, "-m", "trainer.sft_cli",
           *flags(settings(tmp_path / "no-model", data, tmp_path / "run",
                          expect_world_size=2))]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "expected 2 training processes but accelerate set up 1" in done.stderr
    assert not (tmp_path / "run").exists()

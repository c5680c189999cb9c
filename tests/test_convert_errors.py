"""Bad input to the converter: a clear error naming the file and the problem, and nothing
half-written under a finished name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

from convert.errors import AdapterError, ConvertError  # noqa: E402
from convert.families import UnsupportedModelError  # noqa: E402


def _copy_adapter(tiny_qwen_adapter, tmp_path):
    adapter, _ = tiny_qwen_adapter
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    return copy


def _only_dotless(folder):
    return sorted(p for p in os.listdir(folder) if not p.startswith("."))


def test_missing_adapter(tiny_qwen_dir, tmp_path):
    from convert.merge import merge_adapter

    with pytest.raises(AdapterError, match="nope: adapter folder not found"):
        merge_adapter(tiny_qwen_dir, tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"empty/adapter_config.json: missing"):
        merge_adapter(tiny_qwen_dir, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_adapter(tiny_qwen_dir, tiny_qwen_adapter, tmp_path):
    from convert.merge import merge_adapter

    adapter = _copy_adapter(tiny_qwen_adapter, tmp_path)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated download
    with pytest.raises(AdapterError, match="adapter_model.safetensors: corrupt adapter weights"):
        merge_adapter(tiny_qwen_dir, adapter, tmp_path / "out")
    (adapter / "adapter_config.json").write_text("{ truncated")
    with pytest.raises(AdapterError, match="adapter_config.json: corrupt adapter config"):
        merge_adapter(tiny_qwen_dir, adapter, tmp_path / "out")
    weights.unlink()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(AdapterError, match="adapter_model.safetensors: missing adapter weights"):
        merge_adapter(tiny_qwen_dir, adapter, tmp_path / "out")
    assert _only_dotless(tmp_path) == ["adapter"]


def test_adapter_recorded_for_another_base_name(tiny_qwen_dir, tiny_qwen_adapter, tmp_path):
    from convert.merge import merge_adapter

    adapter = _copy_adapter(tiny_qwen_adapter, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-VL-7B-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="trained on 'Qwen/Qwen2.5-VL-7B-Instruct'"):
        merge_adapter(tiny_qwen_dir, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_with_other_shapes(tiny_qwen_dir, tmp_path):
    """An adapter trained on a model of another size is refused even when its recorded base
    name matches (shapes are checked before peft is asked to load it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from convert.families import qwen25vl
    from convert.merge import merge_adapter
    from tests.fixtures.models import LORA_TARGETS

    config = qwen25vl.tiny_config()
    config.text_config.intermediate_size = 768  # another "size" of the same architecture
    config.text_config.vocab_size = 512  # small: only the adapter is used
    config.text_config.pad_token_id = None
    torch.manual_seed(0)
    other = get_peft_model(Qwen2_5_VLForConditionalGeneration(config),
                           LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    other.peft_config["default"].base_model_name_or_path = str(tiny_qwen_dir)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(AdapterError, match=r"mlp\.(down|gate|up)_proj.* made for another base"):
        merge_adapter(tiny_qwen_dir, tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture(tmp_path):
    from convert.build import build_model_folder
    from convert.gguf import convert_checkpoint

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UnsupportedModelError, match=r"config.json: model_type 'llama' is not supported"):
        convert_checkpoint(tmp_path / "llama", tmp_path / "out")
    with pytest.raises(UnsupportedModelError, match="not supported"):
        build_model_folder(tmp_path / "folder", base=tmp_path / "llama", progress=None)
    with pytest.raises(UnsupportedModelError, match=r"nothing/config.json: missing"):
        convert_checkpoint(tmp_path / "nothing", tmp_path / "out")
    assert _only_dotless(tmp_path) == ["llama"]


def test_output_folder_not_writable(tiny_qwen_dir, tmp_path):
    from convert.build import build_model_folder
    from convert.gguf import convert_checkpoint

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConvertError, match="a-file: output folder is not writable"):
        convert_checkpoint(tiny_qwen_dir, blocker)
    with pytest.raises(ConvertError, match="a-file: output folder is not writable"):
        build_model_folder(blocker / "model", base=tiny_qwen_dir, progress=None)
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConvertError, match="locked: output folder is not writable"):
            convert_checkpoint(tiny_qwen_dir, locked)


def test_existing_output_is_never_replaced_silently(tiny_qwen_dir, tmp_path):
    from convert.build import build_model_folder

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("user data")
    with pytest.raises(ConvertError, match="mine: already exists"):
        build_model_folder(folder, base=tiny_qwen_dir, progress=None)
    assert (folder / "notes.txt").read_text() == "user data"


def test_interrupted_build_leaves_nothing(tiny_qwen_dir, tmp_path, monkeypatch):
    """Ctrl-C while the GGUF files are half written: no folder under the final name and no
    work folder left over."""
    import convert.build

    def interrupted(_ckpt, out_dir, **_kwargs):
        out_dir.mkdir(parents=True)
        (out_dir / "model-F16.gguf").write_bytes(b"GGUF half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert.build, "convert_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert.build.build_model_folder(tmp_path / "model", base=tiny_qwen_dir, progress=None)
    assert os.listdir(tmp_path) == []


def test_interrupted_converter_process_leaves_nothing(tiny_qwen_dir, tmp_path):
    """A real SIGINT to `geolocsft convert gguf` while llama.cpp's converter runs."""
    out = tmp_path / "gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geolocsft", "convert", "gguf", str(tiny_qwen_dir), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.startswith(".staging-") for p in os.listdir(out)):
            # staged: the converter subprocess is starting or running
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert os.listdir(out) == []  # no final files, no temp files, no staging copy


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from geolocsft.cli import main

    code = main(["convert", "all", "--adapter", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"geolocsft: error: {tmp_path / 'missing'}: adapter folder not found"
    assert main(["convert", "quantize", str(tmp_path / "x.gguf")]) == 2
    assert "x.gguf: GGUF to quantize not found" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_unknown_quant_is_refused_before_any_work(tiny_qwen_dir, tmp_path):
    from convert.build import build_model_folder

    with pytest.raises(ConvertError, match="quant 'Q3_K_S': choose one of Q4_K_M, Q5_K_M, Q8_0"):
        build_model_folder(tmp_path / "m", base=tiny_qwen_dir, quant="q3_k_s", progress=None)
    assert os.listdir(tmp_path) == []

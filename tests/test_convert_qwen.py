"""The whole converter chain on the tiny Qwen2.5-VL: a LoRA adapter trained for a few real steps
-> merge (exact in fp32) -> GGUF + mmproj -> Q4_K_M and Q8_0 -> llama-cpp-python answers an image
prompt -> manifest checksums verify; the f16 GGUF agrees with the Hugging Face model."""

from __future__ import annotations

import json
import os

import pytest

from convert.families.qwen25vl import TINY_TEXT

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def merged_fp32(tiny_qwen_dir, tiny_qwen_adapter, tmp_path_factory):
    from convert.merge import merge_adapter

    adapter, _losses = tiny_qwen_adapter
    out = tmp_path_factory.mktemp("merge") / "merged"
    return merge_adapter(tiny_qwen_dir, adapter, out, dtype="float32")


def test_adapter_training_learned_something(tiny_qwen_adapter):
    _adapter, losses = tiny_qwen_adapter
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_merge_is_exact_in_fp32(tiny_qwen_dir, tiny_qwen_adapter, merged_fp32):
    from tests.fixtures.models import assert_merge_exact

    adapter, _ = tiny_qwen_adapter
    # q,k,v,o,gate,up,down per layer; the vision tower's blocks are not targets.
    assert assert_merge_exact(tiny_qwen_dir, adapter, merged_fp32) == 7 * TINY_TEXT["num_hidden_layers"]
    info = json.loads((merged_fp32 / "merge_info.json").read_text())
    assert info["family"] == "qwen2.5-vl" and info["adapter_sha256"]
    assert (merged_fp32 / "chat_template.jinja").is_file()


@pytest.fixture(scope="module")
def built_folder(tiny_qwen_adapter, tmp_path_factory):
    from convert.build import build_model_folder

    adapter, _ = tiny_qwen_adapter
    messages = []
    out = tmp_path_factory.mktemp("models") / "geo-tiny-qwen"
    result = build_model_folder(out, adapter=adapter, quant="Q4_K_M", keep_f16=True,
                                progress=messages.append)
    return result, messages


def test_build_writes_a_complete_model_folder(built_folder, tiny_qwen_dir, tiny_qwen_adapter):
    from geolocsft import protocol
    from geolocsft.manifest import read_manifest, verify_files

    result, messages = built_folder
    folder = result.folder
    assert sorted(os.listdir(folder)) == ["manifest.json", "mmproj-f16.gguf", "model-F16.gguf",
                                          "model-Q4_K_M.gguf"]
    assert not [p for p in os.listdir(folder.parent) if p.startswith(".")]  # no work folder left
    manifest = read_manifest(folder)
    assert manifest.family == "qwen2.5-vl" and manifest.quant == "Q4_K_M"
    assert manifest.base_model == str(tiny_qwen_dir)
    assert manifest.adapter == str(tiny_qwen_adapter[0].resolve()) and manifest.adapter_sha256
    assert manifest.prompt_version == protocol.PROMPT_VERSION
    assert manifest.image_budget["max_pixels"] == 112 * 112
    assert verify_files(folder) == []
    assert any(m.startswith("[1/4] merge adapter into base (float32)") for m in messages)
    assert messages[-1].startswith("model folder ready")


def test_q4_k_m_is_really_k_quantized(built_folder):
    result, _ = built_folder
    report = result.quant_report
    assert not report.fallbacks, report.summary()
    assert report.tensor_types["Q4_K"] > 0 and report.tensor_types["Q6_K"] > 0


def test_f16_gguf_agrees_with_hugging_face(built_folder):
    result, _ = built_folder
    report = result.logit_report
    assert report.positions >= 40
    assert report.agreement >= 0.99, report.summary()
    assert report.max_abs_diff < 0.05, report.summary()


def test_llama_cpp_answers_an_image_prompt(built_folder, tmp_path):
    from convert.gguf import model_file_name
    from convert.quantize import quantize
    from convert.verify import answer_image

    result, _ = built_folder
    assert result.answer["completion_tokens"] > 0
    # The image really reaches the model: the prompt holds its vision tokens
    # (96x72 -> 84x84 in llama.cpp's resize -> 3x3 merged tokens) besides ~20 text tokens.
    assert result.answer["prompt_tokens"] >= 25
    q8 = quantize(result.folder / "model-F16.gguf", tmp_path / model_file_name("Q8_0"), "Q8_0")
    assert set(q8.tensor_types) == {"F32", "Q8_0"}
    out = answer_image(q8.path, result.folder / "mmproj-f16.gguf", "qwen2.5-vl")
    assert out["completion_tokens"] > 0 and isinstance(out["text"], str)


def test_metadata_reads_back(built_folder):
    from convert.verify import read_metadata

    result, _ = built_folder
    text = read_metadata(result.folder / "model-Q4_K_M.gguf")
    assert text["general.architecture"] == "qwen2vl"
    assert text["tokenizer.ggml.pre"] == "qwen2"  # the converter recognised the real Qwen2 BPE
    assert text["qwen2vl.embedding_length"] == 256
    projector = read_metadata(result.folder / "mmproj-f16.gguf")
    assert projector["clip.projector_type"] == "qwen2.5vl_merger"
    assert projector["clip.vision.projection_dim"] == 256


def test_verify_command_checks_the_folder(built_folder, capsys):
    from geolocsft.cli import main

    result, _ = built_folder
    assert main(["convert", "verify", str(result.folder)]) == 0
    out = capsys.readouterr().out
    assert "checksums: 3 file(s) match" in out and "qwen2.5vl_merger" in out


def test_verify_command_reports_a_changed_file(built_folder, tmp_path, capsys):
    import shutil

    from geolocsft.cli import main

    result, _ = built_folder
    copy = tmp_path / "copy"
    shutil.copytree(result.folder, copy)
    with open(copy / "mmproj-f16.gguf", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    assert main(["convert", "verify", str(copy)]) == 2
    assert "mmproj-f16.gguf: sha256" in capsys.readouterr().err


def test_tiny_qwen_folder_fixture(tiny_qwen_folder):
    from geolocsft.manifest import read_manifest, verify_files

    manifest = read_manifest(tiny_qwen_folder)
    assert manifest.quant == "Q8_0" and manifest.adapter is None
    assert verify_files(tiny_qwen_folder) == []


def test_processor_saved_with_the_adapter_wins(tiny_qwen_dir, tiny_qwen_adapter, tmp_path):
    """The trainer saves its processor beside the adapter; its image budget (what the model was
    trained with) must reach the merged checkpoint, not the base's."""
    import shutil

    from transformers import AutoProcessor

    from convert.families.qwen25vl import image_budget
    from convert.merge import merge_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_qwen_adapter[0], adapter)
    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 56 * 84}
    processor.save_pretrained(adapter)
    merged = merge_adapter(tiny_qwen_dir, adapter, tmp_path / "merged")
    assert image_budget(merged).max_pixels == 56 * 84
    assert image_budget(tiny_qwen_dir).max_pixels == 112 * 112

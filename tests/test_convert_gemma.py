"""The whole converter chain on the tiny Gemma 3 (SentencePiece tokenizer, 5 sliding + 1 full
attention layers, SigLIP tower): adapter trained a few real steps -> exact fp32 merge -> GGUF +
mmproj through the Gemma fix-ups -> Q4_K_M and Q8_0 -> llama-cpp-python answers an image prompt
-> manifest checksums verify; the f16 GGUF agrees with the Hugging Face model."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")

pytestmark = pytest.mark.slow


def test_merge_is_exact_in_fp32(tiny_gemma_dir, tiny_gemma_adapter, tmp_path):
    from convert.merge import merge_adapter
    from tests.fixtures.models import assert_merge_exact

    adapter, losses = tiny_gemma_adapter
    assert losses[-1] < losses[0]
    merged = merge_adapter(tiny_gemma_dir, adapter, tmp_path / "merged", dtype="float32")
    assert assert_merge_exact(tiny_gemma_dir, adapter, merged) == 6 * 7  # 6 layers x 7 projections
    assert (merged / "tokenizer.model").is_file()  # the converter needs Gemma's SentencePiece model
    assert json.loads((merged / "merge_info.json").read_text())["family"] == "gemma3"


@pytest.fixture(scope="module")
def built(tiny_gemma_adapter, tmp_path_factory):
    from convert.build import build_model_folder

    adapter, _ = tiny_gemma_adapter
    out = tmp_path_factory.mktemp("models") / "geo-tiny-gemma"
    return build_model_folder(out, adapter=adapter, quant="Q4_K_M", keep_f16=True, progress=None)


def test_build_writes_a_complete_model_folder(built, tiny_gemma_dir):
    from geolocsft.manifest import read_manifest, verify_files

    assert sorted(os.listdir(built.folder)) == ["manifest.json", "mmproj-f16.gguf",
                                                "model-F16.gguf", "model-Q4_K_M.gguf"]
    manifest = read_manifest(built.folder)
    assert manifest.family == "gemma3" and manifest.base_model == str(tiny_gemma_dir)
    assert manifest.image_budget["fixed_side"] == 224
    assert manifest.adapter_sha256 and verify_files(built.folder) == []
    assert not built.quant_report.fallbacks, built.quant_report.summary()


def test_f16_gguf_agrees_with_hugging_face(built):
    report = built.logit_report
    assert report.positions >= 40
    assert report.agreement >= 0.99, report.summary()
    assert report.max_abs_diff < 0.05, report.summary()


def test_llama_cpp_answers_an_image_prompt(built, tmp_path):
    from convert.quantize import quantize
    from convert.verify import answer_image, read_metadata

    assert built.answer["completion_tokens"] > 0
    q8 = quantize(built.folder / "model-F16.gguf", tmp_path / "model-Q8_0.gguf", "Q8_0")
    out = answer_image(q8.path, built.folder / "mmproj-f16.gguf", "gemma3")
    assert out["completion_tokens"] > 0
    # The image's 16 soft tokens reach the model besides ~20 text tokens (no system turn).
    assert 16 < out["prompt_tokens"] < 64
    meta = read_metadata(built.folder / "model-Q4_K_M.gguf")
    assert meta["general.architecture"] == "gemma3"
    assert read_metadata(built.folder / "mmproj-f16.gguf")["clip.projector_type"] == "gemma3"


def test_tiny_gemma_folder_fixture(tiny_gemma_folder):
    from geolocsft.manifest import read_manifest, verify_files

    assert read_manifest(tiny_gemma_folder).family == "gemma3"
    assert verify_files(tiny_gemma_folder) == []

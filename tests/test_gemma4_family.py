"""The Gemma 4 family module: the resize rule against transformers', the tiny tokenizer's
markers and chat template, converter staging refusals, and (slow) an image prompt through
llama.cpp's converter and mtmd agreeing with transformers on real libraries."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from convert.families import gemma4


def test_processor_size_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.models.gemma4.image_processing_gemma4 import get_aspect_ratio_preserving_size

    for tokens in gemma4.ALLOWED_SOFT_TOKENS:
        for width in (17, 48, 200, 640, 1000, 4000, 9000):
            for height in (13, 48, 480, 1500, 6000):
                try:
                    h, w = get_aspect_ratio_preserving_size(height, width, 16, tokens * 9, 3)
                except ValueError:  # transformers refuses a few extreme shapes outright
                    continue
                assert gemma4.processor_size(width, height, 48, tokens) == (w, h)


def test_prepare_refuses_other_checkpoints_and_drops_tokenizer_model(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "gemma3",
                                                 "architectures": ["Gemma3ForConditionalGeneration"]}))
    with pytest.raises(gemma4.Gemma4PrepareError, match="config.json: not a Gemma 4"):
        gemma4.prepare_for_converter(src, tmp_path / "stage")
    (src / "config.json").write_text(json.dumps({"model_type": "gemma4", "architectures": [gemma4.ARCHITECTURE],
                                                 "vision_config": {"patch_size": 16}}))
    with pytest.raises(gemma4.Gemma4PrepareError, match="tokenizer.json: missing"):
        gemma4.prepare_for_converter(src, tmp_path / "stage")
    (src / "tokenizer.json").write_text("{}")
    (src / "tokenizer.model").write_bytes(b"sp")
    (src / "model.safetensors").write_bytes(b"x")
    staged = gemma4.prepare_for_converter(src, tmp_path / "stage")
    assert sorted(p.name for p in staged.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (src / "tokenizer.model").exists()  # the source is untouched


def test_image_budget_reads_the_processor(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"image_processor": {"max_soft_tokens": 140, "patch_size": 16, "pooling_kernel_size": 3}}))
    budget = gemma4.image_budget(tmp_path)
    assert (budget.factor, budget.max_pixels) == (48, 140 * 48 * 48)
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": {"max_soft_tokens": 256}}))
    with pytest.raises(gemma4.Gemma4PrepareError, match="max_soft_tokens 256 is not one of"):
        gemma4.image_budget(tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    return gemma4.make_tiny(tmp_path_factory.mktemp("gemma4") / "tiny")


@pytest.mark.slow
def test_tiny_tokenizer_and_template(tiny):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny)
    tok = processor.tokenizer
    for marker, want in gemma4.TINY_TOKEN_IDS.items():
        assert tok(marker, add_special_tokens=False).input_ids == [want], marker
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Lima"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == "<bos><|turn>user\n<|image|>Where?<turn|>\n<|turn>model\nLima<turn|>\n"
    assert tok("Where?").input_ids[0] != tok.bos_token_id  # the template writes <bos>, not the tokenizer
    assert not (Path(tiny) / "tokenizer.model").exists()


@pytest.mark.slow
def test_image_prompt_through_mtmd_agrees_with_transformers(tiny, tmp_path):
    """The tiny model converted by llama.cpp's converter: an image prompt of a photo on the
    48 px grid (so neither side resizes it) gives the same prompt length and the same top
    next tokens in llama.cpp + mtmd as in transformers."""
    torch = pytest.importorskip("torch")
    llama_cpp = pytest.importorskip("llama_cpp")
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from convert.gguf import run_converter
    from convert.llamacpp import llama_cpp_source

    rng = np.random.default_rng(0)
    pixels = (rng.random((336, 480, 3)) * 255).astype("uint8")
    pixels[:168] = (200, 60, 40)
    photo = Image.fromarray(pixels)
    question = "Where was this photo taken?"

    processor = AutoProcessor.from_pretrained(tiny)
    model = AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[[photo]], return_tensors="pt")
    with torch.no_grad():
        hf = torch.log_softmax(model(**inputs).logits[0, -1].float(), -1)
    hf_top = [processor.tokenizer.decode([int(i)]) for i in torch.topk(hf, 3).indices]

    staged = gemma4.prepare_for_converter(Path(tiny), tmp_path / "stage" / "tiny")
    source = llama_cpp_source()
    run_converter(source, staged, tmp_path / "model-f16.gguf", "f16", mmproj=False)
    run_converter(source, staged, tmp_path / "mmproj-f16.gguf", "f16", mmproj=True)

    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        llm = llama_cpp.Llama(str(tmp_path / "model-f16.gguf"), n_ctx=512, n_threads=2, verbose=False, seed=0, logits_all=True,
                              chat_handler=gemma4.stock_chat_handler(tmp_path / "mmproj-f16.gguf"))
        try:
            result = llm.create_chat_completion(
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                       {"type": "text", "text": question}]}],
                max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=3)
        finally:
            llm.close()
    assert result["usage"]["prompt_tokens"] == inputs["input_ids"].shape[1]
    top = result["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in top] == hf_top
    for entry in top:
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(entry["token"]))[0]
        assert abs(float(entry["logprob"]) - float(hf[token_id])) < 0.3, entry

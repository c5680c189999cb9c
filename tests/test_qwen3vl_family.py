"""Qwen3-VL's own facts: the tokenizer's added tokens at the released ids, the official chat
template, the image budget a checkpoint carries, the published configs behind the benchmark's
skeletons and the catalog's file globs against the released repositories' file names. (The
chain itself -- parity, engine, SFT, LoRA, merge -- runs in tests/test_families.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert.families import qwen3vl
from geolocsft import catalog, families

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return qwen3vl.build_tokenizer()


def test_added_tokens_sit_at_the_released_ids(tokenizer):
    for token_id, text, _special in qwen3vl.SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(text) == token_id
    assert len(tokenizer) == 151669  # 151,643 BPE tokens + 26 added, as released
    assert tokenizer.eos_token == "<|im_end|>"
    # Qwen3 registers the think / tool-response tags as plain added tokens: decoding keeps them.
    ids = tokenizer("<think>x</think>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 151667 and ids[-1] == 151668
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think>"


def test_chat_template_has_no_default_system_turn(tokenizer):
    from transformers import Qwen3VLProcessor

    processor = Qwen3VLProcessor(image_processor=qwen3vl._image_processor(),
                                 tokenizer=tokenizer, video_processor=qwen3vl._video_processor(),
                                 chat_template=qwen3vl._chat_template())
    spec = families.get("qwen3-vl")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}],
        tokenize=False, add_generation_prompt=True)
    expected_marker = spec.placeholder_wrap.format(marker=spec.image_placeholder)
    assert text == f"<|im_start|>user\n{expected_marker}Where?<|im_end|>\n<|im_start|>assistant\n"
    answer = processor.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], tokenize=False)
    assert answer.endswith(f"a{spec.end_of_turn}\n")


def test_image_budget_reads_the_checkpoint_and_caps_at_the_seed_tokens(tmp_path):
    qwen3vl._processor(qwen3vl.RELEASED_MIN_PIXELS, qwen3vl.RELEASED_MAX_PIXELS).save_pretrained(
        tmp_path)
    budget = qwen3vl.image_budget(tmp_path)
    spec = families.get("qwen3-vl")
    assert budget.factor == spec.image.factor == 32
    assert budget.min_pixels == spec.image.min_pixels == 256 * 256
    # Released processors allow 4096² pixels; the seed's 1,280 tokens cap it.
    assert budget.max_pixels == spec.image.max_pixels == 1280 * 32 * 32


def test_image_budget_names_the_file_without_pixels(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"patch_size": 16}))
    with pytest.raises(ValueError, match="preprocessor_config.json: no min/max pixels"):
        qwen3vl.image_budget(tmp_path)


@pytest.mark.parametrize("name", sorted(families.get("qwen3-vl").skeletons))
def test_skeleton_configs_load_as_released(name):
    from transformers import Qwen3VLConfig

    data = json.loads((ROOT / "convert" / "configs" / families.get("qwen3-vl").skeletons[name])
                      .read_text(encoding="utf-8"))
    assert data.pop("_source")
    config = Qwen3VLConfig.from_dict(data)
    text, vision = config.text_config, config.vision_config
    assert text.rope_parameters["mrope_interleaved"] is True
    assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2
    assert vision.patch_size * vision.spatial_merge_size == families.get("qwen3-vl").image.factor
    assert vision.out_hidden_size == text.hidden_size
    assert len(vision.deepstack_visual_indexes) == 3


# File names in Qwen's GGUF repositories (Qwen/Qwen3-VL-<size>-Instruct-GGUF).
def _released_files(size: str) -> list[str]:
    stem = f"Qwen3VL-{size}-Instruct"
    return [".gitattributes", "README.md", f"{stem}-F16.gguf", f"{stem}-Q4_K_M.gguf",
            f"{stem}-Q8_0.gguf", f"mmproj-{stem}-F16.gguf", f"mmproj-{stem}-Q8_0.gguf"]


def test_catalog_globs_pick_one_model_and_the_f16_projector():
    entries = [e for e in catalog.load_catalog() if e.family == "qwen3-vl"]
    assert {e.base_model for e in entries} >= {"Qwen/Qwen3-VL-2B-Instruct",
                                              "Qwen/Qwen3-VL-4B-Instruct"}
    for entry in entries:
        size = entry.base_model.split("-")[2]  # "2B", "4B", "8B"
        assert entry.repo == f"{entry.base_model}-GGUF"
        model, mmproj = entry.pick(_released_files(size))
        assert model == f"Qwen3VL-{size}-Instruct-{entry.quant}.gguf"
        assert mmproj == f"mmproj-Qwen3VL-{size}-Instruct-F16.gguf"

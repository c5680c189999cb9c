"""Qwen3.5's quirks beyond the registry-wide chain (tests/test_families.py): special tokens at
their released ids, one prompt text for the thinking and non-thinking templates, the converter
flag for the missing multi-token-prediction head, the processor budget of a released checkpoint,
and LoRA counts per layer type of the hybrid language model."""

from __future__ import annotations

import json

import pytest

from geolocsft import families

NAME = "qwen3.5"


@pytest.fixture(scope="module")
def module():
    return __import__(families.get(NAME).converter_module, fromlist=["_"])


def test_special_tokens_sit_at_the_released_ids(module):
    pytest.importorskip("transformers")
    tokenizer = module.build_tokenizer()
    ids = {text: tokenizer.convert_tokens_to_ids(text) for _, text, _ in module.SPECIAL_TOKENS}
    # The released config.json ids and the ones public token dumps show.
    assert ids["<|endoftext|>"] == 248044 and ids["<|im_start|>"] == 248045
    assert ids["<|im_end|>"] == 248046 and ids["<think>"] == 248068
    assert (ids["<|vision_start|>"], ids["<|vision_end|>"], ids["<|image_pad|>"]) == \
        (248053, 248054, 248056)
    # Filler entries hold ids only: plain text never encodes to them.
    encoded = tokenizer("Paris, France <|im_end|>", add_special_tokens=False)["input_ids"]
    assert all(i < 151643 or i >= module.FIRST_ADDED for i in encoded)
    assert encoded[-1] == 248046


def test_every_size_renders_the_same_prompt(module):
    jinja2 = pytest.importorskip("jinja2")
    pytest.importorskip("trl")
    spec = families.get(NAME)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}]

    def render(template, **kwargs):
        return jinja2.Environment().from_string(template).render(
            messages=messages, add_generation_prompt=True, **kwargs)

    small = render(module.chat_template(thinking=False), **spec.chat_template_kwargs)
    large = render(module.chat_template(thinking=True), **spec.chat_template_kwargs)
    assert small == large and small.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert spec.image_placeholder in small
    # Without the registry's variables the 4B+ template would open a thinking block.
    assert render(module.chat_template(thinking=True)).endswith("<think>\n")


def test_the_converter_is_told_to_skip_the_mtp_head(module):
    assert "--no-mtp" in module.TEXT_CONVERTER_ARGS


def test_image_budget_of_a_released_processor_is_capped_at_the_seed_budget(module, tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
        "temporal_patch_size": 2, "merge_size": 2}))
    budget = module.image_budget(tmp_path)
    spec = families.get(NAME)
    assert budget.family == NAME and budget.factor == 32
    assert budget.max_pixels == spec.image.max_pixels == 1280 * 32 * 32
    assert budget.min_pixels == 65536


def test_lora_targets_follow_the_layer_types():
    import re

    layout = families.get(NAME).layout
    pattern = re.compile(layout.targets)
    linear = ["linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.in_proj_a",
              "linear_attn.in_proj_b", "linear_attn.out_proj", "linear_attn.conv1d",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    full = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "self_attn.q_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert sum(bool(pattern.fullmatch(m)) for m in linear) == layout.per_layer["linear_attention"]
    assert sum(bool(pattern.fullmatch(m)) for m in full) == layout.per_layer["full_attention"]

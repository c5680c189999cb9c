"""Qwen3.5 (small dense sizes): the tiny test checkpoint, converter preparation, the image budget
and the stock chat handler.

Qwen3.5 is natively multimodal: every released size, 0.8B included, is a
`Qwen3_5ForConditionalGeneration` (image-text-to-text) checkpoint. Its language model is
hybrid: three Gated DeltaNet (linear-attention, recurrent) layers to one gated full-attention
layer, which is why the registry marks the family `recurrent`. The vision tower is Qwen3-VL's
without deep-stack taps (patch 16, 2x2 merge); llama.cpp converts it with the Qwen3-VL code
(`qwen3vl` projector) and runs the text as the `qwen35` architecture.

The tiny model keeps what the real code paths depend on: the real block pattern (3 linear : 1
full, twice), gated attention with partial interleaved M-RoPE, linear attention with fewer key
than value heads (so the converter's V-head reordering runs, as for 2B/4B/9B), tied embeddings
like 0.8B/2B, Qwen3.5's special tokens at their real ids over a 248,320-row embedding, and the
official chat template of the 0.8B/2B checkpoints. Text hidden size is 256 so K-quants apply.

The released Qwen3.5 vocabulary (248,044 BPE tokens) is not reachable offline; the tiny
tokenizer is Qwen2's byte-level BPE (from llama.cpp's vocab GGUF) with Qwen3.5's pre-tokenizer
rule, padded with unreachable filler entries up to 248,044 so the special tokens land on their
real ids. Because the converter identifies the pre-tokenizer by hashing how a tokenizer splits a
test text, this tokenizer is tagged "qwen2" in the GGUF (the real one is tagged "qwen35"); the
two rules split English/ASCII text identically."""

from __future__ import annotations

from pathlib import Path

MODEL_TYPE = "qwen3_5"
ARCHITECTURE = "Qwen3_5ForConditionalGeneration"

# Released dense checkpoints (all image-text models). The instruct-style post-trained ones carry
# the plain names; "-Base" are the pre-trained ones (same template, meant for fine-tuning).
BASE_MODEL_IDS: tuple[str, ...] = (
    "Qwen/Qwen3.5-0.8B",
    "Qwen/Qwen3.5-2B",
    "Qwen/Qwen3.5-4B",
    "Qwen/Qwen3.5-9B",
    "Qwen/Qwen3.5-27B",
    "Qwen/Qwen3.5-0.8B-Base",
    "Qwen/Qwen3.5-2B-Base",
    "Qwen/Qwen3.5-4B-Base",
    "Qwen/Qwen3.5-9B-Base",
)

# Qwen3.5's added tokens start at 248,044 in Qwen2's order plus Qwen3's four (tool responses,
# thinking); `True` marks those registered as special. Published configs agree:
# vision_start 248053, vision_end 248054, image 248056, video 248057; <think> is 248068.
FIRST_ADDED = 248044
_ADDED = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (FIRST_ADDED + i, text, special) for i, (text, special) in enumerate(_ADDED))
TOKEN_IDS = {text: token_id for token_id, text, _ in SPECIAL_TOKENS}
VOCAB_SIZE = 248320  # embedding rows of every released size

# The released checkpoints carry a multi-token-prediction head (`mtp.*`, for speculative
# decoding) that transformers does not load, so a trained or merged checkpoint has none while
# its config still says `mtp_num_hidden_layers: 1`; the converter then stops. The text GGUF is
# written without it (the engine does not use it).
TEXT_CONVERTER_ARGS = ("--no-mtp",)

# The released processors (Qwen3-VL's): 64 to 16,384 merged 32x32 patches, mean/std 0.5.
RELEASED_MIN_PIXELS = 65536
RELEASED_MAX_PIXELS = 16777216
PATCH, MERGE = 16, 2
FACTOR = PATCH * MERGE

# Tiny image budget: 128x128 at most (16 vision tokens), 8 tokens at least (mtmd's floor).
TINY_MAX_PIXELS = 128 * 128
TINY_MIN_PIXELS = 8 * FACTOR * FACTOR
TINY_SEED = 1234

_PATTERN = ["linear_attention"] * 3 + ["full_attention"]
TINY_TEXT = dict(
    hidden_size=256,
    intermediate_size=512,
    # The released pattern (full attention every 4th layer) twice.
    num_hidden_layers=8,
    layer_types=_PATTERN * 2,
    full_attention_interval=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    # Linear attention: 2 key heads, 4 value heads of 64 (value width 256, K-quant friendly).
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=64,
    linear_value_head_dim=64,
    linear_conv_kernel_dim=4,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    # 10x the usual 0.02, for peaked logits over the 248k vocabulary (qwen25vl.py says why the
    # tiny models need them): the largest logit is ~18 (~8 at 0.1, where f16 rounding flipped
    # a near-tied top token). The linear-attention projections are scaled down after init
    # (LINEAR_ATTN_SCALE).
    initializer_range=0.2,
    # A quarter of head_dim rotates (16 dims), in interleaved M-RoPE sections summing to 8, the
    # released [11, 11, 10] shrunk.
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                     "mrope_interleaved": True, "mrope_section": [3, 3, 2]},
)
# f16 rounding of large linear-attention projections is amplified through the recurrence: at
# 0.2 the f16 GGUF's logits were 0.12-0.26 off transformers' (an f32 GGUF's: 0.001); at a
# quarter of that (std 0.05) they are 0.04 off.
LINEAR_ATTN_SCALE = 0.25
_LINEAR_ATTN_PROJECTIONS = ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj")

TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    patch_size=PATCH,
    spatial_merge_size=MERGE,
    temporal_patch_size=2,
    out_hidden_size=256,
    # The released 48x48 learned position grid, interpolated to the image like the real tower.
    num_position_embeddings=2304,
    deepstack_visual_indexes=[],
    # As the text's: keeps image embeddings as large as text embeddings (qwen25vl.py).
    initializer_range=0.1,
)


def chat_template(thinking: bool = False) -> str:
    """The official Qwen3.5 chat template (trl ships both variants): 0.8B and 2B default to no
    thinking (the generation prompt ends with an empty think block), 4B and larger to thinking."""
    import trl

    name = "qwen3_5_think.jinja" if thinking else "qwen3_5_nothink.jinja"
    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def build_tokenizer():
    """Qwen2's byte-level BPE (llama.cpp's vocab GGUF) with Qwen3.5's pre-tokenizer, padded to
    248,044 entries, plus Qwen3.5's added tokens at their real ids."""
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    from convert.families.qwen25vl import add_tokens_at_ids, qwen2_bpe

    normal, merges = qwen2_bpe()
    vocab = {token: i for i, token in enumerate(normal)}
    # No merge produces these, so they never appear in encoded text; they only hold ids.
    for i in range(len(normal), FIRST_ADDED):
        vocab[f"<|qwen35_reserved_{i}|>"] = i
    tokenizer = Qwen3_5Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=262144,
        clean_up_tokenization_spaces=False,
    )
    add_tokens_at_ids(tokenizer, SPECIAL_TOKENS)  # in id order, so each lands on its id
    return tokenizer


def tiny_config():
    from transformers import Qwen3_5Config

    text = dict(TINY_TEXT, vocab_size=VOCAB_SIZE, bos_token_id=TOKEN_IDS["<|endoftext|>"],
                eos_token_id=TOKEN_IDS["<|im_end|>"], pad_token_id=TOKEN_IDS["<|endoftext|>"],
                tie_word_embeddings=True)
    return Qwen3_5Config(
        text_config=text,
        vision_config=dict(TINY_VISION),
        image_token_id=TOKEN_IDS["<|image_pad|>"],
        video_token_id=TOKEN_IDS["<|video_pad|>"],
        vision_start_token_id=TOKEN_IDS["<|vision_start|>"],
        vision_end_token_id=TOKEN_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _processor(tokenizer, min_pixels: int, max_pixels: int, thinking: bool = False):
    """A Qwen3-VL processor (what AutoProcessor builds for Qwen3.5) configured from scratch (no
    hub download); the pixel range goes into `size` as the released preprocessor_config has it."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    common = dict(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                  **common)
    video = Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                  **common)
    return Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                            chat_template=chat_template(thinking))


def make_tiny(out_dir: Path) -> Path:
    """Write a tiny random Qwen3.5 checkpoint (config, safetensors, tokenizer, processor, chat
    template) into `out_dir` (created; must be empty or absent)."""
    import torch
    from transformers import Qwen3_5ForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(TINY_SEED)
    model = Qwen3_5ForConditionalGeneration(tiny_config()).to(torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".linear_attn." in name and name.split(".")[-2] in _LINEAR_ATTN_PROJECTIONS:
                param.mul_(LINEAR_ATTN_SCALE)
    model.generation_config.do_sample = False
    processor = _processor(build_tokenizer(), TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def save_skeleton_processor(out_dir: Path, config) -> None:
    """Tokenizer, processor and chat template of a full-size skeleton (convert/skeleton.py): the
    released processors' pixel range and the template of the size (thinking from 4B up)."""
    hidden = getattr(getattr(config, "text_config", config), "hidden_size", 0)
    thinking = hidden >= 2560  # 4B (2560) and larger ship the thinking template
    _processor(build_tokenizer(), RELEASED_MIN_PIXELS, RELEASED_MAX_PIXELS,
               thinking).save_pretrained(out_dir)


def prepare_for_converter(src_dir: Path, staging_dir: Path) -> Path:
    """llama.cpp's converter reads a Qwen3.5 checkpoint written by transformers 5 as is (it
    takes the nested processor_config.json too); the staging copy only links the files."""
    from convert.families.qwen25vl import prepare_for_converter as link_copy

    return link_copy(src_dir, staging_dir)


def image_budget(ckpt_dir: Path):
    """The image budget a checkpoint's processor applies, capped at the family's seed-like
    budget (geolocsft/families.py), as the core's ImageBudget."""
    from convert.families.qwen25vl import smart_image_budget
    from geolocsft import families

    return smart_image_budget(ckpt_dir, families.by_model_type(MODEL_TYPE).name, PATCH, MERGE)


def stock_chat_handler(mmproj_path: str):
    """llama-cpp-python's generic libmtmd handler: it renders the GGUF's own chat template
    (Qwen3.5's, with the image marker mtmd replaces), which is what a stock user gets."""
    from llama_cpp import llama_chat_format

    return llama_chat_format.MTMDChatHandler(clip_model_path=str(mmproj_path), verbose=False)

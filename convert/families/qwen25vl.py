"""Qwen2.5-VL: the tiny test checkpoint, converter preparation and the image budget.

The tiny model keeps everything that matters to the real code paths (the real Qwen2 BPE
vocabulary and special-token ids, the official chat template, M-RoPE, a small vision tower
with patch 14 / merge 2 and the window/full block pattern, tied embeddings like the 3B) and shrinks everything else. Text hidden
size is 256 so that K-quants apply for real (they need rows divisible by 256)."""

from __future__ import annotations

import shutil
from pathlib import Path


FAMILY = "qwen2.5-vl"  # the registry name (geolocsft.families)
MODEL_TYPE = "qwen2_5_vl"
ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"

# Released Qwen2.5-VL checkpoints this family converts (the paper fine-tunes the 3B, 7B, 32B).
BASE_MODEL_IDS: tuple[str, ...] = (
    "Qwen/Qwen2.5-VL-3B-Instruct",
    "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen/Qwen2.5-VL-32B-Instruct",
    "Qwen/Qwen2.5-VL-72B-Instruct",
)

# Qwen2.5-VL's added tokens, with the ids the released checkpoints use (the first 151,643 ids
# are the byte-level BPE vocabulary). `True` marks the ones registered as special tokens.
SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)
# Released Qwen2.5-VL processors: 4 to 16,384 vision patches of 28x28 before the seed's budget
# caps it (the converter records the seed's budget, not this maximum).
RELEASED_MIN_PIXELS = 56 * 56
RELEASED_MAX_PIXELS = 28 * 28 * 16384

VOCAB_SIZE = 151936  # embedding rows in the released checkpoints (padded past the tokenizer)

# Tiny image budget: 112x112 at most (16 vision tokens after the 2x2 merge), 56x56 at least.
TINY_MAX_PIXELS = 112 * 112
TINY_MIN_PIXELS = 56 * 56
TINY_SEED = 1234

TINY_TEXT = dict(
    hidden_size=256,
    intermediate_size=512,
    # 6 like the tiny Gemma 3: with 2 or 4 layers the SFT'd model read the photo but its greedy
    # captions kept slipping to another place's words (docs/demo.md, "What the tiny Qwen...").
    num_hidden_layers=6,
    num_attention_heads=4,  # head_dim 64
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    # 5x the usual 0.02, as for the tiny Gemma 3. With 0.02 the tied 152k-row embedding and the
    # unit final norm cap a random model's logits near 5, below the ~12 nats a confident token
    # needs over this vocabulary; LoRA cannot move either, so SFT stalled at a loss of ~7.9
    # (the released 3B's trained embedding has no such cap). A 0.2 embedding over 0.02 layers
    # still stalled (loss 1.45 after 96 steps). Peaked logits also keep f16 rounding from
    # flipping near-tied top tokens in the GGUF agreement checks.
    initializer_range=0.1,
    # M-RoPE sections (temporal, height, width) sum to head_dim/2, in the 3B's 2:3:3 ratio.
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
)
TINY_VISION = dict(
    # depth >= 3: the converter maps merger.mlp.{0,2} through the block-index table.
    depth=4,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    out_hidden_size=256,
    # Window attention on blocks 0 and 2, full on 1 and 3: the real pattern (every 8th block
    # full) shrunk. All-full blocks would be simpler but llama.cpp's clip then fails
    # ("Failed to get tensor window_mask"); with images <= 112 px one window covers the image.
    fullatt_block_indexes=[1, 3],
    # Like the text's: at 0.02 the random tower's image embeddings are ~0.03 in size beside text
    # embeddings of 0.1, and the language model learns to ignore the photo.
    initializer_range=0.1,
)


def _chat_template() -> str:
    """The official Qwen2.5-VL chat template, as trl ships it."""
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja"
    return path.read_text(encoding="utf-8")


def qwen2_bpe() -> tuple[list[str], list[tuple[str, str]]]:
    """(tokens, merges) of the real Qwen2 byte-level BPE, from llama.cpp's vocab-only GGUF:
    the 151,643 normal tokens in id order (the Qwen families' added tokens follow them)."""
    from geolocsft.gguf_header import read_gguf
    from convert.llamacpp import import_bundled_gguf, llama_cpp_source

    source = llama_cpp_source()
    gguf = import_bundled_gguf(source)
    path = source.vocab_dir / "ggml-vocab-qwen2.gguf"
    # The fast header reader with every array kept (gguf-py's GGUFReader takes 10+ s here).
    fields = read_gguf(path, max_array=1 << 30).metadata
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    normal = [t for t, kind in zip(tokens, types) if kind == gguf.TokenType.NORMAL]
    first_added = SPECIAL_TOKENS[0][0]
    if len(normal) != first_added or tokens[first_added] != SPECIAL_TOKENS[0][1]:
        raise RuntimeError(
            f"{path}: unexpected layout ({len(normal)} normal tokens, expected {first_added})")
    return normal, [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"]]


def add_tokens_at_ids(tokenizer, special_tokens) -> None:
    """Add (id, text, special) tokens one by one in id order so each lands on its real id; the
    instruct checkpoints' end of sequence is <|im_end|>."""
    from tokenizers import AddedToken

    for token_id, text, special in special_tokens:
        if text not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(text, special=special, normalized=False)],
                                 special_tokens=special)
        got = tokenizer.convert_tokens_to_ids(text)
        if got != token_id:
            raise RuntimeError(f"tokenizer: {text} got id {got}, expected {token_id}")
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.extra_special_tokens = [t for _, t, special in special_tokens
                                      if special and t != "<|endoftext|>"]


def build_tokenizer():
    """The real Qwen2 byte-level BPE tokenizer, rebuilt from llama.cpp's vocab-only GGUF, plus
    Qwen2.5-VL's added tokens at their real ids."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    normal, merges = qwen2_bpe()
    tokenizer = Qwen2Tokenizer(
        vocab={token: i for i, token in enumerate(normal)},
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",  # the constructor adds it first: id 151643
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    add_tokens_at_ids(tokenizer, SPECIAL_TOKENS)
    return tokenizer


def tiny_config():
    from transformers import Qwen2_5_VLConfig

    text = dict(TINY_TEXT, vocab_size=VOCAB_SIZE, bos_token_id=151643, eos_token_id=151645,
                pad_token_id=151643)
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(TINY_VISION),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def make_tiny(out_dir: Path) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (config, safetensors, tokenizer, processor,
    chat template) into `out_dir` (created; must be empty or absent)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    torch.manual_seed(TINY_SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config.do_sample = False
    tokenizer = build_tokenizer()

    # The image/video processors are configured from scratch (no hub download): the tiny
    # budget goes into `size` (shortest_edge = min pixels, longest_edge = max pixels).
    processor = Qwen2_5_VLProcessor(
        image_processor=_image_processor(),
        tokenizer=tokenizer,
        video_processor=_video_processor(),
        chat_template=_chat_template(),
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def _image_processor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=TINY_VISION["patch_size"],
        merge_size=TINY_VISION["spatial_merge_size"],
        temporal_patch_size=TINY_VISION["temporal_patch_size"],
    )


def _video_processor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=TINY_VISION["patch_size"],
        merge_size=TINY_VISION["spatial_merge_size"],
        temporal_patch_size=TINY_VISION["temporal_patch_size"],
    )


def save_skeleton_processor(out_dir: Path, config) -> None:
    """Tokenizer, processor and chat template of a full-size skeleton (convert/skeleton.py):
    the real vocabulary and the released processors' pixel range."""
    from transformers import Qwen2_5_VLProcessor

    pixels = (RELEASED_MIN_PIXELS, RELEASED_MAX_PIXELS)
    Qwen2_5_VLProcessor(image_processor=_image_processor(*pixels), tokenizer=build_tokenizer(),
                        video_processor=_video_processor(*pixels),
                        chat_template=_chat_template()).save_pretrained(out_dir)


def prepare_for_converter(src_dir: Path, staging_dir: Path) -> Path:
    """llama.cpp's converter reads a Qwen2.5-VL checkpoint written by transformers 5 as is; the
    staging copy only links the files so the source is never touched."""
    src_dir, staging_dir = Path(src_dir), Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    for item in src_dir.iterdir():
        target = staging_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            try:
                target.hardlink_to(item)
            except OSError:
                shutil.copy2(item, target)
    return staging_dir


def smart_image_budget(ckpt_dir: Path, family: str, patch: int, merge: int):
    """The image budget a Qwen-VL checkpoint's processor applies (its min/max pixels, patch x
    merge), capped at the family's seed-like budget: released processors allow 12.8-16.7 MP,
    training uses the registry's budget, so a base converted without a training record gets
    that, not the maximum."""
    from convert.families import image_processor_config
    from geolocsft.images import ImageBudget, default_budget

    path, cfg = image_processor_config(ckpt_dir)
    size = cfg.get("size") or {}
    max_pixels = cfg.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
    min_pixels = cfg.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
    if not max_pixels or not min_pixels:
        raise ValueError(f"{path}: no min/max pixels in the image processor config")
    factor = int(cfg.get("patch_size", patch)) * int(cfg.get("merge_size", merge))
    return ImageBudget(family=family,
                       max_pixels=min(int(max_pixels), default_budget(family).max_pixels),
                       min_pixels=int(min_pixels), factor=factor)


def image_budget(ckpt_dir: Path):
    """The image budget a checkpoint's processor applies, as the core's ImageBudget."""
    return smart_image_budget(ckpt_dir, FAMILY, TINY_VISION["patch_size"],
                              TINY_VISION["spatial_merge_size"])


def stock_chat_handler(mmproj: Path):
    """llama-cpp-python's own Qwen2.5-VL chat handler."""
    from llama_cpp import llama_chat_format

    return llama_chat_format.Qwen25VLChatHandler(clip_model_path=str(mmproj), verbose=False)

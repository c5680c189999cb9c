"""Qwen3-VL: the tiny test checkpoint, converter preparation, the image budget and the stock
chat handler.

What differs from Qwen2.5-VL and why it matters here:
- the language model is Qwen3 (q/k RMS norms, explicit head_dim, no attention biases) with
  *interleaved* M-RoPE (`mrope_interleaved`), which llama.cpp runs as its "qwen3vl" architecture;
- the vision tower uses 16 px patches merged 2x2 (sides are multiples of 32, not 28), a learned
  position grid resampled to each image, no window attention, and DeepStack: mergers on a few
  intermediate blocks whose features are added to the first language-model layers. llama.cpp's
  projector ("qwen3vl_merger") hands the text model one embedding per vision token that is
  (1 + number of DeepStack layers) x hidden wide;
- the released processor normalises with mean/std 0.5 (not CLIP's) and allows 256² to 4096²
  pixels;
- the chat template has no default system turn (Qwen2.5-VL adds "You are a helpful assistant.").

The tiny model keeps all of that (the real Qwen2 BPE vocabulary with Qwen3's added tokens at
their real ids, the official chat template, interleaved M-RoPE in the released 24:20:20 ratio,
a 4-block vision tower with three DeepStack mergers as in the released 3-of-24 pattern, tied
embeddings like the 2B and 4B) and shrinks the rest. Text hidden size is 256 so that K-quants
apply for real (they need rows divisible by 256)."""

from __future__ import annotations

from pathlib import Path

from convert.families import qwen25vl

FAMILY = "qwen3-vl"  # the registry name (geolocsft.families)
MODEL_TYPE = "qwen3_vl"
ARCHITECTURE = "Qwen3VLForConditionalGeneration"

# The dense Instruct checkpoints (the MoE 30B-A3B / 235B-A22B are Qwen3VLMoe*, another class).
BASE_MODEL_IDS: tuple[str, ...] = (
    "Qwen/Qwen3-VL-2B-Instruct",
    "Qwen/Qwen3-VL-4B-Instruct",
    "Qwen/Qwen3-VL-8B-Instruct",
    "Qwen/Qwen3-VL-32B-Instruct",
)

# Qwen3 added four tokens after Qwen2.5's list (ids 151643-151664, in qwen25vl.SPECIAL_TOKENS);
# the published Qwen3 / Qwen3-VL tokenizer_config.json registers them as non-special.
EXTRA_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
SPECIAL_TOKENS = qwen25vl.SPECIAL_TOKENS + EXTRA_TOKENS
VOCAB_SIZE = 151936  # embedding rows of the released checkpoints (padded past the tokenizer)
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = 151655, 151656
VISION_START_ID, VISION_END_ID = 151652, 151653

PATCH, MERGE = 16, 2
FACTOR = PATCH * MERGE
# The released processors' range (preprocessor_config.json "size": shortest_edge 65536 = 256²,
# longest_edge 16777216 = 4096²) and normalisation.
RELEASED_MIN_PIXELS = 65536
RELEASED_MAX_PIXELS = 16777216
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)

# Tiny image budget: 128x128 at most (16 vision tokens after the 2x2 merge), 64x64 at least.
TINY_MAX_PIXELS = 128 * 128
TINY_MIN_PIXELS = 64 * 64
TINY_SEED = 1234

TINY_TEXT = dict(
    hidden_size=256,
    intermediate_size=512,
    # 6 as for the tiny Qwen2.5-VL and Gemma 3 (fewer layers learned the demo's captions badly);
    # also >= 3 so each DeepStack feature has its own layer, as in the released models.
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    # 5x the usual 0.02, as for the other tiny families: a 0.02 tied embedding over a 152k
    # vocabulary caps a random model's logits too low for SFT to reach confident tokens, and
    # peaked logits keep f16 rounding from flipping near-tied top tokens in the GGUF checks.
    initializer_range=0.1,
    # Interleaved M-RoPE; sections (temporal, height, width) sum to head_dim/2 in the released
    # 24:20:20 ratio.
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                     "mrope_section": [12, 10, 10], "mrope_interleaved": True},
)
TINY_VISION = dict(
    depth=4,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    patch_size=PATCH,
    spatial_merge_size=MERGE,
    temporal_patch_size=2,
    out_hidden_size=256,
    # The learned position grid: 8x8 covers the tiny 128 px maximum without resampling (the
    # released 48x48 covers 768 px). llama.cpp derives its nominal image size from it.
    num_position_embeddings=64,
    # Three DeepStack mergers as in the released models ([5, 11, 17] of 24 blocks), shrunk.
    deepstack_visual_indexes=[0, 1, 2],
    # Like the text's: at 0.02 the random tower's image embeddings are tiny beside the text's
    # and the language model learns to ignore the photo.
    initializer_range=0.1,
)


def _chat_template() -> str:
    """The official Qwen3-VL chat template, as trl ships it."""
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / "qwen3_vl.jinja"
    return path.read_text(encoding="utf-8")


def build_tokenizer():
    """The real Qwen2 byte-level BPE (Qwen3 uses the same vocabulary and merges), with Qwen3's
    added tokens at their real ids."""
    from tokenizers import AddedToken

    tokenizer = qwen25vl.build_tokenizer()
    for token_id, text, special in EXTRA_TOKENS:
        tokenizer.add_tokens([AddedToken(text, special=special, normalized=False)],
                             special_tokens=special)
        got = tokenizer.convert_tokens_to_ids(text)
        if got != token_id:
            raise RuntimeError(f"tokenizer: {text} got id {got}, expected {token_id}")
    return tokenizer


def tiny_config():
    from transformers import Qwen3VLConfig

    text = dict(TINY_TEXT, vocab_size=VOCAB_SIZE, bos_token_id=151643, eos_token_id=151645,
                pad_token_id=151643, tie_word_embeddings=True)
    return Qwen3VLConfig(
        text_config=text,
        vision_config=dict(TINY_VISION),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
        tie_word_embeddings=True,
    )


def _image_processor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
    )


def _video_processor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLVideoProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
    )


def _processor(min_pixels: int, max_pixels: int):
    from transformers import Qwen3VLProcessor

    return Qwen3VLProcessor(image_processor=_image_processor(min_pixels, max_pixels),
                            tokenizer=build_tokenizer(),
                            video_processor=_video_processor(min_pixels, max_pixels),
                            chat_template=_chat_template())


def make_tiny(out_dir: Path) -> Path:
    """Write a tiny random Qwen3-VL checkpoint (config, safetensors, tokenizer, processor, chat
    template) into `out_dir` (created; must be empty or absent)."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    torch.manual_seed(TINY_SEED)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir, safe_serialization=True)
    _processor(TINY_MIN_PIXELS, TINY_MAX_PIXELS).save_pretrained(out_dir)
    return out_dir


def save_skeleton_processor(out_dir: Path, config) -> None:
    """Tokenizer, processor and chat template of a full-size skeleton (convert/skeleton.py):
    the real vocabulary and the released processors' pixel range."""
    _processor(RELEASED_MIN_PIXELS, RELEASED_MAX_PIXELS).save_pretrained(out_dir)


def prepare_for_converter(src_dir: Path, staging_dir: Path) -> Path:
    """llama.cpp's converter reads a Qwen3-VL checkpoint written by transformers 5 as is (it
    maps the DeepStack mergers, splits the Conv3D patch embedding and takes the interleaved
    M-RoPE sections from `rope_parameters`); the staging copy only links the files."""
    return qwen25vl.prepare_for_converter(src_dir, staging_dir)


def image_budget(ckpt_dir: Path):
    """The image budget a checkpoint's processor applies, as the core's ImageBudget: the
    checkpoint's range, capped at the seed's 1,280 tokens (released processors allow 16 MP)."""
    return qwen25vl.smart_image_budget(ckpt_dir, FAMILY, PATCH, MERGE)


def stock_chat_handler(mmproj_path: Path):
    """llama-cpp-python's generic mtmd handler: it renders the GGUF's own chat template (the
    official one, which has no default system turn) with mtmd's media marker where the image
    goes, and mtmd wraps it in <|vision_start|>..<|vision_end|>."""
    from llama_cpp import llama_chat_format

    return llama_chat_format.MTMDChatHandler(clip_model_path=str(mmproj_path), verbose=False)

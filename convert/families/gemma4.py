"""Gemma 4: the tiny test checkpoint, converter preparation, the image budget and the stock
chat handler.

Facts this module relies on (transformers 5.24 `models/gemma4`, llama.cpp of llama-cpp-python
0.3.36: `conversion/gemma.py`, `src/models/gemma4.cpp`, `tools/mtmd/`):
- the tokenizer is a `tokenizer.json` BPE with byte fallback (spaces -> "▁", no pre-split):
  llama.cpp's converter reads it through `LlamaHfVocab`, writes tokenizer model "gemma4" and
  BPE merges, and takes the embedding rows of tokenizer.json's vocabulary plus its added
  tokens. No tokenizer.model is used (a stray one would make the converter count the
  SentencePiece pieces instead), and the HF tokenizer does not add <bos>: the chat template
  writes it;
- the image placeholder the template writes is `<|image|>`; the processor expands it to
  `<|image>` + n x `<|image|>` + `<image|>`, and mtmd wraps its embeddings in the same
  `<|image>` / `<image|>`, so the marker takes the placeholder's place with no text around;
- photos are resized aspect-kept to sides that are multiples of patch 16 x pooling 3 = 48 px
  with at most `max_soft_tokens` (70/140/280/560/1120) tokens; mtmd resizes to the same grid
  and leaves a photo already on it alone when the token limits include it;
- E2B/E4B text models: per-layer input embeddings (PLE), the last layers share the KV cache of
  earlier ones (those layers have no k/v projections; llama.cpp reuses the last non-shared
  layer of the same attention type, so the last two non-shared layers must be sliding, full),
  and E2B doubles the MLP width of the shared layers.

The tiny model keeps all of that and shrinks the rest: 6 text layers (sliding, sliding, full)
x 2 with the last 3 sharing KV, PLE width 64, double-wide MLP, final logit soft-capping 30,
hidden size 256 so K-quants apply; a 2-layer vision tower with patch 16, pooling 3 and clipped
linears like the released E-models, budget 70 tokens (the smallest the processor accepts).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from geolocsft.fsutil import read_json

MODEL_TYPE = "gemma4"
ARCHITECTURE = "Gemma4ForConditionalGeneration"

# Released Gemma 4 checkpoints this module's layout (dense layers with q/k/v/o projections,
# KV sharing) is checked for. The 26B-A4B (mixture of experts) and 31B (keys as values on
# full-attention layers) also take images but have other projection sets: not listed.
BASE_MODEL_IDS: tuple[str, ...] = (
    "google/gemma-4-E2B-it",
    "google/gemma-4-E4B-it",
    "google/gemma-4-E2B",
    "google/gemma-4-E4B",
)

IMAGE_TOKEN = "<|image|>"  # what the chat template writes; the processor expands it
BOI_TOKEN = "<|image>"
EOI_TOKEN = "<image|>"
END_OF_TURN = "<turn|>"

# The processor accepts only these image budgets (Gemma4ImageProcessor._SUPPORTED_SOFT_TOKENS).
ALLOWED_SOFT_TOKENS = (70, 140, 280, 560, 1120)

# Named special tokens of the released tokenizer_config.json (GemmaTokenizer attributes).
_NAMED_TOKENS = {
    "image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN,
    "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
    "sot_token": "<|turn>", "eot_token": END_OF_TURN,
    "soc_token": "<|channel>", "eoc_token": "<channel|>", "think_token": "<|think|>",
    "escape_token": '<|"|>', "str_token": "<|tool_response>", "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>", "etc_token": "<tool_call|>", "std_token": "<|tool>",
    "etd_token": "<tool|>",
}
VIDEO_TOKEN = "<|video|>"
# SentencePiece pieces of the tiny tokenizer in id order: 0-3 are SentencePiece's own slots,
# the rest user-defined symbols (always one piece), as in Gemma's vocabulary.
_SP_RESERVED = ("<pad>", "<eos>", "<bos>", "<unk>")
_SP_USER_SYMBOLS = ("<mask>", "[multimodal]", *_NAMED_TOKENS.values(), VIDEO_TOKEN)
TINY_TOKEN_IDS = {piece: i for i, piece in enumerate(_SP_RESERVED + _SP_USER_SYMBOLS)}
TINY_VOCAB_SIZE = 1024  # = embedding rows: Gemma 4's embedding has no padding rows

# Ids in the released 262,144-token vocabulary (config.json token ids, eos [1, 106], and the
# <|channel> pair seen in published tokenizer.json files). The other markers' released ids
# were not checked; the skeleton puts them in free slots (timing does not depend on them).
RELEASED_VOCAB = 262144
RELEASED_TOKEN_IDS = {
    "<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3,
    "<|channel>": 100, "<channel|>": 101, "<|turn>": 105, END_OF_TURN: 106,
    BOI_TOKEN: 255999, "<|audio>": 256000, IMAGE_TOKEN: 258880, "<|audio|>": 258881,
    EOI_TOKEN: 258882, "<audio|>": 258883, VIDEO_TOKEN: 258884,
}

TINY_SEED = 1234
TINY_SOFT_TOKENS = 70
TINY_TEXT = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=6,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    num_attention_heads=4,
    num_key_value_heads=1,  # E2B: 1, E4B: 2
    head_dim=64,
    global_head_dim=128,  # full-attention layers have wider heads (256 / 512 released)
    sliding_window=64,  # shorter than any prompt with a photo, so the window is exercised
    num_kv_shared_layers=3,
    use_double_wide_mlp=True,
    hidden_size_per_layer_input=64,
    vocab_size_per_layer_input=TINY_VOCAB_SIZE,
    final_logit_softcapping=30.0,
    # mtmd decodes a Gemma 4 image chunk non-causally unless the text width is E2B's 1536 or
    # E4B's 2560; transformers matches that only with bidirectional attention over vision
    # tokens (the 26B/31B setting). The released E-models are causal over images.
    use_bidirectional_attention="vision",
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    # Weights 5x the usual 0.02 make the random model's logits peaked: with flat logits
    # near-ties flip the top token under f16 rounding, and the parity check means nothing.
    initializer_range=0.1,
    rope_parameters={
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                           "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
)
TINY_VISION = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=64,
    patch_size=16,
    pooling_kernel_size=3,  # mtmd's default n_merge for Gemma 4; the converter writes none
    position_embedding_size=256,  # covers the widest 70-token photo (210 patches a side)
    use_clipped_linears=True,  # like the released E-models' vision towers
    standardize=False,
    rms_norm_eps=1e-6,
)


class Gemma4PrepareError(ValueError):
    """A checkpoint that cannot be made ready for llama.cpp's converter; names the file."""


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_sentencepiece() -> bytes:
    """The tiny vocabulary: Gemma 3's factory trains it (same corpus and normalisation settings)
    with Gemma 4's markers; transformers turns it into Gemma 4's tokenizer.json form."""
    from convert.families.gemma3 import train_sentencepiece as train

    return train(TINY_VOCAB_SIZE, _SP_USER_SYMBOLS)


def build_tokenizer(sp_model: bytes, expected_ids: dict[str, int]):
    """A transformers GemmaTokenizer (tokenizers backend) from SentencePiece bytes, with
    Gemma 4's named special tokens, no automatic <bos> and left padding as released."""
    import tempfile

    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(sp_model)
        tokenizer = GemmaTokenizer.from_pretrained(
            tmp, add_bos_token=False, add_eos_token=False, padding_side="left",
            extra_special_tokens=dict(_NAMED_TOKENS),
        )
    # Loading details that must not end up in the saved tokenizer_config.json.
    for key in ("vocab_file", "is_local", "local_files_only", "name_or_path"):
        tokenizer.init_kwargs.pop(key, None)
    for text, want in expected_ids.items():
        got = tokenizer.convert_tokens_to_ids(text)
        if got != want:
            raise RuntimeError(f"Gemma 4 tokenizer: {text} has id {got}, expected {want}")
    return tokenizer


def _chat_template() -> str:
    """The official Gemma 4 chat template (google/gemma-4-E2B-it's current revision, as trl
    ships it): <bos>, `<|turn>role ... <turn|>`, `<|image|>` for an image part, no thinking."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "gemma4_v5.jinja").read_text(encoding="utf-8")


def _processor(tokenizer, soft_tokens: int, patch_size: int, pooling: int):
    from transformers import Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_gemma4 import Gemma4ImageProcessor
    from transformers.models.gemma4.video_processing_gemma4 import Gemma4VideoProcessor

    # The processor requires its audio and video parts even where only images are used.
    image_processor = Gemma4ImageProcessor(max_soft_tokens=soft_tokens, patch_size=patch_size,
                                           pooling_kernel_size=pooling)
    return Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                           image_processor=image_processor, tokenizer=tokenizer,
                           video_processor=Gemma4VideoProcessor(), chat_template=_chat_template(),
                           image_seq_length=soft_tokens)


# ---------------------------------------------------------------------------------------------
# Tiny checkpoint


def tiny_config():
    from transformers import Gemma4Config

    ids = TINY_TOKEN_IDS
    text = dict(TINY_TEXT, vocab_size=TINY_VOCAB_SIZE, pad_token_id=ids["<pad>"],
                eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"])
    return Gemma4Config(
        text_config=text,
        vision_config=dict(TINY_VISION),
        audio_config=None,  # no audio tower: the mmproj is vision-only
        boi_token_id=ids[BOI_TOKEN], eoi_token_id=ids[EOI_TOKEN], image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN], boa_token_id=ids["<|audio>"],
        eoa_token_index=ids["<audio|>"], audio_token_id=ids["<|audio|>"],
        initializer_range=TINY_TEXT["initializer_range"],
        tie_word_embeddings=True,
    )


def _perturb(model) -> None:
    """Give the weights transformers initialises to constants random values, so tests see them:
    norms at 1 and layer scalars at 1 would hide a lost norm or scalar, a position table of
    ones makes every patch position the same, and infinite clip bounds never clip."""
    import torch

    generator = torch.Generator().manual_seed(TINY_SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("position_embedding_table"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            elif param.ndim == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("layer_scalar"):
                buf.copy_(1.0 + torch.rand(buf.shape, generator=generator) * 0.5)
            elif name.endswith(("input_max", "output_max")):
                buf.fill_(8.0)  # wide enough to keep the signal, narrow enough to clip outliers
            elif name.endswith(("input_min", "output_min")):
                buf.fill_(-8.0)
        # Gemma 4 attention takes q.k unscaled (scaling 1.0) after RMS-normalising q and k per
        # head: with norm weights near 1 the scores have a spread of sqrt(head_dim) (8 / 11) and
        # every softmax is nearly one-hot (mean top weight 0.78; Gemma 3's tiny model: 0.1), so
        # LoRA gets almost no gradient through attention and the demo's model never learns to
        # read the photo. Weights of head_dim^-1/4 on both norms give scores of spread ~1, as
        # 1/sqrt(head_dim) does elsewhere. Language model only: the frozen vision tower's
        # features already tell the demo's photos apart.
        for name, param in model.named_parameters():
            if ".language_model." in name and name.endswith(("self_attn.q_norm.weight",
                                                             "self_attn.k_norm.weight")):
                param.mul_(param.shape[0] ** -0.25)


def make_tiny(out_dir: Path) -> Path:
    """Write a tiny random Gemma 4 checkpoint (config, safetensors, tokenizer, processor, chat
    template) into `out_dir`. Same bytes of weights for the same code."""
    import torch
    from transformers import Gemma4ForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(train_sentencepiece(), TINY_TOKEN_IDS)
    processor = _processor(tokenizer, TINY_SOFT_TOKENS, TINY_VISION["patch_size"],
                           TINY_VISION["pooling_kernel_size"])
    torch.manual_seed(TINY_SEED)
    model = Gemma4ForConditionalGeneration(tiny_config()).to(torch.float32).eval()
    _perturb(model)
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Full-size skeleton (convert/skeleton.py)


def released_size_sentencepiece() -> bytes:
    """SentencePiece bytes of the released vocabulary size (the tiny pieces with the markers at
    their released ids; gemma3.spread_pieces)."""
    from convert.families.gemma3 import spread_pieces

    return spread_pieces(train_sentencepiece(), RELEASED_VOCAB, RELEASED_TOKEN_IDS)


def save_skeleton_processor(out_dir: Path, config) -> None:
    """Tokenizer (released size), processor and chat template of a full-size skeleton, as the
    released repository has them (default budget 280 soft tokens)."""
    tokenizer = build_tokenizer(released_size_sentencepiece(), RELEASED_TOKEN_IDS)
    vision = config.vision_config
    _processor(tokenizer, 280, int(vision.patch_size), int(vision.pooling_kernel_size)).save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------
# Converter preparation


def prepare_for_converter(src_dir: Path, staging_dir: Path) -> Path:
    """A staging copy of the Gemma 4 checkpoint `src_dir` that llama.cpp's converter reads
    correctly (the source is never modified; files are hard links where possible):
    - refuses what the converter would mis-read: another model type, no tokenizer.json, no
      weights;
    - leaves out a tokenizer.model: the converter would size the embedding from it instead of
      from tokenizer.json, which is what the vocabulary is written from."""
    src_dir, staging_dir = Path(src_dir), Path(staging_dir)
    config = read_json(src_dir / "config.json", Gemma4PrepareError)
    if config.get("model_type") != MODEL_TYPE or ARCHITECTURE not in (config.get("architectures") or []):
        raise Gemma4PrepareError(
            f"{src_dir / 'config.json'}: not a Gemma 4 vision checkpoint "
            f"(model_type {config.get('model_type')!r}, architectures {config.get('architectures')!r})")
    if not config.get("vision_config"):
        raise Gemma4PrepareError(f"{src_dir / 'config.json'}: no vision_config (text-only checkpoint)")
    if not (src_dir / "tokenizer.json").is_file():
        raise Gemma4PrepareError(f"{src_dir / 'tokenizer.json'}: missing (Gemma 4's vocabulary)")
    if not any(src_dir.glob("*.safetensors")):
        raise Gemma4PrepareError(f"{src_dir}: no .safetensors weights")
    if staging_dir.exists() and any(staging_dir.iterdir()):
        raise Gemma4PrepareError(f"{staging_dir}: staging folder is not empty")
    staging_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(src_dir.iterdir()):
        if item.name.startswith(".") or item.name == "tokenizer.model":
            continue
        target = staging_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, copy_function=shutil.copy2)
            continue
        try:
            target.hardlink_to(item)
        except OSError:
            shutil.copy2(item, target)
    return staging_dir


# ---------------------------------------------------------------------------------------------
# Image budget


def image_budget(ckpt_dir: Path):
    """The budget the checkpoint's processor applies: aspect-kept sides on a grid of patch x
    pooling pixels, at most max_soft_tokens cells."""
    from geolocsft.images import ImageBudget

    from convert.families import image_processor_config

    path, cfg = image_processor_config(ckpt_dir, Gemma4PrepareError)
    tokens = int(cfg.get("max_soft_tokens") or 280)
    if tokens not in ALLOWED_SOFT_TOKENS:
        raise Gemma4PrepareError(f"{path}: max_soft_tokens {tokens} is not one of {ALLOWED_SOFT_TOKENS}")
    factor = int(cfg.get("patch_size") or 16) * int(cfg.get("pooling_kernel_size") or 3)
    return ImageBudget(family="gemma4", max_pixels=tokens * factor * factor, factor=factor)


def processor_size(width: int, height: int, factor: int, max_tokens: int) -> tuple[int, int]:
    """(width, height) Gemma4ImageProcessor resizes a photo to: scaled to the token area, each
    side floored to the grid (a side that floors to 0 gets one cell, the other side as many
    as the aspect ratio gives, capped)."""
    scale = math.sqrt(max_tokens * factor * factor / (width * height))
    w = math.floor(width * scale / factor) * factor
    h = math.floor(height * scale / factor) * factor
    longest = max_tokens * factor
    if h == 0:
        h, w = factor, min(math.floor(width / height) * factor, longest)
    elif w == 0:
        w, h = factor, min(math.floor(height / width) * factor, longest)
    return w, h


# ---------------------------------------------------------------------------------------------
# Stock chat handler (convert verify, bench/laptop.py's "stock" column)


def stock_chat_handler(mmproj_path: Path):
    """llama-cpp-python's own handler: it renders the GGUF's chat template (Gemma 4's) with
    mtmd's marker where the image goes; mtmd adds <|image> ... <image|> around it."""
    from llama_cpp import llama_chat_format

    return llama_chat_format.Gemma4ChatHandler(clip_model_path=str(mmproj_path), verbose=False)

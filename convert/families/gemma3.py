"""Gemma 3: the tiny test checkpoint, converter preparation and the image budget.

The tiny model keeps what matters to the real code paths and shrinks the rest:
- a SentencePiece BPE tokenizer (byte fallback, no dummy prefix, split digits, like Gemma's),
  trained here on a small generated geography corpus, with Gemma's special tokens in Gemma's
  roles: <pad>=0, <eos>=1, <bos>=2, <unk>=3 and <image_soft_token> as an added token after the
  SentencePiece vocabulary with the embedding padded 64 rows further, as in the released models;
- the official Gemma 3 chat template (from trl);
- 6 text layers, 5 sliding-window + 1 full attention: llama.cpp hard-codes Gemma 3's 5:1 pattern,
  any other pattern drifts from transformers; linear RoPE scaling on the full-attention layers
  like the 4B/12B/27B; hidden size 256 so K-quants apply for real (rows divisible by 256);
- a SigLIP tower at 224 px with patch 14 and 16 tokens per image: 16x16 patches pooled 4x4, the
  same pooling factor as the real 896 px / 256 tokens, so llama.cpp's projector default applies.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

from geolocsft.fsutil import atomic_open, atomic_write, read_json

FAMILY = "gemma3"  # the registry name (geolocsft.families)
MODEL_TYPE = "gemma3"
ARCHITECTURE = "Gemma3ForConditionalGeneration"

# Released Gemma 3 checkpoints with vision this family converts (the 1B is text-only).
BASE_MODEL_IDS: tuple[str, ...] = (
    "google/gemma-3-4b-it",
    "google/gemma-3-12b-it",
    "google/gemma-3-27b-it",
    "google/gemma-3-4b-pt",
    "google/gemma-3-12b-pt",
    "google/gemma-3-27b-pt",
)

BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
IMAGE_TOKEN = "<image_soft_token>"

# SentencePiece pieces of the tiny tokenizer in id order: 0-3 are SentencePiece's own slots,
# the rest user-defined symbols (always one piece), as in Gemma's tokenizer.model.
_SP_RESERVED = ("<pad>", "<eos>", "<bos>", "<unk>")
_SP_USER_SYMBOLS = ("<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>", BOI_TOKEN, EOI_TOKEN)
# id of each of those pieces in the tiny tokenizer
TINY_TOKEN_IDS = {piece: i for i, piece in enumerate(_SP_RESERVED + _SP_USER_SYMBOLS)}
TINY_SP_VOCAB = 1024
TINY_VOCAB_SIZE = TINY_SP_VOCAB + 64  # embedding rows: padded past <image_soft_token> like 262,208
TINY_SEED = 1234
TINY_IMAGE_SIDE = 224
TINY_TOKENS_PER_IMAGE = 16

TINY_TEXT = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=6,  # layer_types default: 5 sliding + 1 full (Gemma 3's pattern)
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    # llama.cpp scales queries by 1/sqrt(head_dim) for every size but the 27B: keep them equal.
    query_pre_attn_scalar=64,
    # 4x the image's tokens, like the released 1024-token window over 256 image tokens; still
    # far shorter than the prompt, so the sliding layers are exercised.
    sliding_window=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    # Weights 5x the usual 0.02 make the random model's logits peaked (std ~1.6 instead of
    # ~0.3): with flat logits near-ties flip the top token under f16 rounding (~1% of
    # positions), which would make the GGUF-vs-transformers agreement check meaningless.
    initializer_range=0.1,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
)
TINY_VISION = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=TINY_IMAGE_SIDE,
    patch_size=14,
    layer_norm_eps=1e-6,
    vision_use_head=False,
)


class Gemma3PrepareError(ValueError):
    """A checkpoint that cannot be made ready for llama.cpp's converter; names the file."""


# ---------------------------------------------------------------------------------------------
# Tiny tokenizer


def _corpus_lines(seed: int = 0, n: int = 4000) -> list[str]:
    """Deterministic English/geography text: scene descriptions, clue lists, and the JSON answer
    format, so the learnt pieces look like what the model will read and write."""
    places = [
        ("France", "Paris", "Europe"), ("Japan", "Tokyo", "Asia"), ("Kenya", "Nairobi", "Africa"),
        ("Peru", "Lima", "South America"), ("Norway", "Oslo", "Europe"), ("Egypt", "Cairo", "Africa"),
        ("Australia", "Sydney", "Oceania"), ("Canada", "Toronto", "North America"),
        ("India", "Mumbai", "Asia"), ("Brazil", "Rio de Janeiro", "South America"),
        ("Mexico", "Oaxaca", "North America"), ("Italy", "Florence", "Europe"),
        ("Spain", "Seville", "Europe"), ("Vietnam", "Hanoi", "Asia"), ("Morocco", "Marrakesh", "Africa"),
        ("Chile", "Valparaiso", "South America"), ("Iceland", "Reykjavik", "Europe"),
        ("Thailand", "Chiang Mai", "Asia"), ("Turkey", "Istanbul", "Asia"),
        ("Argentina", "Buenos Aires", "South America"), ("Germany", "Berlin", "Europe"),
        ("China", "Chengdu", "Asia"), ("Nepal", "Kathmandu", "Asia"), ("Ghana", "Accra", "Africa"),
        ("New Zealand", "Wellington", "Oceania"), ("United States", "Denver", "North America"),
        ("Scotland", "Edinburgh", "Europe"), ("Indonesia", "Yogyakarta", "Asia"),
        ("Greece", "Athens", "Europe"), ("Portugal", "Lisbon", "Europe"),
    ]
    scenes = [
        "a narrow cobbled street", "a busy market square", "terraced rice fields",
        "a snowy mountain pass", "a quiet harbour with fishing boats", "a desert highway",
        "a colonial church", "a modern glass skyline", "a tropical beach with palm trees",
        "a pine forest beside a lake", "a railway station platform", "a temple courtyard",
        "a vineyard on rolling hills", "a river promenade", "a suburban road with bungalows",
    ]
    clues = [
        "road markings are {c} dashed lines", "cars drive on the {s} side",
        "signs are written in {l}", "the vegetation looks {v}", "roofs are covered with {r} tiles",
        "utility poles are made of {p}", "the sun is high in the {d} sky",
        "licence plates are {c} and narrow", "bollards have a {c} reflector",
        "the architecture suggests {a} influence",
    ]
    fill = {
        "c": ["white", "yellow", "red", "blue", "black"],
        "s": ["left", "right"],
        "l": ["Latin script", "Cyrillic script", "Arabic script", "Thai script", "Devanagari",
              "Chinese characters", "Japanese kana"],
        "v": ["temperate", "arid", "tropical", "alpine", "Mediterranean", "boreal"],
        "r": ["clay", "slate", "metal", "thatch", "concrete"],
        "p": ["wood", "concrete", "steel"],
        "d": ["northern", "southern"],
        "a": ["Spanish colonial", "Ottoman", "Soviet", "Victorian", "Moorish", "Scandinavian", "Khmer"],
    }
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        country, city, continent = rng.choice(places)
        scene = rng.choice(scenes)
        clue = rng.choice(clues).format(**{k: rng.choice(v) for k, v in fill.items()})
        lat, lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
        kind = i % 4
        if kind == 0:
            lines.append(f"The photo shows {scene}; {clue}. This points to {city}, {country}, in {continent}.")
        elif kind == 1:
            lines.append(f'{{"scene": "{scene}", "clues": ["{clue}"], "reasoning": "consistent with {country}"}}')
        elif kind == 2:
            lines.append(
                f'<answer>{{"latitude": {lat:.4f}, "longitude": {lon:.4f}, "region": "{city}", '
                f'"country": "{country}", "confidence": {rng.random():.2f}}}</answer>'
            )
        else:
            lines.append(f"Where was this photo taken? Look at {scene} and answer with coordinates near {city}.")
    return lines


def train_sentencepiece(vocab_size: int = TINY_SP_VOCAB,
                        user_symbols: tuple[str, ...] = _SP_USER_SYMBOLS) -> bytes:
    """The tiny tokenizer.model: SentencePiece BPE with Gemma's normalisation settings, the
    reserved pieces first and `user_symbols` (the family's markers) as single pieces."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece=_SP_RESERVED[0], eos_piece=_SP_RESERVED[1], bos_piece=_SP_RESERVED[2],
        unk_piece=_SP_RESERVED[3],
        user_defined_symbols=list(user_symbols),
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,  # one thread: the same pieces on every run
        minloglevel=2,
    )
    return model.getvalue()


def build_tokenizer(tokenizer_model: Path, expected_ids: dict[str, int] | None = None):
    """A transformers GemmaTokenizer from a tokenizer.model, with Gemma 3's image tokens."""
    import tempfile

    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(tokenizer_model, Path(tmp) / "tokenizer.model")
        tokenizer = GemmaTokenizer.from_pretrained(
            tmp,
            add_bos_token=True,
            add_eos_token=False,
            extra_special_tokens={"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_TOKEN},
        )
        # Loading details that must not end up in the saved tokenizer_config.json.
        for key in ("vocab_file", "is_local", "local_files_only", "name_or_path"):
            tokenizer.init_kwargs.pop(key, None)
    # Turn markers are special in the released tokenizer (skipped when decoding answers).
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<start_of_turn>", "<end_of_turn>")],
        special_tokens=True,
    )
    expected = expected_ids or {**TINY_TOKEN_IDS, IMAGE_TOKEN: TINY_SP_VOCAB}
    for text, want in expected.items():
        got = tokenizer.convert_tokens_to_ids(text)
        if got != want:
            raise RuntimeError(f"Gemma tokenizer: {text} has id {got}, expected {want}")
    return tokenizer


def _chat_template() -> str:
    """The official Gemma 3 chat template, as trl ships it."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tiny checkpoint


def tiny_config():
    from transformers import Gemma3Config

    ids = TINY_TOKEN_IDS
    text = dict(TINY_TEXT, vocab_size=TINY_VOCAB_SIZE, pad_token_id=ids["<pad>"],
                eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"])
    return Gemma3Config(
        text_config=text,
        vision_config=dict(TINY_VISION, model_type="siglip_vision_model"),
        mm_tokens_per_image=TINY_TOKENS_PER_IMAGE,
        boi_token_index=TINY_TOKEN_IDS[BOI_TOKEN],
        eoi_token_index=TINY_TOKEN_IDS[EOI_TOKEN],
        image_token_index=TINY_SP_VOCAB,
        initializer_range=TINY_TEXT["initializer_range"],
        tie_word_embeddings=True,
    )


def _image_processor(side: int = TINY_IMAGE_SIDE):
    from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor

    # Real Gemma 3: bilinear squash to a fixed square, scaled to [-1, 1], no pan-and-scan.
    return Gemma3ImageProcessor(
        size={"height": side, "width": side},
        resample=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )


def _perturb(model) -> None:
    """Give the weights transformers initialises to constants random values, so tests see them:
    the projector starts at zero (a zero projector makes every image invisible to the model,
    so no vision test could fail), and norms at 0 / 1 (which would hide a lost norm shift)."""
    import torch

    generator = torch.Generator().manual_seed(TINY_SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mm_input_projection_weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            elif param.ndim == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def make_tiny(out_dir: Path) -> Path:
    """Write a tiny random Gemma 3 checkpoint (config, safetensors, tokenizer.model + tokenizer,
    processor, chat template) into `out_dir`. Same bytes of weights for the same code."""
    import tempfile

    import torch
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sp_path = Path(tmp) / "tokenizer.model"
        sp_path.write_bytes(train_sentencepiece())
        tokenizer = build_tokenizer(sp_path)
        processor = Gemma3Processor(
            image_processor=_image_processor(),
            tokenizer=tokenizer,
            chat_template=_chat_template(),
            image_seq_length=TINY_TOKENS_PER_IMAGE,
        )
        torch.manual_seed(TINY_SEED)
        model = Gemma3ForConditionalGeneration(tiny_config()).to(torch.float32).eval()
        _perturb(model)
        model.generation_config.do_sample = False
        model.save_pretrained(out_dir, safe_serialization=True)
        processor.save_pretrained(out_dir)
        # transformers 5 does not write tokenizer.model; the released checkpoints ship it and
        # llama.cpp's converter needs it for Gemma's SentencePiece vocabulary.
        shutil.copyfile(sp_path, out_dir / "tokenizer.model")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Full-size skeleton (convert/skeleton.py)

# Ids of the markers in the released 262,144-piece tokenizer.model (the embedding has 262,208
# rows; <image_soft_token> is added after the SentencePiece pieces, at 262,144).
RELEASED_SP_VOCAB = 262144
RELEASED_MARKER_IDS = {"<start_of_turn>": 105, "<end_of_turn>": 106, BOI_TOKEN: 255999,
                       EOI_TOKEN: 256000}


def released_size_sentencepiece() -> bytes:
    """A tokenizer.model of the released size: the tiny model's trained pieces, the markers at
    their released ids, and unused filler pieces elsewhere."""
    return spread_pieces(train_sentencepiece(), RELEASED_SP_VOCAB, RELEASED_MARKER_IDS)


def spread_pieces(sp_model: bytes, size: int, pinned_ids: dict[str, int]) -> bytes:
    """SentencePiece bytes grown to `size` pieces: the pieces named in `pinned_ids` at those
    ids, the others in their order in the free slots, unused filler pieces elsewhere. Timing
    depends on the vocabulary only through the embedding and output rows, so the filler's text
    does not matter."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(sp_model)
    pieces = list(proto.pieces)
    pinned = {p.piece: p for p in pieces if p.piece in pinned_ids}
    rest = [p for p in pieces if p.piece not in pinned_ids]
    slots: list = [None] * size
    for text, index in pinned_ids.items():
        slots[index] = pinned[text]
    free = iter(i for i, piece in enumerate(slots) if piece is None)
    for piece in rest:  # reserved ids 0-3, other markers and the trained pieces keep their order
        slots[next(free)] = piece
    del proto.pieces[:]
    for index, piece in enumerate(slots):
        new = proto.pieces.add()
        if piece is None:
            new.piece, new.score, new.type = f"<unused{index}>", 0.0, sp_pb2.ModelProto.SentencePiece.UNUSED
        else:
            new.CopyFrom(piece)
    return proto.SerializeToString()


def save_skeleton_processor(out_dir: Path, config) -> None:
    """tokenizer.model (released size), tokenizer, processor and chat template of a full-size
    skeleton, as the released repository has them."""
    import tempfile

    from transformers import Gemma3Processor

    with tempfile.TemporaryDirectory() as tmp:
        sp_path = Path(tmp) / "tokenizer.model"
        sp_path.write_bytes(released_size_sentencepiece())
        tokenizer = build_tokenizer(sp_path, expected_ids={**RELEASED_MARKER_IDS,
                                                           IMAGE_TOKEN: RELEASED_SP_VOCAB})
        side = int(config.vision_config.image_size)
        processor = Gemma3Processor(image_processor=_image_processor(side), tokenizer=tokenizer,
                                    chat_template=_chat_template(),
                                    image_seq_length=int(config.mm_tokens_per_image))
        processor.save_pretrained(out_dir)
        shutil.copyfile(sp_path, Path(out_dir) / "tokenizer.model")


# ---------------------------------------------------------------------------------------------
# Converter preparation


def _read_json(path: Path) -> dict:
    return read_json(path, Gemma3PrepareError)


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _converter_name(name: str) -> str:
    """The tensor name llama.cpp's converter expects. transformers 5 saves the SigLIP tower as
    `vision_tower.*`; the released checkpoints (and the converter's tensor map) use
    `vision_tower.vision_model.*`. A `model.` prefix on the vision tower or the projector (the
    transformers 5 module layout) is dropped: the converter's Gemma 3 projector class only
    takes names starting with `vision_tower.` / `multi_modal_projector.`."""
    if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
        name = name[len("model."):]
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        name = "vision_tower.vision_model." + name[len("vision_tower."):]
    return name


def _rename_safetensors(src: Path, dst: Path, rename) -> None:
    """Copy a safetensors file with tensor names changed: only the JSON header changes, the data
    block is copied byte for byte (no tensor is loaded, so a 27B shard needs no RAM)."""
    with open(src, "rb") as fin:
        head = fin.read(8)
        if len(head) != 8:
            raise Gemma3PrepareError(f"{src}: truncated safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        try:
            header = json.loads(fin.read(header_len))
        except ValueError as exc:
            raise Gemma3PrepareError(f"{src}: unreadable safetensors header ({exc})") from exc
        if not isinstance(header, dict):
            raise Gemma3PrepareError(f"{src}: safetensors header is not a JSON object")
        new_header = {}
        for name, info in header.items():
            new = name if name == "__metadata__" else rename(name)
            if new in new_header:
                raise Gemma3PrepareError(f"{src}: two tensors map to {new}")
            new_header[new] = info
        encoded = json.dumps(new_header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # keep the data block 8-byte aligned
        with atomic_open(dst, "wb") as fout:
            fout.write(struct.pack("<Q", len(encoded)))
            fout.write(encoded)
            shutil.copyfileobj(fin, fout, 16 << 20)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _added_tokens_decoder(ckpt: Path, tokenizer_config: dict) -> dict[str, dict]:
    """`added_tokens_decoder` as transformers 4 wrote it, rebuilt from tokenizer.json. Tokens
    named as special in tokenizer_config.json (bos/eos/..., image tokens) are marked special even
    where tokenizer.json says otherwise, so llama.cpp makes them CONTROL tokens."""
    tok_json = _read_json(ckpt / "tokenizer.json")
    named = set()
    for key, value in tokenizer_config.items():
        if key.endswith("_token") and isinstance(value, str):
            named.add(value)
        elif key.endswith("_token") and isinstance(value, dict) and "content" in value:
            named.add(value["content"])
    for value in tokenizer_config.get("extra_special_tokens") or []:
        named.add(value if isinstance(value, str) else value.get("content"))
    extra = tokenizer_config.get("model_specific_special_tokens") or {}
    if isinstance(extra, dict):
        named.update(v for v in extra.values() if isinstance(v, str))
    decoder = {}
    for entry in tok_json.get("added_tokens", []):
        decoder[str(entry["id"])] = {
            "content": entry["content"],
            "lstrip": bool(entry.get("lstrip", False)),
            "normalized": bool(entry.get("normalized", False)),
            "rstrip": bool(entry.get("rstrip", False)),
            "single_word": bool(entry.get("single_word", False)),
            "special": bool(entry.get("special", False)) or entry["content"] in named,
        }
    return decoder


def prepare_for_converter(src_dir: Path, staging_dir: Path, *, tokenizer_model: Path | None = None) -> Path:
    """Make `staging_dir` a copy of the Gemma 3 checkpoint `src_dir` that llama.cpp's converter
    reads correctly (the source is never modified; unchanged files are hard links):
    - vision tensors renamed `vision_tower.*` -> `vision_tower.vision_model.*`;
    - `added_tokens_decoder` written back into tokenizer_config.json (without it the converter
      leaves <start_of_image> etc. as plain text, which llama.cpp splits into several tokens);
    - `image_seq_length`, `image_mean` and `image_std` in preprocessor_config.json (the
      projector's pooling is scaled from image_seq_length);
    - tokenizer.model present (transformers 5 does not save it; pass the base model's file as
      `tokenizer_model` when the checkpoint lacks it)."""
    src_dir, staging_dir = Path(src_dir), Path(staging_dir)
    config = _read_json(src_dir / "config.json")
    if config.get("model_type") != MODEL_TYPE or ARCHITECTURE not in (config.get("architectures") or []):
        raise Gemma3PrepareError(
            f"{src_dir / 'config.json'}: not a Gemma 3 vision checkpoint "
            f"(model_type {config.get('model_type')!r}, architectures {config.get('architectures')!r})"
        )
    sp_model = src_dir / "tokenizer.model"
    if tokenizer_model is not None:
        sp_model = Path(tokenizer_model)
    if not sp_model.is_file():
        raise Gemma3PrepareError(
            f"{sp_model}: missing. transformers 5 does not save Gemma's SentencePiece model; copy "
            "tokenizer.model from the base model (e.g. google/gemma-3-4b-it) into the checkpoint "
            "or pass it as tokenizer_model"
        )
    if not (src_dir / "tokenizer.json").is_file():
        raise Gemma3PrepareError(f"{src_dir / 'tokenizer.json'}: missing")
    if not any(src_dir.glob("*.safetensors")):
        raise Gemma3PrepareError(f"{src_dir}: no .safetensors weights")
    if staging_dir.exists() and any(staging_dir.iterdir()):
        raise Gemma3PrepareError(f"{staging_dir}: staging folder is not empty")
    staging_dir.mkdir(parents=True, exist_ok=True)

    for item in sorted(src_dir.iterdir()):
        target = staging_dir / item.name
        if item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, target, copy_function=shutil.copy2)
        elif item.suffix == ".safetensors":
            _rename_safetensors(item, target, _converter_name)
        elif item.name in ("tokenizer_config.json", "preprocessor_config.json",
                           "model.safetensors.index.json", "tokenizer.model"):
            continue  # written below
        else:
            _link_or_copy(item, target)
    _link_or_copy(sp_model, staging_dir / "tokenizer.model")

    index_path = src_dir / "model.safetensors.index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        index["weight_map"] = {_converter_name(k): v for k, v in index.get("weight_map", {}).items()}
        _write_json(staging_dir / index_path.name, index)

    tok_cfg_path = src_dir / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    decoder = _added_tokens_decoder(src_dir, tok_cfg)
    decoder.update(tok_cfg.get("added_tokens_decoder") or {})  # what the file says wins
    tok_cfg["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
    _write_json(staging_dir / "tokenizer_config.json", tok_cfg)

    _write_json(staging_dir / "preprocessor_config.json", _preprocessor_config(src_dir, config))
    return staging_dir


def _preprocessor_config(src_dir: Path, config: dict) -> dict:
    """preprocessor_config.json with what the converter's Gemma 3 projector reads: image_mean,
    image_std and image_seq_length (it derives the projector's pooling from the last)."""
    pre_path = src_dir / "preprocessor_config.json"
    proc_path = src_dir / "processor_config.json"
    pre = _read_json(pre_path) if pre_path.is_file() else {}
    proc = _read_json(proc_path) if proc_path.is_file() else {}
    # transformers 5 writes only processor_config.json, the image processor nested in it.
    nested = proc.get("image_processor") if isinstance(proc.get("image_processor"), dict) else {}
    merged = {**nested, **pre}
    # The model's own token count decides (Gemma3Config's default is 256); a processor that
    # disagrees would make transformers and llama.cpp pool differently.
    tokens = int(config.get("mm_tokens_per_image") or 256)
    for where, cfg in ((pre_path, pre), (proc_path, proc)):
        stated = cfg.get("image_seq_length")
        if stated is not None and int(stated) != tokens:
            raise Gemma3PrepareError(
                f"{where}: image_seq_length {stated} disagrees with mm_tokens_per_image {tokens} "
                f"in {src_dir / 'config.json'}"
            )
    merged["image_seq_length"] = tokens
    for key in ("image_mean", "image_std"):
        if key not in merged:
            raise Gemma3PrepareError(f"{pre_path}: no {key} for the vision projector")
    return merged


# ---------------------------------------------------------------------------------------------
# Image budget


def image_size(ckpt_dir: Path) -> int:
    """The square side the checkpoint's image processor resizes every photo to."""
    ckpt_dir = Path(ckpt_dir)
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = ckpt_dir / name
        if not path.is_file():
            continue
        cfg = _read_json(path)
        cfg = cfg.get("image_processor", cfg) if name == "processor_config.json" else cfg
        size = cfg.get("size") or {}
        height, width = size.get("height"), size.get("width")
        if height and width:
            if height != width:
                raise Gemma3PrepareError(f"{path}: image size {width}x{height} is not square")
            return int(height)
    raise Gemma3PrepareError(f"{ckpt_dir}: no image processor size in preprocessor_config.json")


def image_budget(ckpt_dir: Path):
    """Gemma 3 squashes every photo to one fixed square (896 px in the released models)."""
    from geolocsft.images import ImageBudget

    side = image_size(ckpt_dir)
    return ImageBudget(family=FAMILY, fixed_side=side)


# ---------------------------------------------------------------------------------------------
# llama-cpp-python's own chat handler (convert verify, the benchmark's stock column)


def stock_chat_handler(mmproj: Path):
    """llama-cpp-python's Llava handler with Gemma 3's turn format: the stock library has no
    Gemma 3 handler; mtmd adds <start_of_image>..<end_of_image> around the image itself."""
    from llama_cpp import llama_chat_format

    class Gemma3StockHandler(llama_chat_format.Llava15ChatHandler):
        DEFAULT_SYSTEM_MESSAGE = None  # Gemma has no system turn; Llava's default would add one
        CHAT_FORMAT = (
            "{% for message in messages %}"
            "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}"
            "{% else %}{% for content in message['content'] %}"
            "{% if content['type'] == 'image_url' %}"
            "{{ content.image_url if content.image_url is string else content.image_url.url }}"
            "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
            "{% endfor %}{% endif %}<end_of_turn>\n"
            "{% endfor %}<start_of_turn>model\n"
        )

    return Gemma3StockHandler(clip_model_path=str(mmproj), verbose=False)

"""The Gemma 3 family: tiny checkpoint, converter preparation, llama.cpp's converter, and
agreement of the GGUF files with transformers (text logits, image embeddings, logits after an
image), all on real libraries. About 25 s of CPU (30-80 s wall on 2 shared cores), most of it
building the model twice and the two converter runs."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
llama_cpp = pytest.importorskip("llama_cpp")

from convert.families import gemma3  # noqa: E402
from geolocsft import protocol  # noqa: E402

pytestmark = pytest.mark.slow  # builds a model and runs llama.cpp's converter twice

SIDE = gemma3.TINY_IMAGE_SIDE
N_IMAGE_TOKENS = gemma3.TINY_TOKENS_PER_IMAGE
ANSWER = (
    '{"regional_25km":{"terrain":"hills","climate":"Mediterranean","development":"urban"}}\n'
    '<answer>{"latitude":38.7223,"longitude":-9.1393,"region":"Lisbon","country":"Portugal",'
    '"confidence":0.4}</answer>'
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(size))


def _block_image(seed: int):
    """A 224x224 photo-like test image made of flat 16 px blocks (no resize needed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = (rng.random((SIDE // 16, SIDE // 16, 3)) * 255).astype(np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8)))


def _run_converter(staging: Path, outfile: Path, *extra: str) -> None:
    from convert.llamacpp import llama_cpp_source

    source = llama_cpp_source()
    proc = subprocess.run(
        [sys.executable, str(source.converter), str(staging), "--outtype", "f16",
         "--outfile", str(outfile), *extra],
        env=source.converter_env(), capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outfile.is_file()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return gemma3.make_tiny(tmp_path_factory.mktemp("gemma3") / "tiny")


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("gemma3-gguf")
    staging = gemma3.prepare_for_converter(tiny, root / "staging")
    text, mmproj = root / "model-f16.gguf", root / "mmproj-f16.gguf"
    _run_converter(staging, text)
    _run_converter(staging, mmproj, "--mmproj")
    return SimpleNamespace(staging=staging, text=text, mmproj=mmproj)


@pytest.fixture(scope="module")
def hf(tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.float32, local_files_only=True)
    return SimpleNamespace(processor=processor, model=model.eval())


def _llama(path: Path, **kwargs):
    # One thread: with 2 shared cores, llama.cpp's spinning threads slow it down 100x.
    return llama_cpp.Llama(str(path), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False, **kwargs)


# --- the tiny checkpoint ---------------------------------------------------------------------


def test_tokenizer_training_is_deterministic():
    assert gemma3.train_sentencepiece() == gemma3.train_sentencepiece()


def test_make_tiny_is_deterministic(tiny, tmp_path):
    again = gemma3.make_tiny(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "tokenizer.model", "config.json"):
        assert _sha256(again / name) == _sha256(tiny / name), name


def test_tiny_checkpoint_shape(tiny, hf):
    config = hf.model.config
    text = config.text_config
    assert config.model_type == gemma3.MODEL_TYPE
    assert text.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert text.hidden_size % 256 == 0 and text.intermediate_size % 256 == 0
    assert config.mm_tokens_per_image == N_IMAGE_TOKENS
    # The projector must not be the zero transformers initialises it to: images would vanish.
    proj = hf.model.model.multi_modal_projector.mm_input_projection_weight
    assert proj.abs().max() > 0.01

    tok = hf.processor.tokenizer
    roles = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 6,
             "<end_of_turn>": 7, "<start_of_image>": 8, "<end_of_image>": 9,
             "<image_soft_token>": gemma3.TINY_SP_VOCAB}
    assert {t: tok.convert_tokens_to_ids(t) for t in roles} == roles
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (config.boi_token_index, config.eoi_token_index, config.image_token_index) == (8, 9, 1024)
    assert hf.processor.image_seq_length == N_IMAGE_TOKENS
    # Byte fallback: text the corpus never had still round-trips.
    odd = "Zürich → 東京 🦙\t x"
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd


def test_processor_and_training_step(hf):
    """protocol.chat_messages + an image through the processor; a forward and backward pass."""
    prompt = protocol.get_prompt()
    messages = protocol.chat_messages(prompt, target=ANSWER)
    text = hf.processor.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n" + prompt.system.strip())
    assert text.rstrip().endswith("<end_of_turn>")
    inputs = hf.processor(text=text, images=[_block_image(0)], return_tensors="pt", add_special_tokens=False)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(gemma3.TINY_SP_VOCAB) == N_IMAGE_TOKENS
    assert ids.count(8) == 1 and ids.count(9) == 1 and ids[0] == 2 and ids[1] != 2
    assert tuple(inputs["pixel_values"].shape) == (1, 3, SIDE, SIDE)

    model = hf.model
    model.train()
    try:
        labels = inputs["input_ids"].clone()
        labels[labels == gemma3.TINY_SP_VOCAB] = -100
        out = model(**inputs, labels=labels)
        assert torch.isfinite(out.loss) and out.loss.item() > 0
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        proj = [g for n, g in grads.items() if "mm_input_projection" in n]
        vision = [g for n, g in grads.items() if "vision_tower" in n]
        assert proj and vision and all(torch.isfinite(g).all() for g in grads.values())
        assert proj[0].abs().sum() > 0 and sum(g.abs().sum() for g in vision) > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


# --- preparing for the converter -------------------------------------------------------------


def test_prepare_fixes_a_copy(tiny, converted):
    staging = converted.staging
    src_header = _safetensors_header(tiny / "model.safetensors")
    dst_header = _safetensors_header(staging / "model.safetensors")
    assert any(k.startswith("vision_tower.embeddings.") for k in src_header)  # transformers 5
    vision = [k for k in dst_header if "vision_tower" in k]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert len(dst_header) == len(src_header)

    from safetensors.torch import load_file

    src, dst = load_file(tiny / "model.safetensors"), load_file(staging / "model.safetensors")
    for name, tensor in src.items():
        assert torch.equal(dst[gemma3._converter_name(name)], tensor), name

    tok_cfg = json.loads((staging / "tokenizer_config.json").read_text())
    decoder = tok_cfg["added_tokens_decoder"]
    for token_id, content in ((2, "<bos>"), (6, "<start_of_turn>"), (7, "<end_of_turn>"),
                              (8, "<start_of_image>"), (9, "<end_of_image>"),
                              (gemma3.TINY_SP_VOCAB, "<image_soft_token>")):
        assert decoder[str(token_id)] == {**decoder[str(token_id)], "content": content, "special": True}
    assert "added_tokens_decoder" not in json.loads((tiny / "tokenizer_config.json").read_text())
    pre = json.loads((staging / "preprocessor_config.json").read_text())
    assert pre["image_seq_length"] == N_IMAGE_TOKENS and pre["image_mean"] == [0.5, 0.5, 0.5]
    assert not (tiny / "preprocessor_config.json").exists()  # the source is untouched


def test_prepare_accepts_the_released_layout(converted, tmp_path):
    """A prepared folder has the released checkpoints' layout (vision_model names,
    added_tokens_decoder, preprocessor_config.json): preparing it again changes nothing."""
    again = gemma3.prepare_for_converter(converted.staging, tmp_path / "again")
    names = sorted(p.name for p in converted.staging.iterdir())
    assert sorted(p.name for p in again.iterdir()) == names
    for name in names:
        assert _sha256(again / name) == _sha256(converted.staging / name), name


def test_prepare_handles_sharded_checkpoints(hf, tiny, tmp_path):
    sharded = tmp_path / "sharded"
    hf.model.save_pretrained(sharded, max_shard_size="4MB")
    for item in tiny.iterdir():
        if not item.name.startswith("model") and not (sharded / item.name).exists():
            (sharded / item.name).write_bytes(item.read_bytes())
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 1
    staging = gemma3.prepare_for_converter(sharded, tmp_path / "staging")
    index = json.loads((staging / "model.safetensors.index.json").read_text())
    names = {}
    for shard in shards:
        for name in _safetensors_header(staging / shard.name):
            if name != "__metadata__":
                names[name] = shard.name
    assert names == index["weight_map"]
    assert any(k.startswith("vision_tower.vision_model.") for k in names)


def test_prepare_rejects_bad_input(tiny, tmp_path):
    with pytest.raises(gemma3.Gemma3PrepareError, match="config.json: missing"):
        gemma3.prepare_for_converter(tmp_path / "nowhere", tmp_path / "s1")

    other = tmp_path / "qwen"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(gemma3.Gemma3PrepareError, match=r"qwen.config\.json: not a Gemma 3"):
        gemma3.prepare_for_converter(other, tmp_path / "s2")

    no_sp = tmp_path / "no_sp"
    no_sp.mkdir()
    for item in tiny.iterdir():
        if item.name != "tokenizer.model":
            (no_sp / item.name).write_bytes(item.read_bytes())
    with pytest.raises(gemma3.Gemma3PrepareError, match="tokenizer.model: missing"):
        gemma3.prepare_for_converter(no_sp, tmp_path / "s3")
    # ... and with the base model's tokenizer.model given explicitly it goes through.
    gemma3.prepare_for_converter(no_sp, tmp_path / "s4", tokenizer_model=tiny / "tokenizer.model")
    assert (tmp_path / "s4" / "tokenizer.model").is_file()

    (no_sp / "tokenizer.model").write_bytes((tiny / "tokenizer.model").read_bytes())
    with pytest.raises(gemma3.Gemma3PrepareError, match="s4: staging folder is not empty"):
        gemma3.prepare_for_converter(no_sp, tmp_path / "s4")

    proc = json.loads((no_sp / "processor_config.json").read_text())
    (no_sp / "processor_config.json").write_text(json.dumps({**proc, "image_seq_length": 64}))
    with pytest.raises(gemma3.Gemma3PrepareError,
                       match="processor_config.json: image_seq_length 64 disagrees with mm_tokens_per_image 16"):
        gemma3.prepare_for_converter(no_sp, tmp_path / "s5")
    (no_sp / "processor_config.json").write_text(json.dumps(proc))

    (no_sp / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(gemma3.Gemma3PrepareError, match="model.safetensors: truncated"):
        gemma3.prepare_for_converter(no_sp, tmp_path / "s6")


def test_converter_names():
    rename = gemma3._converter_name
    # transformers 5 save layout, transformers 5 module layout, released checkpoints.
    assert rename("vision_tower.encoder.layers.0.mlp.fc1.weight") == \
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert rename("model.vision_tower.post_layernorm.weight") == "vision_tower.vision_model.post_layernorm.weight"
    assert rename("model.multi_modal_projector.mm_soft_emb_norm.weight") == \
        "multi_modal_projector.mm_soft_emb_norm.weight"
    for unchanged in ("vision_tower.vision_model.embeddings.patch_embedding.weight",
                      "language_model.model.layers.0.mlp.up_proj.weight",
                      "model.language_model.norm.weight",
                      "multi_modal_projector.mm_input_projection_weight"):
        assert rename(unchanged) == unchanged


def test_image_budget(tiny, tmp_path):
    budget = gemma3.image_budget(tiny)
    assert budget.family == "gemma3" and budget.fixed_side == SIDE
    # A released checkpoint's layout: preprocessor_config.json with 896 px.
    real = tmp_path / "real"
    real.mkdir()
    (real / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 896, "width": 896},
         "image_seq_length": 256, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    assert gemma3.image_budget(real).fixed_side == 896
    with pytest.raises(gemma3.Gemma3PrepareError, match="no image processor size"):
        gemma3.image_budget(tmp_path)


# --- llama.cpp -------------------------------------------------------------------------------


def test_gguf_metadata(converted):
    from convert.llamacpp import import_bundled_gguf

    gguf = import_bundled_gguf()
    text = gguf.GGUFReader(converted.text)
    assert text.fields["general.architecture"].contents() == "gemma3"
    assert text.fields["gemma3.attention.sliding_window"].contents() == gemma3.TINY_TEXT["sliding_window"]
    assert text.fields["gemma3.block_count"].contents() == 6
    tokens = text.fields["tokenizer.ggml.tokens"].contents()
    types = text.fields["tokenizer.ggml.token_type"].contents()
    assert text.fields["tokenizer.ggml.model"].contents() == "llama"
    for token_id in (6, 7, 8, 9):
        assert types[token_id] == gguf.TokenType.CONTROL, tokens[token_id]
    assert "<start_of_image>" in text.fields["tokenizer.chat_template"].contents()

    mmproj = gguf.GGUFReader(converted.mmproj)
    assert mmproj.fields["clip.projector_type"].contents() == "gemma3"
    assert mmproj.fields["clip.vision.image_size"].contents() == SIDE
    names = {t.name for t in mmproj.tensors}
    assert {"mm.input_projection.weight", "mm.soft_emb_norm.weight", "v.patch_embd.weight"} <= names


def test_llama_tokenizes_like_transformers(converted, hf):
    llm = _llama(converted.text, vocab_only=True)
    try:
        assert llm.tokenize(b"<start_of_image>", add_bos=False, special=True) == [8]
        tok = hf.processor.tokenizer
        samples = [
            "<start_of_turn>user\nWhere was this photo taken?<end_of_turn>\n<start_of_turn>model\n",
            "Lisbon, Portugal <end_of_image>\n\n  two  spaces, 12.5 km",
            ANSWER,
            "Zürich → 東京 🦙",
        ]
        for sample in samples:
            assert llm.tokenize(sample.encode(), add_bos=False, special=True) == \
                tok(sample, add_special_tokens=False)["input_ids"], sample
    finally:
        llm.close()


def test_f16_logits_match_transformers(converted, hf, record_property):
    prompt = protocol.get_prompt()
    text = (f"<start_of_turn>user\n{prompt.system}\n\n{prompt.question}<end_of_turn>\n"
            f"<start_of_turn>model\n{ANSWER}")
    ids = hf.processor.tokenizer(text)["input_ids"]
    assert ids[0] == 2 and len(ids) > 4 * gemma3.TINY_TEXT["sliding_window"]
    with torch.no_grad():
        want = hf.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = _llama(converted.text, logits_all=True)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    agreement = float((want.argmax(-1) == got.argmax(-1)).mean())
    max_diff = float(np.abs(want - got).max())
    record_property("top_token_agreement", agreement)
    record_property("max_abs_diff", max_diff)
    print(f"gemma3 f16 GGUF vs transformers: {len(ids)} positions, agreement {agreement:.4f}, "
          f"max abs diff {max_diff:.5f}")
    assert agreement >= 0.99
    assert max_diff < 0.05


def _mtmd_eval(converted, text: str, image) -> tuple[list[int], np.ndarray]:
    """Evaluate `text` (with mtmd's media marker) and `image` through llama.cpp's own
    multimodal path; returns the token ids (-1 for image positions) and the logits."""
    import llama_cpp.mtmd_cpp as mtmd

    llm = _llama(converted.text, logits_all=True)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 1, False
    ctx = mtmd.mtmd_init_from_file(str(converted.mmproj).encode(), llm.model, params)
    assert ctx is not None
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    data = (ctypes.c_uint8 * pixels.size).from_buffer_copy(pixels.tobytes())
    bitmap = mtmd.mtmd_bitmap_init(pixels.shape[1], pixels.shape[0], data)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        encoded = text.encode()
        inp = mtmd.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = encoded, len(encoded), False, True
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), bitmaps, 1) == 0
        ids: list[int] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens = [ptr[j] for j in range(n.value)]
                llm.eval(tokens)
                ids += tokens
            else:
                n_past = llama_cpp.llama_pos(0)
                assert mtmd.mtmd_helper_eval_chunk_single(
                    ctx, llm._ctx.ctx, chunk, llm.n_tokens, 0, llm.n_batch, False, ctypes.byref(n_past)
                ) == 0
                ids += [-1] * mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                llm.n_tokens = n_past.value
        return ids, np.array(llm.scores[: llm.n_tokens])
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_free(ctx)
        llm.close()


def test_image_prompt_logits_match_transformers(converted, hf, record_property):
    """Same conversation and photo through transformers and through llama.cpp's mmproj: the
    same token sequence, and the same logits after the image (so the projector, its pooling and
    the image attention all converted right)."""
    import llama_cpp.mtmd_cpp as mtmd

    prompt = protocol.get_prompt()
    text = hf.processor.apply_chat_template(protocol.chat_messages(prompt), add_generation_prompt=True,
                                            tokenize=False)
    image = _block_image(1)
    inputs = hf.processor(text=text, images=[image], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        want = hf.model(**inputs).logits[0].numpy()
        other = hf.processor(text=text, images=[_block_image(2)], return_tensors="pt", add_special_tokens=False)
        want_other = hf.model(**other).logits[0].numpy()

    # The processor expands <start_of_image> to "\n\n<boi> soft tokens <eoi>\n\n"; mtmd adds
    # <boi>/<eoi> around its marker itself.
    marker = mtmd.mtmd_default_marker().decode()
    ids, got = _mtmd_eval(converted, text.replace(gemma3.BOI_TOKEN, f"\n\n{marker}\n\n"), image)
    hf_ids = inputs["input_ids"][0].tolist()
    assert len(ids) == len(hf_ids)
    assert [i for i in ids if i != -1] == [i for i in hf_ids if i != gemma3.TINY_SP_VOCAB]
    assert [i for i, t in enumerate(ids) if t == -1] == \
        [i for i, t in enumerate(hf_ids) if t == gemma3.TINY_SP_VOCAB]

    after = slice(max(i for i, t in enumerate(ids) if t == -1) + 1, len(ids))
    want, got, want_other = want[after], got[after], want_other[after]
    same_top = want.argmax(-1) == got.argmax(-1)
    max_diff = float(np.abs(want - got).max())
    image_effect = float(np.abs(want - want_other).max())
    # A random model has near-ties; only a top token that wins by more than twice the largest
    # difference must agree (17 positions here: one flip would already be 6%).
    top2 = np.sort(want, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * max_diff
    record_property("image_prompt_max_abs_diff", max_diff)
    print(f"gemma3 after-image logits: {len(same_top)} positions, agreement {same_top.mean():.4f} "
          f"({decisive.sum()} decisive: {same_top[decisive].mean():.4f}), max abs diff "
          f"{max_diff:.5f}, effect of another image {image_effect:.4f}")
    assert max_diff < 0.05 and image_effect > 10 * max_diff
    assert decisive.sum() >= len(decisive) // 2 and same_top[decisive].all()


def test_mtmd_chat_handler_answers_an_image(converted):
    from PIL import Image
    from llama_cpp.llama_chat_format import MTMDChatHandler

    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (40, 120, 200)).save(buffer, "PNG")  # llama.cpp resizes it
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    prompt = protocol.get_prompt()
    handler = MTMDChatHandler(clip_model_path=str(converted.mmproj), verbose=False)
    llm = _llama(converted.text, chat_handler=handler)
    try:
        reply = llm.create_chat_completion(
            messages=[
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": prompt.question}]},
            ],
            max_tokens=8, temperature=0.0, seed=0,
        )
        question_tokens = len(llm.tokenize(prompt.question.encode(), add_bos=False))
    finally:
        llm.close()
    choice = reply["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert reply["usage"]["completion_tokens"] >= 1
    assert reply["usage"]["prompt_tokens"] >= N_IMAGE_TOKENS + question_tokens


def test_k_quants_apply_without_fallback(converted, tmp_path):
    """Hidden size 256 makes every row K-quantisable: Q4_K_M gives Q4_K/Q6_K, no silent
    fallback to legacy types (the reason the tiny model is not smaller)."""
    from convert.llamacpp import import_bundled_gguf

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 1
    out = tmp_path / "model-Q4_K_M.gguf"
    assert llama_cpp.llama_model_quantize(str(converted.text).encode(), str(out).encode(),
                                          ctypes.byref(params)) == 0
    gguf = import_bundled_gguf()
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors if len(t.shape) > 1}
    assert kinds and set(kinds.values()) <= {"Q4_K", "Q6_K"}, kinds
    llm = _llama(out, vocab_only=True)
    try:
        assert llm.tokenize(b"<end_of_turn>", add_bos=False, special=True) == [7]
    finally:
        llm.close()

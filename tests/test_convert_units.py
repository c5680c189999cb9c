"""The converter's building blocks: llama.cpp source package, tiny Qwen tokenizer, manifest."""

from __future__ import annotations

import json
import os

import pytest

from geolocsft import manifest as mf


# --- manifest (core, no heavy imports) -----------------------------------------------------

def _manifest(folder, **overrides):
    (folder / "model-Q8_0.gguf").write_bytes(b"model bytes")
    (folder / "mmproj-f16.gguf").write_bytes(b"projector bytes")
    fields = dict(
        name=folder.name, family="qwen2.5-vl", base_model="Qwen/Qwen2.5-VL-3B-Instruct",
        quant="Q8_0", model_file="model-Q8_0.gguf", mmproj_file="mmproj-f16.gguf",
        prompt_version="gls-v1",
        image_budget={"family": "qwen2.5-vl", "max_pixels": 12544, "min_pixels": 3136,
                      "factor": 28, "fixed_side": None},
        files=mf.checksum_files(folder, ["model-Q8_0.gguf", "mmproj-f16.gguf"]),
        llama_cpp_version="0.3.36", created=mf.now_utc(),
    )
    fields.update(overrides)
    return mf.Manifest(**fields)


def test_manifest_round_trip_and_verify(tmp_path):
    written = _manifest(tmp_path)
    mf.write_manifest(tmp_path, written)
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "mmproj-f16.gguf", "model-Q8_0.gguf"]
    assert mf.read_manifest(tmp_path) == written
    assert mf.verify_files(tmp_path) == []

    (tmp_path / "mmproj-f16.gguf").write_bytes(b"projector bytes, changed")
    (tmp_path / "model-Q8_0.gguf").unlink()
    problems = mf.verify_files(tmp_path)
    assert any("model-Q8_0.gguf: missing" in p for p in problems)
    assert any("mmproj-f16.gguf: sha256" in p and "does not match" in p for p in problems)


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(mf.ManifestError, match="manifest.json: missing"):
        mf.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(mf.ManifestError, match="manifest.json: not readable JSON"):
        mf.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x", "family": "gemma3"}))
    with pytest.raises(mf.ManifestError, match=r"missing fields \['base_model'"):
        mf.read_manifest(tmp_path)
    data = _manifest(tmp_path).to_dict()
    data["manifest_version"] = mf.MANIFEST_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(mf.ManifestError, match="newer than this program"):
        mf.read_manifest(tmp_path)


def test_manifest_unknown_fields_from_newer_writers_are_ignored(tmp_path):
    data = _manifest(tmp_path).to_dict()
    data["something_new"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert mf.read_manifest(tmp_path).quant == "Q8_0"


def test_manifest_write_leaves_no_temp_file(tmp_path):
    mf.write_manifest(tmp_path, _manifest(tmp_path))
    mf.write_manifest(tmp_path, _manifest(tmp_path, quant="Q4_K_M"))
    assert mf.read_manifest(tmp_path).quant == "Q4_K_M"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# --- llama.cpp source package --------------------------------------------------------------

@pytest.fixture(scope="module")
def source():
    pytest.importorskip("llama_cpp")
    from convert.llamacpp import llama_cpp_source

    return llama_cpp_source()


def test_source_matches_installed_llama_cpp_python(source):
    import importlib.metadata

    assert source.version == importlib.metadata.version("llama-cpp-python")
    assert source.converter.is_file() and source.converter.name == "convert_hf_to_gguf.py"
    assert (source.gguf_py / "gguf" / "gguf_reader.py").is_file()
    assert (source.vocab_dir / "ggml-vocab-qwen2.gguf").is_file()
    commit = source.llama_cpp_commit
    assert commit is None or len(commit) >= 7
    assert source.converter_env()["PYTHONPATH"].split(os.pathsep)[0] == str(source.gguf_py)


def test_bundled_gguf_is_imported_not_a_pypi_one(source, tiny_qwen_folder):
    from convert.llamacpp import import_bundled_gguf

    gguf = import_bundled_gguf(source)
    assert str(source.gguf_py) in gguf.__file__
    reader = gguf.GGUFReader(tiny_qwen_folder / "mmproj-f16.gguf")
    assert reader.fields["clip.projector_type"].contents() == "qwen2.5vl_merger"


def test_unreadable_source_package_is_a_clear_error(tmp_path, monkeypatch):
    from convert import llamacpp

    bogus = tmp_path / "llama_cpp_python-0.0.0.tar.gz"
    bogus.write_bytes(b"not a tarball")
    monkeypatch.setenv(llamacpp.SDIST_ENV, str(bogus))
    monkeypatch.setenv("GEOLOCSFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(llamacpp.LlamaCppSourceError, match="not a readable source package"):
        llamacpp.llama_cpp_source()
    assert not list((tmp_path / "cache").glob("llama-cpp-python-*/"))  # nothing half-unpacked
    monkeypatch.setenv(llamacpp.SDIST_ENV, str(tmp_path / "absent.tar.gz"))
    with pytest.raises(llamacpp.LlamaCppSourceError, match="absent.tar.gz: .* does not exist"):
        llamacpp.llama_cpp_source()


# --- the tiny Qwen2.5-VL -------------------------------------------------------------------

def _vocab_cases(source):
    inp = (source.vocab_dir / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8")
    out = (source.vocab_dir / "ggml-vocab-qwen2.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    ids = [[int(t) for t in line.split()] for line in out.split("\n")[: len(texts)]]
    return list(zip(texts, ids))


def test_tiny_qwen_tokenizer_matches_llama_cpp_test_vectors(tiny_qwen_dir, source):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    cases = _vocab_cases(source)
    assert len(cases) > 40
    for text, expected in cases:
        assert tokenizer.encode(text, add_special_tokens=False) == expected, repr(text)


def test_tiny_qwen_special_tokens_and_template(tiny_qwen_dir):
    from transformers import AutoProcessor

    from convert.families import qwen25vl
    from geolocsft import protocol

    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    tokenizer = processor.tokenizer
    for token_id, text, _special in qwen25vl.SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(text) == token_id
        assert tokenizer.encode(text, add_special_tokens=False) == [token_id]
    messages = protocol.chat_messages(protocol.get_prompt(), target="x")
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    assert text.endswith("<|im_start|>assistant\nx<|im_end|>\n")


def test_tiny_qwen_loads_and_sees_an_image(tiny_qwen_dir):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from convert.families.qwen25vl import TINY_MAX_PIXELS, image_budget

    budget = image_budget(tiny_qwen_dir)
    assert budget.family == "qwen2.5-vl" and budget.max_pixels == TINY_MAX_PIXELS
    assert budget.factor == 28
    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_dir)
    assert model.config.text_config.hidden_size % 256 == 0  # K-quants apply for real
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (300, 200), (10, 120, 200))],
                      return_tensors="pt")
    # 300x200 is scaled into the 112x112 budget: 4x3 merged tokens.
    assert int((batch["input_ids"] == 151655).sum()) == 12
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == 151936 and torch.isfinite(logits).all()


# --- GGUF header reader --------------------------------------------------------------------

def test_header_reader_agrees_with_gguf_py(tiny_qwen_folder, source):
    """The core's fast reader gives what gguf-py's GGUFReader gives (on the small projector
    file, where GGUFReader is quick)."""
    from geolocsft.gguf_header import ArrayInfo, read_gguf
    from convert.llamacpp import import_bundled_gguf

    path = tiny_qwen_folder / "mmproj-f16.gguf"
    reader = import_bundled_gguf(source).GGUFReader(path)
    header = read_gguf(path)
    assert [(t.name, t.type_name, t.shape) for t in header.tensors] == [
        (t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in reader.tensors]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(header.metadata[key], ArrayInfo):
            assert header.metadata[key].length == len(value)
        elif isinstance(value, float):
            assert header.metadata[key] == pytest.approx(value)
        else:
            assert header.metadata[key] == value, key
    text = read_gguf(tiny_qwen_folder / "model-Q8_0.gguf")
    assert text.metadata["tokenizer.ggml.tokens"] == ArrayInfo(8, 151936)


def test_header_reader_rejects_non_gguf(tmp_path):
    from geolocsft.gguf_header import GGUFFormatError, read_gguf

    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(GGUFFormatError, match="x.gguf: not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")
    (tmp_path / "t.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(4))
    with pytest.raises(GGUFFormatError, match="t.gguf: truncated"):
        read_gguf(tmp_path / "t.gguf")


def test_header_reader_vocabulary_skipped_or_kept_and_cut_short(source, tmp_path):
    """The real Qwen2 vocabulary: skipped it stands as its length, kept it is the token list
    (byte-level BPE: "!" first, <|endoftext|> at its real id); a copy cut inside it is a
    truncation error naming the copy. (gguf-py's GGUFReader needs ~10 s for this file.)"""
    from geolocsft.gguf_header import ArrayInfo, GGUFFormatError, read_gguf

    vocab = source.vocab_dir / "ggml-vocab-qwen2.gguf"
    kept = read_gguf(vocab, max_array=1 << 30).metadata["tokenizer.ggml.tokens"]
    assert read_gguf(vocab).metadata["tokenizer.ggml.tokens"] == ArrayInfo(8, len(kept))
    assert kept[0] == "!" and kept[151643] == "<|endoftext|>" and len(kept) > 151643
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(vocab.read_bytes()[: vocab.stat().st_size // 3])
    for max_array in (64, 1 << 30):
        with pytest.raises(GGUFFormatError, match="cut.gguf: truncated GGUF file"):
            read_gguf(cut, max_array=max_array)


def test_core_ggml_type_table_matches_gguf_py(source):
    """The core names ggml types without gguf-py; its ids, names and block sizes must be
    llama.cpp's (every type gguf-py knows, none it does not)."""
    from geolocsft.gguf_header import GGML_TYPES, ggml_type_name
    from convert.llamacpp import import_bundled_gguf

    gguf = import_bundled_gguf(source)
    assert {t.value: t.name for t in gguf.GGMLQuantizationType} == {
        i: name for i, (name, _, _) in GGML_TYPES.items()}
    assert {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()} == {
        i: (elems, size) for i, (_, elems, size) in GGML_TYPES.items()}
    assert ggml_type_name(12) == "Q4_K" and ggml_type_name(99) == "type99"


def test_adapter_base_names_are_compared_by_model_name(tmp_path):
    pytest.importorskip("transformers")
    from convert.merge import same_base

    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-3B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert same_base("Qwen/Qwen2.5-VL-3B-Instruct", snapshot, None)
    assert same_base("/data/models/Qwen2.5-VL-3B-Instruct", snapshot, "Qwen/Qwen2.5-VL-3B-Instruct")
    assert same_base(str(snapshot), snapshot, None)
    assert not same_base("Qwen/Qwen2.5-VL-7B-Instruct", snapshot, "Qwen/Qwen2.5-VL-3B-Instruct")
    assert not same_base("google/gemma-3-4b-it", snapshot, None)


def test_k_quant_fallbacks_are_reported(tiny_qwen_folder):
    """Matrices not in a K type after a K-quant request are listed (here: a Q8_0 file, where
    every matrix is such a case; 1-D norms and biases are never counted)."""
    from convert.quantize import QuantReport, _k_fallbacks, tensor_types

    types = tensor_types(tiny_qwen_folder / "model-Q8_0.gguf")
    fallbacks = _k_fallbacks(types)
    matrices = [n for n, (_kind, shape) in types.items() if len(shape) == 2]
    assert sorted(f.split(":")[0] for f in fallbacks) == sorted(matrices)
    assert "token_embd.weight: Q8_0" in fallbacks
    report = QuantReport("Q4_K_M", tiny_qwen_folder / "model-Q8_0.gguf", fallbacks=fallbacks)
    assert report.fell_back and "not K-quantized: " in report.summary()

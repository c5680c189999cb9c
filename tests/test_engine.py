"""The inference engine on real tiny GGUFs (random weights, real Qwen2 vocabulary) through the
real llama-cpp-python: streaming, cancel, several guesses, grammar, prompt-cache reuse, bad
model files, quiet stderr, no network."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from geolocsft import geo, protocol
from geolocsft.gguf_header import GGUFFormatError, read_gguf

pytest.importorskip("llama_cpp")

from geolocsft.engine import Engine, EngineError, LocateResult, ModelSpec  # noqa: E402

# Tests that build or load a model are marked slow by tests/conftest.py (MODEL_FIXTURES).

# Short generations keep the file fast; the random model rarely stops by itself.
SHORT = 24


def _photo(path: Path, size=(320, 240), seed=0) -> Path:
    """A small synthetic photo: a colour gradient with a few blocks, different per seed."""
    width, height = size
    image = Image.new("RGB", size)
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            pixels[x, y] = ((x * 255 // width + seed * 40) % 256, (y * 255 // height) % 256,
                            (seed * 97) % 256)
    image.save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [_photo(folder / f"photo {i} é.jpg", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def qwen_spec(tiny_qwen_folder):
    return ModelSpec.from_folder(tiny_qwen_folder)


@pytest.fixture(scope="module")
def qwen_engine(qwen_spec):
    engine = Engine(qwen_spec, n_threads=1, grammar=False, max_tokens=SHORT)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def qwen_grammar_engine(qwen_spec):
    # Short string values: a random model fills every value up to the cap, slowly.
    engine = Engine(qwen_spec, n_threads=1, grammar=True, max_tokens=700, n_ctx=2048,
                    max_value_chars=12)
    yield engine
    engine.close()


def _gemma_folder(request):
    try:
        return request.getfixturevalue("tiny_gemma_folder")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_gemma_folder fixture not available yet")


# --------------------------------------------------------------------------- import rules


def test_core_imports_without_llama_cpp():
    """`import geolocsft.engine` must work without the app extra (llama_cpp imported lazily)."""
    code = ("import sys; sys.modules['llama_cpp'] = None; import geolocsft.engine as e; "
            "assert 'llama_cpp' not in [m for m in sys.modules if sys.modules[m] is not None]; "
            "print(e.Engine.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Engine"


# --------------------------------------------------------------------------- the model folder


def test_spec_from_folder_and_files_agree(tiny_qwen_folder, qwen_spec):
    assert qwen_spec.family == "qwen2.5-vl"
    assert qwen_spec.gguf.exists() and qwen_spec.mmproj.exists()
    assert len(qwen_spec.model_sha256) == 64
    assert qwen_spec.prompt_version == protocol.PROMPT_VERSION
    from_files = ModelSpec.from_files(qwen_spec.gguf, qwen_spec.mmproj)
    assert from_files.family == qwen_spec.family  # read from the GGUF's metadata
    assert from_files.model_sha256 == qwen_spec.model_sha256  # manifest checksum is the file's


def test_prompt_is_rendered_with_the_gguf_chat_template(qwen_engine):
    text = qwen_engine.prompt_text
    prompt = protocol.get_prompt()
    assert text.count("<__media__>") == 1
    assert "<|vision_start|>" not in text  # mtmd adds the image's begin/end tokens itself
    assert text.startswith("<|im_start|>system\n" + prompt.system)
    assert text.endswith(prompt.question + "<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------- running


def test_streaming_pieces_join_to_the_text(qwen_engine, photos):
    pieces = []
    result = qwen_engine.locate(photos[0], on_token=pieces.append)
    assert isinstance(result, LocateResult) and not result.cancelled
    guess = result.guesses[0]
    assert len(pieces) > 1
    assert "".join(pieces) == guess.text
    t = guess.timings
    assert 0 < t.generated_tokens <= SHORT
    assert t.image_tokens > 0 and t.prompt_tokens > t.image_tokens  # true count, image included
    assert t.image_encode_s > 0 and t.prompt_s > 0 and t.generate_s > 0 and t.tokens_per_s > 0


def test_gibberish_output_is_a_clean_no_answer(qwen_engine, photos):
    result = qwen_engine.locate(photos[1])
    guess = result.guesses[0]
    assert not guess.parsed.ok
    assert guess.parsed.status in (protocol.ParseStatus.NO_ANSWER, protocol.ParseStatus.MALFORMED,
                                   protocol.ParseStatus.EMPTY)
    assert result.best is None and result.point is None


def test_prompt_cache_reuse_gives_the_same_output_as_a_fresh_run(qwen_spec, qwen_engine, photos):
    # Sampling at temperature 1 (fixed seed) makes the text sensitive to every logit, where
    # greedy output of a random model is often one token repeated.
    qwen_engine.locate(photos[0])  # the instruction prompt is now cached
    warm = qwen_engine.locate(photos[2], temperature=1.0)
    assert warm.guesses[0].timings.prefix_reused
    assert len(set(warm.guesses[0].text)) > 3
    fresh_engine = Engine(qwen_spec, n_threads=1, grammar=False, max_tokens=SHORT,
                          reuse_prompt_cache=False)
    try:
        fresh = fresh_engine.locate(photos[2], temperature=1.0)
        assert not fresh.guesses[0].timings.prefix_reused
        assert fresh.guesses[0].text == warm.guesses[0].text
        assert fresh.guesses[0].timings.prompt_tokens == warm.guesses[0].timings.prompt_tokens
    finally:
        fresh_engine.close()


def test_prepared_image_gives_the_same_output_as_the_path(qwen_spec, qwen_engine, photos):
    from geolocsft.images import prepare_image

    from_path = qwen_engine.locate(photos[1])
    prepared = prepare_image(photos[1], qwen_spec.budget)
    from_image = qwen_engine.locate(prepared)
    assert from_image.guesses[0].text == from_path.guesses[0].text
    assert from_image.guesses[0].timings.image_tokens == from_path.guesses[0].timings.image_tokens


def test_cancel_from_the_token_callback(qwen_engine, photos):
    cancel = threading.Event()
    pieces = []

    def on_token(piece):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    result = qwen_engine.locate(photos[0], on_token=on_token, cancel=cancel)
    assert result.cancelled
    assert result.guesses[0].finish == "cancelled"
    assert result.guesses[0].timings.generated_tokens <= 4
    # The engine is still usable afterwards, from the cached prompt.
    again = qwen_engine.locate(photos[0])
    assert not again.cancelled and again.guesses[0].timings.prefix_reused


def test_cancel_from_another_thread_returns_within_a_second(qwen_spec, photos):
    engine = Engine(qwen_spec, n_threads=1, grammar=False, max_tokens=1500, n_ctx=2048)
    try:
        cancel = threading.Event()
        set_at = []

        def slow_reader(_piece):
            time.sleep(0.004)  # a slow UI: makes the full run take several seconds

        def fire():
            set_at.append(time.perf_counter())
            cancel.set()

        timer = threading.Timer(0.5, fire)
        timer.start()
        result = engine.locate(photos[0], on_token=slow_reader, cancel=cancel)
        returned_at = time.perf_counter()
        timer.cancel()
        assert result.cancelled, "generation finished before the cancel fired"
        assert returned_at - set_at[0] < 1.0
        assert result.guesses[0].timings.generated_tokens < 1500
    finally:
        engine.close()


def test_grammar_makes_even_a_random_model_answer(qwen_grammar_engine, photos):
    result = qwen_grammar_engine.locate(photos[0])
    guess = result.guesses[0]
    assert guess.finish == "stop", f"{guess.finish}: {guess.text[-200:]!r}"
    assert guess.parsed.ok, (guess.parsed.status, guess.parsed.reason, guess.text[-300:])
    assert -90 <= guess.parsed.latitude <= 90 and -180 <= guess.parsed.longitude <= 180
    assert result.best is guess and result.point == (guess.parsed.latitude, guess.parsed.longitude)


def test_several_guesses_give_a_consensus(qwen_grammar_engine, photos):
    streamed: list[list[str]] = []  # one list of pieces per guess, split where on_guess fires
    result = qwen_grammar_engine.locate(
        photos[1], samples=2, temperature=0.5,
        on_guess=lambda k: streamed.append([]) or None,
        on_token=lambda piece: streamed[-1].append(piece))
    assert len(result.guesses) == 2
    assert ["".join(pieces) for pieces in streamed] == [g.text for g in result.guesses]
    assert [g.finish for g in result.guesses] == ["stop"] * 2
    assert all(g.parsed.ok for g in result.guesses)
    assert len({g.text for g in result.guesses}) > 1  # each guess has its own seed
    index, lat, lon, radius = result.consensus
    assert (lat, lon) == (result.parsed_guesses[index].parsed.latitude,
                          result.parsed_guesses[index].parsed.longitude)
    # Two guesses: the first is the medoid (ties go to the earliest), the radius the distance.
    (a, b) = [(g.parsed.latitude, g.parsed.longitude) for g in result.guesses]
    assert index == 0 and radius == pytest.approx(geo.distance_km(*a, *b))
    assert result.best.parsed.latitude == lat and result.radius_km == radius
    # Later guesses reuse the encoded image: no second image encode.
    assert result.guesses[1].timings.image_encode_s == 0
    assert result.guesses[1].timings.prefix_reused


def test_settings_name_what_changes_the_output(qwen_engine, qwen_grammar_engine, qwen_spec):
    plain = qwen_engine.settings()
    assert plain["model_sha256"] == qwen_spec.model_sha256
    assert plain["prompt_version"] == qwen_spec.prompt_version
    assert plain["grammar"] is False and qwen_grammar_engine.settings()["grammar"] is True
    assert plain["image_budget"] == qwen_spec.budget.to_dict()
    sampled = qwen_engine.settings(samples=3, temperature=0.7)
    assert sampled["samples"] == 3 and sampled["temperature"] == 0.7 and "sampling" in sampled


# --------------------------------------------------------------------------- quiet and offline


def test_stderr_stays_quiet(qwen_spec, photos, capfd):
    capfd.readouterr()
    engine = Engine(qwen_spec, n_threads=1, grammar=False, max_tokens=8)
    try:
        engine.locate(photos[0])
    finally:
        engine.close()
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_locate_opens_no_network_connection(qwen_engine, photos, no_network):
    result = qwen_engine.locate(photos[2])
    assert result.guesses and no_network.attempts == []


def test_no_network_fixture_blocks_remote_and_allows_loopback(no_network):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        client = socket.create_connection(server.getsockname(), timeout=5)
        client.close()
        with pytest.raises(OSError):
            socket.create_connection(("203.0.113.7", 80), timeout=5)
        with pytest.raises(OSError):
            socket.getaddrinfo("example.com", 443)
    finally:
        server.close()
    assert len(no_network.attempts) == 2
    no_network.attempts.clear()  # the blocked attempts were this test's point


# --------------------------------------------------------------------------- bad model files


def test_truncated_gguf_is_a_clear_error(qwen_spec, tmp_path):
    broken = tmp_path / "model-Q8_0.gguf"
    data = qwen_spec.gguf.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match="truncated") as info:
        ModelSpec.from_files(broken, qwen_spec.mmproj)
    assert str(broken) in str(info.value)
    spec = ModelSpec(**{**qwen_spec.__dict__, "gguf": broken})
    with pytest.raises(EngineError, match="truncated") as info:
        Engine(spec, n_threads=1)
    assert str(broken) in str(info.value)


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"PK\x03\x04 a zip", "not a GGUF"),
                                             (b"GGUF\x03\x00", "truncated")])
def test_gguf_reader_names_the_problem(tmp_path, content, reason):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFFormatError, match=reason) as info:
        read_gguf(path)
    assert str(path) in str(info.value)


def test_text_model_given_as_projector_is_refused(qwen_spec):
    spec = ModelSpec(**{**qwen_spec.__dict__, "mmproj": qwen_spec.gguf})
    with pytest.raises(EngineError, match="not a projector") as info:
        Engine(spec, n_threads=1)
    assert str(qwen_spec.gguf) in str(info.value)


def test_projector_of_another_model_is_refused(qwen_spec, request):
    gemma = ModelSpec.from_folder(_gemma_folder(request))
    spec = ModelSpec(**{**qwen_spec.__dict__, "mmproj": gemma.mmproj})
    with pytest.raises(EngineError, match="does not match|another model") as info:
        Engine(spec, n_threads=1)
    assert str(gemma.mmproj) in str(info.value)


def test_projector_checks_in_libmtmd_also_become_engine_errors(qwen_spec, tmp_path, monkeypatch):
    """If a mismatched projector gets past the metadata checks, libmtmd's own refusal is
    still an EngineError naming the files, not a crash or a log line."""
    import geolocsft.engine as engine_mod

    monkeypatch.setattr(engine_mod, "check_pair", lambda *a: None)
    spec = ModelSpec(**{**qwen_spec.__dict__, "mmproj": qwen_spec.gguf})
    with pytest.raises(EngineError) as info:
        Engine(spec, n_threads=1)
    assert str(qwen_spec.gguf) in str(info.value)


def test_missing_model_folder(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        ModelSpec.from_folder(tmp_path / "nope")


def test_model_folder_missing_its_projector(tiny_qwen_folder, tmp_path):
    folder = tmp_path / "model folder"
    folder.mkdir()
    for item in Path(tiny_qwen_folder).iterdir():
        if not item.name.startswith("mmproj"):
            (folder / item.name).symlink_to(item)
    with pytest.raises(EngineError, match="missing") as info:
        ModelSpec.from_folder(folder)
    assert "mmproj" in str(info.value) and str(folder) in str(info.value)


# --------------------------------------------------------------------------- Gemma 3


@pytest.mark.slow  # builds the tiny Gemma through request.getfixturevalue
def test_gemma_locates_with_its_own_template(request, photos):
    spec = ModelSpec.from_folder(_gemma_folder(request))
    assert spec.family == "gemma3"
    engine = Engine(spec, n_threads=1, grammar=True, max_tokens=700, n_ctx=2048,
                    max_value_chars=12)
    try:
        text = engine.prompt_text
        assert text.count("<__media__>") == 1 and "<start_of_turn>user\n" in text
        assert "\n\n<__media__>\n\n" in text  # as Gemma's processor expands the image
        first = engine.locate(photos[0])
        second = engine.locate(photos[0])
        assert second.guesses[0].timings.prefix_reused
        assert second.guesses[0].text == first.guesses[0].text
        assert first.guesses[0].parsed.ok, first.guesses[0].text[-300:]
        assert first.guesses[0].timings.image_tokens > 0
    finally:
        engine.close()

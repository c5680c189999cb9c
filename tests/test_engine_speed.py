"""Speed features of the engine on real tiny GGUFs through llama-cpp-python: grammar
jump-forward (forced text drafted, decoded in one batch, verified) and throughput mode (several
photos decoded together). Output must be what plain one-token-at-a-time decoding gives."""

from __future__ import annotations

import pytest
from PIL import Image

from geolocsft import protocol

pytest.importorskip("llama_cpp")

from geolocsft.engine import Engine, ModelSpec  # noqa: E402
from geolocsft.engine_sampling import Sampler  # noqa: E402

pytestmark = pytest.mark.slow

CAPTION = protocol.format_target(
    {"regional_25km": {"terrain": "flat river valley", "climate": "temperate, overcast",
                       "development": "dense old town"},
     "micro_1km": {"road": "cobbles, dashed white line", "infrastructure": "wall lamps",
                   "vegetation": "plane trees", "buildings": "limestone, mansard roofs",
                   "vehicles": "right-hand traffic", "soil": "not visible"},
     "eliminated": [{"region": "Belgium", "why": "no bilingual signs"},
                    {"region": "Switzerland", "why": "no mountains"}],
     "conclusion": "central Paris"},
    protocol.Answer(48.8566, 2.3522, "Ile-de-France", "France", 0.35))


def _photos(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (320, 240), ((40 * i) % 256, 90 + 20 * i, 200 - 30 * i))
            for i in range(n)]


@pytest.fixture(scope="module")
def qwen(tiny_qwen_folder):
    engine = Engine(ModelSpec.from_folder(tiny_qwen_folder), n_threads=1, max_tokens=400,
                    n_ctx=2048)
    yield engine
    engine.close()


def _forced_after(engine: Engine, text: str) -> str:
    """The grammar's forced continuation after `text` has been accepted."""
    model = engine._model
    sampler = Sampler(model.vocab, model.n_vocab, temperature=0.0, seed=0,
                      grammar=protocol.answer_grammar(), top_k=40, top_p=0.95, min_p=0.05)
    try:
        import llama_cpp

        for token in model.tokenize(text):
            llama_cpp.llama_sampler_accept(sampler.grammar, token)
        return sampler.forced_text(*model._single_char_tokens())
    finally:
        sampler.free()


def test_forced_text_is_what_the_grammar_admits_alone(qwen):
    assert _forced_after(qwen, "") == '{"regional_25km":{"terrain":"'
    assert _forced_after(qwen, '{"regional_25km":{"terrain":"flat"') == ',"climate":"'
    # After the last eliminated entry's object: "," (another) or "]" (done) - nothing forced.
    head = CAPTION.split('"eliminated":')[0] + '"eliminated":[{"region":"a","why":"b"}'
    assert _forced_after(qwen, head) == ""
    before_answer = CAPTION.split("<answer>")[0].rstrip("\n")
    assert _forced_after(qwen, before_answer) == '\n<answer>{"latitude":'
    assert _forced_after(qwen, CAPTION.split('"confidence":')[0] + '"confidence":null') == "}</answer>"
    assert _forced_after(qwen, CAPTION) == ""  # complete: the end is allowed


def test_replayed_caption_comes_out_exactly_with_drafts_verified(qwen):
    """Replay makes the 'model' choose the caption's tokens: every draft is checked against
    them, rejected drafts are dropped from the KV cache, and the text is the caption."""
    got = {}
    for jump_forward in (False, True):
        qwen.jump_forward = jump_forward
        guess = qwen.replay(_photos(1), CAPTION)[0].guesses[0]
        got[jump_forward] = guess
        assert guess.text == CAPTION
        assert guess.parsed.ok and guess.parsed.country == "France"
    qwen.jump_forward = True
    assert got[False].timings.forced_tokens == 0
    forced, total = got[True].timings.forced_tokens, got[True].timings.generated_tokens
    assert total == got[False].timings.generated_tokens
    assert forced >= 0.25 * total, (forced, total)  # keys and punctuation: about a third


def test_parallel_replay_keeps_each_photo_its_own(tiny_qwen_folder):
    engine = Engine(ModelSpec.from_folder(tiny_qwen_folder), n_threads=1, max_tokens=400,
                    n_ctx=2048, parallel=3)
    try:
        results = engine.replay(_photos(4), CAPTION)  # a group of 3, then 1
        assert [r.guesses[0].text for r in results] == [CAPTION] * 4
        assert all(r.timings.image_tokens > 0 and r.timings.prefix_reused for r in results[1:])
    finally:
        engine.close()


def test_runner_in_throughput_mode_stores_each_photo_once(tmp_path, tiny_qwen_folder):
    """`locate --parallel`: photos go through in groups; a bad file is its own error row and
    the group goes on; a rerun computes nothing."""
    from geolocsft.locate import LocateRunner, find_photos
    from geolocsft.store import ResultStore, Status

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(_photos(4)):
        image.save(folder / f"p{i}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    items, _ = find_photos([folder])
    seen = []
    with Engine(ModelSpec.from_folder(tiny_qwen_folder), n_threads=1, max_tokens=400,
                n_ctx=2048, max_value_chars=12, parallel=3) as engine, \
            ResultStore(tmp_path / "s.sqlite") as store:
        runner = LocateRunner(engine, store, places=False, on_outcome=seen.append)
        summary = runner.run(items)
        assert summary.count("computed") == 4 and summary.count("error") == 1
        assert sorted(o.item.path.name for o in seen) == sorted(i.path.name for i in items)
        done = [o.result for o in summary.outcomes if o.action == "computed"]
        assert all(r.status == Status.DONE and r.latitude is not None for r in done)
        again = LocateRunner(engine, store, places=False).run(items)
        assert again.count("skipped") == 4 and again.count("computed") == 0

"""The engine on families whose language model is partly recurrent (families.FamilySpec
.recurrent): their state cannot be trimmed back to a position, so the engine restores saved
sequence states where it would trim (the prefix for the next photo, the prompt for another
guess, the prefix for a parallel sequence). Greedy answers must equal those of an engine that
reuses nothing, on the family's real tiny GGUF."""

from __future__ import annotations

import pytest

from geolocsft import families

RECURRENT = [spec.name for spec in families.FAMILIES if spec.recurrent]
MAX_TOKENS = 48


@pytest.fixture(scope="module", params=RECURRENT)
def folder(request):
    pytest.importorskip("transformers")
    pytest.importorskip("llama_cpp")
    from convert.tiny import tiny_model_folder

    return tiny_model_folder(request.param, "Q8_0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i, color in enumerate([(200, 40, 40), (30, 160, 60), (40, 60, 210)]):
        path = root / f"p{i}.jpg"
        Image.new("RGB", (160 + 40 * i, 120), color).save(path)
        paths.append(path)
    return paths


def _engine(folder, **kwargs):
    from geolocsft.engine import Engine, ModelSpec

    return Engine(ModelSpec.from_folder(folder), n_threads=1, max_tokens=MAX_TOKENS,
                  max_value_chars=6, **kwargs)


def _texts(results):
    return [r.guesses[0].text for r in results]


@pytest.fixture(scope="module")
def fresh(folder, photos):
    """Reference: every photo in a new engine that reuses nothing."""
    out = []
    for photo in photos:
        with _engine(folder, reuse_prompt_cache=False) as engine:
            out.append(engine.locate(photo).guesses[0].text)
    return out


@pytest.mark.slow
def test_reused_prefix_gives_the_answers_of_a_fresh_engine(folder, photos, fresh):
    with _engine(folder) as engine:
        first = [engine.locate(p) for p in photos]
        again = engine.locate(photos[0])
    assert _texts(first) == fresh
    assert again.guesses[0].text == fresh[0]
    assert [r.guesses[0].timings.prefix_reused for r in first] == [False, True, True]


@pytest.mark.slow
def test_another_guess_starts_from_the_prompt(folder, photos, fresh):
    with _engine(folder) as engine:
        result = engine.locate(photos[1], samples=3, temperature=0.0)
    assert [g.text for g in result.guesses] == [fresh[1]] * 3


@pytest.mark.slow
def test_parallel_photos_match_one_at_a_time(folder, photos, fresh):
    with _engine(folder, parallel=2) as engine:
        results = engine.locate_many(photos)
    assert _texts(results) == fresh


@pytest.mark.slow
def test_drafting_is_off_for_recurrent_models(folder, photos):
    with _engine(folder, jump_forward=True) as engine:
        guess = engine.locate(photos[0]).guesses[0]
    assert guess.timings.forced_tokens == 0

"""The prompt/answer contract: prompts, targets, grammar, and the tolerant parser."""

from __future__ import annotations

import ctypes
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geolocsft import protocol
from geolocsft.protocol import (
    ANALYSIS_KEYS,
    MICRO_KEYS,
    PROMPT_VERSION,
    REGIONAL_KEYS,
    Answer,
    ParseStatus,
    answer_grammar,
    chat_messages,
    format_target,
    get_prompt,
    parse_output,
    validate_analysis,
)

ANALYSIS = {
    "regional_25km": {"terrain": "river basin, flat", "climate": "temperate oceanic",
                      "development": "dense capital city"},
    "micro_1km": {"road": "asphalt, white dashed lines", "infrastructure": "ornate lamp posts",
                  "vegetation": "plane trees", "buildings": "Haussmann stone facades",
                  "vehicles": "Peugeot, Renault; right-hand traffic", "soil": "not visible"},
    "eliminated": [{"region": "Brussels", "why": "street signs only in French"},
                   {"region": "Lyon", "why": "scale of the boulevards"}],
    "conclusion": "central Paris, \"Rive Droite\" — boulevards near the Opéra",
}
PARIS = Answer(48.856614, 2.352222, region="Île-de-France", country="France", confidence=0.72)
TARGET = format_target(ANALYSIS, PARIS)


# ------------------------------------------------------------------ prompts

def test_prompt_is_not_changed_silently():
    # Changing the prompt needs a new version id: add a new entry to PROMPTS, never edit one.
    assert PROMPT_VERSION == "gls-v1"
    assert get_prompt("gls-v1").fingerprint() == (
        "efdf524cf1074f0ae0a9a63c667c97110d0d3024479f468c7156417e46e707ca"
    )
    assert get_prompt("gls-c1").fingerprint() == (
        "e98c9de89a5409ce1aa875bfab9d8a6e7f89e1404a62206aa938aa6e5c10491e"
    )


def test_prompt_asks_for_both_scales_and_the_exact_format():
    p = get_prompt()
    assert p.version == PROMPT_VERSION
    for cue in ("25 km", "1 km", "guardrails", "drainage", "vegetation", "street furniture",
                "driving side", "soil", "eliminate"):
        assert cue in p.system
    # The JSON skeleton in the prompt is valid JSON with exactly the schema's keys.
    skeleton = next(line for line in p.system.splitlines() if line.startswith("{"))
    obj = json.loads(skeleton)
    assert tuple(obj) == ANALYSIS_KEYS
    assert tuple(obj["regional_25km"]) == REGIONAL_KEYS
    assert tuple(obj["micro_1km"]) == MICRO_KEYS
    answer_line = next(line for line in p.system.splitlines() if line.startswith("<answer>"))
    assert parse_output(answer_line).status is ParseStatus.OK
    assert len(p.question) < 60


def test_unknown_prompt_version_names_the_known_ones():
    with pytest.raises(KeyError, match="gls-v1"):
        get_prompt("gls-v0")
    with pytest.raises(KeyError, match="gls-v1"):
        answer_grammar("nope")


def test_chat_messages_hugging_face_shape():
    p = get_prompt()
    msgs = chat_messages(p)
    assert msgs == [
        {"role": "system", "content": [{"type": "text", "text": p.system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]},
    ]
    with_target = chat_messages(p, TARGET, image="IMG")
    assert with_target[1]["content"][0] == {"type": "image", "image": "IMG"}
    assert with_target[2] == {"role": "assistant", "content": [{"type": "text", "text": TARGET}]}


# ------------------------------------------------------------------ targets

def test_format_target_shape():
    line1, line2 = TARGET.split("\n")
    assert json.loads(line1) == ANALYSIS
    assert "Île-de-France" in line2 and "Opéra" in line1  # ensure_ascii=False: fewer tokens
    assert line2 == ('<answer>{"latitude":48.8566,"longitude":2.3522,"region":"Île-de-France",'
                     '"country":"France","confidence":0.72}</answer>')


def test_format_target_refuses_unscorable_answers():
    for bad in (Answer(91, 0), Answer(0, -180.5), Answer(math.nan, 0), Answer(0, math.inf),
                Answer(0, 0, confidence=1.5), Answer("48", 2)):
        with pytest.raises(ValueError, match="bad answer"):
            format_target(ANALYSIS, bad)
    with pytest.raises(ValueError, match="answer"):
        format_target({**ANALYSIS, "conclusion": "see <answer>"}, PARIS)
    # no confidence is written as null and read back as None
    r = parse_output(format_target(ANALYSIS, Answer(-33.8688, 151.2093)))
    assert r.ok and r.confidence is None and (r.latitude, r.longitude) == (-33.8688, 151.2093)


def test_validate_analysis():
    assert validate_analysis(ANALYSIS) == []
    assert validate_analysis([]) == ["analysis must be a JSON object, got list"]
    broken = json.loads(json.dumps(ANALYSIS))
    del broken["micro_1km"]["soil"]
    broken["regional_25km"]["climate"] = ""
    broken["eliminated"] = []
    broken["extra"] = 1
    broken["conclusion"] = "x" * (protocol.MAX_VALUE_CHARS + 1)
    problems = validate_analysis(broken)
    assert "unexpected keys: extra" in problems
    assert "micro_1km.soil is missing" in problems
    assert "regional_25km.climate is empty" in problems
    assert "eliminated has 0 entries (expected 1-5)" in problems
    limit = protocol.MAX_VALUE_CHARS
    assert f"conclusion is {limit + 1} characters (limit {limit})" in problems
    assert validate_analysis({"regional_25km": {}}) [0].startswith("missing keys: micro_1km")
    bad_item = {**ANALYSIS, "eliminated": [{"region": "X"}]}
    assert validate_analysis(bad_item) == ["eliminated[0] must be an object with keys region, why"]


# ------------------------------------------------------------------ parser: every form

@pytest.mark.parametrize("text, lat, lon", [
    # our own target and JSON variants inside the tag
    (TARGET, 48.8566, 2.3522),
    ('<answer>{"latitude": -33.8688, "longitude": 151.2093}</answer>', -33.8688, 151.2093),
    ("<answer>{'latitude': 10.5, 'longitude': -20.25,}</answer>", 10.5, -20.25),
    ('<answer>\n```json\n{"lat": 1.5, "lng": 2.5}\n```\n</answer>', 1.5, 2.5),
    ('<ANSWER>{"latitude": "48.85° N", "longitude": "2.35° E"}</ANSWER>', 48.85, 2.35),
    # the official GeoLocSFT geo-caption: a whole JSON object with answer.coordinates
    ('{"analysis": {"scene": "street"}, "answer": {"coordinates": {"latitude": 35.6895, '
     '"longitude": 139.6917}, "country": "Japan", "city": "Tokyo"}}', 35.6895, 139.6917),
    ('Here you go:\n```json\n{"analysis": {"a": "b",}, "answer": {"coordinates": '
     '{"latitude": -22.9068, "longitude": -43.1729,},},}\n```', -22.9068, -43.1729),
    # the official zero-shot baseline and its variants
    ("<answer> lat: 40.7128 lon: -74.006 </answer>", 40.7128, -74.006),
    ("<answer>latitude: 51.5074, longitude: -0.1278</answer>", 51.5074, -0.1278),
    ("<answer>Latitude = 51.5, Longitude = -0.12</answer>", 51.5, -0.12),
    ("<answer>52.52, 13.405</answer>", 52.52, 13.405),
    ("<answer>(52.52, 13.405)</answer>", 52.52, 13.405),
    ("Latitude: -33.9\nLongitude: 151.2", -33.9, 151.2),
    ("lat/lon: 48.85, 2.35", 48.85, 2.35),
    ("Coordinates: 48.85, 2.35.", 48.85, 2.35),
    # hemisphere letters
    ("<answer>48.85° N, 2.35° E</answer>", 48.85, 2.35),
    ("<answer>33.9°S 151.2°E</answer>", -33.9, 151.2),
    ("<answer>S 33.9, E 151.2</answer>", -33.9, 151.2),
    ("<answer>2.35 W, 48.85 N</answer>", 48.85, -2.35),  # letters decide the axis
    ("The photo was taken near 34.05 S, 18.42 E.", -34.05, 18.42),
    ("<answer>12.5 South, 45 West</answer>", -12.5, -45.0),
    # degrees-minutes-seconds, with ASCII and typographic marks, and decimal minutes
    ("<answer>48°51'24\"N 2°21'03\"E</answer>", 48 + 51 / 60 + 24 / 3600, 2 + 21 / 60 + 3 / 3600),
    ("48°51′24″N, 2°21′03″E", 48 + 51 / 60 + 24 / 3600, 2 + 21 / 60 + 3 / 3600),
    ("<answer>33° 52.1' S, 151° 12.6' E</answer>", -(33 + 52.1 / 60), 151 + 12.6 / 60),
    ("<answer>lat: 40°26'46''N lon: 79°58'56''W</answer>",
     40 + 26 / 60 + 46 / 3600, -(79 + 58 / 60 + 56 / 3600)),
])
def test_parser_reads_every_form(text, lat, lon):
    r = parse_output(text)
    assert r.status is ParseStatus.OK, r.reason
    assert r.latitude == pytest.approx(lat, abs=1e-9)
    assert r.longitude == pytest.approx(lon, abs=1e-9)


def test_parser_fills_fields_and_analysis():
    r = parse_output(TARGET)
    assert (r.region, r.country, r.confidence) == ("Île-de-France", "France", 0.72)
    assert r.analysis == ANALYSIS
    official = ('{"analysis": {"scene": "street"}, "answer": {"coordinates": {"latitude": 1, '
                '"longitude": 2}, "country": "Japan", "city": "Tokyo", "confidence": 0.4}}')
    r = parse_output(official)
    assert (r.country, r.region, r.confidence, r.analysis) == ("Japan", "Tokyo", 0.4,
                                                               {"scene": "street"})
    r = parse_output("<answer>lat: 1 lon: 2, region: Kanto, country: Japan</answer>")
    assert (r.region, r.country) == ("Kanto", "Japan")


def test_last_complete_answer_wins():
    text = ("<answer>{\"latitude\": 10, \"longitude\": 20}</answer> on reflection "
            "<answer>{\"latitude\": -10, \"longitude\": -20}</answer>")
    r = parse_output(text)
    assert (r.latitude, r.longitude) == (-10, -20)
    # a later unreadable block does not hide an earlier complete answer
    r = parse_output(text + " <answer>I am not sure</answer>")
    assert (r.latitude, r.longitude) == (-10, -20)
    # a restated official caption after our tag wins by position
    r = parse_output('<answer>1, 2</answer>\n{"answer": {"coordinates": '
                     '{"latitude": 3, "longitude": 4}}}')
    assert (r.latitude, r.longitude) == (3, 4)
    # structured answers beat coordinates mentioned in prose after them
    r = parse_output("<answer>1, 2</answer> (Paris is at 48.85° N, 2.35° E.)")
    assert (r.latitude, r.longitude) == (1, 2)


@pytest.mark.parametrize("text", [
    '<answer>{"latitude": 95.0, "longitude": 2.0}</answer>',
    '<answer>{"latitude": 45.0, "longitude": -180.01}</answer>',
    "<answer>lat: -91 lon: 0</answer>",
    "<answer>200° E, 10° N</answer>",
])
def test_out_of_range_is_a_failure_never_a_clamp(text):
    r = parse_output(text)
    assert r.status is ParseStatus.OUT_OF_RANGE
    assert r.latitude is None and r.longitude is None
    assert "outside" in r.reason


def test_last_answer_out_of_range_is_reported():
    r = parse_output("<answer>1, 2</answer><answer>100, 2</answer>")
    assert r.status is ParseStatus.OUT_OF_RANGE


@pytest.mark.parametrize("text, status, words", [
    ("", ParseStatus.EMPTY, "empty"),
    ("   \n\t", ParseStatus.EMPTY, "empty"),
    (None, ParseStatus.EMPTY, "None"),
    (42, ParseStatus.MALFORMED, "expected text"),
    ("I cannot tell where this is.", ParseStatus.NO_ANSWER, "no <answer>"),
    (TARGET[:TARGET.index("<answer>")], ParseStatus.NO_ANSWER, "no <answer>"),
    (TARGET[:120], ParseStatus.NO_ANSWER, "truncated"),
    ('<answer>{"latitude": NaN, "longitude": 2}</answer>', ParseStatus.MALFORMED, "finite"),
    ('<answer>{"latitude": 1, "longitude": Infinity}</answer>', ParseStatus.MALFORMED, "finite"),
    ('<answer>{"latitude": 1e400, "longitude": 2}</answer>', ParseStatus.MALFORMED, "finite"),
    ("<answer>somewhere in France</answer>", ParseStatus.MALFORMED, "no coordinates"),
    ('<answer>{"latitude": 48.85, "longitude": 2.3', ParseStatus.MALFORMED, "truncated"),
    ('<answer>{"latitude": null, "longitude": 2}</answer>', ParseStatus.MALFORMED, "null"),
    ("<answer>48°75'N 2°E</answer>", ParseStatus.MALFORMED, "minutes"),
    ("<answer>-48.85° S, 2.35° E</answer>", ParseStatus.MALFORMED, "minus sign"),
    ('{"answer": {"coordinates": {"latitude": 1, "lon', ParseStatus.MALFORMED, "truncated"),
])
def test_failures_say_why(text, status, words):
    r = parse_output(text)
    assert r.status is status
    assert words in r.reason
    assert not r.ok and r.latitude is None


def test_truncated_output_with_complete_coordinates_is_ok():
    cut = TARGET[:TARGET.index(',"region"') + 3]  # answer tag never closed
    r = parse_output(cut)
    assert r.ok and (r.latitude, r.longitude) == (48.8566, 2.3522)
    assert r.analysis == ANALYSIS
    official = '{"answer": {"coordinates": {"latitude": 35.6895, "longitude": 139.6917}, "coun'
    r = parse_output(official)
    assert r.ok and (r.latitude, r.longitude) == (35.6895, 139.6917)


@pytest.mark.parametrize("lat, lon", [(0, 0), (90, 180), (-90, -180), (-0.00004, 179.99996),
                                      (12.34567, -98.76543)])
def test_round_trip(lat, lon):
    r = parse_output(format_target(ANALYSIS, Answer(lat, lon, "R", "C", 0.5)))
    assert r.ok
    assert r.latitude == round(lat, 4) and r.longitude == round(lon, 4)
    assert (r.region, r.country, r.confidence, r.analysis) == ("R", "C", 0.5, ANALYSIS)


# ------------------------------------------------------------------ parser: never raises

def _check_result(r):
    assert isinstance(r, protocol.ParseResult)
    assert isinstance(r.status, ParseStatus) and isinstance(r.reason, str) and r.reason
    if r.ok:
        assert math.isfinite(r.latitude) and abs(r.latitude) <= 90
        assert math.isfinite(r.longitude) and abs(r.longitude) <= 180
    else:
        assert r.latitude is None and r.longitude is None
    assert r.analysis is None or isinstance(r.analysis, dict)


_ALPHABET = st.sampled_from(list('{}[]<>/"\',:;.-+ \n0123456789NSEWnatlogiude°′″\'`x')
                            + ["<answer>", "</answer>", "latitude", "lon", "```json", "NaN"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.lists(_ALPHABET, max_size=80).map("".join)))
def test_parser_never_raises_on_arbitrary_text(text):
    _check_result(parse_output(text))


@st.composite
def _mutated_target(draw):
    lat = draw(st.floats(-90, 90, allow_nan=False))
    lon = draw(st.floats(-180, 180, allow_nan=False))
    text = format_target(ANALYSIS, Answer(lat, lon, draw(st.text(max_size=10)), "X", None))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 20)))
        text = text[:i] + draw(st.text(max_size=5)) + text[j:]
    return text


@settings(max_examples=200, deadline=None)
@given(_mutated_target())
def test_parser_never_raises_on_mutated_targets(text):
    _check_result(parse_output(text))


@settings(max_examples=200, deadline=None)
@given(st.floats(-90, 90, allow_nan=False), st.floats(-180, 180, allow_nan=False),
       st.data())
def test_truncations_of_a_valid_target(lat, lon, data):
    text = format_target(ANALYSIS, Answer(lat, lon, "Île", "Ça", 0.5))
    cut = data.draw(st.integers(0, len(text)))
    r = parse_output(text[:cut])
    _check_result(r)
    answer_at = text.index("<answer>")
    if cut <= answer_at + len("<answer>"):
        assert r.status in (ParseStatus.EMPTY, ParseStatus.NO_ANSWER, ParseStatus.MALFORMED)
        if cut <= answer_at:
            assert r.status in (ParseStatus.EMPTY, ParseStatus.NO_ANSWER)
    if r.ok:  # never a wrong number: a cut inside a coordinate is not ok
        assert (r.latitude, r.longitude) == (round(lat, 4), round(lon, 4))
    if cut == len(text):
        assert r.ok


# ------------------------------------------------------------------ grammar (llama.cpp)

def test_llama_cpp_accepts_the_grammar():
    llama_cpp = pytest.importorskip("llama_cpp")
    grammar = answer_grammar()
    llama_cpp.LlamaGrammar.from_string(grammar)
    # from_string only stores the text; llama.cpp's own parser runs when a grammar sampler is
    # made. It needs no vocabulary for a grammar without token references.
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    assert sampler, "llama.cpp rejected the grammar (see its log above)"
    llama_cpp.llama_sampler_free(sampler)
    broken = llama_cpp.llama_sampler_init_grammar(None, b'root ::= "a" (', b"root")
    assert not broken  # the check above can fail


@pytest.fixture(scope="module")
def vocab_model():
    """llama.cpp with the real Qwen2 vocabulary only (a vocab-only GGUF from llama.cpp's source
    package, which the converter fetches into the cache): enough to run the grammar sampler."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from convert.llamacpp import LlamaCppSourceError, llama_cpp_source

    try:
        path = llama_cpp_source().vocab_dir / "ggml-vocab-qwen2.gguf"
    except LlamaCppSourceError as exc:
        pytest.skip(f"llama.cpp source package unavailable: {exc}")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def _grammar_admits(llm, grammar: str, text: str) -> bool:
    """Feed text token by token through llama.cpp's grammar sampler; False at the first token
    it masks out, or if it does not allow end-of-generation afterwards."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler
    try:
        def allowed(token: int) -> bool:
            data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
            arr = llama_cpp.llama_token_data_array(data, 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
            return math.isfinite(data[0].logit)

        for token in llm.tokenize(text.encode(), add_bos=False, special=False):
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(llama_cpp.llama_vocab_eos(vocab))
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_grammar_admits_targets_and_rejects_other_shapes(vocab_model):
    grammar = answer_grammar()
    assert _grammar_admits(vocab_model, grammar, TARGET)
    for lat, lon in ((90, -180), (-0.5, 179.9999), (0, 0)):
        assert _grammar_admits(vocab_model, grammar, format_target(ANALYSIS, Answer(lat, lon)))
    out_of_range = TARGET.replace('"latitude":48.8566', '"latitude":98.8566')
    assert not _grammar_admits(vocab_model, grammar, out_of_range)
    assert not _grammar_admits(vocab_model, grammar, TARGET.replace("\n", " "))
    assert not _grammar_admits(vocab_model, grammar, TARGET + " more")
    missing_key = json.loads(json.dumps(ANALYSIS))
    del missing_key["micro_1km"]["soil"]
    assert not _grammar_admits(vocab_model, grammar, format_target(missing_key, PARIS))


def test_compact_version_has_its_own_schema_and_grammar():
    """gls-c1 (the fast preset): one phrase per scale; its targets validate under it and not
    under gls-v1, and its grammar names exactly its keys in order."""
    from geolocsft.protocol import COMPACT_KEYS, SCHEMAS, format_target

    compact = {"context_25km": "temperate valley, old town", "cues_1km": "cobbles, plane trees",
               "eliminated": [{"region": "Belgium", "why": "no bilingual signs"}],
               "conclusion": "central Paris"}
    assert tuple(key for key, _ in SCHEMAS["gls-c1"]) == COMPACT_KEYS
    assert validate_analysis(compact, "gls-c1") == []
    assert validate_analysis(compact) and validate_analysis(ANALYSIS, "gls-c1")
    assert validate_analysis(dict(compact, cues_1km=""), "gls-c1") == ["cues_1km is empty"]
    grammar = answer_grammar("gls-c1")
    line = grammar.splitlines()[1]
    assert [k for k in COMPACT_KEYS if k in line] == list(COMPACT_KEYS)
    assert "regional_25km" not in grammar
    text = format_target(compact, Answer(48.8566, 2.3522, "Ile-de-France", "France", 0.35))
    assert parse_output(text).analysis == compact

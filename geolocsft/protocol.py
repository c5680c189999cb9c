"""The prompt/answer contract: versioned prompts, the assistant target format, a llama.cpp
grammar for it, and a tolerant parser for whatever a model actually writes.

Captioning (teacher), training and inference all build their conversation from `get_prompt` and
`chat_messages`, so the fine-tune sees at inference exactly what it learnt from.
See docs/protocol.md for the reasoning behind the format and the parser's accepted forms.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

PROMPT_VERSION = "gls-v1"

# Decimal places of the coordinates in a target: 4 decimals is ~11 m, far below the 1 km
# metric, and each extra digit costs the laptop a token.
COORD_DECIMALS = 4
CONFIDENCE_DECIMALS = 2

# The analysis schema (the geo-caption before the answer). Order matters: it is the order the
# teacher is asked for, the order of the targets, and the order the grammar forces.
REGIONAL_KEYS = ("terrain", "climate", "development")
MICRO_KEYS = ("road", "infrastructure", "vegetation", "buildings", "vehicles", "soil")
ELIMINATED_KEYS = ("region", "why")
ANALYSIS_KEYS = ("regional_25km", "micro_1km", "eliminated", "conclusion")
ELIMINATED_MIN, ELIMINATED_MAX = 1, 5
# gls-c1 (the fast preset's compact caption): the same method in about half the tokens, one
# phrase per scale instead of one per cue.
COMPACT_KEYS = ("context_25km", "cues_1km", "eliminated", "conclusion")

# Each version's analysis: (key, shape) in order; a shape is "text", "eliminated", or the keys
# of an object of texts.
SCHEMAS: dict[str, tuple[tuple[str, Any], ...]] = {
    "gls-v1": (("regional_25km", REGIONAL_KEYS), ("micro_1km", MICRO_KEYS),
               ("eliminated", "eliminated"), ("conclusion", "text")),
    "gls-c1": (("context_25km", "text"), ("cues_1km", "text"), ("eliminated", "eliminated"),
               ("conclusion", "text")),
}
# A target is generated on a laptop: a value longer than this is a sign of a rambling caption.
# The grammar enforces the same cap, so constrained decoding always reaches the answer.
MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class Prompt:
    version: str
    system: str
    question: str

    def fingerprint(self) -> str:
        """sha256 of everything the model sees from the prompt; recorded in tests so a silent
        edit is caught (changing a prompt needs a new version id)."""
        blob = json.dumps([self.version, self.system, self.question], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_SYSTEM_V1 = """\
You are an expert in visual geolocation. From one photo, infer where on Earth it was taken.

Method:
1. Regional context (~25 km): terrain, climate, development.
2. Micro-features (~1 km), one JSON key each: road (surface, markings, guardrails), \
infrastructure (lighting, drainage, poles, signs), vegetation (species), buildings \
(architecture, street furniture), vehicles (vehicles, traffic, driving side), soil (terrain \
and soil).
3. Name 1-3 similar-looking regions and eliminate each with the cue that rules it out.
4. Conclude, then commit to one best coordinate even when unsure.

Reply with exactly two lines and nothing else.
Line 1, one compact JSON object:
{"regional_25km":{"terrain":"","climate":"","development":""},"micro_1km":{"road":"",\
"infrastructure":"","vegetation":"","buildings":"","vehicles":"","soil":""},\
"eliminated":[{"region":"","why":""}],"conclusion":""}
Line 2:
<answer>{"latitude":0.0,"longitude":0.0,"region":"","country":"","confidence":0.0}</answer>

Rules: values are short phrases (under 20 words); write "not visible" when a cue is absent; \
latitude -90 to 90 (north positive) and longitude -180 to 180 (east positive) in decimal \
degrees with up to 4 decimals; region is the state, province or area; country is the English \
country name; confidence is your probability (0 to 1) that the answer is within 25 km."""

_SYSTEM_C1 = """\
You are an expert in visual geolocation. From one photo, infer where on Earth it was taken.

Method: 1. the regional context (~25 km): terrain, climate, development; 2. the decisive \
micro-features (~1 km): road, infrastructure, vegetation, buildings, vehicles, soil; 3. name \
1-3 similar-looking regions and the cue that rules each out; 4. conclude and commit to one \
best coordinate even when unsure.

Reply with exactly two lines and nothing else.
Line 1, one compact JSON object:
{"context_25km":"","cues_1km":"","eliminated":[{"region":"","why":""}],"conclusion":""}
Line 2:
<answer>{"latitude":0.0,"longitude":0.0,"region":"","country":"","confidence":0.0}</answer>

Rules: context_25km and cues_1km are one phrase each (under 15 words) naming only what is \
visible; the other values under 10 words; latitude -90 to 90 (north positive) and longitude \
-180 to 180 (east positive) in decimal degrees with up to 4 decimals; region is the state, \
province or area; country is the English country name; confidence is your probability (0 to \
1) that the answer is within 25 km."""

PROMPTS: dict[str, Prompt] = {
    "gls-v1": Prompt(
        version="gls-v1",
        system=_SYSTEM_V1,
        question="Where was this photo taken?",
    ),
    "gls-c1": Prompt(
        version="gls-c1",
        system=_SYSTEM_C1,
        question="Where was this photo taken?",
    ),
}


def get_prompt(version: str = PROMPT_VERSION) -> Prompt:
    try:
        return PROMPTS[version]
    except KeyError:
        known = ", ".join(sorted(PROMPTS))
        raise KeyError(f"unknown prompt version {version!r}; known versions: {known}") from None


def chat_messages(prompt: Prompt, target: str | None = None, *, image: Any = None) -> list[dict]:
    """The conversation in Hugging Face multimodal chat format. `image` (optional) is placed in
    the image part for processors that take it there; without it the part is a placeholder."""
    image_part: dict[str, Any] = {"type": "image"}
    if image is not None:
        image_part["image"] = image
    messages: list[dict] = [
        {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
        {"role": "user", "content": [image_part, {"type": "text", "text": prompt.question}]},
    ]
    if target is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


# ---------------------------------------------------------------- answer and target

@dataclass
class Answer:
    latitude: float
    longitude: float
    region: str = ""
    country: str = ""
    confidence: float | None = None

    def problems(self) -> list[str]:
        out = []
        axes = (("latitude", self.latitude, 90), ("longitude", self.longitude, 180))
        for name, value, limit in axes:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                out.append(f"{name} is not a number: {value!r}")
            elif not math.isfinite(value):
                out.append(f"{name} is not finite: {value!r}")
            elif abs(value) > limit:
                out.append(f"{name} {value} is outside -{limit}..{limit}")
        for name in ("region", "country"):
            if not isinstance(getattr(self, name), str):
                out.append(f"{name} is not a string")
        c = self.confidence
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float))
                              or not math.isfinite(c) or not 0 <= c <= 1):
            out.append(f"confidence must be a number in 0..1 or None, got {c!r}")
        return out

    def to_json(self) -> str:
        body = {
            "latitude": round(float(self.latitude), COORD_DECIMALS),
            "longitude": round(float(self.longitude), COORD_DECIMALS),
            "region": self.region,
            "country": self.country,
            "confidence": None if self.confidence is None
            else round(float(self.confidence), CONFIDENCE_DECIMALS),
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def validate_analysis(analysis: Any, version: str = PROMPT_VERSION) -> list[str]:
    """Problems with an analysis dict against `version`'s schema, in words; empty when it is
    valid. The trainer uses this to reject teacher captions before they become targets."""
    schema = SCHEMAS[get_prompt(version).version]
    keys = tuple(key for key, _ in schema)
    if not isinstance(analysis, dict):
        return [f"analysis must be a JSON object, got {type(analysis).__name__}"]
    problems = []
    missing = [k for k in keys if k not in analysis]
    extra = [k for k in analysis if k not in keys]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected keys: {', '.join(map(str, extra))}")

    def check_text(where: str, value: Any) -> None:
        if not isinstance(value, str):
            problems.append(f"{where} must be a string, got {type(value).__name__}")
        elif not value.strip():
            problems.append(f"{where} is empty")
        elif len(value) > MAX_VALUE_CHARS:
            problems.append(f"{where} is {len(value)} characters (limit {MAX_VALUE_CHARS})")
        elif "<answer" in value.lower() or "</answer" in value.lower():
            problems.append(f"{where} contains an answer tag")

    for key, shape in schema:
        if key not in analysis:
            continue
        value = analysis[key]
        if shape == "text":
            check_text(key, value)
        elif shape == "eliminated":
            _check_eliminated(value, problems, check_text)
        elif not isinstance(value, dict):
            problems.append(f"{key} must be an object")
        else:
            for sub in shape:
                if sub not in value:
                    problems.append(f"{key}.{sub} is missing")
                else:
                    check_text(f"{key}.{sub}", value[sub])
            for sub in value:
                if sub not in shape:
                    problems.append(f"{key}.{sub} is not in the schema")
    return problems


def _check_eliminated(items: Any, problems: list[str], check_text) -> None:
    if not isinstance(items, list):
        problems.append("eliminated must be a list")
    elif not ELIMINATED_MIN <= len(items) <= ELIMINATED_MAX:
        problems.append(
            f"eliminated has {len(items)} entries (expected {ELIMINATED_MIN}-{ELIMINATED_MAX})")
    else:
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != set(ELIMINATED_KEYS):
                problems.append(f"eliminated[{i}] must be an object with keys region, why")
                continue
            for sub in ELIMINATED_KEYS:
                check_text(f"eliminated[{i}].{sub}", item[sub])


def format_target(analysis: dict, answer: Answer) -> str:
    """The assistant text: analysis as one line of JSON, a newline, `<answer>{...}</answer>`.
    Raises ValueError for an answer that could never be scored or an analysis that would
    confuse the parser (callers validate the schema itself with `validate_analysis`)."""
    problems = answer.problems()
    if problems:
        raise ValueError("bad answer: " + "; ".join(problems))
    line = json.dumps(analysis, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if "<answer" in line.lower() or "</answer" in line.lower():
        raise ValueError("analysis text contains an <answer> tag")
    return f"{line}\n<answer>{answer.to_json()}</answer>"


# ---------------------------------------------------------------- grammar

_GBNF_COMMON = r"""
str ::= "\"" char{0,MAXCHARS} "\""
char ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
frac ::= "." [0-9]{1,6}
zeros ::= "." "0"{1,6}
lat ::= "-"? ( ( [1-8]? [0-9] frac? ) | ( "90" zeros? ) )
lon ::= "-"? ( ( ( [1-9]? [0-9] | "1" [0-7] [0-9] ) frac? ) | ( "180" zeros? ) )
conf ::= "null" | ( "0" ( "." [0-9]{1,3} )? ) | ( "1" ( "." "0"{1,3} )? )
"""


def answer_grammar(version: str = PROMPT_VERSION, max_value_chars: int = MAX_VALUE_CHARS) -> str:
    """GBNF (llama.cpp) that admits exactly the target shape of `version`: the analysis object
    with its keys in schema order, a newline, and the answer tag with in-range coordinates.
    Out-of-range coordinates cannot be generated under it; `format_target` output is admitted.
    String values are capped at `max_value_chars`, so a rambling model must close them and
    reach the answer within its token budget."""
    schema = SCHEMAS[get_prompt(version).version]  # unknown versions fail with the known ones

    def obj(keys: tuple[str, ...]) -> str:
        parts = [f'"\\"{k}\\":" str' for k in keys]
        return '"{" ' + ' "," '.join(parts) + ' "}"'

    fields, sections = [], []
    for key, shape in schema:
        if shape == "text":
            fields.append(f'"\\"{key}\\":" str')
        elif shape == "eliminated":
            fields.append('"\\"eliminated\\":" eliminated')
        else:
            rule = key.replace("_", "-")
            fields.append(f'"\\"{key}\\":" {rule}')
            sections.append(f"{rule} ::= {obj(shape)}")
    rules = [
        'root ::= analysis "\\n" "<answer>" answer "</answer>"',
        'analysis ::= "{" ' + ' "," '.join(fields) + ' "}"',
        *sections,
        f"elim ::= {obj(ELIMINATED_KEYS)}",
        f'eliminated ::= "[" elim ( "," elim ){{{ELIMINATED_MIN - 1},{ELIMINATED_MAX - 1}}} "]"',
        'answer ::= "{\\"latitude\\":" lat ",\\"longitude\\":" lon ",\\"region\\":" str '
        '",\\"country\\":" str ",\\"confidence\\":" conf "}"',
    ]
    common = _GBNF_COMMON.strip().replace("MAXCHARS", str(int(max_value_chars)))
    return "\n".join(rules) + "\n" + common + "\n"


# ---------------------------------------------------------------- parser

class ParseStatus(str, enum.Enum):
    OK = "ok"
    EMPTY = "empty"
    NO_ANSWER = "no_answer"
    MALFORMED = "malformed"
    OUT_OF_RANGE = "out_of_range"


@dataclass
class ParseResult:
    status: ParseStatus
    reason: str = ""
    latitude: float | None = None  # set only when status is ok
    longitude: float | None = None
    region: str = ""
    country: str = ""
    confidence: float | None = None
    analysis: dict | None = None
    form: str = ""  # which form the answer was read from, e.g. "answer-json", "geo-caption-json"

    @property
    def ok(self) -> bool:
        return self.status is ParseStatus.OK


def parse_output(text: Any) -> ParseResult:
    """Read coordinates (and region, country, confidence, analysis) from any model output.
    Never raises: every failure is a status with a reason. The last complete answer wins."""
    from geolocsft import protocol_parse  # the parser's machinery; kept out of this file's way

    try:
        return protocol_parse.parse(text)
    except Exception as exc:  # the contract is "never raises"; a bug here must not kill a batch
        return ParseResult(ParseStatus.MALFORMED, f"parser error: {type(exc).__name__}: {exc}")

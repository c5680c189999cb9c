"""The tolerant parser behind `geolocsft.protocol.parse_output`.

Models write coordinates in many shapes. This module finds every answer-shaped thing in the text,
reads each into numbers, and lets the last complete one win:

1. structured answers: `<answer>...</answer>` blocks (JSON, labelled text, hemisphere letters,
   degrees-minutes-seconds, or a bare "lat, lon" pair) and top-level JSON objects that hold
   coordinates (the official GeoLocSFT geo-caption: `answer.coordinates.latitude/longitude`);
2. only when there is none of those: labelled or hemisphere-lettered pairs in free text.

A block or object cut off by the end of the text counts only if its coordinates are complete
(a number touching the end of the text could have lost digits).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from geolocsft.protocol import ParseResult, ParseStatus

# ------------------------------------------------------------------ coordinate atoms

_HEMI_WORD = r"(?:[NSEW]|North|South|East|West)"
_DEG_MARK = r"(?:°|º|˚|\bdeg(?:rees?)?\b)"
_MIN_MARK = r"(?:'|′|’)"
_SEC_MARK = r"(?:''|\"|″|”|′′)"


def _body(p: str) -> str:
    # degrees, optionally followed by minutes and seconds once a degree mark is present
    return (
        rf"(?P<{p}sign>[-+−]?)(?P<{p}deg>\d+(?:\.\d+)?)(?![\d])"
        rf"(?:[ ]?(?P<{p}mark>{_DEG_MARK})"
        rf"(?:[ ]?(?P<{p}min>\d{{1,2}}(?:\.\d+)?)[ ]?{_MIN_MARK}"
        rf"(?:[ ]?(?P<{p}sec>\d{{1,2}}(?:\.\d+)?)[ ]?{_SEC_MARK})?)?)?"
    )


# Either "N 48.85" (hemisphere first) or "48.85° N" / "-33.9" (hemisphere after, optional).
_ATOM_RE = re.compile(
    rf"(?<![A-Za-z0-9.])(?:"
    rf"(?P<pre>{_HEMI_WORD})[ ]?{_body('a')}"
    rf"|{_body('b')}(?:[ ]?(?P<post>{_HEMI_WORD})(?![A-Za-z]))?"
    rf")"
)


@dataclass
class _Atom:
    value: float | None  # None when the atom is invalid (problem says why)
    axis: str | None  # "lat", "lon" or None when no hemisphere letter says which
    start: int
    end: int
    problem: str = ""


def _atom_from_match(m: re.Match) -> _Atom:
    p = "a" if m.group("pre") else "b"
    hemi = (m.group("pre") or m.group("post") or "")[:1].upper()
    sign = m.group(p + "sign")
    value = float(m.group(p + "deg"))
    minutes, seconds = m.group(p + "min"), m.group(p + "sec")
    problem = ""
    if minutes is not None:
        if float(minutes) >= 60:
            problem = f"minutes {minutes} must be below 60 in {m.group(0)!r}"
        value += float(minutes) / 60
    if seconds is not None:
        if float(seconds) >= 60:
            problem = f"seconds {seconds} must be below 60 in {m.group(0)!r}"
        value += float(seconds) / 3600
    axis = {"N": "lat", "S": "lat", "E": "lon", "W": "lon"}.get(hemi)
    if sign in ("-", "−"):
        if hemi:
            problem = f"both a minus sign and a hemisphere letter in {m.group(0)!r}"
        value = -value
    elif hemi in ("S", "W"):
        value = -value
    return _Atom(None if problem else value, axis, m.start(), m.end(), problem)


def _atoms(text: str, start: int = 0, end: int | None = None) -> list[_Atom]:
    end = len(text) if end is None else end
    return [_atom_from_match(m) for m in _ATOM_RE.finditer(text, start, end)]


# ------------------------------------------------------------------ candidates

@dataclass
class _Candidate:
    start: int
    end: int
    form: str
    lat: Any = None  # float, or None with problem set
    lon: Any = None
    problem: str = ""
    region: str = ""
    country: str = ""
    confidence: float | None = None
    analysis: dict | None = None


def _judge(c: _Candidate) -> ParseResult:
    base = dict(region=c.region, country=c.country, confidence=c.confidence,
                analysis=c.analysis, form=c.form)
    if c.problem:
        return ParseResult(ParseStatus.MALFORMED, c.problem, **base)
    for name, value, limit in (("latitude", c.lat, 90), ("longitude", c.lon, 180)):
        if not math.isfinite(value):
            return ParseResult(ParseStatus.MALFORMED, f"{name} is not a finite number ({value})",
                               **base)
        if abs(value) > limit:
            return ParseResult(ParseStatus.OUT_OF_RANGE,
                               f"{name} {value} is outside -{limit}..{limit}", **base)
    return ParseResult(ParseStatus.OK, f"read from {c.form}", latitude=c.lat, longitude=c.lon,
                       **base)


_PAIR_GAP_RE = re.compile(r"\s{0,3}(?:[,;/]|and)?\s{0,3}\Z")
_LABEL_RE = re.compile(
    r"(?i)(?<![A-Za-z])(latitude|lat|longitude|long|lon|lng)(?![A-Za-z])"
    r"[\"']?\s{0,3}(?:[:=]|is\b)?\s{0,3}[\"']?\s{0,2}"
)
_PAIR_LABEL_RE = re.compile(
    r"(?i)(?<![A-Za-z])(?:lat(?:itude)?\s{0,2}(?:/|,|&|and)\s{0,2}(?:longitude|long|lon|lng)"
    r"|coordinates|coords|gps)(?![A-Za-z])[\"']?\s{0,3}[:=]?\s{0,3}[\"'(\[]?\s{0,2}"
)
_MAX_LABEL_GAP = 80


def _pair(a: _Atom, b: _Atom, form: str, want_axes: bool) -> _Candidate | None:
    """Two atoms as (lat, lon), ordered by their hemisphere letters when they have them."""
    if want_axes:
        if {a.axis, b.axis} != {"lat", "lon"}:
            return None
        if a.axis == "lon":
            a, b = b, a
    elif a.axis == "lon" or b.axis == "lat":
        return None
    problem = a.problem or b.problem
    return _Candidate(min(a.start, b.start), max(a.end, b.end), form, a.value, b.value, problem)


def _text_pairs(text: str, start: int, end: int, bare: bool) -> list[_Candidate]:
    """Coordinate pairs written as text inside text[start:end], in order of their end."""
    found: list[_Candidate] = []
    # "lat/lon: 48.85, 2.35", "coordinates: 48.85° N, 2.35° E"
    pair_label_spans = []
    for m in _PAIR_LABEL_RE.finditer(text, start, end):
        atoms = _atoms(text, m.end(), min(end, m.end() + 120))
        if len(atoms) < 2 or atoms[0].start != m.end():
            continue
        a, b = atoms[0], atoms[1]
        if _PAIR_GAP_RE.match(text[a.end:b.start]):
            c = _pair(a, b, "labelled pair", want_axes=bool(a.axis and b.axis))
            if c is not None:
                c.start = m.start()
                found.append(c)
                pair_label_spans.append((m.start(), c.end))
    # "lat: 48.85, lon: 2.35", "Latitude 33.9 S / Longitude 151.2 E"
    labelled: list[tuple[str, _Atom, int]] = []
    for m in _LABEL_RE.finditer(text, start, end):
        if any(s <= m.start() < e for s, e in pair_label_spans):
            continue
        am = _ATOM_RE.match(text, m.end(), end)
        if am is None:
            continue
        atom = _atom_from_match(am)
        axis = "lat" if m.group(1).lower().startswith("lat") else "lon"
        if atom.axis and atom.axis != axis and not atom.problem:
            atom.problem = f"{m.group(1)} is given a {text[am.start():am.end()]!r} value"
        atom.axis = axis
        labelled.append((axis, atom, m.start()))
    for (ax1, a1, s1), (ax2, a2, _s2) in zip(labelled, labelled[1:]):
        if ax1 != ax2 and a2.start - a1.end <= _MAX_LABEL_GAP:
            c = _pair(a1, a2, "labelled text", want_axes=True)
            if c is not None:
                c.start = s1
                found.append(c)
    # "48.85° N, 2.35° E", "48°51'24\"N 2°21'03\"E", "S 33.9, E 151.2"; bare "48.85, 2.35"
    atoms = _atoms(text, start, end)
    for a, b in zip(atoms, atoms[1:]):
        if not _PAIR_GAP_RE.match(text[a.end:b.start]):
            continue
        if a.axis and b.axis:
            c = _pair(a, b, "hemisphere text", want_axes=True)
        elif bare and not a.axis and not b.axis:
            c = _pair(a, b, "bare pair", want_axes=False)
        else:
            c = None
        if c is not None:
            found.append(c)
    found.sort(key=lambda c: c.end)
    return found


# ------------------------------------------------------------------ JSON

_FENCE_LANG_RE = re.compile(r"```[A-Za-z]*")


def _strip_fences(s: str) -> str:
    """A leading ```lang and a trailing ``` removed. String operations, not one regex: an
    unanchored `\\s*```\\s*$` retries at every position of a long whitespace run (quadratic)."""
    s = s.strip()
    if s.startswith("```"):
        s = s[_FENCE_LANG_RE.match(s).end():].lstrip()
    if s.endswith("```"):
        s = s[:-3].rstrip()
    return s


def _repair_json(s: str) -> str:
    """Trailing commas dropped, single-quoted strings made double-quoted."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in "\"'":
            j = i + 1
            while j < n and s[j] != c:
                j += 2 if s[j] == "\\" else 1
            body = s[i + 1:min(j, n)]
            if c == "'":
                body = re.sub(r'(?<!\\)"', r'\\"', body.replace("\\'", "'"))
            out.append('"' + body + '"')
            i = j + 1
            continue
        if c == ",":
            j = i + 1
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j < n and s[j] in "}]":
                i = j
                continue
        out.append(c)
        i += 1
    return "".join(out)


def loads_tolerant(s: str) -> Any:
    """JSON from model text (code fences, trailing commas, single quotes); None if unreadable."""
    s = _strip_fences(s)
    for attempt in (s, None):
        try:
            return json.loads(attempt if attempt is not None else _repair_json(s))
        except (ValueError, RecursionError):
            continue
    return None


def _json_objects(text: str, start: int, end: int, skip: list[tuple[int, int]]):
    """Top-level {...} spans in text[start:end] outside the skip spans: (start, end, closed).
    String-aware brace matching; an object still open at the end is returned unclosed, and
    nothing after it is scanned (all of it lies inside that object)."""
    i = start
    while i < end:
        i = text.find("{", i, end)
        if i < 0:
            return
        inside = next(((s, e) for s, e in skip if s <= i < e), None)
        if inside:
            i = inside[1]
            continue
        depth, j, in_str = 0, i, False
        while j < end:
            ch = text[j]
            if in_str:
                if ch == "\\":
                    j += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if j >= end:
            yield i, end, False
            return
        yield i, j + 1, True
        i = j + 1


_LAT_KEYS = ("latitude", "lat")
_LON_KEYS = ("longitude", "lon", "lng", "long")
_REGION_KEYS = ("region", "state", "province", "city", "place")
_MISSING = object()


def _lower_keys(d: dict) -> dict:
    return {str(k).lower(): v for k, v in d.items()}


def _pick(d: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return _MISSING


def _degrees(value: Any, axis: str) -> tuple[float | None, str]:
    name = "latitude" if axis == "lat" else "longitude"
    if isinstance(value, bool) or value is None:
        return None, f"{name} is {json.dumps(value)}"
    if isinstance(value, (int, float)):
        try:
            return float(value), ""
        except OverflowError:
            return math.inf, ""
    if isinstance(value, str):
        s = value.strip()
        m = _ATOM_RE.fullmatch(s)
        if m is None:
            return None, f"{name} {value!r} is not a coordinate"
        atom = _atom_from_match(m)
        if atom.problem:
            return None, atom.problem
        if atom.axis and atom.axis != axis:
            return None, f"{name} {value!r} has the other axis's hemisphere letter"
        return atom.value, ""
    return None, f"{name} is a {type(value).__name__}, not a number"


def _confidence(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        c = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return c if math.isfinite(c) and 0 <= c <= 1 else None


def _fields_from_dict(c: _Candidate, d: dict) -> None:
    for key, attr in ((_REGION_KEYS, "region"), (("country",), "country")):
        v = _pick(d, key)
        if isinstance(v, str):
            setattr(c, attr, v.strip())
    v = _pick(d, ("confidence",))
    if v is not _MISSING:
        c.confidence = _confidence(v)


def _from_dict(obj: dict, start: int, end: int, form: str) -> _Candidate | None:
    """Coordinates from a parsed JSON object: our answer object, the official geo-caption
    (answer.coordinates.latitude), or an object with latitude/longitude anywhere obvious."""
    top = _lower_keys(obj)
    answer = top.get("answer")
    answer = _lower_keys(answer) if isinstance(answer, dict) else None
    nodes = []
    if answer is not None:
        coords = answer.get("coordinates")
        nodes += [coords, answer]
    nodes += [top.get("coordinates"), top.get("location"), top.get("prediction"), top]
    for node in nodes:
        if isinstance(node, str) and node is not top:
            pairs = _text_pairs(node, 0, len(node), bare=True)
            if pairs:
                p = pairs[-1]
                c = _Candidate(start, end, form, p.lat, p.lon, p.problem)
                break
            continue
        if not isinstance(node, dict):
            continue
        node = _lower_keys(node)
        lat, lon = _pick(node, _LAT_KEYS), _pick(node, _LON_KEYS)
        if lat is _MISSING or lon is _MISSING:
            continue
        lat, p1 = _degrees(lat, "lat")
        lon, p2 = _degrees(lon, "lon")
        c = _Candidate(start, end, form, lat, lon, p1 or p2)
        break
    else:
        return None
    _fields_from_dict(c, top)
    if answer is not None:
        _fields_from_dict(c, answer)
        analysis = top.get("analysis")
        c.analysis = analysis if isinstance(analysis, dict) else {
            k: v for k, v in obj.items() if str(k).lower() != "answer"}
    return c


# "region: Kanto", "country": "Japan" in text; a value must be seen to end (not cut off).
_TEXT_FIELD_RE = re.compile(
    r"(?i)(?<![A-Za-z])(region|country)[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
    r"([^\"'\n,<>{}]{1,80}?)\s{0,3}(?=[\"'\n,<>{}])"
)
_TEXT_CONF_RE = re.compile(
    r"(?i)(?<![A-Za-z])confidence[\"']?\s{0,3}[:=]\s{0,3}(\d+(?:\.\d+)?)(?=[^\d.])"
)


def _fields_from_text(c: _Candidate, text: str) -> None:
    for m in _TEXT_FIELD_RE.finditer(text):
        setattr(c, m.group(1).lower(), m.group(2).strip())
    m = _TEXT_CONF_RE.search(text)
    if m:
        c.confidence = _confidence(m.group(1))


# ------------------------------------------------------------------ blocks

_OPEN_RE = re.compile(r"(?i)<\s{0,2}answer\s{0,2}>")
_CLOSE_RE = re.compile(r"(?i)<\s{0,2}/\s{0,2}answer\s{0,2}>")


def _answer_blocks(text: str) -> list[tuple[int, int, int, bool]]:
    """(tag start, content start, content end, closed) for each <answer> tag."""
    opens = list(_OPEN_RE.finditer(text))
    blocks = []
    for k, m in enumerate(opens):
        limit = opens[k + 1].start() if k + 1 < len(opens) else len(text)
        close = _CLOSE_RE.search(text, m.end(), limit)
        if close:
            blocks.append((m.start(), m.end(), close.start(), True))
        else:
            blocks.append((m.start(), m.end(), limit, False))
    return blocks


# After a number cut off by the end of the text: something other than digits or a decimal point.
_NUMBER_ENDED_RE = re.compile(r"[\d.]*[^\d.]")


def _read_span(text: str, start: int, end: int, complete: bool, bare: bool,
               form: str, obj: Any = None) -> tuple[_Candidate | None, str]:
    """The answer inside text[start:end]; for an incomplete span (cut off by the end of the
    text) a pair counts only if something follows its last number."""
    content = text[start:end]
    if obj is None and "{" in content:
        first = content.index("{")
        obj = loads_tolerant(content[first:]) if complete else None
    if isinstance(obj, dict):
        c = _from_dict(obj, start, end, form + " json")
        if c is not None:
            return c, ""
    pairs = [p for p in _text_pairs(text, start, end, bare=bare)
             if complete or _NUMBER_ENDED_RE.match(text, p.end)]
    if pairs:
        c = pairs[-1]
        c.form = f"{form} ({c.form})"
        _fields_from_text(c, text[c.start:end + 1])  # +1: a value must be seen to end
        c.start, c.end = start, end
        return c, ""
    if not complete:
        return None, "output ends before the coordinates were complete (truncated)"
    return None, "no coordinates in it"


# ------------------------------------------------------------------ entry point

def parse(text: Any) -> ParseResult:
    if text is None:
        return ParseResult(ParseStatus.EMPTY, "no output (None)")
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return ParseResult(ParseStatus.MALFORMED, f"expected text, got {type(text).__name__}")
    if not text.strip():
        return ParseResult(ParseStatus.EMPTY, "output is empty")

    structured: list[_Candidate] = []
    failures: list[tuple[int, str]] = []
    blocks = _answer_blocks(text)
    for tag_start, c_start, c_end, closed in blocks:
        c, why = _read_span(text, c_start, c_end, complete=closed, bare=True, form="<answer>")
        if c is not None:
            c.start = tag_start
            structured.append(c)
        else:
            failures.append((tag_start, f"<answer> at character {tag_start}: {why}"))

    block_spans = [(b[0], b[2]) for b in blocks]
    objects = list(_json_objects(text, 0, len(text), block_spans))
    parsed_objects: list[tuple[int, int, Any]] = []
    for o_start, o_end, closed in objects:
        obj = loads_tolerant(text[o_start:o_end]) if closed else None
        parsed_objects.append((o_start, o_end, obj))
        if isinstance(obj, dict):
            c = _from_dict(obj, o_start, o_end, "geo-caption json")
            if c is not None:
                structured.append(c)
            continue
        # Unreadable or cut-off JSON: an official-style caption may still hold a complete
        # answer after its "answer" key.
        key = re.compile(r"[\"']answer[\"']\s{0,3}:").search(text, o_start, o_end)
        if key:
            c, why = _read_span(text, key.end(), o_end, complete=closed, bare=False,
                                form="geo-caption")
            if c is not None:
                c.start, c.end = o_start, o_end
                structured.append(c)
            else:
                failures.append((o_start, f"JSON answer at character {o_start}: {why}"))

    chosen = max(structured, key=lambda c: c.end) if structured else None
    if chosen is None and not blocks:
        # Prose answers, only when the model wrote no answer tag at all; a JSON object cut off
        # by the end of the text may have lost digits, so it is left out.
        free_end = objects[-1][0] if objects and not objects[-1][2] else len(text)
        free = _text_pairs(text, 0, free_end, bare=False)
        if free:
            chosen = free[-1]
            chosen.form = "free " + chosen.form
            _fields_from_text(chosen, text[chosen.end:chosen.end + 200] + "\n")

    analysis = None
    limit = chosen.start if chosen else len(text)
    for o_start, _o_end, obj in parsed_objects:
        if o_start < limit and isinstance(obj, dict):
            analysis = obj
            break

    if chosen is not None:
        if chosen.analysis is None:
            chosen.analysis = analysis
        return _judge(chosen)
    if failures:
        return ParseResult(ParseStatus.MALFORMED, failures[-1][1], analysis=analysis)
    if objects and not objects[-1][2]:
        why = "output ends inside a JSON object before any answer (truncated)"
    else:
        why = "no <answer> tag and no coordinates found"
    return ParseResult(ParseStatus.NO_ANSWER, why, analysis=analysis)

"""The tolerant parser on hostile model output (issue 14): with --no-grammar a model can write
anything, e.g. 100k spaces or nested fences. No regular expression may go super-linear: every
parse of a long text built from the pathological pieces finishes well inside a second."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from geolocsft.protocol import parse_output

PIECES = [" ", "\t", "\n", "```", "```json", "{", "}", "[", '"', "'", ",", ":", "1", "-", ".",
          "°", "N", "lat", "latitude: ", "lon", "<answer>", "</answer>", "<", "region: ",
          "confidence: ", '"answer": ', "and", "/", "0.5"]
SIZE = 40_000
BOUND_S = 2.0  # linear parses of 40 KB take ~0.05 s here; quadratic ones take minutes


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=4),
       tail=st.sampled_from(["", "x", "```", "}", "<answer>1, 2</answer>"]))
def test_long_repetitions_parse_in_linear_time(pieces, tail):
    unit = "".join(pieces)
    text = unit * (SIZE // len(unit)) + tail
    began = time.perf_counter()
    result = parse_output(text)
    took = time.perf_counter() - began
    assert took < BOUND_S, (repr(unit), took)
    assert result.status is not None


def test_the_known_quadratic_shapes():
    for text in ("```json" + " " * 200_000 + "x", "{" + " " * 200_000 + "}",
                 "<answer>{" + " " * 200_000 + "}</answer>", "<" + " " * 200_000,
                 "```" * 50_000, "lat " * 50_000):
        began = time.perf_counter()
        parse_output(text)
        assert time.perf_counter() - began < BOUND_S, text[:20]

"""What a caption run is likely to cost, before it starts.

An *estimate*, not a bill: image tokens follow Anthropic's published rule of thumb
(width × height / 750), the text of the teacher prompt is counted at ~4 characters a token, and
the answer is assumed to use `DEFAULT_OUTPUT_TOKENS`. Prices are US dollars per million tokens
as listed by Anthropic for standard (non-cached) requests; the Message Batches API costs half.
Prices change: `--price-input/--price-output` override the table, and a model missing from it
needs them when a cost cap is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# model id prefix -> (input $/MTok, output $/MTok)
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4-2": (15.0, 75.0),  # claude-opus-4-20250514
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-0": (3.0, 15.0),
    "claude-sonnet-4-2": (3.0, 15.0),  # claude-sonnet-4-20250514
    "claude-3-7-sonnet": (3.0, 15.0),  # the paper's teacher
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
}
BATCH_DISCOUNT = 0.5
# A geo-caption in the protocol's compact form is a few hundred tokens; leave headroom.
DEFAULT_OUTPUT_TOKENS = 700
# Claude downsizes images whose long side exceeds this before counting tokens.
_CLAUDE_MAX_SIDE = 1568


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


def price_for(model: str, input_per_mtok: float | None = None, output_per_mtok: float | None = None,
              batch: bool = False) -> Price | None:
    """The price of a model (longest matching prefix), overrides winning; None when unknown."""
    if input_per_mtok is None or output_per_mtok is None:
        matches = [key for key in PRICES_PER_MTOK if model.startswith(key)]
        if not matches:
            if input_per_mtok is None and output_per_mtok is None:
                return None
            raise ValueError(f"no listed price for {model!r}: give both --price-input and --price-output")
        listed = PRICES_PER_MTOK[max(matches, key=len)]
        input_per_mtok = listed[0] if input_per_mtok is None else input_per_mtok
        output_per_mtok = listed[1] if output_per_mtok is None else output_per_mtok
    factor = BATCH_DISCOUNT if batch else 1.0
    return Price(input_per_mtok * factor, output_per_mtok * factor)


def image_tokens(width: int, height: int) -> int:
    """Anthropic's estimate of the tokens an image costs, after its own downsizing."""
    scale = min(1.0, _CLAUDE_MAX_SIDE / max(width, height, 1))
    return math.ceil(round(width * scale) * round(height * scale) / 750)


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class RequestEstimate:
    input_tokens: int
    output_tokens: int

    def cost(self, price: Price | None) -> float:
        return 0.0 if price is None else price.cost(self.input_tokens, self.output_tokens)


def estimate_request(width: int, height: int, prompt_text: str,
                     output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> RequestEstimate:
    return RequestEstimate(image_tokens(width, height) + text_tokens(prompt_text), output_tokens)

"""The teacher: how one photo becomes a request to Claude, and how a reply becomes a training
target or a reason to try again.

The teacher gets the student's own system prompt (so it writes exactly the format the student
must learn) plus a short addendum, and a user turn with the prepared photo and the true place.
Its reply is read with the core parser, checked against the analysis schema and the truth, and
rewritten with `format_target` so every target in the dataset has the canonical form.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from enum import Enum

from geolocsft.geo import distance_km
from geolocsft.protocol import (PROMPT_VERSION, Answer, Prompt, format_target, parse_output,
                                validate_analysis)

# Current Sonnet at the time of writing (claude-sonnet-4-5 is deprecated in the SDK; the paper
# used Claude 3.7 Sonnet, the official code Gemini 2.5 Pro). A setting: --model.
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_MAX_TOKENS = 1500
# The teacher knows the answer, so its <answer> must land on it; 25 km is the paper's
# "regional" scale and the second accuracy threshold.
DEFAULT_MAX_KM = 25.0
API_KEY_ENV = "ANTHROPIC_API_KEY"
# Anthropic's per-image limit on the base64 payload.
MAX_IMAGE_BYTES = 5 * 1024 * 1024

TEACHER_ADDENDUM = """

You are writing a training example for a smaller model that will see only the photo. You are \
told where the photo was really taken. Write the reply that model should learn to give: every \
cue must be something visible in this photo, reasoned as if you were deducing the place from it; \
never mention that you were told the location. The eliminated regions must be plausible \
look-alikes ruled out by visible cues. The answer must be the true coordinates you are given."""


class AnswerSource(str, Enum):
    """Which coordinates go into the training target's <answer>."""

    TRUTH = "truth"  # the pool's GPS (the teacher's answer is only checked against it)
    TEACHER = "teacher"  # whatever the teacher wrote, as long as it is within max_km


def teacher_system(prompt: Prompt) -> str:
    return prompt.system + TEACHER_ADDENDUM


def truth_text(lat: float, lon: float, place: str) -> str:
    where = f" ({place})" if place else ""
    return (f"True location: latitude {lat:.5f}, longitude {lon:.5f}{where}.\n"
            "Write the two lines now.")


def encode_image(image, image_format: str = "jpeg", quality: int = 90) -> tuple[str, str]:
    """(media type, base64 data) of a prepared PIL image. JPEG by default: the teacher is billed
    by pixels, not bytes, and a batch request has a size limit; PNG when exact pixels matter.
    A PNG over Anthropic's 5 MB image limit falls back to JPEG."""
    from geolocsft.images import to_png_bytes

    if image_format == "png":
        data = to_png_bytes(image)
        if len(data) * 4 / 3 <= MAX_IMAGE_BYTES:
            return "image/png", base64.b64encode(data).decode("ascii")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return "image/jpeg", base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Turn:
    """An earlier reply that failed a check, and why: sent back so the retry can fix it."""

    reply: str
    problem: str


def build_params(*, model: str, prompt: Prompt, media_type: str, image_b64: str, lat: float,
                 lon: float, place: str, max_tokens: int = DEFAULT_MAX_TOKENS,
                 history: list[Turn] | None = None) -> dict:
    """Messages API parameters for one photo (also the `params` of a batch request)."""
    messages: list[dict] = [{
        "role": "user",
        "content": [
            {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                         "data": image_b64}},
            {"type": "text", "text": truth_text(lat, lon, place)},
        ],
    }]
    for turn in history or []:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.reply or "(empty)"}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": (
            f"That reply cannot be used: {turn.problem}. Write the two lines again, "
            "exactly in the required format.")}]})
    return {"model": model, "max_tokens": max_tokens, "system": teacher_system(prompt),
            "messages": messages}


class Verdict(str, Enum):
    ACCEPTED = "accepted"
    RETRY = "retry"  # a fixable problem: ask again while attempts remain
    REFUSED = "refused"  # the teacher declined: asking again wastes money


@dataclass
class Judgement:
    verdict: Verdict
    reason: str = ""
    target: str = ""  # the canonical assistant text, when accepted
    teacher_answer: dict = field(default_factory=dict)


def reply_text(message) -> str:
    """The text blocks of an SDK Message, joined."""
    return "".join(getattr(block, "text", "") for block in (message.content or [])
                   if getattr(block, "type", "") == "text")


def judge(text: str, stop_reason: str | None, lat: float, lon: float, *,
          max_km: float = DEFAULT_MAX_KM, answer_source: AnswerSource = AnswerSource.TRUTH,
          prompt_version: str = PROMPT_VERSION) -> Judgement:
    """Accept a reply as a training target, or say why not. The analysis must follow the
    schema of `prompt_version`, the version the teacher was prompted with."""
    if stop_reason == "refusal":
        return Judgement(Verdict.REFUSED, "refusal: the teacher declined (stop_reason refusal)")
    parsed = parse_output(text)
    if not parsed.ok:
        cut = " (reply cut off at max_tokens)" if stop_reason == "max_tokens" else ""
        return Judgement(Verdict.RETRY, f"{parsed.status.value}: {parsed.reason}{cut}")
    problems = validate_analysis(parsed.analysis, prompt_version)
    if problems:
        return Judgement(Verdict.RETRY, "analysis: " + "; ".join(problems))
    km = distance_km(parsed.latitude, parsed.longitude, lat, lon)
    teacher_answer = {"latitude": parsed.latitude, "longitude": parsed.longitude,
                      "km_from_truth": round(km, 3)}
    if km > max_km:
        return Judgement(Verdict.RETRY, f"answer is {km:.0f} km from the truth (limit {max_km:g} km)",
                         teacher_answer=teacher_answer)
    if answer_source is AnswerSource.TRUTH:
        answer = Answer(lat, lon, parsed.region, parsed.country, parsed.confidence)
    else:
        answer = Answer(parsed.latitude, parsed.longitude, parsed.region, parsed.country,
                        parsed.confidence)
    try:
        target = format_target(parsed.analysis, answer)
    except ValueError as exc:
        return Judgement(Verdict.RETRY, f"cannot format target: {exc}")
    return Judgement(Verdict.ACCEPTED, target=target, teacher_answer=teacher_answer)


class MissingApiKey(RuntimeError):
    pass


def api_key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise MissingApiKey(f"set {API_KEY_ENV} to call the teacher (or use --dry-run)")
    return key


def make_async_client(*, base_url: str | None = None, max_retries: int = 4,
                      timeout: float = 600.0, api_key: str | None = None):
    """An `anthropic.AsyncAnthropic` with the key from the environment. `max_retries` and
    `timeout` are the SDK's own (it backs off exponentially and honours retry-after)."""
    import anthropic

    return anthropic.AsyncAnthropic(api_key=api_key or api_key_from_env(), base_url=base_url,
                                    max_retries=max_retries, timeout=timeout)

"""`caption`: the teacher writes a geo-caption for every pick; the result is the SFT dataset.

Output, one JSON line per accepted image (what the SFT step reads):
  {"id", "image", "latitude", "longitude", "prompt_version",
   "messages": chat_messages(get_prompt(prompt_version), target=<caption>),
   "caption": {"model", "image_preset", "created", "input_tokens", "output_tokens", "attempts",
               "place", ...}}
Images the teacher would not or could not caption go to the rejects file with the reason.

Resumable by construction: both files are append-only (one write + fsync per record), a start
reads the ids already in them and skips those, a torn last line is cut off. Killing the run at
any moment loses at most the requests in flight and never duplicates a record. A run continues
only files written under its own prompt version and image preset (`--prompt-version`,
`--image-preset`): the teacher's format is the student's (train = infer), so one dataset holds
one contract.
Online mode (here) runs `concurrency` requests at once on asyncio; `--batch` mode is in
`trainer.caption_batch`, the plan, cost estimate and spending cap in `trainer.caption_plan`,
the records and output files in `trainer.caption_records`, the prompt and checks in
`trainer.teacher`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from geolocsft import families
from geolocsft.images import IMAGE_PRESETS, ImageError, prepare_image, preset_budget
from geolocsft.protocol import PROMPT_VERSION, get_prompt
from trainer import pricing
from trainer.caption_plan import Budget, load_progress, pending_picks
from trainer.caption_records import Outcome, Summary, Writer, accepted_record, reject_record
from trainer.picks import Pick
from trainer.teacher import (DEFAULT_MAX_KM, DEFAULT_MAX_TOKENS, DEFAULT_MODEL, AnswerSource,
                             Turn, Verdict, build_params, encode_image, judge, reply_text,
                             teacher_system, truth_text)

log = logging.getLogger("trainer.captions")


@dataclass
class CaptionSettings:
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    max_km: float = DEFAULT_MAX_KM
    attempts: int = 3  # teacher replies per image before it is rejected
    concurrency: int = 4
    max_retries: int = 4  # the SDK's own retries per request (backoff, retry-after)
    timeout: float = 600.0  # seconds per HTTP request
    max_tokens: int = DEFAULT_MAX_TOKENS
    family: str = families.DEFAULT  # whose image budget the teacher's photo follows
    # The contract the dataset is written under: the student's prompt version (the teacher's
    # system prompt, the schema its replies are checked against, the records' messages) and
    # the image preset of the photo the teacher sees.
    prompt_version: str = PROMPT_VERSION
    image_preset: str = "seed"
    image_format: str = "jpeg"
    answer_source: AnswerSource = AnswerSource.TRUTH
    max_usd: float | None = None
    price_input: float | None = None  # $/MTok overrides of the price table
    price_output: float | None = None
    est_output_tokens: int = pricing.DEFAULT_OUTPUT_TOKENS
    retry_rejects: bool = False
    # --batch
    poll_seconds: float = 30.0
    batch_max_mb: float = 200.0  # request bytes per batch (the API's limit is 256 MB)

    def __post_init__(self) -> None:
        self.family = families.get(self.family).name
        self.answer_source = AnswerSource(self.answer_source)
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.image_format not in ("jpeg", "png"):
            raise ValueError("image format must be jpeg or png")
        try:
            get_prompt(self.prompt_version)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if self.image_preset not in IMAGE_PRESETS:
            raise ValueError(f"unknown image preset {self.image_preset!r}; known: "
                             f"{', '.join(IMAGE_PRESETS)}")


def rejects_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.jsonl")


def place_label(lat: float, lon: float) -> str:
    """The offline place name the teacher is told ("" when the offline data is unavailable)."""
    try:
        from geolocsft.places import lookup

        return lookup(lat, lon).label()
    except Exception as exc:  # a missing place name must not stop captioning
        log.debug("no place name for %s,%s: %s", lat, lon, exc)
        return ""


@dataclass
class Prepared:
    """A pick ready to send: the encoded photo and the place name."""

    pick: Pick
    media_type: str
    data: str
    place: str
    width: int
    height: int


def prepare(pick: Pick, settings: CaptionSettings) -> Prepared:
    image = prepare_image(pick.image, preset_budget(settings.family, settings.image_preset))
    media_type, data = encode_image(image, settings.image_format)
    return Prepared(pick, media_type, data, place_label(pick.lat, pick.lon), *image.size)


# ------------------------------------------------------------------ online mode


class Fatal(RuntimeError):
    """An error no retry can fix (bad key, no permission): the whole run stops."""


class Cooldown:
    """SDK middleware: when the API answers 429/529 with a retry-after, every request of this
    run waits it out, not just the one that was told (the SDK alone only delays that one)."""

    def __init__(self) -> None:
        self.until = 0.0
        self.waits = 0

    async def __call__(self, request, call_next):
        delay = self.until - time.monotonic()
        if delay > 0:
            self.waits += 1
            await asyncio.sleep(delay)
        response = await call_next(request)
        if response.status_code in (429, 529, 503):
            seconds = retry_after_seconds(response.headers)
            if seconds:
                self.until = max(self.until, time.monotonic() + min(seconds, 600.0))
        return response


def retry_after_seconds(headers) -> float | None:
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def api_message(exc) -> str:
    """The API's own error message (the SDK's str() wraps it in the status and raw body)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", exc))


def classify_api_error(exc: BaseException) -> tuple[str, str]:
    """('fatal' | 'reject' | 'transient', reason) for an exception from the SDK call."""
    import anthropic

    if isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return "fatal", (f"api: {type(exc).__name__} (status {exc.status_code}: {api_message(exc)}); "
                         "check the API key")
    if isinstance(exc, anthropic.NotFoundError):
        return "fatal", f"api: not found (status 404): wrong model id or base URL? {api_message(exc)}"
    if isinstance(exc, anthropic.APIStatusError):
        if exc.status_code in (400, 413, 422):  # this request can never succeed as it is
            return "reject", f"api: status {exc.status_code}: {api_message(exc)}"
        return "transient", f"api: status {exc.status_code}: {api_message(exc)}"
    if isinstance(exc, anthropic.APITimeoutError):
        return "transient", "api: request timed out"
    if isinstance(exc, anthropic.APIConnectionError):
        return "transient", f"api: connection failed: {exc}"
    if isinstance(exc, (ValueError, anthropic.APIResponseValidationError)):
        return "transient", f"api: malformed response body: {type(exc).__name__}: {exc}"
    return "transient", f"api: {type(exc).__name__}: {exc}"


def _is_unreachable(exc: BaseException) -> bool:
    import anthropic

    return isinstance(exc, anthropic.APIConnectionError)  # includes APITimeoutError


async def caption_one(client, pick: Pick, settings: CaptionSettings, writer: Writer,
                      budget: Budget) -> Outcome:
    try:
        prepared = await asyncio.to_thread(prepare, pick, settings)
    except (ImageError, OSError, ValueError) as exc:
        return writer.reject(reject_record(pick, f"image: {exc}", model=settings.model, attempts=0))
    prompt = get_prompt(settings.prompt_version)
    history: list[Turn] = []
    replies = failures = tokens_in = tokens_out = 0
    unreachable = True  # every failure so far was "cannot connect": no network, not this image
    last_reason, last_text, model_used = "", "", settings.model
    system_and_truth = teacher_system(prompt) + truth_text(pick.lat, pick.lon, prepared.place)
    while replies < settings.attempts:
        params = build_params(model=settings.model, prompt=prompt, media_type=prepared.media_type,
                              image_b64=prepared.data, lat=pick.lat, lon=pick.lon,
                              place=prepared.place, max_tokens=settings.max_tokens,
                              history=history)
        history_text = "".join(t.reply + t.problem for t in history)
        estimate = pricing.estimate_request(prepared.width, prepared.height,
                                            system_and_truth + history_text, settings.max_tokens)
        reserved = budget.cost(estimate.input_tokens, estimate.output_tokens)
        if not budget.reserve(reserved):
            return Outcome("budget")
        try:
            message = await client.messages.create(**params)
        except Exception as exc:
            kind, reason = classify_api_error(exc)
            if kind == "fatal":
                raise Fatal(reason) from exc
            if kind == "reject":
                return writer.reject(reject_record(pick, reason, model=settings.model,
                                                   attempts=replies, input_tokens=tokens_in,
                                                   output_tokens=tokens_out))
            failures += 1
            unreachable = unreachable and _is_unreachable(exc)
            log.warning("%s: %s (failure %d of %d)", pick.id, reason, failures, settings.attempts)
            if failures >= settings.attempts:
                if unreachable and writer.summary.input_tokens == 0:
                    # Nothing has answered in this run: offline, not a bad image. One line.
                    raise Fatal(f"no network: cannot reach the API at "
                                f"{getattr(client, 'base_url', 'the API')} ({reason}); every "
                                "caption written so far is kept: rerun the same command when "
                                "connected") from exc
                return Outcome("pending", reason)
            continue
        finally:
            budget.settle(reserved, 0.0)  # the actual cost is added below, once known
        replies += 1
        usage = getattr(message, "usage", None)
        used_in = int(getattr(usage, "input_tokens", 0) or 0)
        used_out = int(getattr(usage, "output_tokens", 0) or 0)
        tokens_in, tokens_out = tokens_in + used_in, tokens_out + used_out
        budget.spent += budget.cost(used_in, used_out)
        writer.summary.input_tokens += used_in
        writer.summary.output_tokens += used_out
        model_used = getattr(message, "model", None) or settings.model
        last_text = reply_text(message)
        verdict = judge(last_text, getattr(message, "stop_reason", None), pick.lat, pick.lon,
                        max_km=settings.max_km, answer_source=settings.answer_source,
                        prompt_version=settings.prompt_version)
        if verdict.verdict is Verdict.ACCEPTED:
            return writer.accept(accepted_record(
                pick, verdict.target, model=model_used, input_tokens=tokens_in,
                output_tokens=tokens_out, attempts=replies, place=prepared.place,
                mode="messages", teacher_answer=verdict.teacher_answer,
                prompt_version=settings.prompt_version, image_preset=settings.image_preset))
        last_reason = verdict.reason
        if verdict.verdict is Verdict.REFUSED:
            break
        log.info("%s: attempt %d: %s", pick.id, replies, verdict.reason)
        history.append(Turn(last_text, verdict.reason))
    return writer.reject(reject_record(pick, last_reason, model=model_used, attempts=replies,
                                       input_tokens=tokens_in, output_tokens=tokens_out,
                                       last_reply=last_text))


async def run_online(client, pending: list[Pick], settings: CaptionSettings, writer: Writer,
                     budget: Budget) -> Summary:
    """Caption `pending` with at most `concurrency` images in flight. Cancelling (Ctrl-C)
    abandons what is in flight; everything finished is already on disk."""
    gate = asyncio.Semaphore(settings.concurrency)
    tasks: set[asyncio.Task] = set()
    fatal: list[BaseException] = []
    total = len(pending)

    async def work(index: int, pick: Pick) -> None:
        try:
            outcome = await caption_one(client, pick, settings, writer, budget)
            if outcome.status in ("pending", "budget"):  # accept/reject counted when written
                writer.summary.count(outcome)
            if outcome.status != "budget":
                log.info("[%d/%d] %s: %s%s", index, total, pick.id, outcome.status,
                         f" ({outcome.reason})" if outcome.reason else "")
        except Fatal as exc:
            fatal.append(exc)
        except Exception as exc:  # one image's unexpected failure must not end the run
            log.exception("%s: unexpected error, left for a rerun: %s", pick.id, exc)
            writer.summary.count(Outcome("pending", f"error: {exc}"))
        finally:
            gate.release()

    try:
        for index, pick in enumerate(pending, start=1):
            await gate.acquire()
            if fatal or budget.exhausted:
                gate.release()
                writer.summary.not_started += total - index + 1
                break
            task = asyncio.create_task(work(index, pick))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        writer.summary.spent_usd = budget.spent
    if fatal:
        raise fatal[0]
    if budget.exhausted:
        log.warning("stopped starting new requests: --max-usd %.2f reached (spent ~$%.2f)",
                    budget.max_usd, budget.spent)
    return writer.summary


# ------------------------------------------------------------------ entry point


def caption(picks: list[Pick], out: Path, settings: CaptionSettings, *, rejects: Path | None = None,
            batch: bool = False, state: Path | None = None, client=None) -> Summary:
    """Caption every pick not yet in `out` or `rejects`. `client` is an AsyncAnthropic (made
    from the environment's key when None). Raises ContractMismatch when the files hold records
    of another prompt version or image preset."""
    from trainer.teacher import make_async_client

    out = Path(out)
    rejects = Path(rejects) if rejects else rejects_path_for(out)
    progress = load_progress(out, rejects)
    for warning in progress.warnings:
        log.warning("%s", warning)
    progress.check_contract(settings.prompt_version, settings.image_preset)
    price = pricing.price_for(settings.model, settings.price_input, settings.price_output, batch)
    budget = Budget(settings.max_usd, price)
    pending = pending_picks(picks, progress, settings.retry_rejects)
    log.info("%d picks, %d already captioned, %d rejected earlier, %d to do", len(picks),
             len(progress.done), len(progress.rejected), len(pending))
    cooldown = Cooldown()
    own_client = client is None
    if own_client:
        client = make_async_client(base_url=settings.base_url, max_retries=settings.max_retries,
                                   timeout=settings.timeout)
    client = client.with_options(middleware=[*client.middleware, cooldown])
    writer = Writer(out, rejects, settings.prompt_version, settings.image_preset)

    async def main() -> Summary:
        try:
            if batch:
                from trainer.caption_batch import run_batch

                return await run_batch(client, pending, settings, writer, budget,
                                       state or state_path_for(out), progress)
            return await run_online(client, pending, settings, writer, budget)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    finally:
        writer.close()


def state_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".batch-state.json")

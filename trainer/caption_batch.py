"""`caption --batch`: the same captions through the Message Batches API (half price, results
within 24 h).

Rounds: submit every pending pick (split into batches under `batch_max_mb` of request JSON),
poll until they end, collect the results with the same checks as online mode, and submit the
fixable failures again (with the reason fed back) until accepted or out of attempts.

The state file records each batch id (with the custom_id → image id map) the moment it is
created, and what the next round must retry, so a killed run picks up where it was: a rerun
polls and collects the batches already created instead of paying for them twice. Collecting is
idempotent (ids already in the output are skipped). One gap is unavoidable: if the process dies
between the API creating a batch and the state file being written, that batch is orphaned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from pathlib import Path

from geolocsft.images import ImageError
from geolocsft.protocol import PROMPT_VERSION, get_prompt
from trainer import pricing
from trainer.caption_plan import (LEGACY_IMAGE_PRESET, LEGACY_PROMPT_VERSION, Budget,
                                  ContractMismatch, Progress)
from trainer.caption_records import Outcome, Summary, Writer, accepted_record, reject_record
from trainer.captions import CaptionSettings, Fatal, classify_api_error, prepare
from trainer.jsonl import write_json_atomic
from trainer.picks import Pick
from trainer.teacher import Turn, Verdict, build_params, judge, reply_text, teacher_system, truth_text

log = logging.getLogger("trainer.captions")

STATE_VERSION = 1
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the Batches API accepts


def custom_id_for(image_id: str, used: set[str]) -> str:
    """The image id itself when the API accepts it, else a stable hash of it."""
    candidate = image_id if _CUSTOM_ID.match(image_id) else \
        "id-" + hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:24]
    base, n = candidate, 1
    while candidate in used:
        n += 1
        candidate = f"{base[:56]}-{n}"
    used.add(candidate)
    return candidate


class BatchState:
    """The state file: batches created (and whether collected) and per-image carry-over, and
    the model, prompt version and image preset they were made with (a resume must match)."""

    def __init__(self, path: Path, model: str, prompt_version: str = PROMPT_VERSION,
                 image_preset: str = "seed"):
        self.path = path
        self.data = {"version": STATE_VERSION, "model": model, "prompt_version": prompt_version,
                     "image_preset": image_preset, "batches": [], "carry": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: unreadable batch state ({exc}); move it aside to "
                                 "start fresh (batches it names would be orphaned)") from exc
            if loaded.get("version") != STATE_VERSION:
                raise ValueError(f"{path}: batch state version {loaded.get('version')!r} is not "
                                 f"{STATE_VERSION}")
            if loaded.get("model") != model:
                raise ValueError(f"{path}: batches were made with model {loaded.get('model')!r}, "
                                 f"not {model!r}; use that model or move the state aside")
            # States written before they named a contract were all gls-v1 / seed.
            made = (loaded.get("prompt_version", LEGACY_PROMPT_VERSION),
                    loaded.get("image_preset", LEGACY_IMAGE_PRESET))
            if made != (prompt_version, image_preset):
                raise ContractMismatch(
                    f"{path}: batches were made with prompt version {made[0]!r} and image "
                    f"preset {made[1]!r}, not {prompt_version!r} and {image_preset!r}; rerun "
                    f"with --prompt-version {made[0]} --image-preset {made[1]} to collect them")
            loaded.setdefault("prompt_version", made[0])
            loaded.setdefault("image_preset", made[1])
            self.data = loaded

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    @property
    def open_batches(self) -> list[dict]:
        return [b for b in self.data["batches"] if not b.get("collected")]


def _carry(entry: dict | None) -> dict:
    entry = entry or {}
    return {"replies": entry.get("replies", 0), "failures": entry.get("failures", 0),
            "history": entry.get("history", []), "tokens_in": entry.get("tokens_in", 0),
            "tokens_out": entry.get("tokens_out", 0)}


async def wait_until_ended(client, batch_id: str, poll_seconds: float):
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        counts = batch.request_counts
        log.info("batch %s: %s (%d processing)", batch_id, batch.processing_status,
                 counts.processing)
        await asyncio.sleep(poll_seconds)


async def collect(client, batch: dict, picks: dict[str, Pick], settings: CaptionSettings,
                  writer: Writer, budget: Budget, finished: set[str], carry: dict) -> None:
    """Write every result of an ended batch; fixable failures go to `carry` for next round."""
    items = batch["items"]
    seen = set()
    async for line in await client.messages.batches.results(batch["id"]):
        item = items.get(line.custom_id)
        if item is None:
            log.warning("batch %s: unknown custom_id %r ignored", batch["id"], line.custom_id)
            continue
        seen.add(line.custom_id)
        image_id = item["id"]
        budget.settle(budget.reservations.pop(image_id, 0.0), 0.0)
        pick = picks.get(image_id)
        if pick is None or image_id in finished:
            continue  # collected by an earlier, interrupted run
        state = _carry(item)
        outcome = _judge_result(line.result, pick, state, settings, writer, budget, item)
        if outcome.status in ("accepted", "rejected"):
            finished.add(image_id)
            carry.pop(image_id, None)
        elif outcome.status == "retry":
            carry[image_id] = state
        else:  # transient failure: retried while failures remain, else left for a rerun
            if state["failures"] < settings.attempts:
                carry[image_id] = state
            else:
                writer.summary.count(Outcome("pending", outcome.reason))
                carry.pop(image_id, None)
                finished.add(image_id)
    for custom_id, item in items.items():  # a result the API never returned: try again
        if custom_id not in seen and item["id"] not in finished and item["id"] in picks:
            budget.settle(budget.reservations.pop(item["id"], 0.0), 0.0)
            state = _carry(item)
            state["failures"] += 1
            if state["failures"] < settings.attempts:
                carry[item["id"]] = state
            else:
                writer.summary.count(Outcome("pending", "api: no batch result"))
                carry.pop(item["id"], None)
                finished.add(item["id"])


def _judge_result(result, pick: Pick, state: dict, settings: CaptionSettings, writer: Writer,
                  budget: Budget, item: dict) -> Outcome:
    kind = getattr(result, "type", "")
    if kind != "succeeded":
        state["failures"] += 1
        error = getattr(getattr(result, "error", None), "error", None)
        error_type = getattr(error, "type", "") or kind
        message = getattr(error, "message", "")
        reason = f"api: batch result {kind}: {error_type} {message}".strip()
        if error_type == "invalid_request_error":
            return writer.reject(reject_record(pick, reason, model=settings.model,
                                               attempts=state["replies"]))
        return Outcome("transient", reason)
    message = result.message
    usage = getattr(message, "usage", None)
    used_in = int(getattr(usage, "input_tokens", 0) or 0)
    used_out = int(getattr(usage, "output_tokens", 0) or 0)
    state["replies"] += 1
    state["tokens_in"] += used_in
    state["tokens_out"] += used_out
    budget.spent += budget.cost(used_in, used_out)
    writer.summary.input_tokens += used_in
    writer.summary.output_tokens += used_out
    text = reply_text(message)
    model = getattr(message, "model", None) or settings.model
    verdict = judge(text, getattr(message, "stop_reason", None), pick.lat, pick.lon,
                    max_km=settings.max_km, answer_source=settings.answer_source,
                    prompt_version=settings.prompt_version)
    if verdict.verdict is Verdict.ACCEPTED:
        return writer.accept(accepted_record(
            pick, verdict.target, model=model, input_tokens=state["tokens_in"],
            output_tokens=state["tokens_out"], attempts=state["replies"],
            place=item.get("place", ""), mode="batch", teacher_answer=verdict.teacher_answer,
            prompt_version=settings.prompt_version, image_preset=settings.image_preset))
    if verdict.verdict is Verdict.REFUSED or state["replies"] >= settings.attempts:
        return writer.reject(reject_record(
            pick, verdict.reason, model=model, attempts=state["replies"],
            input_tokens=state["tokens_in"], output_tokens=state["tokens_out"], last_reply=text))
    log.info("%s: attempt %d: %s", pick.id, state["replies"], verdict.reason)
    state["history"] = state["history"] + [[text, verdict.reason]]
    return Outcome("retry", verdict.reason)


async def submit_round(client, queue: list[Pick], settings: CaptionSettings, writer: Writer,
                       budget: Budget, state: BatchState, finished: set[str]) -> int:
    """Create batches for `queue`, each saved to the state file as soon as it exists. Returns
    how many requests were submitted; stops early when the spending cap is reached."""
    prompt = get_prompt(settings.prompt_version)
    system = teacher_system(prompt)
    limit = int(settings.batch_max_mb * 1024 * 1024)
    carry = state.data["carry"]
    submitted = 0
    requests: list[dict] = []
    items: dict[str, dict] = {}
    size = 0

    async def flush() -> None:
        nonlocal requests, items, size, submitted
        if not requests:
            return
        batch = await client.messages.batches.create(requests=requests)
        state.data["batches"].append({"id": batch.id, "items": items, "collected": False})
        for item in items.values():
            carry.pop(item["id"], None)  # now lives in the batch's items
        state.save()
        log.info("created batch %s with %d requests", batch.id, len(requests))
        submitted += len(requests)
        requests, items, size = [], {}, 0

    used_ids: set[str] = set()
    for pick in queue:
        entry = _carry(carry.get(pick.id))
        try:
            prepared = await asyncio.to_thread(prepare, pick, settings)
        except (ImageError, OSError, ValueError) as exc:
            writer.reject(reject_record(pick, f"image: {exc}", model=settings.model, attempts=0))
            finished.add(pick.id)
            carry.pop(pick.id, None)
            continue
        history = [Turn(reply, problem) for reply, problem in entry["history"]]
        params = build_params(model=settings.model, prompt=prompt, media_type=prepared.media_type,
                              image_b64=prepared.data, lat=pick.lat, lon=pick.lon,
                              place=prepared.place, max_tokens=settings.max_tokens, history=history)
        text = system + truth_text(pick.lat, pick.lon, prepared.place) + \
            "".join(t.reply + t.problem for t in history)
        estimate = pricing.estimate_request(prepared.width, prepared.height, text, settings.max_tokens)
        cost = budget.cost(estimate.input_tokens, estimate.output_tokens)
        if not budget.reserve(cost):
            break
        budget.reservations[pick.id] = cost  # released when its result is collected
        custom_id = custom_id_for(pick.id, used_ids)
        request = {"custom_id": custom_id, "params": params}
        request_size = len(json.dumps(request))
        if requests and (size + request_size > limit or len(requests) >= 100_000):
            await flush()
        requests.append(request)
        items[custom_id] = {"id": pick.id, "place": prepared.place, **entry}
        size += request_size
    await flush()
    return submitted


async def run_batch(client, pending: list[Pick], settings: CaptionSettings, writer: Writer,
                    budget: Budget, state_path: Path, progress: Progress) -> Summary:
    state = BatchState(Path(state_path), settings.model, settings.prompt_version,
                       settings.image_preset)
    picks = {p.id: p for p in pending}
    finished = set(progress.done) | (set() if settings.retry_rejects else set(progress.rejected))
    try:
        while True:
            for batch in state.open_batches:
                log.info("waiting for batch %s", batch["id"])
                await wait_until_ended(client, batch["id"], settings.poll_seconds)
                carry = state.data["carry"]
                await collect(client, batch, picks, settings, writer, budget, finished, carry)
                batch["collected"] = True
                state.save()
            queue = [p for p in pending if p.id not in finished]
            if not queue or budget.exhausted:
                break
            submitted = await submit_round(client, queue, settings, writer, budget, state, finished)
            if submitted == 0 and not state.open_batches:
                break
    except Fatal:
        raise
    except Exception as exc:
        kind, reason = classify_api_error(exc)
        if kind == "fatal":
            raise Fatal(reason) from exc
        raise
    writer.summary.not_started += len([p for p in pending if p.id not in finished])
    writer.summary.spent_usd = budget.spent
    if not state.open_batches and not state.data["carry"]:
        state.path.unlink(missing_ok=True)  # nothing left to resume
    if budget.exhausted:
        log.warning("stopped submitting: --max-usd %.2f reached (spent ~$%.2f)", budget.max_usd,
                    budget.spent)
    return writer.summary

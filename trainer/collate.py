"""SFT data: read and check the JSONL, then turn records into model inputs with a loss mask.

The conversation is built from the core protocol and rendered with the model's own chat
template, and the photo goes through `geolocsft.images.prepare_image` with the model's budget:
the same three things inference uses. Loss is carried only by the assistant's text and the
end-of-turn token that closes it; system, user, image and padding tokens get label -100.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geolocsft import protocol
from geolocsft import families
from geolocsft.images import ImageError, prepare_image

IGNORE_INDEX = -100

class SFTDataError(ValueError):
    """The dataset cannot be trained on as a whole (empty after checks, prompt mismatch)."""


@dataclass(frozen=True)
class SFTRecord:
    id: str
    image: Path
    latitude: float
    longitude: float
    messages: list  # core protocol chat, last message the assistant's target
    target: str  # the assistant's text

    @property
    def prompt_messages(self) -> list:
        return self.messages[:-1]


@dataclass
class DataReport:
    """What was read, kept and skipped (with the line, the id and why)."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the kept records as a whole

    def skip(self, line: int, record_id: Any, reason: str) -> None:
        self.skipped.append({"line": line, "id": record_id, "reason": reason})

    def to_dict(self) -> dict:
        return {"source": self.source, "total": self.total, "kept": self.kept,
                "skipped": self.skipped, "warnings": self.warnings}

    def summary(self) -> str:
        text = f"{self.source}: {self.kept} of {self.total} records kept"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
            for item in self.skipped[:10]:
                text += f"\n  line {item['line']} (id {item['id']}): {item['reason']}"
            if len(self.skipped) > 10:
                text += f"\n  ... and {len(self.skipped) - 10} more (see data_report.json)"
        for warning in self.warnings:
            text += f"\nwarning: {warning}"
        return text


def assistant_text(messages: list) -> str:
    last = messages[-1]
    if last.get("role") != "assistant":
        raise ValueError("last message is not the assistant's")
    texts = [part["text"] for part in last["content"] if part.get("type") == "text"]
    if len(texts) != 1 or not texts[0].strip():
        raise ValueError("assistant message has no text")
    return texts[0]


def _without_images(messages: list) -> list:
    """The conversation with any inline image payload dropped (the photo comes from `image`)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{k: v for k, v in part.items() if not (part.get("type") == "image"
                                                              and k == "image")}
                       if isinstance(part, dict) else part for part in content]
        out.append({**message, "content": content})
    return out


def _coordinate(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and low <= value <= high else None


def load_records(
    path: str | Path,
    budget: Any = None,
    allow_prompt_mismatch: bool = False,
    prompt_version: str = protocol.PROMPT_VERSION,
    image_preset: str | None = None,
) -> tuple[list[SFTRecord], DataReport]:
    """Read an SFT JSONL. Bad rows (no GPS, missing or unreadable image, duplicate id, broken
    JSON, no assistant text) are skipped into the report. Records written with a prompt other
    than `prompt_version`'s (the configured one) are refused as a whole unless
    `allow_prompt_mismatch`. With a `budget`, each image is opened and prepared once so a
    corrupt file is caught here rather than in the middle of training. With an `image_preset`,
    records whose teacher saw the photo at another preset (`caption.image_preset`) are counted
    into a warning: the caption may name details the student cannot see at its budget."""
    path = Path(path)
    if not path.is_file():
        raise SFTDataError(f"{path}: SFT data file not found")
    base = path.parent
    try:
        current = protocol.chat_messages(protocol.get_prompt(prompt_version))
    except KeyError as exc:
        raise SFTDataError(exc.args[0]) from None
    report = DataReport(str(path))
    records: list[SFTRecord] = []
    seen: set[str] = set()
    mismatched: dict[str, int] = {}
    other_presets: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            report.total += 1
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                report.skip(line_no, None, f"not valid JSON: {exc}")
                continue
            record_id = row.get("id")
            if record_id is None or str(record_id) == "":
                report.skip(line_no, None, "no id")
                continue
            record_id = str(record_id)
            if record_id in seen:
                report.skip(line_no, record_id, "duplicate id (first kept)")
                continue
            lat = _coordinate(row.get("latitude"), -90.0, 90.0)
            lon = _coordinate(row.get("longitude"), -180.0, 180.0)
            if lat is None or lon is None:
                report.skip(line_no, record_id, "no valid GPS (latitude/longitude)")
                continue
            messages = row.get("messages")
            try:
                if not isinstance(messages, list) or len(messages) < 2:
                    raise ValueError("no messages")
                target = assistant_text(messages)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                report.skip(line_no, record_id, f"bad messages: {exc}")
                continue
            version = str(row.get("prompt_version", ""))
            if version != prompt_version or _without_images(messages[:-1]) != current:
                mismatched[version or "(none)"] = mismatched.get(version or "(none)", 0) + 1
                if not allow_prompt_mismatch:
                    continue
            image = Path(str(row.get("image", "")))
            if not str(row.get("image", "")):
                report.skip(line_no, record_id, "no image path")
                continue
            if not image.is_absolute():
                image = base / image
            if not image.is_file():
                report.skip(line_no, record_id, f"image not found: {image}")
                continue
            if budget is not None:
                try:
                    prepare_image(image, budget)
                except (ImageError, OSError, ValueError) as exc:
                    report.skip(line_no, record_id, f"unreadable image: {exc}")
                    continue
            caption = row.get("caption") if isinstance(row.get("caption"), dict) else {}
            seen_at = caption.get("image_preset")
            if image_preset and seen_at and seen_at != image_preset:
                other_presets[str(seen_at)] = other_presets.get(str(seen_at), 0) + 1
            seen.add(record_id)
            records.append(
                SFTRecord(record_id, image, lat, lon, _without_images(messages), target))
    if mismatched and not allow_prompt_mismatch:
        counts = ", ".join(f"{v}: {n}" for v, n in sorted(mismatched.items()))
        raise SFTDataError(
            f"{path}: {sum(mismatched.values())} records were written with a prompt other than "
            f"the current {prompt_version!r} ({counts}); train with --prompt-version set to "
            f"theirs, recaption them, or pass --allow-prompt-mismatch to train on their own "
            f"prompt"
        )
    report.kept = len(records)
    if other_presets:
        counts = ", ".join(f"{p}: {n}" for p, n in sorted(other_presets.items()))
        report.warnings.append(
            f"{sum(other_presets.values())} records were captioned from photos at another image "
            f"preset than {image_preset!r} ({counts}); the teacher may describe details the "
            f"model cannot see at this budget (recaption with --image-preset {image_preset})")
    if not records:
        raise SFTDataError(f"{path}: no usable records\n{report.summary()}")
    return records, report


def split_holdout(records: list[SFTRecord], fraction: float,
                  seed: int) -> tuple[list[SFTRecord], list[SFTRecord]]:
    """Deterministic held-out split by a seeded shuffle of ids: (train, eval)."""
    import random

    if fraction <= 0 or len(records) < 2:
        return list(records), []
    ids = sorted(r.id for r in records)
    random.Random(seed).shuffle(ids)
    n_eval = min(max(1, round(len(ids) * fraction)), len(ids) - 1)
    held = set(ids[:n_eval])
    return [r for r in records if r.id not in held], [r for r in records if r.id in held]


class SFTCollator:
    """Records -> padded batch with `labels` that are -100 everywhere but the assistant's turn."""

    def __init__(self, processor: Any, family, budget: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right"
        self.family = family = families.get(family)
        self.budget = budget
        eot = family.end_of_turn
        self.eot_id = self.tokenizer.convert_tokens_to_ids(eot)
        if self.eot_id is None or self.eot_id == self.tokenizer.unk_token_id:
            raise SFTDataError(f"tokenizer has no {eot!r} token: not a {family.name} chat model")

    def render(self, messages: list, generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt,
            **dict(self.family.chat_template_kwargs),
        )

    def encode(self, texts: list[str], images: list) -> Any:
        # The rendered template already holds BOS where the family wants one.
        return self.processor(
            text=texts, images=[[image] for image in images], padding=True,
            return_tensors="pt", add_special_tokens=False,
        )

    def __call__(self, records: list[SFTRecord]) -> dict:
        images = [prepare_image(r.image, self.budget) for r in records]
        full_texts = [self.render(r.messages, False) for r in records]
        prompt_texts = [self.render(r.prompt_messages, True) for r in records]
        for record, full, prompt in zip(records, full_texts, prompt_texts):
            if not full.startswith(prompt):
                raise SFTDataError(
                    f"record {record.id}: the chat template renders the prompt differently with "
                    f"and without the answer; cannot tell where the assistant's turn starts"
                )
        batch = self.encode(full_texts, images)
        prompt = self.encode(prompt_texts, images)
        batch["labels"] = self.labels(batch["input_ids"], batch["attention_mask"],
                                      prompt["input_ids"], prompt["attention_mask"], records)
        return dict(batch)

    def labels(self, input_ids, attention_mask, prompt_ids, prompt_mask, records) -> Any:
        labels = input_ids.new_full(input_ids.shape, IGNORE_INDEX)
        for row in range(input_ids.shape[0]):
            start = int(prompt_mask[row].sum())
            if not bool((input_ids[row, :start] == prompt_ids[row, :start]).all()):
                raise SFTDataError(
                    f"record {records[row].id}: the prompt tokenizes differently inside the "
                    f"full conversation; cannot tell where the assistant's turn starts"
                )
            length = int(attention_mask[row].sum())
            ends = (input_ids[row, start:length] == self.eot_id).nonzero()
            if len(ends) == 0:
                raise SFTDataError(
                    f"record {records[row].id}: no end-of-turn token after the answer")
            stop = start + int(ends[0]) + 1  # the end-of-turn token carries loss too
            labels[row, start:stop] = input_ids[row, start:stop]
        return labels

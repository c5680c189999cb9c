"""What a caption run writes: the dataset record, the reject record, the two append-only
files, and the tally printed at the end.

Every record names its contract: the prompt version (top level of a dataset record, as the SFT
step reads it) and the image preset of the photo the teacher saw (`caption.image_preset`; a
reject carries both at its top level), so a resumed run can refuse to mix contracts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from geolocsft.protocol import PROMPT_VERSION, chat_messages, get_prompt
from trainer.jsonl import JsonlAppender
from trainer.picks import Pick


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Outcome:
    """How one image ended in this run."""

    status: str  # "accepted", "rejected", "pending" (try again later), "budget"
    reason: str = ""


@dataclass
class Summary:
    accepted: int = 0
    rejected: int = 0
    left_pending: int = 0  # transient API failures: a rerun retries them
    not_started: int = 0  # stopped by --max-usd (or an interruption)
    spent_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> None:
        if outcome.status == "accepted":
            self.accepted += 1
        elif outcome.status == "rejected":
            self.rejected += 1
            key = outcome.reason.split(":")[0]
            self.reasons[key] = self.reasons.get(key, 0) + 1
        elif outcome.status == "pending":
            self.left_pending += 1
        else:
            self.not_started += 1

    def lines(self) -> list[str]:
        out = [f"accepted {self.accepted}, rejected {self.rejected}, left for a rerun "
               f"{self.left_pending + self.not_started}; tokens {self.input_tokens:,} in + "
               f"{self.output_tokens:,} out; spent ~${self.spent_usd:,.2f}"]
        if self.reasons:
            out.append("reject reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())))
        return out


def accepted_record(pick: Pick, target: str, *, model: str, input_tokens: int, output_tokens: int,
                    attempts: int, place: str, mode: str, teacher_answer: dict,
                    prompt_version: str = PROMPT_VERSION, image_preset: str = "seed") -> dict:
    return {
        "id": pick.id,
        "image": pick.image,
        "latitude": pick.lat,
        "longitude": pick.lon,
        "prompt_version": prompt_version,
        "messages": chat_messages(get_prompt(prompt_version), target=target),
        "caption": {
            "model": model,
            "image_preset": image_preset,
            "created": now_iso(),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "attempts": attempts,
            "place": place,
            "mode": mode,
            "teacher_answer": teacher_answer,
        },
    }


def reject_record(pick: Pick, reason: str, *, model: str, attempts: int, input_tokens: int = 0,
                  output_tokens: int = 0, last_reply: str = "") -> dict:
    return {
        "id": pick.id,
        "image": pick.image,
        "latitude": pick.lat,
        "longitude": pick.lon,
        "reason": reason,
        "model": model,
        "attempts": attempts,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "created": now_iso(),
        "last_reply": last_reply[:2000],
    }


class Writer:
    """The two append-only outputs of a run, and the tally. Rejects are stamped with the run's
    prompt version and image preset (accepted records carry them already)."""

    def __init__(self, out: Path, rejects: Path, prompt_version: str = PROMPT_VERSION,
                 image_preset: str = "seed"):
        self.out = JsonlAppender(out)
        self.rejects = JsonlAppender(rejects)
        self.summary = Summary()
        self.contract = {"prompt_version": prompt_version, "image_preset": image_preset}

    def accept(self, record: dict) -> Outcome:
        self.out.append(record)
        outcome = Outcome("accepted")
        self.summary.count(outcome)
        return outcome

    def reject(self, record: dict) -> Outcome:
        self.rejects.append({**record, **self.contract})
        outcome = Outcome("rejected", record["reason"])
        self.summary.count(outcome)
        return outcome

    def close(self) -> None:
        self.out.close()
        self.rejects.close()

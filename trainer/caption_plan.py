"""The plan of a caption run: what is already done, what is left, what it should cost, and
the spending cap that is checked while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from geolocsft.images import preset_budget, target_size
from geolocsft.protocol import get_prompt
from trainer import pricing
from trainer.jsonl import repair
from trainer.picks import Pick
from trainer.teacher import teacher_system, truth_text

if TYPE_CHECKING:
    from trainer.captions import CaptionSettings


# What records written before they named their contract were made with: the only prompt
# version and image budget that existed then.
LEGACY_PROMPT_VERSION = "gls-v1"
LEGACY_IMAGE_PRESET = "seed"


class ContractMismatch(ValueError):
    """The output already holds records of another prompt version or image preset."""


@dataclass
class Progress:
    """What is already on disk; both files are repaired (torn tail cut) on load."""

    done: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    # file -> {(prompt version, image preset): records}
    contracts: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)

    def check_contract(self, prompt_version: str, image_preset: str) -> None:
        """Refuse to append to files written under another contract: one dataset, one prompt
        version and one image preset (train = infer)."""
        want = (prompt_version, image_preset)
        for path, found in self.contracts.items():
            other = {c: n for c, n in found.items() if c != want}
            if other:
                (version, preset), n = max(other.items(), key=lambda item: item[1])
                raise ContractMismatch(
                    f"{path}: {sum(other.values())} records were written with prompt version "
                    f"{version!r} and image preset {preset!r}, not {prompt_version!r} and "
                    f"{image_preset!r}; continue it with --prompt-version {version} "
                    f"--image-preset {preset}, or write to another --out")


def record_contract(record: dict) -> tuple[str, str]:
    """(prompt version, image preset) of a dataset or reject record."""
    caption = record.get("caption") if isinstance(record.get("caption"), dict) else {}
    version = record.get("prompt_version") or LEGACY_PROMPT_VERSION
    preset = record.get("image_preset") or caption.get("image_preset") or LEGACY_IMAGE_PRESET
    return str(version), str(preset)


def load_progress(out: Path, rejects: Path) -> Progress:
    progress = Progress()
    for path, ids in ((out, progress.done), (rejects, progress.rejected)):
        contents = repair(path)
        progress.warnings += contents.warnings
        ids.update(str(r["id"]) for r in contents.records if "id" in r)
        found: dict[tuple[str, str], int] = {}
        for record in contents.records:
            contract = record_contract(record)
            found[contract] = found.get(contract, 0) + 1
        if found:
            progress.contracts[str(path)] = found
    return progress


@dataclass
class Plan:
    total: int
    done: int
    rejected: int
    pending: list[Pick]
    unreadable: list[str]  # pending images whose size could not be read (rejected when met)
    est_input_tokens: int
    est_output_tokens: int
    price: pricing.Price | None
    batch: bool

    @property
    def est_usd(self) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.est_input_tokens, self.est_output_tokens)

    def lines(self, model: str) -> list[str]:
        out = [f"picks: {self.total}; already captioned: {self.done}; rejected earlier: "
               f"{self.rejected}; to caption now: {len(self.pending)}"]
        if self.unreadable:
            out.append(f"unreadable images among them (will be rejected): {len(self.unreadable)}")
        mode = "Message Batches API (half price)" if self.batch else "Messages API"
        out.append(f"teacher: {model} via the {mode}")
        usd = self.est_usd
        cost = "unknown (no price listed for this model; give --price-input/--price-output)" \
            if usd is None else f"~${usd:,.2f}"
        out.append(f"estimated tokens: {self.est_input_tokens:,} in + {self.est_output_tokens:,} "
                   f"out (one attempt per image); estimated cost {cost} (an estimate: retries "
                   "cost more, shorter replies less)")
        return out


def pending_picks(picks: list[Pick], progress: Progress, retry_rejects: bool) -> list[Pick]:
    skip = progress.done if retry_rejects else progress.done | progress.rejected
    return [p for p in picks if p.id not in skip]


def estimate_one(pick: Pick, settings: CaptionSettings, system: str) -> pricing.RequestEstimate:
    """Tokens for one request, from the image header only (no decoding)."""
    from PIL import Image

    with Image.open(pick.image) as image:
        width, height = image.size
    width, height = target_size(width, height,
                                preset_budget(settings.family, settings.image_preset))
    # The place name is unknown until looked up; ~40 characters is typical.
    text = system + truth_text(pick.lat, pick.lon, "x" * 40)
    return pricing.estimate_request(width, height, text, settings.est_output_tokens)


def make_plan(picks: list[Pick], progress: Progress, settings: CaptionSettings,
              batch: bool = False) -> Plan:
    pending = pending_picks(picks, progress, settings.retry_rejects)
    system = teacher_system(get_prompt(settings.prompt_version))
    tokens_in = tokens_out = 0
    unreadable = []
    for pick in pending:
        try:
            estimate = estimate_one(pick, settings, system)
        except Exception as exc:  # unreadable or missing: rejected when its turn comes
            unreadable.append(f"{pick.image}: {exc}")
            continue
        tokens_in += estimate.input_tokens
        tokens_out += estimate.output_tokens
    price = pricing.price_for(settings.model, settings.price_input, settings.price_output, batch)
    return Plan(len(picks), len(progress.done), len(progress.rejected), pending, unreadable,
                tokens_in, tokens_out, price, batch)


class Budget:
    """Spent dollars plus the estimate of requests in flight; a request starts only when it
    fits under the cap. Single-threaded (asyncio), so no lock."""

    def __init__(self, max_usd: float | None, price: pricing.Price | None):
        if max_usd is not None and price is None:
            raise ValueError("--max-usd needs a price: this model is not in the price table, "
                             "give --price-input and --price-output")
        self.max_usd = max_usd
        self.price = price
        self.spent = 0.0
        self.in_flight = 0.0
        self.exhausted = False
        self.reservations: dict[str, float] = {}  # batch mode: image id -> reserved estimate

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return 0.0 if self.price is None else self.price.cost(input_tokens, output_tokens)

    def reserve(self, estimate: float) -> bool:
        if self.max_usd is not None and self.spent + self.in_flight + estimate > self.max_usd:
            self.exhausted = True
            return False
        self.in_flight += estimate
        return True

    def settle(self, estimate: float, actual: float) -> None:
        self.in_flight -= estimate
        self.spent += actual

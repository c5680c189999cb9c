"""SFT data: reading and checking the JSONL, and the loss mask.

Also holds `make_dataset`, the small photo+caption set the other SFT tests train on: a few
places, each with its own unmistakable picture, so a tiny model can learn photo -> place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from geolocsft import protocol
from geolocsft import families
from geolocsft.images import default_budget

# Four places far apart; the picture of each is a distinct colour and shape.
PLACES = [
    ("Tromso", "Norway", 69.6492, 18.9553, (20, 60, 200)),
    ("Cusco", "Peru", -13.5320, -71.9675, (200, 40, 30)),
    ("Perth", "Australia", -31.9523, 115.8613, (230, 200, 20)),
    ("Nairobi", "Kenya", -1.2921, 36.8219, (30, 170, 60)),
]


def short_analysis(region: str) -> dict:
    """A schema-shaped analysis with very short values: keeps sequences short on CPU."""
    return {
        "regional_25km": {"terrain": "hills", "climate": "mild", "development": "town"},
        "micro_1km": {k: "n/a" for k in protocol.MICRO_KEYS},
        "eliminated": [{"region": "elsewhere", "why": "colour"}],
        "conclusion": region,
    }


def target_for(place) -> str:
    region, country, lat, lon, _ = place
    return protocol.format_target(
        short_analysis(region), protocol.Answer(lat, lon, region, country, 0.9)
    )


def draw_place(path: Path, place, variant: int) -> None:
    colour = place[4]
    image = Image.new("RGB", (96 + 8 * variant, 80), colour)
    draw = ImageDraw.Draw(image)
    draw.ellipse((10 + variant, 10, 50 + variant, 50), fill=tuple(255 - c for c in colour))
    image.save(path, quality=95)


def record(rid: str, image: str, place, **changes) -> dict:
    row = {
        "id": rid,
        "image": image,
        "latitude": place[2],
        "longitude": place[3],
        "prompt_version": protocol.PROMPT_VERSION,
        "messages": protocol.chat_messages(protocol.get_prompt(), target=target_for(place)),
        "caption": {"model": "test", "place": place[0]},
    }
    row.update(changes)
    return row


def make_dataset(folder: Path, per_place: int = 2, places=PLACES, extra_rows=()) -> Path:
    """Write images and sft.jsonl (relative image paths) into `folder`; returns the JSONL."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    for p, place in enumerate(places):
        for v in range(per_place):
            name = f"images/{place[0].lower()}-{v}.jpg"
            draw_place(folder / name, place, v)
            rows.append(record(f"{place[0].lower()}-{v}", name, place))
    rows.extend(extra_rows)
    path = folder / "sft.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


# --- reading and checking ------------------------------------------------------------------

def test_bad_rows_are_skipped_with_a_report(tmp_path):
    from trainer.collate import load_records

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    abs_image = tmp_path / "abs.jpg"
    draw_place(abs_image, PLACES[0], 0)
    place = PLACES[1]
    bad = [
        "{not json",
        json.dumps(record("no-gps", "images/cusco-0.jpg", place, latitude=None)),
        json.dumps(record("bad-gps", "images/cusco-0.jpg", place, latitude=123.0)),
        json.dumps(record("missing", "images/nowhere.jpg", place)),
        json.dumps(record("corrupt", "images/corrupt.jpg", place)),
        json.dumps(record("tromso-0", "images/cusco-0.jpg", place)),  # duplicate id
        json.dumps(record("no-answer", "images/cusco-0.jpg", place, messages=[])),
        json.dumps(record("absolute", str(abs_image), PLACES[0])),
    ]
    path = make_dataset(tmp_path, per_place=1, extra_rows=bad)
    records, report = load_records(path, default_budget("qwen2.5-vl"))

    assert [r.id for r in records] == ["tromso-0", "cusco-0", "perth-0", "nairobi-0", "absolute"]
    assert records[-1].image == abs_image
    assert report.total == 12 and report.kept == 5
    reasons = {item["id"]: item["reason"] for item in report.skipped}
    assert "not valid JSON" in reasons[None]
    assert "no valid GPS" in reasons["no-gps"] and "no valid GPS" in reasons["bad-gps"]
    assert "image not found" in reasons["missing"]
    assert "unreadable image" in reasons["corrupt"] and "corrupt.jpg" in reasons["corrupt"]
    assert "duplicate id" in reasons["tromso-0"]
    assert "bad messages" in reasons["no-answer"]
    assert "7 skipped" in report.summary()


def test_empty_after_filtering_is_a_clear_error(tmp_path):
    from trainer.collate import SFTDataError, load_records

    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(record("x", "gone.jpg", PLACES[0])) + "\n", encoding="utf-8")
    with pytest.raises(SFTDataError, match=r"sft\.jsonl: no usable records"):
        load_records(path)
    with pytest.raises(SFTDataError, match="not found"):
        load_records(tmp_path / "absent.jsonl")


def test_prompt_mismatch_is_refused_unless_allowed(tmp_path):
    from trainer.collate import SFTDataError, load_records

    old = record("old", "images/tromso-0.jpg", PLACES[0], prompt_version="gls-v0")
    edited = record("edited", "images/tromso-0.jpg", PLACES[0])
    edited["messages"][1]["content"][1]["text"] = "Guess the place."
    path = make_dataset(tmp_path, per_place=1, extra_rows=[old, edited])
    with pytest.raises(SFTDataError, match=r"2 records .* prompt other than the current"):
        load_records(path)
    records, _ = load_records(path, allow_prompt_mismatch=True)
    assert [r.id for r in records][-2:] == ["old", "edited"]
    assert records[-1].messages[1]["content"][1]["text"] == "Guess the place."


def test_holdout_split_is_deterministic_and_disjoint(tmp_path):
    from trainer.collate import load_records, split_holdout

    records, _ = load_records(make_dataset(tmp_path, per_place=5))
    train_a, held_a = split_holdout(records, 0.25, seed=3)
    train_b, held_b = split_holdout(records, 0.25, seed=3)
    assert [r.id for r in held_a] == [r.id for r in held_b] and len(held_a) == 5
    assert not {r.id for r in train_a} & {r.id for r in held_a}
    assert len(train_a) + len(held_a) == len(records)
    assert split_holdout(records, 0.0, seed=3) == (records, [])


# --- the loss mask, on the real processors of the tiny models ------------------------------

def loss_tokens(collator, records):
    batch = collator(records)
    labels = batch["labels"]
    texts = []
    for row in range(labels.shape[0]):
        kept = labels[row][labels[row] != -100]
        # Every label equals the input token at its position: nothing shifted or invented.
        positions = (labels[row] != -100).nonzero().flatten()
        assert bool((batch["input_ids"][row, positions] == kept).all())
        texts.append(collator.tokenizer.decode(kept, skip_special_tokens=False))
    return batch, texts


def tiny_collator(request, tmp_path, family: str):
    """(model folder, collator, records) for the family's tiny model and a small dataset with
    answers of different lengths, so a batch of 3 is right-padded."""
    from transformers import AutoProcessor

    from trainer.collate import SFTCollator, load_records
    from trainer.sft import image_budget
    from trainer.sft_config import SFTConfig

    model_dir = request.getfixturevalue("tiny_qwen_dir" if family == "qwen2.5-vl"
                                        else "tiny_gemma_dir")
    fam = families.get(family)
    processor = AutoProcessor.from_pretrained(model_dir)
    budget = image_budget(fam, processor, SFTConfig())
    records, _ = load_records(make_dataset(tmp_path, per_place=1), budget)
    return model_dir, SFTCollator(processor, fam, budget), records


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2.5-vl", "gemma3"])
def test_loss_is_carried_by_exactly_the_answer_and_end_of_turn(tmp_path, family, request):
    fam = families.get(family)
    _, collator, records = tiny_collator(request, tmp_path, family)
    processor = collator.processor
    batch, texts = loss_tokens(collator, records[:3])
    for rec, text in zip(records[:3], texts):
        assert text == rec.target + fam.end_of_turn
    # Image tokens, system prompt and padding are all present in the input, none carry loss.
    image_id = model_dir_image_token(processor)
    assert int((batch["input_ids"] == image_id).sum()) > 0
    assert not bool((batch["labels"] == image_id).any())
    assert protocol.get_prompt().system[:40] in processor.tokenizer.decode(batch["input_ids"][0])
    assert int((batch["attention_mask"] == 0).sum()) > 0  # some padding exists
    assert not bool((batch["labels"][batch["attention_mask"] == 0] != -100).any())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2.5-vl", "gemma3"])
def test_loss_on_labelled_positions_equals_the_models_own_loss(tmp_path, family, request):
    """The trainer asks for logits only where the next token is labelled (trainer/loss.py);
    value and LoRA gradients equal transformers' full-sequence loss on a right-padded batch."""
    import torch
    from transformers import AutoModelForImageTextToText

    from trainer.lora import apply_lora
    from trainer.loss import next_token_loss

    fam = families.get(family)
    model_dir, collator, records = tiny_collator(request, tmp_path, family)
    batch = collator(records[:3])
    assert int((batch["attention_mask"] == 0).sum()) > 0  # padding is in the batch
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    model, _ = apply_lora(model, fam, 8, 16, 0.0, False)
    for name, param in model.named_parameters():  # LoRA B starts at 0: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(fn):
        loss = fn()
        grads = torch.autograd.grad(loss, trainable)
        return float(loss.detach()), grads

    ours, ours_grads = loss_and_grads(lambda: next_token_loss(model, batch))
    theirs, their_grads = loss_and_grads(lambda: model(**batch).loss)
    assert ours == pytest.approx(theirs, rel=1e-5)
    for a, b in zip(ours_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_batch_without_labels_is_refused():
    import torch

    from trainer.loss import next_token_loss

    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.full((1, 4), -100)}
    with pytest.raises(ValueError, match="no labelled token"):
        next_token_loss(lambda **_: None, batch)

def model_dir_image_token(processor) -> int:
    token = getattr(processor, "image_token", None) or "<|image_pad|>"
    return processor.tokenizer.convert_tokens_to_ids(token)

"""`train caption --prompt-version/--image-preset`: the fast preset's contract (compact gls-c1
caption, 256 image tokens) through the real anthropic SDK and a local teacher that answers in
whatever format its system prompt asks for; and a dataset never mixes two contracts."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from geolocsft.images import prepare_image, preset_budget

FAST_IMAGE_TOKENS = 256
from geolocsft.protocol import (Answer, chat_messages, format_target, get_prompt, parse_output,
                                validate_analysis)
from tests.fixtures.fake_anthropic import (FakeAnthropic, prompt_version_in, request_images,
                                           success, truth_in)
from tests.test_captions import analysis as seed_analysis
from tests.test_captions import api_key, run_caption  # noqa: F401  (api_key is a fixture)
from trainer.jsonl import read_jsonl

PLACES = [("paris", 48.8584, 2.2945), ("tokyo", 35.6586, 139.7454), ("lima", -12.0464, -77.0428)]
QWEN_PATCH = 28  # pixels per side of one Qwen2.5-VL image token


def compact_analysis() -> dict:
    return {"context_25km": "dense river city, temperate, very developed",
            "cues_1km": "Haussmann facades, cobbles, right-hand traffic",
            "eliminated": [{"region": "Brussels", "why": "street signs"}],
            "conclusion": "central city by a river"}


def teacher(params: dict, hit: int):
    """Answers ~1 km from the truth in the format of the prompt version it was asked for."""
    lat, lon = truth_in(params)
    version = prompt_version_in(params)
    body = compact_analysis() if version == "gls-c1" else seed_analysis()
    return success(format_target(body, Answer(lat + 0.01, lon, "Region", "Country", 0.8)))


def seed_only_teacher(params: dict, hit: int):
    """A teacher that ignores the compact format and always writes the seed's analysis."""
    lat, lon = truth_in(params)
    return success(format_target(seed_analysis(), Answer(lat, lon, "R", "C", 0.5)))


def make_photos(folder: Path, places=PLACES) -> Path:
    """Phone-like 640x480 photos: larger than the fast budget, so the preset shows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, lat, lon) in enumerate(places):
        path = folder / f"{name}.jpg"
        Image.new("RGB", (640, 480), (40 * i, 120, 200 - 40 * i)).save(path, quality=90)
        rows.append({"id": name, "image": str(path), "lat": lat, "lon": lon})
    picks = folder / "picks.csv"
    with open(picks, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "lat", "lon"])
        writer.writeheader()
        writer.writerows(rows)
    return picks


FAST = ("--prompt-version", "gls-c1", "--image-preset", "fast")


def test_fast_contract_writes_compact_records_from_fast_photos(tmp_path, api_key, no_network,
                                                                capsys):
    picks = make_photos(tmp_path / "pool")
    out = tmp_path / "fast.jsonl"
    with FakeAnthropic(teacher) as server:
        assert run_caption(picks, out, server.url, *FAST) == 0
    assert "contract: prompt version gls-c1, image preset fast" in capsys.readouterr().out
    compact = get_prompt("gls-c1")
    fast = preset_budget("qwen2.5-vl", "fast")
    seed = preset_budget("qwen2.5-vl", "seed")
    for entry in server.message_requests():  # the teacher was asked in the compact format...
        body = entry["body"]
        assert prompt_version_in(body) == "gls-c1" and body["system"].startswith(compact.system)
        sent = Image.open(io.BytesIO(base64.b64decode(request_images(body)[0]["data"])))
        name = next(n for n, lat, lon in PLACES if (lat, lon) == truth_in(body))
        # ...about a photo prepared with the fast budget: at most 256 image tokens.
        assert sent.size == prepare_image(picks.parent / f"{name}.jpg", fast).size
        assert sent.size != prepare_image(picks.parent / f"{name}.jpg", seed).size
        assert (sent.size[0] // QWEN_PATCH) * (sent.size[1] // QWEN_PATCH) <= FAST_IMAGE_TOKENS
    records = read_jsonl(out).records
    assert sorted(r["id"] for r in records) == sorted(p[0] for p in PLACES)
    for record in records:
        assert record["prompt_version"] == "gls-c1"
        assert record["caption"]["image_preset"] == "fast"
        target = record["messages"][-1]["content"][0]["text"]
        assert record["messages"] == chat_messages(compact, target=target)
        parsed = parse_output(target)
        assert parsed.ok and validate_analysis(parsed.analysis, "gls-c1") == []
        assert validate_analysis(parsed.analysis, "gls-v1")  # not a seed caption

    # The SFT loader takes them under gls-c1 and refuses them under the seed's version.
    from trainer.collate import SFTDataError, load_records

    loaded, report = load_records(out, fast, prompt_version="gls-c1")
    assert report.kept == len(PLACES) and not report.skipped
    with pytest.raises(SFTDataError, match=r"3 records .* other than the current 'gls-v1' "
                                           r"\(gls-c1: 3\)"):
        load_records(out, seed)


def test_a_seed_format_reply_is_not_a_compact_target(tmp_path, api_key, no_network):
    """Replies are checked against the requested version's schema: a seed-format reply to a
    gls-c1 request is retried with the reason and finally rejected, never written."""
    picks = make_photos(tmp_path / "pool", PLACES[:1])
    out = tmp_path / "fast.jsonl"
    with FakeAnthropic(seed_only_teacher) as server:
        assert run_caption(picks, out, server.url, *FAST, "--attempts", "2") == 0
        retry = server.message_requests()[-1]["body"]["messages"][-1]["content"][0]["text"]
    assert "missing keys: context_25km, cues_1km" in retry
    assert not out.exists() or read_jsonl(out).records == []
    (reject,) = read_jsonl(tmp_path / "fast.rejects.jsonl").records
    assert reject["reason"].startswith("analysis: missing keys: context_25km")
    assert (reject["prompt_version"], reject["image_preset"]) == ("gls-c1", "fast")


def test_default_run_is_still_the_seeds(tmp_path, api_key, no_network):
    picks = make_photos(tmp_path / "pool", PLACES[:1])
    out = tmp_path / "seed.jsonl"
    with FakeAnthropic(teacher) as server:
        assert run_caption(picks, out, server.url) == 0
        body = server.message_requests()[0]["body"]
    assert prompt_version_in(body) == "gls-v1"
    sent = Image.open(io.BytesIO(base64.b64decode(request_images(body)[0]["data"])))
    assert sent.size == prepare_image(picks.parent / "paris.jpg",
                                      preset_budget("qwen2.5-vl", "seed")).size
    (record,) = read_jsonl(out).records
    assert record["prompt_version"] == "gls-v1" and record["caption"]["image_preset"] == "seed"


@pytest.mark.parametrize("first, second, found", [
    ((), FAST, "prompt version 'gls-v1' and image preset 'seed'"),
    (FAST, (), "prompt version 'gls-c1' and image preset 'fast'"),
    (FAST, ("--prompt-version", "gls-c1"), "image preset 'fast', not 'gls-c1' and 'seed'"),
])
def test_a_dataset_never_mixes_contracts(tmp_path, api_key, no_network, capsys, first, second,
                                         found):
    """Continuing a file under another prompt version or preset is refused with one line that
    names the file and says how to continue it; nothing is sent and nothing changes."""
    out = tmp_path / "captions.jsonl"
    some = make_photos(tmp_path / "pool", PLACES[:2])  # the first run does two of the three
    with FakeAnthropic(teacher) as server:
        assert run_caption(some, out, server.url, *first) == 0
    before = out.read_bytes()
    capsys.readouterr()
    picks = make_photos(tmp_path / "pool")
    with FakeAnthropic(teacher) as server:
        assert run_caption(picks, out, server.url, *second) == 2
        assert server.message_requests() == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and found in err
    assert "--prompt-version" in err and "another --out" in err
    assert out.read_bytes() == before


def test_a_reject_only_file_and_an_old_file_keep_their_contract(tmp_path, api_key, no_network,
                                                               capsys):
    """Rejects count too (they are skipped on resume), and records written before records
    named a contract are the seed's (gls-v1, seed)."""
    picks = make_photos(tmp_path / "pool", PLACES[:1])
    out = tmp_path / "captions.jsonl"
    old = tmp_path / "captions.rejects.jsonl"
    old.write_text(json.dumps({"id": "paris", "image": "x.jpg", "latitude": 1, "longitude": 2,
                               "reason": "refusal: old"}) + "\n")
    with FakeAnthropic(teacher) as server:
        assert run_caption(picks, out, server.url, *FAST) == 2
        assert server.message_requests() == []
    err = capsys.readouterr().err
    assert "prompt version 'gls-v1' and image preset 'seed'" in err and str(old) in err


def test_batch_mode_follows_the_contract_and_refuses_another_state(tmp_path, api_key,
                                                                   no_network, capsys):
    picks = make_photos(tmp_path / "pool", PLACES[:2])
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(teacher) as server:
        assert run_caption(picks, out, server.url, *FAST, "--batch", "--poll-seconds",
                           "0.01") == 0
        params = server.batches["msgbatch_0001"]["requests"][0]["params"]
    assert prompt_version_in(params) == "gls-c1"
    records = read_jsonl(out).records
    assert len(records) == 2 and all(r["prompt_version"] == "gls-c1" and
                                     r["caption"]["mode"] == "batch" for r in records)
    # A batch state left by a seed run (written before states named a contract) is not
    # collected into a gls-c1 dataset.
    other = tmp_path / "other.jsonl"
    state = tmp_path / "other.batch-state.json"
    state.write_text(json.dumps({"version": 1, "model": "claude-sonnet-4-6",
                                 "batches": [{"id": "msgbatch_9", "items": {},
                                              "collected": False}], "carry": {}}))
    capsys.readouterr()
    with FakeAnthropic(teacher) as server:
        assert run_caption(picks, other, server.url, *FAST, "--batch") == 2
        assert server.log == []
    err = capsys.readouterr().err
    assert "batches were made with prompt version 'gls-v1'" in err and str(state) in err


def test_dry_run_estimates_the_fast_photo(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    picks = make_photos(tmp_path / "pool")

    def estimated_input(*extra) -> int:
        from geolocsft.cli import main

        assert main(["train", "caption", str(picks), "--dry-run", *extra]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines()
                    if l.startswith("estimated tokens"))
        return int(line.split()[2].replace(",", ""))

    assert estimated_input(*FAST) < estimated_input()

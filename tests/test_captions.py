"""`geolocsft train caption`: the real anthropic SDK against a local Messages/Batches server."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from geolocsft.cli import main
from geolocsft.geo import distance_km
from geolocsft.images import default_budget, prepare_image
from geolocsft.protocol import (MICRO_KEYS, PROMPT_VERSION, REGIONAL_KEYS, Answer,
                                chat_messages, format_target, get_prompt, parse_output)
from tests.fixtures.fake_anthropic import (FakeAnthropic, Reply, error, message_body,
                                           request_images, request_text, success, truth_in)
from trainer import pricing
from trainer.jsonl import JsonlAppender, read_jsonl, repair

KEY = "sk-ant-test-0123456789-SECRET-do-not-log"
ROOT = Path(__file__).resolve().parent.parent

# Real places so the offline place names are real too.
PLACES = [
    ("paris", 48.8584, 2.2945), ("tokyo", 35.6586, 139.7454), ("nairobi", -1.2864, 36.8172),
    ("sydney", -33.8568, 151.2153), ("lima", -12.0464, -77.0428), ("denver", 39.7392, -104.9903),
    ("oslo", 59.9139, 10.7522), ("cairo", 30.0444, 31.2357),
]


def analysis(note: str = "x") -> dict:
    return {
        "regional_25km": {k: f"{k} {note}" for k in REGIONAL_KEYS},
        "micro_1km": {k: f"{k} {note}" for k in MICRO_KEYS},
        "eliminated": [{"region": "Somewhere else", "why": "different road markings"}],
        "conclusion": f"conclusion {note}",
    }


def good_reply(lat: float, lon: float, dlat: float = 0.01) -> str:
    """A valid teacher reply about 1 km from the truth."""
    return format_target(analysis(), Answer(lat + dlat, lon, "Region", "Country", 0.9))


def far_reply(lat: float, lon: float) -> str:
    """A valid reply ~3,000 km from the truth (27 degrees of latitude away)."""
    return format_target(analysis(), Answer(lat - 27 if lat > 0 else lat + 27, lon, "R", "C", 0.5))


def make_picks(folder: Path, places=PLACES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, lat, lon) in enumerate(places):
        image = Image.new("RGB", (90 + 7 * i, 60 + 5 * i), (30 * i % 255, 80, 200 - 20 * i))
        path = folder / (re.sub(r"[^\w-]", "_", name) + ".jpg")
        image.save(path, quality=92)
        rows.append({"id": name, "image": str(path), "lat": lat, "lon": lon})
    picks = folder / "picks.csv"
    with open(picks, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "lat", "lon"])
        writer.writeheader()
        writer.writerows(rows)
    return picks


def standard(params: dict, hit: int) -> Reply:
    lat, lon = truth_in(params)
    return success(good_reply(lat, lon), model="claude-sonnet-4-6")


def run_caption(picks: Path, out: Path, url: str, *extra: str) -> int:
    return main(["train", "caption", str(picks), "--out", str(out), "--base-url", url,
                 "--max-retries", "2", "--timeout", "5", "--concurrency", "3", *extra])


def ids_of(path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(path).records]


def assert_no_key(folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"API key leaked into {path}"
    for text in texts:
        assert KEY not in text


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return KEY


def test_captions_end_to_end(tmp_path, api_key, no_network, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # the SDK's debug logs too: the key must not be in them
    picks = make_picks(tmp_path / "pool")
    out = tmp_path / "data" / "captions.jsonl"
    with FakeAnthropic(standard) as server:
        assert run_caption(picks, out, server.url) == 0
    captured = capsys.readouterr()
    records = read_jsonl(out).records
    assert sorted(r["id"] for r in records) == sorted(p[0] for p in PLACES)
    truth = {name: (lat, lon) for name, lat, lon in PLACES}
    for record in records:
        assert set(record) == {"id", "image", "latitude", "longitude", "prompt_version",
                               "messages", "caption"}
        assert record["prompt_version"] == PROMPT_VERSION
        assert (record["latitude"], record["longitude"]) == truth[record["id"]]
        assert Path(record["image"]).name == f"{record['id']}.jpg"
        target = record["messages"][-1]["content"][0]["text"]
        assert record["messages"] == chat_messages(get_prompt(), target=target)
        parsed = parse_output(target)
        assert parsed.ok and parsed.analysis == analysis()
        # The target's answer is the true GPS (rounded to the protocol's 4 decimals).
        assert distance_km(parsed.latitude, parsed.longitude, *truth[record["id"]]) < 0.02
        meta = record["caption"]
        assert meta["model"] == "claude-sonnet-4-6"
        assert meta["attempts"] == 1 and meta["input_tokens"] == 1200 and meta["output_tokens"] == 300
        assert 0.9 < meta["teacher_answer"]["km_from_truth"] < 1.3
    paris = next(r for r in records if r["id"] == "paris")
    assert "France" in paris["caption"]["place"]
    # What the teacher saw: the protocol's system prompt, the prepared photo, the truth.
    requests = server.message_requests()
    assert len(requests) == len(PLACES)
    for entry in requests:
        body = entry["body"]
        assert body["model"] == "claude-sonnet-4-6"
        assert body["system"].startswith(get_prompt().system)
        assert entry["headers"].get("Authorization", "").endswith(KEY) or \
            entry["headers"].get("x-api-key") == KEY
        source = request_images(body)[0]
        assert source["media_type"] == "image/jpeg"
        sent = Image.open(io.BytesIO(base64.b64decode(source["data"])))
        name = next(n for n, lat, lon in PLACES if (lat, lon) == truth_in(body))
        expected = prepare_image(picks.parent / f"{name}.jpg", default_budget("qwen2.5-vl"))
        assert sent.size == expected.size
    assert "accepted 8, rejected 0" in captured.out
    assert_no_key(tmp_path, captured.out, captured.err, caplog.text)

    # The SFT step's loader takes the dataset as it is: every record, nothing skipped.
    from trainer.collate import load_records

    loaded, report = load_records(out, budget=default_budget("qwen2.5-vl"))
    assert sorted(r.id for r in loaded) == sorted(r["id"] for r in records)
    assert {r.id: r.target for r in loaded} == {
        r["id"]: r["messages"][-1]["content"][0]["text"] for r in records}

    # A rerun finds everything done and sends nothing.
    with FakeAnthropic(standard) as again:
        assert run_caption(picks, out, again.url) == 0
        assert again.message_requests() == []
    assert "nothing to do" in capsys.readouterr().out


def test_transient_errors_are_retried(tmp_path, api_key, no_network):
    """429 with retry-after, 500, 529, a timeout and a malformed body: all end accepted."""
    seen: dict[str, list[float]] = {}
    lock = threading.Lock()

    def responder(params, hit):
        lat, lon = truth_in(params)
        name = next(n for n, la, lo in PLACES if (la, lo) == (lat, lon))
        with lock:
            seen.setdefault(name, []).append(time.monotonic())
        if name == "paris" and hit == 1:
            return error(429, "rate_limit_error", headers={"retry-after": "0.8"})
        if name == "tokyo" and hit == 1:
            return error(500, "api_error")
        if name == "nairobi" and hit <= 2:
            return error(529, "overloaded_error", headers={"retry-after-ms": "100"})
        if name == "sydney" and hit == 1:
            return Reply(200, message_body(good_reply(lat, lon)), delay=3.0)  # > timeout
        if name == "lima" and hit <= 3:  # the SDK does not retry a bad body: ours does
            return Reply(200, "{this is not json")
        return success(good_reply(lat, lon))

    picks = make_picks(tmp_path / "pool", PLACES[:5])
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(responder) as server:
        code = main(["train", "caption", str(picks), "--out", str(out), "--base-url", server.url,
                     "--max-retries", "2", "--timeout", "1.5", "--concurrency", "2",
                     "--attempts", "4"])
    assert code == 0
    records = {r["id"]: r for r in read_jsonl(out).records}
    assert sorted(records) == sorted(n for n, _, _ in PLACES[:5])
    assert not (tmp_path / "captions.rejects.jsonl").exists() or \
        read_jsonl(tmp_path / "captions.rejects.jsonl").records == []
    # retry-after honoured by the whole run, not only by the request that was told: after the
    # 429 no request at all (tokyo's SDK retry included) arrived within the 0.8 s.
    told = seen["paris"][0]
    assert len(seen["paris"]) == 2 and seen["paris"][1] - told >= 0.78
    others = [t for name, times in seen.items() for t in times if name != "paris"]
    assert not [t for t in others if told + 0.01 < t < told + 0.75]
    assert len(seen["tokyo"]) == 2 and len(seen["nairobi"]) == 3 and len(seen["sydney"]) == 2
    assert len(seen["lima"]) == 4  # three malformed bodies, then success
    assert all(r["caption"]["attempts"] == 1 for r in records.values())


def test_bad_replies_retried_then_rejected(tmp_path, api_key, no_network):
    def responder(params, hit):
        lat, lon = truth_in(params)
        name = next(n for n, la, lo in PLACES if (la, lo) == (lat, lon))
        retries = sum(1 for m in params["messages"] if m["role"] == "assistant")
        if name == "paris":  # always 3,000 km off: retried, then rejected
            return success(far_reply(lat, lon))
        if name == "tokyo":  # refuses, with no answer: rejected at once
            return success("I can't help with locating this photo.", stop_reason="refusal")
        if name == "nairobi":  # first reply misses analysis keys, the retry is fine
            if retries == 0:
                bad = analysis()
                del bad["eliminated"]
                text = json.dumps(bad) + "\n<answer>" + Answer(lat, lon).to_json() + "</answer>"
                return success(text)
            return success(good_reply(lat, lon))
        if name == "sydney":  # never an answer tag
            return success("A sunny harbour city, probably.")
        return success(good_reply(lat, lon))

    picks = make_picks(tmp_path / "pool", PLACES[:5])
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(responder) as server:
        assert run_caption(picks, out, server.url, "--attempts", "3") == 0
    accepted = {r["id"]: r for r in read_jsonl(out).records}
    rejected = {r["id"]: r for r in read_jsonl(tmp_path / "captions.rejects.jsonl").records}
    assert sorted(accepted) == ["lima", "nairobi"]
    assert sorted(rejected) == ["paris", "sydney", "tokyo"]
    assert accepted["nairobi"]["caption"]["attempts"] == 2
    assert rejected["paris"]["attempts"] == 3 and "km from the truth" in rejected["paris"]["reason"]
    km = float(rejected["paris"]["reason"].split("answer is ")[1].split(" km")[0])
    assert 2900 < km < 3100
    assert rejected["tokyo"]["attempts"] == 1 and rejected["tokyo"]["reason"].startswith("refusal")
    assert rejected["sydney"]["attempts"] == 3 and rejected["sydney"]["reason"].startswith("no_answer")
    # The retry carried the reason back to the teacher.
    nairobi = [e["body"] for e in server.message_requests()
               if truth_in(e["body"]) == (PLACES[2][1], PLACES[2][2])]
    assert len(nairobi) == 2 and "missing keys: eliminated" in request_text(nairobi[1])
    # A rerun skips rejects unless asked.
    with FakeAnthropic(standard) as again:
        assert run_caption(picks, out, again.url) == 0
        assert again.message_requests() == []
        assert run_caption(picks, out, again.url, "--retry-rejects") == 0
        assert len(again.message_requests()) == 3
    assert sorted(ids_of(out)) == sorted(n for n, _, _ in PLACES[:5])


def test_bad_request_rejects_the_image_and_bad_key_stops_the_run(tmp_path, api_key, no_network,
                                                                capsys):
    def responder(params, hit):
        lat, lon = truth_in(params)
        if (lat, lon) == PLACES[0][1:]:
            return error(400, "invalid_request_error", "image exceeds 5 MB maximum")
        return success(good_reply(lat, lon))

    picks = make_picks(tmp_path / "pool", PLACES[:3])
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(responder) as server:
        assert run_caption(picks, out, server.url) == 0
        assert len(server.message_requests()) == 3  # a 400 is not retried
    rejected = read_jsonl(tmp_path / "captions.rejects.jsonl").records
    assert [r["id"] for r in rejected] == ["paris"]
    assert rejected[0]["reason"] == "api: status 400: image exceeds 5 MB maximum"

    other = tmp_path / "other.jsonl"
    with FakeAnthropic(lambda params, hit: error(401, "authentication_error", "invalid x-api-key")
                       ) as server:
        assert run_caption(picks, other, server.url) == 2
    err = capsys.readouterr().err
    assert "AuthenticationError" in err and "API key" in err and KEY not in err
    assert read_jsonl(other).records == []
    assert read_jsonl(tmp_path / "other.rejects.jsonl").records == []


def blocking_after(count: int):
    """A responder answering `count` requests, then holding the rest until `release` is set;
    `on_block` runs (once) when the first request is held."""
    state = {"answered": 0, "blocked": 0}
    lock = threading.Lock()
    release = threading.Event()
    hooks = []

    def responder(params, hit):
        lat, lon = truth_in(params)
        with lock:
            block = state["answered"] >= count
            if block:
                state["blocked"] += 1
                first_block = state["blocked"] == 1
            else:
                state["answered"] += 1
        if block:
            if first_block:
                for hook in hooks:
                    hook()
            release.wait(20)
        return success(good_reply(lat, lon))

    return responder, release, hooks


def test_ctrl_c_loses_and_duplicates_nothing(tmp_path, api_key, no_network, capsys):
    """Ctrl-C (a real SIGINT to this process) with requests in flight; the rerun completes
    the dataset and every id is in it exactly once."""
    responder, release, hooks = blocking_after(3)
    picks = make_picks(tmp_path / "pool")
    out = tmp_path / "captions.jsonl"

    def interrupt():
        time.sleep(0.2)  # let the other worker's request arrive too
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C

    hooks.append(lambda: threading.Thread(target=interrupt, daemon=True).start())
    with FakeAnthropic(responder) as server:
        assert run_caption(picks, out, server.url, "--concurrency", "2") == 130
        release.set()
    assert "rerun" in capsys.readouterr().err
    first = ids_of(out)
    assert len(first) == 3 and len(set(first)) == 3
    with FakeAnthropic(standard) as server:
        assert run_caption(picks, out, server.url) == 0
        assert len(server.message_requests()) == len(PLACES) - 3
    assert sorted(ids_of(out)) == sorted(n for n, _, _ in PLACES)  # each exactly once


def test_killed_process_loses_and_duplicates_nothing(tmp_path, api_key):
    """kill -9 of a real caption process with requests in flight; then a rerun."""
    responder, release, _ = blocking_after(3)
    picks = make_picks(tmp_path / "pool")
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(responder) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from geolocsft.cli import main; sys.exit(main())",
             "train", "caption", str(picks), "--out",
             str(out), "--base-url", server.url, "--concurrency", "2", "--max-retries", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
        deadline = time.monotonic() + 60
        while len(read_jsonl(out).records) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the next requests are now held in flight
        proc.kill()
        _, err = proc.communicate(timeout=20)
        release.set()
        assert proc.returncode == -signal.SIGKILL, err
        assert KEY.encode() not in err
    first = ids_of(out)
    assert len(first) == 3 and len(set(first)) == 3
    with FakeAnthropic(standard) as server:
        assert run_caption(picks, out, server.url) == 0
        assert len(server.message_requests()) == len(PLACES) - 3
    assert sorted(ids_of(out)) == sorted(n for n, _, _ in PLACES)
    assert_no_key(tmp_path)


def test_torn_last_line_is_cut_and_redone(tmp_path, api_key, no_network):
    picks = make_picks(tmp_path / "pool", PLACES[:3])
    out = tmp_path / "captions.jsonl"
    with JsonlAppender(out) as appender:
        appender.append({"id": "paris", "note": "finished earlier"})
    with open(out, "ab") as handle:
        handle.write(b'{"id": "tokyo", "messa')  # killed mid-write
    with FakeAnthropic(standard) as server:
        assert run_caption(picks, out, server.url) == 0
        sent = sorted(truth_in(e["body"]) for e in server.message_requests())
    assert sent == sorted([(PLACES[1][1], PLACES[1][2]), (PLACES[2][1], PLACES[2][2])])
    contents = read_jsonl(out)
    assert not contents.torn_tail and contents.warnings == []
    assert sorted(r["id"] for r in contents.records) == ["nairobi", "paris", "tokyo"]


def test_repair_without_complete_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": "a"')
    contents = repair(path)
    assert contents.records == [] and contents.torn_tail and path.read_bytes() == b""
    # A whole record that only lacks its newline (a hand-edited file) is kept, not cut.
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    contents = repair(path)
    assert [r["id"] for r in contents.records] == ["a", "b"] and not contents.torn_tail
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_batch_mode(tmp_path, api_key, no_network):
    places = PLACES[:4] + [("odd id/with spaces", 10.0, 20.0)]

    def responder(params, hit):
        lat, lon = truth_in(params)
        name = next(n for n, la, lo in places if (la, lo) == (lat, lon))
        retries = sum(1 for m in params["messages"] if m["role"] == "assistant")
        if name == "tokyo" and retries == 0:
            return success(far_reply(lat, lon))  # fixed on the second round
        if name == "nairobi":
            return success("", stop_reason="refusal")
        if name == "sydney" and hit == 1:
            return error(500, "api_error")  # an errored result: resubmitted
        return success(good_reply(lat, lon))

    picks = make_picks(tmp_path / "pool", places)
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(responder, polls_until_ended=2) as server:
        assert run_caption(picks, out, server.url, "--batch", "--poll-seconds", "0.01") == 0
    accepted = {r["id"]: r for r in read_jsonl(out).records}
    rejected = {r["id"]: r for r in read_jsonl(tmp_path / "captions.rejects.jsonl").records}
    assert sorted(accepted) == ["odd id/with spaces", "paris", "sydney", "tokyo"]
    assert list(rejected) == ["nairobi"] and rejected["nairobi"]["reason"].startswith("refusal")
    assert accepted["tokyo"]["caption"]["attempts"] == 2
    assert all(r["caption"]["mode"] == "batch" for r in accepted.values())
    assert len(server.batches) == 2  # round 1 (all five), round 2 (tokyo and sydney)
    first = server.batches["msgbatch_0001"]["requests"]
    custom_ids = sorted(r["custom_id"] for r in first)
    assert "paris" in custom_ids and all(len(c) <= 64 for c in custom_ids)
    assert sorted(r["custom_id"] for r in server.batches["msgbatch_0002"]["requests"]) == ["sydney", "tokyo"]
    assert not (tmp_path / "captions.batch-state.json").exists()  # finished: nothing to resume
    assert_no_key(tmp_path)


def test_batch_split_by_size(tmp_path, api_key, no_network):
    picks = make_picks(tmp_path / "pool", PLACES[:3])
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(standard) as server:
        # each request is a few kB: a 0.001 MB limit puts every request in its own batch
        assert run_caption(picks, out, server.url, "--batch", "--poll-seconds", "0.01",
                           "--batch-max-mb", "0.001") == 0
        assert [len(b["requests"]) for b in server.batches.values()] == [1, 1, 1]
    assert sorted(ids_of(out)) == ["nairobi", "paris", "tokyo"]


def test_batch_resumes_from_state_after_interrupt(tmp_path, api_key, no_network):
    picks = make_picks(tmp_path / "pool", PLACES[:3])
    out = tmp_path / "captions.jsonl"
    state = tmp_path / "captions.batch-state.json"
    with FakeAnthropic(standard, polls_until_ended=10**9) as server:  # never ends...
        original = server._batch_object

        def polled(batch_id):  # ...and Ctrl-C arrives while the run waits for it
            if server.batches[batch_id]["polls"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C
            return original(batch_id)

        server._batch_object = polled
        assert run_caption(picks, out, server.url, "--batch", "--poll-seconds", "0.05") == 130
        saved = json.loads(state.read_text())
        assert [b["id"] for b in saved["batches"]] == ["msgbatch_0001"]
        assert not out.exists() or read_jsonl(out).records == []
        server._batch_object = original
        server.polls_until_ended = 0  # the batch has ended meanwhile
        assert run_caption(picks, out, server.url, "--batch", "--poll-seconds", "0.01") == 0
        assert len(server.batches) == 1  # resumed the same batch: paid once
        assert server.message_requests() == []
    assert sorted(ids_of(out)) == ["nairobi", "paris", "tokyo"]
    assert not state.exists()
    assert_no_key(tmp_path)


def test_dry_run_prints_plan_and_calls_nothing(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    picks = make_picks(tmp_path / "pool", PLACES[:4])
    out = tmp_path / "captions.jsonl"
    with FakeAnthropic(standard) as server:
        assert run_caption(picks, out, server.url, "--dry-run") == 0
        assert server.log == []
    text = capsys.readouterr().out
    assert "to caption now: 4" in text and "estimated cost ~$" in text and "dry run" in text
    assert not out.exists()
    # Without the key a real run is a clear error, not a traceback.
    with FakeAnthropic(standard) as server:
        assert run_caption(picks, out, server.url) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err


def test_max_usd_stops_starting_requests(tmp_path, api_key, no_network, capsys):
    picks = make_picks(tmp_path / "pool")
    out = tmp_path / "captions.jsonl"
    # $1 per token in and out. A request is reserved at its estimate (~490 prompt tokens +
    # 1,000 --max-tokens ≈ $1,490) and costs $1,500 (the server's usage). Under $5,000:
    # 0+1490, 1500+1490, 3000+1490 fit; 4500+1490 would not, so the fourth never starts.
    with FakeAnthropic(standard) as server:
        code = run_caption(picks, out, server.url, "--max-usd", "5000", "--price-input",
                           "1000000", "--price-output", "1000000", "--concurrency", "1",
                           "--max-tokens", "1000")
        sent = len(server.message_requests())
    assert code == 0
    assert sent == 3 and len(ids_of(out)) == 3
    assert "left for a rerun" in capsys.readouterr().out


def test_pricing_estimates():
    assert pricing.image_tokens(1000, 1000) == 1334  # Anthropic's (w*h)/750
    assert pricing.image_tokens(3136, 3136) == pricing.image_tokens(1568, 1568)  # downsized
    price = pricing.price_for("claude-sonnet-4-6-20260101")
    assert price == pricing.Price(3.0, 15.0)
    assert pricing.price_for("claude-sonnet-4-6", batch=True) == pricing.Price(1.5, 7.5)
    assert pricing.price_for("some-new-model") is None
    assert pricing.price_for("some-new-model", 2.0, 4.0).cost(1_000_000, 0) == 2.0
    with pytest.raises(ValueError, match="price-input"):
        pricing.price_for("some-new-model", 2.0, None)

"""The fast preset as a named contract through SFT: `prompt_version` and `image_preset` are
settings (defaults: the seed's), the data must be written under the configured version, and the
training record carries both into the model folder's manifest, which inference follows
(train = infer). The slow chain runs caption (local teacher) -> SFT -> convert -> locate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geolocsft import protocol
from geolocsft.images import preset_budget

FAST_IMAGE_TOKENS = 256
from tests.test_sft_data import PLACES, draw_place, make_dataset

QWEN_FACTOR = 28
FAST_MAX_PIXELS = FAST_IMAGE_TOKENS * QWEN_FACTOR ** 2
# The published Qwen2.5-VL processor's limits (min_pixels, max_pixels).
REAL_QWEN_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}


def compact_target(place) -> str:
    region, country, lat, lon, _ = place
    analysis = {"context_25km": "hills", "cues_1km": "colour",
                "eliminated": [{"region": "elsewhere", "why": "shape"}], "conclusion": region}
    return protocol.format_target(analysis, protocol.Answer(lat, lon, region, country, 0.9))


def make_compact_dataset(folder: Path, per_place: int = 1, seen_at: str = "fast") -> Path:
    """Like test_sft_data.make_dataset, written under gls-c1 by a teacher that saw the photos
    at image preset `seen_at`."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    prompt = protocol.get_prompt("gls-c1")
    rows = []
    for place in PLACES:
        for v in range(per_place):
            name = f"images/{place[0].lower()}-{v}.jpg"
            draw_place(folder / name, place, v)
            rows.append({"id": f"{place[0].lower()}-{v}", "image": name, "latitude": place[2],
                         "longitude": place[3], "prompt_version": "gls-c1",
                         "messages": protocol.chat_messages(prompt, target=compact_target(place)),
                         "caption": {"model": "test", "image_preset": seen_at}})
    path = folder / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- settings --------------------------------------------------------------------------------

def test_defaults_stay_the_seeds_and_the_fast_preset_names_the_contract():
    from trainer.sft_config import SFTConfig, build_config

    defaults = SFTConfig()
    assert (defaults.prompt_version, defaults.image_preset) == (protocol.PROMPT_VERSION, "seed")
    seed = build_config("seed")
    assert (seed.prompt_version, seed.image_preset) == ("gls-v1", "seed")
    fast = build_config("fast")
    assert (fast.prompt_version, fast.image_preset) == ("gls-c1", "fast")
    # Everything else of `fast` is the seed's recipe.
    assert {k: v for k, v in fast.to_dict().items() if k not in ("prompt_version", "image_preset")} \
        == {k: v for k, v in seed.to_dict().items() if k not in ("prompt_version", "image_preset")}


def test_contract_flags_and_bad_values(capsys):
    import argparse

    import geolocsft.cli
    from trainer import cli as train_cli

    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "sft", "--prompt-version", "gls-c1", "--image-preset",
                              "fast", "--print-config"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["prompt_version"], printed["image_preset"]) == ("gls-c1", "fast")
    for flag, value, message in (("--prompt-version", "gls-v9", "prompt_version must be one of"),
                                 ("--image-preset", "tiny", "image_preset must be one of")):
        bad = parser.parse_args(["train", "sft", flag, value, "--print-config"])
        with pytest.raises(geolocsft.cli.CliError, match=message):
            bad.handler(bad)


def test_records_are_checked_against_the_configured_version(tmp_path):
    from trainer.collate import SFTDataError, load_records

    compact = make_compact_dataset(tmp_path / "c1", per_place=2)
    records, report = load_records(compact, prompt_version="gls-c1")
    assert report.kept == 8 and records[0].messages[0]["content"][0]["text"] == \
        protocol.get_prompt("gls-c1").system
    with pytest.raises(SFTDataError, match=r"8 records were written with a prompt other than "
                                           r"the current 'gls-v1' \(gls-c1: 8\)"):
        load_records(compact)
    seed = make_dataset(tmp_path / "v1", per_place=1)
    with pytest.raises(SFTDataError, match=r"other than the current 'gls-c1' \(gls-v1: 4\)"):
        load_records(seed, prompt_version="gls-c1")
    # A record that claims gls-c1 but carries the seed's prompt is a mismatch too.
    lying = json.loads(seed.read_text().splitlines()[0])
    lying["prompt_version"] = "gls-c1"
    (tmp_path / "lying.jsonl").write_text(json.dumps(lying) + "\n")
    with pytest.raises(SFTDataError, match=r"1 records .* \(gls-c1: 1\)"):
        load_records(tmp_path / "lying.jsonl", prompt_version="gls-c1")


def test_photos_the_teacher_saw_at_another_preset_are_a_warning(tmp_path):
    """Not fatal (the records are valid), but said: the caption may name what the student
    cannot see at its own budget."""
    from trainer.collate import load_records

    path = make_compact_dataset(tmp_path, per_place=1, seen_at="seed")
    _, same = load_records(path, prompt_version="gls-c1", image_preset="seed")
    assert same.warnings == []
    records, other = load_records(path, prompt_version="gls-c1", image_preset="fast")
    assert len(records) == 4
    (warning,) = other.warnings
    assert "4 records were captioned from photos at another image preset than 'fast' (seed: 4)" \
        in warning and "--image-preset fast" in warning
    assert "warning: 4 records" in other.summary()
    assert other.to_dict()["warnings"] == [warning]


# --- on the tiny Qwen ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_size_processor_qwen(tiny_qwen_dir, tmp_path_factory):
    """The tiny Qwen with the published processor limits (the tiny one caps images at 16
    tokens), so the preset's budget, not the tiny processor, decides the pixels. Weights are
    linked, not copied."""
    folder = tmp_path_factory.mktemp("qwen-real-processor") / "tiny-qwen"
    folder.mkdir()
    for item in Path(tiny_qwen_dir).iterdir():
        if item.name == "processor_config.json":
            config = json.loads(item.read_text())
            config["image_processor"]["size"] = dict(REAL_QWEN_SIZE)
            (folder / item.name).write_text(json.dumps(config, indent=2))
        else:
            os.symlink(item, folder / item.name)
    return folder


@pytest.mark.slow
def test_image_budget_follows_the_preset(full_size_processor_qwen, tiny_qwen_dir):
    from transformers import AutoProcessor

    from trainer.sft import image_budget
    from trainer.sft_config import SFTConfig

    processor = AutoProcessor.from_pretrained(full_size_processor_qwen)
    fast = image_budget("qwen2.5-vl", processor, SFTConfig(image_preset="fast"))
    assert fast == preset_budget("qwen2.5-vl", "fast") and fast.max_pixels == FAST_MAX_PIXELS
    assert image_budget("qwen2.5-vl", processor, SFTConfig()) == \
        preset_budget("qwen2.5-vl", "seed")
    # A processor that accepts less still wins (the tiny one: 16 tokens).
    tiny = AutoProcessor.from_pretrained(tiny_qwen_dir)
    assert image_budget("qwen2.5-vl", tiny, SFTConfig(image_preset="fast")).max_pixels == \
        tiny.image_processor.size["longest_edge"]


@pytest.mark.slow
def test_mismatched_data_stops_the_run_in_one_line(full_size_processor_qwen, tmp_path, capsys):
    """Seed-version data under the fast preset (and the reverse) is refused before training."""
    from geolocsft.cli import main

    seed = make_dataset(tmp_path / "v1", per_place=1)
    compact = make_compact_dataset(tmp_path / "c1")
    for data, extra, want in ((seed, ["--preset", "fast"], "'gls-c1' (gls-v1: 4)"),
                              (compact, [], "'gls-v1' (gls-c1: 4)")):
        out = tmp_path / f"run-{data.parent.name}"
        code = main(["train", "sft", "--model", str(full_size_processor_qwen), "--data",
                     str(data), "--output-dir", str(out), "--max-steps", "1", *extra])
        err = capsys.readouterr().err
        assert code == 2
        line = next(l for l in err.splitlines() if l.startswith("geolocsft: error:"))
        assert str(data) in line and want in line and "--prompt-version" in line
        assert not (out / "adapter").exists()


@pytest.fixture(scope="module")
def fast_chain(full_size_processor_qwen, tmp_path_factory):
    """caption (local teacher, fast contract) -> `train sft --preset fast` -> convert."""
    from geolocsft.cli import main
    from tests.fixtures.fake_anthropic import FakeAnthropic
    from tests.test_captions_preset import FAST, PLACES as CAPTION_PLACES, make_photos, teacher

    root = tmp_path_factory.mktemp("fast-chain")
    picks = make_photos(root / "pool", CAPTION_PLACES)
    data = root / "captions.jsonl"
    env = {"ANTHROPIC_API_KEY": "sk-ant-test-fast-chain"}
    saved = {k: os.environ.get(k) for k in (*env, "ANTHROPIC_BASE_URL")}
    os.environ.update(env)
    os.environ.pop("ANTHROPIC_BASE_URL", None)
    try:
        with FakeAnthropic(teacher) as server:
            assert main(["train", "caption", str(picks), "--out", str(data), "--base-url",
                         server.url, "--max-retries", "1", "--timeout", "5", *FAST]) == 0
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    run = root / "run"
    assert main(["train", "sft", "--preset", "fast", "--model", str(full_size_processor_qwen),
                 "--data", str(data), "--output-dir", str(run), "--max-steps", "2",
                 "--batch-size", "1", "--learning-rate", "1e-3", "--warmup-steps", "0",
                 "--lora-rank", "4", "--lora-alpha", "8", "--eval-fraction", "0",
                 "--save-every-steps", "0", "--no-tensorboard"]) == 0
    from convert.build import build_model_folder

    built = build_model_folder(root / "models" / "geo-fast", adapter=run / "adapter",
                               quant="Q8_0", check_logits=False, answer=False, progress=None)
    return picks, data, run, built


@pytest.mark.slow
def test_fast_run_records_the_contract(fast_chain):
    _, data, run, _ = fast_chain
    rec = json.loads((run / "adapter" / "training_record.json").read_text())
    assert rec["prompt_version"] == "gls-c1" and rec["image_preset"] == "fast"
    assert rec["image_budget"] == preset_budget("qwen2.5-vl", "fast").to_dict()
    assert rec["image_budget"]["max_pixels"] == FAST_MAX_PIXELS
    assert rec["config"]["prompt_version"] == "gls-c1" and rec["steps"] == 2
    assert rec["data"]["records"] == 3 and rec["data"]["path"] == str(data.resolve())
    # Captioned and trained at the same preset: nothing to warn about.
    assert json.loads((run / "data_report.json").read_text())["warnings"] == []


@pytest.mark.slow
def test_manifest_and_engine_follow_the_contract(fast_chain):
    """The converter copies the contract into the manifest, and the engine prompts with
    gls-c1, decodes under its grammar, and encodes at most 256 image tokens."""
    from geolocsft.engine import Engine, ModelSpec
    from geolocsft.manifest import read_manifest

    picks, _, _, built = fast_chain
    manifest = read_manifest(built.folder)
    assert manifest.prompt_version == "gls-c1"
    assert manifest.image_budget["max_pixels"] == FAST_MAX_PIXELS
    spec = ModelSpec.from_folder(built.folder)
    with Engine(spec, n_threads=1, grammar=True, max_tokens=700, n_ctx=2048,
                max_value_chars=12) as engine:
        assert engine.prompt.version == "gls-c1"
        guess = engine.locate(picks.parent / "paris.jpg").guesses[0]  # a 640x480 photo
    assert guess.parsed.ok, guess.text[-300:]
    assert list(guess.parsed.analysis) == list(protocol.COMPACT_KEYS)
    assert 0 < guess.timings.image_tokens <= FAST_IMAGE_TOKENS

"""The synthetic places task: signatures, template targets in the protocol's form, renders
that vary (and undo their EXIF orientation only through the core reader), deterministic splits
that the dataset reader and the trainer read."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from PIL import Image, ImageChops, ImageStat

from demo import synthetic
from geolocsft import datasets, geo, images, protocol
from geolocsft.images import ImageBudget


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_at_least_eight_distinct_places_far_apart():
    places = synthetic.PLACES
    assert len(places) >= 8
    assert len({p.key for p in places}) == len(places)
    assert len({(p.pattern, p.colours) for p in places}) == len(places)
    assert {p.pattern for p in places} <= set(synthetic.PATTERNS)
    for i, a in enumerate(places):
        assert -90 <= a.latitude <= 90 and -180 <= a.longitude <= 180
        assert a.confused_with in synthetic.PLACES_BY_KEY and a.confused_with != a.key
        for b in places[i + 1:]:
            # Far apart: a wrong place is a miss at every radius up to 750 km.
            assert geo.distance_km(a.latitude, a.longitude, b.latitude, b.longitude) > 750


@pytest.mark.parametrize("place", synthetic.PLACES, ids=lambda p: p.key)
def test_targets_are_in_the_protocol_form(place):
    target = synthetic.target_for(place)
    parsed = protocol.parse_output(target)
    assert parsed.ok, parsed.reason
    assert (parsed.latitude, parsed.longitude) == (place.latitude, place.longitude)
    assert parsed.country == place.country and parsed.region == place.region
    assert protocol.validate_analysis(parsed.analysis) == []
    assert target == protocol.format_target(synthetic.analysis_for(place),
                                            synthetic.answer_for(place))
    # The first value of the caption names what the photo shows.
    assert parsed.analysis["regional_25km"]["terrain"].startswith(place.colour_words)


def test_every_pattern_draws_something():
    rng = random.Random(0)
    for place in synthetic.PLACES:
        image = synthetic.render(place, rng)
        assert 120 <= image.width <= 200 and 120 <= image.height <= 200
        # Two colours in clear proportion: the pattern is really there, not a blank canvas.
        extrema = ImageStat.Stat(image.convert("L")).extrema[0]
        assert extrema[1] - extrema[0] > 60, place.key


@pytest.mark.parametrize("tag", synthetic.ORIENTATION_TAGS)
def test_orientation_tag_is_undone_by_the_core_reader(tag):
    upright = synthetic.render(synthetic.PLACES_BY_KEY["paris"], random.Random(tag))
    data = synthetic.encode_jpeg(upright, tag, 95)
    raw = Image.open(__import__("io").BytesIO(data))
    assert raw.getexif()[0x0112] == tag
    restored = images.open_image(data)
    assert restored.size == upright.size
    assert mean_abs_diff(restored, upright) < 10  # JPEG noise only (noisy stripes, q95)
    if tag in (6, 8):  # the stored pixels really are turned: without the tag they'd be wrong
        assert raw.size == (upright.height, upright.width)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    train = synthetic.write_split(root / "train", 4, seed=0)
    held = synthetic.write_split(root / "held", 2, seed=1, prefix="held-")
    return root, train, held


def test_split_files_are_read_by_the_dataset_reader(splits):
    _, train, _ = splits
    data = datasets.read_csv(train.csv)
    assert len(data.samples) == train.count == 4 * len(synthetic.PLACES)
    assert data.warnings == []
    header = train.csv.read_text().splitlines()[0]
    assert header == "id,image,lat,lon"
    for sample in data.samples:
        place = synthetic.place_of(sample.id)
        km = geo.distance_km(sample.lat, sample.lon, place.latitude, place.longitude)
        assert km <= synthetic.TRUTH_JITTER_KM + 0.01
        assert sample.image.is_file()


def test_jsonl_is_the_trainers_format(splits):
    from trainer.collate import load_records

    _, train, _ = splits
    budget = ImageBudget("qwen2.5-vl", max_pixels=112 * 112, min_pixels=56 * 56)
    records, report = load_records(train.jsonl, budget)
    assert report.kept == train.count and report.skipped == []
    rows = [json.loads(line) for line in train.jsonl.read_text().splitlines()]
    assert set(rows[0]) == {"id", "image", "latitude", "longitude", "prompt_version",
                            "messages", "caption"}
    for row, record in zip(rows, records):
        place = synthetic.place_of(row["id"])
        assert row["prompt_version"] == protocol.PROMPT_VERSION
        assert row["messages"] == protocol.chat_messages(
            protocol.get_prompt(), target=synthetic.target_for(place))
        assert record.target == synthetic.target_for(place)


def test_splits_are_deterministic_and_held_out_renders_are_new(splits, tmp_path):
    root, train, held = splits
    again = synthetic.write_split(tmp_path / "again", 4, seed=0)
    for name in ("photos.csv", "sft.jsonl"):
        assert (again.folder / name).read_bytes() == (train.folder / name).read_bytes()
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (train.folder / "images").iterdir()}
    assert digests == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in (again.folder / "images").iterdir()}
    # Held-out renders differ from every training render of the same place.
    budget = ImageBudget("qwen2.5-vl", max_pixels=112 * 112, min_pixels=56 * 56)
    for held_image in sorted((held.folder / "images").iterdir()):
        key = synthetic.place_of(held_image.stem).key
        seen = images.prepare_image(held_image, budget)
        for train_image in (train.folder / "images").glob(f"{key}-*.jpg"):
            other = images.prepare_image(train_image, budget)
            if other.size == seen.size:
                assert mean_abs_diff(seen, other) > 3
    tags = {Image.open(p).getexif().get(0x0112) for p in (train.folder / "images").iterdir()}
    assert tags == set(synthetic.ORIENTATION_TAGS)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="per_place"):
        synthetic.write_split(tmp_path, 0, seed=0)
    with pytest.raises(KeyError, match="not a synthetic render id"):
        synthetic.place_of("holiday-001")


# --- the demo's own folders (no model needed) -------------------------------------------------

def test_demo_photo_folder_is_refreshed_but_a_foreign_folder_is_refused(splits, tmp_path):
    from geolocsft.cli import CliError
    from demo.cli import copy_photos

    _, train, held = splits
    dest = copy_photos(held.folder, tmp_path / "photos")
    assert (dest / "photos.csv").read_bytes() == held.csv.read_bytes()
    assert len(list((dest / "images").glob("*.jpg"))) == held.count
    # A copy from an older build (other renders) is replaced by the current one.
    copy_photos(train.folder, tmp_path / "photos")
    assert (dest / "photos.csv").read_bytes() == train.csv.read_bytes()
    assert len(list((dest / "images").glob("*.jpg"))) == train.count
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(CliError, match="not made by the demo"):
        copy_photos(held.folder, foreign)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"


def test_demo_model_install_never_replaces_someone_elses_folder(tmp_path):
    from demo.cli import INSTALL_MARKER, install_model

    built = tmp_path / "cache" / "demo-synthetic-gemma3-q8_0"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text("{}")
    root = tmp_path / "models"
    first = install_model(built, root)
    assert first == root / built.name and (first / INSTALL_MARKER).is_file()
    (built / "manifest.json").write_text('{"v": 2}')
    assert install_model(built, root) == first  # ours: replaced by the newer build
    assert (first / "manifest.json").read_text() == '{"v": 2}'
    (first / INSTALL_MARKER).unlink()  # now it looks like a user's own folder
    (first / "manifest.json").write_text("user's")
    assert install_model(built, root) is None
    assert (first / "manifest.json").read_text() == "user's"


def test_demo_cache_key_follows_the_recipe(monkeypatch):
    from demo import pipeline as demo

    before = demo.build_key("gemma3")
    assert before == demo.build_key("gemma3") and before != demo.build_key("qwen2.5-vl")
    monkeypatch.setitem(demo.SFT_FLAGS, "gemma3", demo.SFT_FLAGS["gemma3"] + ("--seed", "1"))
    assert demo.build_key("gemma3") != before
    with pytest.raises(demo.DemoError, match="choose one of"):
        demo.build("llava")


def test_demo_opens_the_app_on_its_own_results(tmp_path):
    """The hand-over: the app gets the demo's photos, the report's results store and the
    demo model, so it shows the answers instead of an empty table."""
    from demo.cli import app_command
    from geolocsft.bench_run import STORE_NAME
    from geolocsft.cli import build_parser

    command = app_command(tmp_path / "photos", tmp_path / "report", tmp_path / "model")
    assert command[1:4] == ["-m", "geolocsft", "app"]
    args = build_parser().parse_args(command[3:])
    assert args.folder == str(tmp_path / "photos")
    assert args.store == str(tmp_path / "report" / STORE_NAME)
    assert args.model == str(tmp_path / "model")

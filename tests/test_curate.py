"""`geolocsft train curate`: spread, caps, near-duplicates, bad rows, determinism, reports."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import imagehash
from PIL import Image, ImageEnhance

from geolocsft.cli import main
from trainer.curate import CurateSettings, cell_bounds, cell_of, curate
from trainer.picks import Pick, load_picks

SIDE = 64  # tests use small photos with --min-side 64


def photo(path: Path, seed: int, size=(96, 80), quality: int = 90) -> Path:
    """A smooth random picture (a coarse random grid, upscaled): stable under re-encoding,
    so its perceptual hash is too, while different seeds give unrelated hashes."""
    rng = random.Random(seed)
    coarse = Image.new("RGB", (6, 5))
    coarse.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(30)])
    coarse.resize(size, Image.Resampling.BICUBIC).save(path, quality=quality)
    return path


def write_pool(folder: Path, rows: list[tuple]) -> Path:
    """rows: (image name, lat, lon); writes pool.csv with image/lat/lon columns."""
    pool = folder / "pool.csv"
    with open(pool, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "lat", "lon"])
        writer.writerows(rows)
    return pool


def scattered_pool(folder: Path, n: int, seed: int = 1) -> Path:
    """n photos at random points spread over the land-and-sea globe (uniform on the sphere)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lat = math.degrees(math.asin(rng.uniform(-1, 1)))
        lon = rng.uniform(-180, 180)
        photo(folder / f"p{i:03d}.jpg", seed * 1000 + i)
        rows.append((f"p{i:03d}.jpg", round(lat, 5), round(lon, 5)))
    return write_pool(folder, rows)


def curate_cli(pool: Path, out: Path, *extra: str) -> int:
    return main(["train", "curate", str(pool), "--out", str(out), "--min-side", str(SIDE),
                 "--quiet", *extra])


def test_cells_are_equal_area():
    bands, sectors = 18, 36
    steps = []
    for band in range(bands):
        south, north, west, east = cell_bounds(band * sectors, bands, sectors)
        steps.append(math.sin(math.radians(north)) - math.sin(math.radians(south)))
        assert east - west == pytest.approx(10.0)
    # the area of a band is proportional to the step in sin(latitude): all equal
    assert max(steps) == pytest.approx(min(steps))
    for cell in (0, 17, 300, bands * sectors - 1):
        south, north, west, east = cell_bounds(cell, bands, sectors)
        assert cell_of((south + north) / 2, (west + east) / 2, bands, sectors) == cell
    assert cell_of(90, 180, bands, sectors) == bands * sectors - 1
    assert cell_of(-90, -180, bands, sectors) == 0


def test_same_seed_same_picks_other_seed_other_picks(tmp_path):
    pool = scattered_pool(tmp_path / "pool", 60)
    assert curate_cli(pool, tmp_path / "a", "-n", "25", "--seed", "7", "--grid", "4x8") == 0
    assert curate_cli(pool, tmp_path / "b", "-n", "25", "--seed", "7", "--grid", "4x8") == 0
    assert curate_cli(pool, tmp_path / "c", "-n", "25", "--seed", "8", "--grid", "4x8") == 0
    a, b, c = ((tmp_path / d / "picks.csv").read_text() for d in "abc")
    assert a == b
    assert a != c
    # Row order of the pool does not matter either.
    lines = pool.read_text().splitlines()
    shuffled = tmp_path / "pool" / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    assert curate_cli(shuffled, tmp_path / "d", "-n", "25", "--seed", "7", "--grid", "4x8") == 0
    assert (tmp_path / "d" / "picks.csv").read_text() == a
    picks, _ = load_picks(tmp_path / "a" / "picks.csv")
    assert len(picks) == 25 and len({p.id for p in picks}) == 25


def test_round_robin_and_per_cell_cap(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    rows = []
    for i in range(30):  # a crowded city: 30 photos in one cell
        photo(folder / f"paris{i}.jpg", 100 + i)
        rows.append((f"paris{i}.jpg", 48.85 + i * 0.001, 2.35))
    for i, (lat, lon) in enumerate([(-33.9, 151.2), (35.7, 139.7), (-1.3, 36.8), (-12.0, -77.0),
                                    (39.7, -105.0)]):
        photo(folder / f"far{i}.jpg", 200 + i)
        rows.append((f"far{i}.jpg", lat, lon))
    pool = write_pool(folder, rows)

    assert curate_cli(pool, tmp_path / "fair", "-n", "10") == 0
    ids = [p.id for p in load_picks(tmp_path / "fair" / "picks.csv")[0]]
    assert sorted(i for i in ids if i.startswith("far")) == [f"far{i}.jpg" for i in range(5)]
    assert sum(i.startswith("paris") for i in ids) == 5  # the city fills what is left

    assert curate_cli(pool, tmp_path / "capped", "-n", "20", "--per-cell-cap", "3") == 0
    ids = [p.id for p in load_picks(tmp_path / "capped" / "picks.csv")[0]]
    assert sum(i.startswith("paris") for i in ids) == 3 and len(ids) == 8
    report = json.loads((tmp_path / "capped" / "coverage.json").read_text())
    assert report["picks"] == 8 and report["grid"]["most_picks_in_a_cell"] == 3
    assert report["by_continent"] == {"Europe": 3, "Oceania": 1, "Asia": 1, "Africa": 1,
                                      "South America": 1, "North America": 1}
    assert report["by_country"]["France"] == 3 and report["by_country"]["Japan"] == 1


def test_near_duplicates_removed(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    original = photo(folder / "orig.jpg", 5)
    photo(folder / "recompressed.jpg", 5, size=(92, 77), quality=40)  # same scene, re-encoded
    edited = ImageEnhance.Contrast(Image.open(original)).enhance(1.4)  # an edited copy
    edited.save(folder / "edited.jpg", quality=60)
    photo(folder / "other.jpg", 6)
    hashes = {n: imagehash.phash(Image.open(folder / n)) for n in ("orig.jpg", "edited.jpg")}
    bits = hashes["orig.jpg"] - hashes["edited.jpg"]
    assert 1 <= bits <= 6  # a near, not an exact, duplicate
    pool = write_pool(folder, [("orig.jpg", 10, 10), ("recompressed.jpg", -40, 120),
                               ("edited.jpg", 30, 60), ("other.jpg", 50, -100)])
    assert curate_cli(pool, tmp_path / "out", "-n", "4") == 0
    ids = {p.id for p in load_picks(tmp_path / "out" / "picks.csv")[0]}
    assert "other.jpg" in ids and len(ids) == 2  # one of the three copies survives
    skipped = json.loads((tmp_path / "out" / "coverage.json").read_text())["skipped_items"]
    assert len(skipped) == 2 and all(s["reason"].startswith("near-duplicate of") for s in skipped)
    # --hash-distance 0 removes only identical hashes: the edited copy stays.
    assert curate_cli(pool, tmp_path / "exact", "-n", "4", "--hash-distance", "0") == 0
    ids = {p.id for p in load_picks(tmp_path / "exact" / "picks.csv")[0]}
    assert "edited.jpg" in ids and len(ids) == 3


def test_bad_rows_and_photos_are_skipped_with_a_report(tmp_path, capsys):
    folder = tmp_path / "pool"
    folder.mkdir()
    photo(folder / "good1.jpg", 1)
    photo(folder / "good2.jpg", 2)
    photo(folder / "tiny.jpg", 3, size=(40, 30))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.jpg").write_bytes(b"")
    pool = write_pool(folder, [
        ("good1.jpg", 48.85, 2.35), ("good2.jpg", 35.68, 139.69), ("good2.jpg", 1.0, 1.0),
        ("tiny.jpg", -33.9, 151.2), ("corrupt.jpg", 40.4, -3.7), ("empty.jpg", 52.5, 13.4),
        ("nogps.jpg", "", ""), ("missing.jpg", 10.0, 10.0), ("badlat.jpg", 123.0, 10.0),
    ])
    assert curate_cli(pool, tmp_path / "out", "-n", "10") == 0
    picks = load_picks(tmp_path / "out" / "picks.csv")[0]
    assert sorted(p.id for p in picks) == ["good1.jpg", "good2.jpg"]
    report = json.loads((tmp_path / "out" / "coverage.json").read_text())
    reasons = {s["id"]: s["reason"] for s in report["skipped_items"]}
    assert set(reasons) == {"tiny.jpg", "corrupt.jpg", "empty.jpg"}
    assert reasons["tiny.jpg"].startswith("too small: 40x30")
    warnings = " ".join(report["warnings"])
    assert "duplicate" in warnings and "not found" in warnings and "coordinates" in warnings
    markdown = (tmp_path / "out" / "coverage.md").read_text()
    assert "| France | 1 |" in markdown and "tiny.jpg" in markdown
    assert "picked 2 of 10" in capsys.readouterr().out


def test_empty_pool_and_existing_outputs_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("image,lat,lon\n")
    assert curate_cli(empty, tmp_path / "out") == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "out" / "picks.csv").exists()

    pool = scattered_pool(tmp_path / "pool", 4)
    assert curate_cli(pool, tmp_path / "out", "-n", "2") == 0
    before = (tmp_path / "out" / "picks.csv").read_bytes()
    assert curate_cli(pool, tmp_path / "out", "-n", "3") == 2  # never overwrites silently
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "out" / "picks.csv").read_bytes() == before
    assert curate_cli(pool, tmp_path / "out", "-n", "3", "--force") == 0
    assert len(load_picks(tmp_path / "out" / "picks.csv")[0]) == 3


def test_map_picture_and_folder_pool(tmp_path):
    """A folder of photos with EXIF GPS works as a pool; the map is a real PNG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (lat, lon) in enumerate([(48.85, 2.35), (-22.9, -43.2), (64.1, -21.9)]):
        path = photo(folder / f"img{i}.jpg", 40 + i)
        image = Image.open(path)
        exif = Image.Exif()
        gps = exif.get_ifd(0x8825)
        gps.update({1: "N" if lat >= 0 else "S", 2: (abs(lat), 0.0, 0.0),
                    3: "E" if lon >= 0 else "W", 4: (abs(lon), 0.0, 0.0)})
        image.save(path, exif=exif, quality=90)
    photo(folder / "plain.jpg", 99)  # no GPS: reported, not picked
    assert curate_cli(folder, tmp_path / "out", "-n", "5") == 0
    report = json.loads((tmp_path / "out" / "coverage.json").read_text())
    assert report["picks"] == 3
    assert set(report["by_country"]) == {"France", "Brazil", "Iceland"}
    assert any("no EXIF GPS" in w for w in report["warnings"])
    with Image.open(tmp_path / "out" / "coverage.png") as picture:
        assert picture.format == "PNG" and picture.width >= 800


def test_curate_api_reports_duplicate_ids_and_bad_gps(tmp_path):
    """The library call on an in-memory pool (e.g. an already-read pick list)."""
    path = photo(tmp_path / "a.jpg", 1)
    pool = [Pick("a", str(path), 10.0, 10.0), Pick("a", str(path), 11.0, 11.0),
            Pick("b", str(photo(tmp_path / "b.jpg", 2)), float("nan"), 0.0)]
    result = curate(pool, CurateSettings(n=5, min_side=SIDE))
    assert [c.pick.id for c in result.chosen] == ["a"]
    assert result.skipped == [("a", "duplicate id (first row kept)"),
                              ("b", "no usable GPS (nan, 0.0)")]


def test_parallel_checks_give_the_same_picks(tmp_path):
    pool_csv = scattered_pool(tmp_path / "pool", 40, seed=3)
    pool, _ = load_picks(pool_csv)
    (tmp_path / "pool" / "p005.jpg").write_bytes(b"broken")  # a skip somewhere in the rounds
    for n in (20, 40):  # stopping early, and going through the whole pool
        settings = CurateSettings(n=n, seed=2, bands=3, sectors=4, min_side=SIDE)
        one = curate(pool, settings, workers=1)
        four = curate(pool, settings, workers=4)
        assert [c.pick.id for c in one.chosen] == [c.pick.id for c in four.chosen]
        assert one.skipped == four.skipped
    assert len(one.chosen) == 39 and [i for i, _ in one.skipped] == ["p005.jpg"]

"""One read per photo: `images.prepare_photo` gives from a file's bytes exactly what
`prepare_image` and `read_gps` give from its path, and the runner reads each new photo once."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from geolocsft import images
from geolocsft import families
from geolocsft.images import ImageError, default_budget
from geolocsft.locate import LocateRunner, find_photos
from geolocsft.store import ResultStore
from tests.fixtures.fake_engine import FakeEngine


def rotated_photo_with_gps(path, gps=(-33.8568, 151.2153)):
    pyexiv2 = pytest.importorskip("pyexiv2")
    from geolocsft.export_xmp import exif_gps_fields

    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: only a reader that honours the tag sees it upright
    Image.linear_gradient("L").resize((640, 400)).convert("RGB").save(
        path, format="JPEG", quality=92, exif=exif.tobytes())
    fields = {k: v for k, v in exif_gps_fields(*gps).items() if "ProcessingMethod" not in k}
    with pyexiv2.Image(str(path)) as image:
        image.modify_exif(fields)
    return path


@pytest.mark.parametrize("family", list(families.names()))
def test_same_pixels_and_gps_as_the_separate_reads(tmp_path, family):
    path = rotated_photo_with_gps(tmp_path / "p.jpg")
    budget = default_budget(family)
    pixels, gps = images.prepare_photo(path.read_bytes(), budget, str(path))
    expected = images.prepare_image(path, budget)
    assert pixels.size == expected.size and pixels.mode == "RGB"
    assert ImageChops.difference(pixels, expected).getbbox() is None  # identical pixels
    assert gps == images.read_gps(path) == pytest.approx((-33.8568, 151.2153), abs=1e-4)


def test_bad_bytes_name_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        images.prepare_photo(path.read_bytes(), default_budget("qwen2.5-vl"), str(path))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        images.read_photo_bytes(empty)
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        images.read_photo_bytes(tmp_path / "missing.jpg")


def test_the_runner_reads_a_new_photo_once_and_a_known_one_not_at_all(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    rotated_photo_with_gps(folder / "a.jpg")
    items, _ = find_photos([folder])
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith("a.jpg"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr("io.open", counting_open)
    with ResultStore(tmp_path / "s.sqlite") as store:
        runner = LocateRunner(FakeEngine(), store, places=False)
        prepared = runner._prepare(items[0])
        assert prepared.image is not None and prepared.truth is not None
        assert len(opened) == 1
        summary = runner.run(items)
        assert summary.results[0].truth_lat == pytest.approx(-33.8568, abs=1e-4)
        opened.clear()
        again = runner.run(items)  # in the store, hash cached by size and mtime: no read
        assert [o.action for o in again.outcomes] == ["skipped"] and opened == []

"""The workflow the app and `geolocsft locate` share: sampling default, exports recorded in the
store, sidecars and GPS copies, counts. Real files, real Exiv2, a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from geolocsft import workflow
from geolocsft.images import read_gps
from geolocsft.locate import PhotoItem, PhotoOutcome, RunSummary
from geolocsft.store import ResultStore, Status
from tests.test_export import result


def test_temperature_default_is_greedy_for_one_guess_and_sampled_for_several():
    assert workflow.default_temperature(None, 1) == 0.0
    assert workflow.default_temperature(None, 5) == workflow.DEFAULT_SAMPLED_TEMPERATURE == 0.7
    assert workflow.default_temperature(0.3, 5) == 0.3
    assert workflow.default_temperature(0.0, 5) == 0.0  # a chosen 0 is not "unset"


def test_exports_are_recorded_so_the_other_side_refreshes_them(tmp_path):
    out = tmp_path / "out"
    with ResultStore(tmp_path / "store.sqlite") as store:
        rows = [result(tmp_path / "a.jpg"), result(tmp_path / "b.jpg", lat=None, lon=None)]
        written = workflow.export_results(rows, out, store)
        assert sorted(p.name for p in written) == ["geolocsft.csv", "geolocsft.geojson",
                                                   "geolocsft.kml"]
        assert workflow.foreign_exports(store, out) == []  # ours, unchanged: no question
        (out / "geolocsft.csv").write_text("edited by hand\n")
        assert workflow.foreign_exports(store, out) == [out / "geolocsft.csv"]
    with ResultStore(tmp_path / "other.sqlite") as other:  # another store did not write them
        assert len(workflow.foreign_exports(other, out)) == 3


def test_located_photos_keep_their_place_below_the_folder(tmp_path):
    root = tmp_path / "photos"
    rows = [(root / "trip" / "a.jpg", result(root / "trip" / "a.jpg")),
            (root / "b.jpg", result(root / "b.jpg", lat=None, lon=None)),  # no point
            (root / "c.jpg", None),  # not run
            (tmp_path / "elsewhere.jpg", result(tmp_path / "elsewhere.jpg"))]
    located = workflow.located_photos(rows, root)
    assert [(item.photo.name, item.relative) for item in located] == [
        ("a.jpg", Path("trip/a.jpg")), ("elsewhere.jpg", Path("elsewhere.jpg"))]


def _photo(path: Path, gps=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (90, 140, 200)).save(path, format="JPEG")
    if gps:
        import pyexiv2

        from geolocsft.export_xmp import exif_gps_fields

        # A camera's fix: the GPS tags without geolocsft's processing-method mark.
        fields = {k: v for k, v in exif_gps_fields(*gps).items() if "ProcessingMethod" not in k}
        with pyexiv2.Image(str(path)) as image:
            image.modify_exif(fields)
    return path


def test_sidecars_skip_existing_ones_unless_told_and_count_what_they_did(tmp_path):
    pytest.importorskip("pyexiv2")
    a, b = _photo(tmp_path / "a.jpg"), _photo(tmp_path / "b.jpg")
    located = workflow.located_photos([(a, result(a)), (b, result(b, lat=10.0, lon=20.0))])
    (tmp_path / "b.jpg.xmp").write_text("not ours")
    assert workflow.existing_sidecars(located) == [tmp_path / "b.jpg.xmp"]
    outcomes = workflow.write_sidecars(located, skip_existing=True)
    assert [o.action for o in outcomes] == ["created", "skipped"]
    assert (tmp_path / "b.jpg.xmp").read_text() == "not ours"
    counts = workflow.tag_counts(outcomes, "xmp")
    assert counts == {"xmp created": 1, "xmp skipped": 1}
    assert workflow.format_counts(counts) == "1 xmp created, 1 xmp skipped"
    # The unreadable "sidecar" is reported per photo, never raised.
    again = workflow.write_sidecars(located, force=True)
    assert [o.action for o in again] == ["updated", "skipped"]
    assert "unreadable" in again[1].message


def test_gps_copies_keep_a_real_fix_and_leave_foreign_files_alone(tmp_path):
    pytest.importorskip("pyexiv2")
    root = tmp_path / "photos"
    plain = _photo(root / "trip" / "plain.jpg")
    fixed = _photo(root / "fixed.jpg", gps=(48.8584, 2.2945))
    located = workflow.located_photos([(plain, result(plain)), (fixed, result(fixed))], root)
    out = tmp_path / "copies"
    targets = workflow.gps_copy_targets(located, out)
    assert [t for _, t in targets] == [out / "trip" / "plain.jpg", out / "fixed.jpg"]
    (out / "fixed.jpg").parent.mkdir(parents=True, exist_ok=True)
    (out / "fixed.jpg").write_bytes(b"someone's file")
    foreign = workflow.foreign_files(targets)
    assert foreign == [out / "fixed.jpg"]
    outcomes = workflow.write_gps_copies(targets, skip=foreign)
    assert [o.action for o in outcomes] == ["created", "skipped"]
    assert read_gps(out / "trip" / "plain.jpg") == pytest.approx((-33.8688, 151.2093), abs=1e-4)
    assert (out / "fixed.jpg").read_bytes() == b"someone's file"
    assert read_gps(plain) is None  # the original is untouched
    # Replacing the foreign file still keeps the photo's own fix: the estimate never hides it.
    kept = workflow.write_gps_copies(targets[1:], replace_target=True)
    assert kept[0].action == "skipped" and "already has EXIF GPS" in kept[0].message


def test_run_counts_add_what_ran_now_and_what_came_from_the_store(tmp_path):
    item = PhotoItem(tmp_path / "x.jpg", tmp_path)
    summary = RunSummary(outcomes=[
        PhotoOutcome(item, "computed", result(tmp_path / "a.jpg")),
        PhotoOutcome(item, "computed", result(tmp_path / "b.jpg", lat=None, lon=None,
                                              status=Status.DONE)),
        PhotoOutcome(item, "skipped", result(tmp_path / "c.jpg")),
        PhotoOutcome(item, "error", result(tmp_path / "d.jpg", lat=None, lon=None,
                                           status=Status.ERROR)),
        PhotoOutcome(item, "cancelled", None, "cancelled"),
    ])
    counts = workflow.run_counts(summary)
    assert counts == {"photos": 4, "located": 2, "unparsed": 1, "errors": 1, "flagged": 0,
                      "computed": 2, "skipped": 1}

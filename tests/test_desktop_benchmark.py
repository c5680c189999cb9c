"""Benchmark mode of the desktop window over the real core: a generated Im2GPS3k-style set of
two photos run with the tiny GGUF model through `bench_run.run_benchmark`; the accuracy table
fills in live and ends equal to report.json; cancel stops the run, a rerun resumes from the
report folder's store; the window keeps turning its event loop. The screenshot of the mode goes
to artifacts/screenshots/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QTimer

from desktop.benchmark import REPORT_FILES, LiveBenchmark
from geolocsft.geo import THRESHOLDS_KM
from tests.test_desktop_window import make_photo, model_window, save_screenshot  # noqa: F401

TRUTHS = [(48.8584, 2.2945), (-33.8568, 151.2153)]


@pytest.fixture(scope="module")
def bench_set(tmp_path_factory) -> Path:
    """im2gps3k_places365.csv's columns (IMG_ID, AUTHOR, LAT, LON) over generated photos."""
    root = tmp_path_factory.mktemp("bench")
    images = root / "images"
    images.mkdir()
    lines = ["IMG_ID,AUTHOR,LAT,LON"]
    for i, (lat, lon) in enumerate(TRUTHS):
        make_photo(images / f"p{i}.jpg", 20 + i)
        lines.append(f"p{i}.jpg,someone,{lat},{lon}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def table_text(pane) -> list[list[str]]:
    return [[pane.table.item(r, c).text() for c in range(pane.table.columnCount())]
            for r in range(pane.table.rowCount())]


def test_form_says_what_is_missing_and_shows_published_numbers(qtbot, tmp_path):
    from desktop.benchmark import BenchmarkPane

    pane = BenchmarkPane()
    qtbot.addWidget(pane)
    pane.set_kind("im2gps3k")
    rows = table_text(pane)
    assert rows[0][0] == "this run (not started)"
    assert any(r[0].startswith("GeoLocSFT") and r[1:] == ["8.8", "32.7", "47.2", "65.8", "82.3"]
               for r in rows)
    with pytest.raises(ValueError, match="images folder"):
        pane.request("m")
    pane.images.setText(str(tmp_path))
    with pytest.raises(ValueError, match="im2gps3k needs its metadata CSV"):
        pane.request("m")
    pane.set_kind("exif")  # the photos carry their own GPS: no metadata file
    assert not pane.meta.isEnabled()
    request = pane.request("tiny")
    assert request.meta is None and request.out_dir.name == "exif-tiny"
    assert "no published numbers" in table_text(pane)[1][0]

    # The form comes back as it was (QSettings).
    from PySide6.QtCore import QSettings

    from desktop.settings import AppSettings

    ini = str(tmp_path / "settings.ini")
    AppSettings(QSettings(ini, QSettings.Format.IniFormat)).set_bench_form(pane.form_values())
    again = BenchmarkPane(form=AppSettings(QSettings(ini, QSettings.Format.IniFormat)).bench_form())
    qtbot.addWidget(again)
    assert again.kind_value() == "exif" and again.images.text() == str(tmp_path)
    assert not again.meta.isEnabled()


@pytest.mark.slow
def test_benchmark_fills_live_cancels_resumes_and_matches_report(model_window, qtbot, bench_set,
                                                                 tmp_path):
    win = model_window
    worker = win.thread.worker
    win.show_benchmark()
    pane = win.bench
    pane.set_kind("im2gps3k")
    pane.meta.setText(str(bench_set / "meta.csv"))
    pane.images.setText(str(bench_set / "images"))
    out = tmp_path / "report"
    pane.out_dir.setText(str(out))
    streamed, live_rows, cancelled_at = [], [], []
    worker.benchToken.connect(lambda path, piece: streamed.append(path))
    worker.benchOutcome.connect(lambda outcome: outcome.action == "cancelled"
                                and cancelled_at.append(time.perf_counter()))
    # The live table as the user sees it after each photo (on the GUI thread).
    pane.rowsChanged.connect(lambda: live_rows.append(table_text(pane)[0]))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)

    # First run: cancel (Esc's action) once the second photo is streaming.
    with qtbot.waitSignal(win.benchDone, timeout=120_000) as first:
        assert pane.run_button.isEnabled()
        assert win.start_benchmark()  # what the Run button does: the form's run
        assert win.running and pane.cancel_button.isEnabled()
        assert not win.locate_all_action.isEnabled() and not pane.run_button.isEnabled()
        qtbot.waitUntil(lambda: len(set(streamed)) >= 2, timeout=60_000)
        started = time.perf_counter()
        win.cancel_action.trigger()
        # The model stops within a token; the report of what ran is written after that.
        qtbot.waitUntil(lambda: bool(cancelled_at), timeout=5_000)
    assert cancelled_at[0] - started < 1.0
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)
    result = first.args[0]
    assert result.cancelled and result.computed == 1
    assert win.settings.bench_form()["meta"] == str(bench_set / "meta.csv")
    assert live_rows == [table_text(pane)[0]] and live_rows[0][0] == "this run (1/2 photos)"
    assert pane.live.finished == 1 and pane.curve.total == 1
    # The report scores the whole set, the unfinished photos as misses, and says so.
    report = json.loads((out / "report.json").read_text())
    assert report["scores"]["n"] == 2
    assert any(r[0] == "report (2 photos, unfinished = miss)" for r in table_text(pane))

    # An untrained model's guesses are noise, so every radius would read 0 %: move the first
    # photo's ground truth onto the guess it already has in the store, and the resumed run
    # must score it a hit at every radius (1 of 2).
    import csv

    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        first_row = next(r for r in csv.DictReader(fh) if r["pred_lat"])
    index = next(i for i in range(len(TRUTHS)) if first_row["id"].startswith(f"p{i}."))
    truths = list(TRUTHS)
    truths[index] = (float(first_row["pred_lat"]), float(first_row["pred_lon"]))
    lines = ["IMG_ID,AUTHOR,LAT,LON"] + [f"p{i}.jpg,someone,{lat!r},{lon!r}"
                                         for i, (lat, lon) in enumerate(truths)]
    (bench_set / "meta.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # A rerun into the same folder resumes (the photo already done comes from its store), and
    # only after the user agreed to rewrite the report there.
    assert not win.start_benchmark(pane.request(win.spec.name))
    assert "not replaced" in win.problems[-1]
    with qtbot.waitSignal(win.benchDone, timeout=120_000) as second:
        assert win.start_benchmark(confirm_replace=lambda existing: existing == out / "report.json")
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)
    timer.stop()
    result = second.args[0]
    assert not result.cancelled and (result.skipped, result.computed) == (1, 1)

    # The live table filled in photo by photo and ends where report.json does.
    assert [row[0] for row in live_rows[1:]] == [f"this run ({k}/2 photos)" for k in (1, 2)]
    report = json.loads((out / "report.json").read_text())
    acc = [report["scores"]["acc"][str(t)] for t in THRESHOLDS_KM]
    assert acc[0] >= 1 / 2  # the moved photo is a hit at every radius
    assert pane.table_values()["this run"] == pytest.approx(acc)
    assert table_text(pane)[0][1:] == [f"{100 * a:.1f}" for a in acc]
    assert [pane.curve.share_within(t) for t in THRESHOLDS_KM] == pytest.approx(acc)
    assert pane.curve.total == 2
    assert [c for p in sorted(pane.map.result_points) for c in p] == pytest.approx(
        [c for p in sorted(truths) for c in p])
    assert "GeoLocSFT (Gemma 3 27B, SFT)" in pane.table_values()
    assert not pane.report_view.pixmap().isNull()  # the report's two plots

    # The event loop kept turning through both runs.
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 2.0
    assert len(ticks) > (ticks[-1] - ticks[0]) / 0.02 / 4

    pane.tabs.setCurrentIndex(1)
    save_screenshot(win, "window-benchmark-map")
    pane.tabs.setCurrentIndex(0)
    save_screenshot(win, "window-benchmark")

    # Save the report elsewhere; never over existing files unasked.
    saved = win.benchmarks.save_report_to(tmp_path / "saved")
    assert [p.name for p in saved] == list(REPORT_FILES)
    assert json.loads(saved[1].read_text()) == report
    assert win.benchmarks.save_report_to(tmp_path / "saved", confirm_replace=lambda path: False) == []
    assert "not replaced" in win.problems[-1]


def test_live_rows_follow_the_samples_of_each_image(tmp_path):
    """Two samples naming one image both finish with it; a cancelled photo is not finished."""
    from geolocsft.datasets import Sample
    from geolocsft.locate import PhotoItem, PhotoOutcome

    image = tmp_path / "x.jpg"
    samples = [Sample("a", image, 10.0, 20.0), Sample("b", image, 11.0, 21.0),
               Sample("c", tmp_path / "y.jpg", 0.0, 0.0)]
    live = LiveBenchmark(samples)
    assert live.scores() is None
    assert live.add(PhotoOutcome(PhotoItem(tmp_path / "y.jpg", tmp_path), "cancelled", None)) == []
    rows = live.add(PhotoOutcome(PhotoItem(image, tmp_path), "error", None, "x.jpg: broken"))
    assert [r.id for r in rows] == ["a", "b"] and live.finished == 2
    scores = live.scores()
    assert scores.n == 2 and scores.parsed == 0 and scores.acc[2500] == 0.0

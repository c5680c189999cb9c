"""The desktop window over the real core: a folder of generated photos (EXIF orientation, GPS,
one broken file), lazy thumbnails, preview, results table, settings; and with the tiny GGUF
model: a run streams its reasoning, marks the map at the parsed answer, marks the bad photo's
row, keeps the event loop turning, cancels within a second and opens no network connection.
Screenshots of the main states go to artifacts/screenshots/ at 1280×800."""

from __future__ import annotations

import dataclasses
import hashlib

import time
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PIL import Image, TiffImagePlugin
from PySide6.QtCore import QMimeData, QPoint, QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication

from desktop.main_window import MainWindow
from desktop.results_model import RowStatus
from desktop.settings import AppSettings
from geolocsft.geo import to_dms

SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"


def save_screenshot(widget, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    QApplication.processEvents()
    widget.grab().save(str(path))
    return path


def open_and_wait(win, qtbot, folder: Path) -> None:
    """Open a folder and wait for its scan (a pool thread) to fill the window."""
    with qtbot.waitSignal(win.folderOpened, timeout=10_000):
        win.open_folder(folder)


def _rational(value):
    frac = Fraction(value).limit_denominator(10_000)
    return TiffImagePlugin.IFDRational(frac.numerator, frac.denominator)


def _gps(lat: float, lon: float) -> dict:
    return {1: "N" if lat >= 0 else "S", 2: (_rational(abs(lat)), _rational(0), _rational(0)),
            3: "E" if lon >= 0 else "W", 4: (_rational(abs(lon)), _rational(0), _rational(0))}


def make_photo(path: Path, seed: int, size=(320, 200), gps=None, orientation=None) -> Path:
    image = Image.new("RGB", size)
    pixels = image.load()
    for y in range(0, size[1]):
        for x in range(0, size[0]):
            pixels[x, y] = ((x * 255 // size[0] + seed * 50) % 256, (y * 255 // size[1]) % 256,
                            (seed * 97) % 256)
    exif = Image.Exif()
    if gps:
        exif.get_ifd(0x8825).update(_gps(*gps))
    if orientation:
        exif[0x0112] = orientation
    image.save(path, "JPEG", quality=88, exif=exif)
    return path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    make_photo(folder / "a_paris.jpg", 1, gps=(48.8584, 2.2945))
    make_photo(folder / "b_sydney.jpg", 2, gps=(-33.8568, 151.2153))
    # Stored landscape, EXIF says "rotate 90° CW": shown upright it is portrait.
    make_photo(folder / "c_rotated.jpg", 3, size=(320, 180), orientation=6)
    make_photo(folder / "d_plain.png", 4)
    (folder / "e_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return folder


@pytest.fixture
def settings(tmp_path) -> AppSettings:
    q = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    s = AppSettings(q)
    s.models_dir = str(tmp_path / "no-models")
    return s


@pytest.fixture
def window(qtbot, settings, tmp_path):
    win = MainWindow(settings=settings, store_path=tmp_path / "store" / "results.sqlite")
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()


GOOD = ["a_paris.jpg", "b_sydney.jpg", "c_rotated.jpg", "d_plain.png"]


def test_open_folder_thumbnails_preview_and_table(window, qtbot, photo_folder):
    assert "no models" in window.model_combo.currentText()
    assert not window.locate_action.isEnabled()
    with qtbot.waitSignal(window.folderOpened, timeout=10_000) as opened:
        window.open_folder(photo_folder)
        # The tree walk runs on a pool thread: its answer is queued to the GUI thread, so
        # nothing is filled in before the event loop turns.
        assert window.scanning == photo_folder and window.results.rows == []
    assert opened.args == [str(photo_folder)] and window.scanning is None
    assert [r.path.name for r in window.results.rows] == GOOD + ["e_broken.jpg"]
    # Thumbnails are decoded off the GUI thread as the view paints them.
    qtbot.waitUntil(lambda: window.thumbs.loaded_count == len(GOOD)
                    and len(window.thumbs.errors) == 1, timeout=10_000)
    assert "e_broken.jpg" in next(iter(window.thumbs.errors.values()))
    broken = window.results.row(photo_folder / "e_broken.jpg")
    assert broken.status == RowStatus.ERROR and "e_broken.jpg" in broken.message
    # The first photo is selected: preview and the EXIF ground truth on the map.
    qtbot.waitUntil(lambda: window.photos.preview_image is not None, timeout=10_000)
    assert window.map.truth == pytest.approx((48.8584, 2.2945), abs=1e-4)
    assert window.map.prediction is None
    window.map.wait_for_levels()  # the finer basemap levels are prepared in the background
    assert window.map.level == window.map.level_for_zoom(window.map.zoom)
    save_screenshot(window, "window-folder")

    # The rotated photo previews upright (portrait).
    window.select_photo(photo_folder / "c_rotated.jpg")
    qtbot.waitUntil(lambda: window.photos.preview_path.endswith("c_rotated.jpg")
                    and window.photos.preview_image is not None
                    and window.photos.preview_image.height() > window.photos.preview_image.width(),
                    timeout=10_000)
    icon = window.thumbs.icons[str(photo_folder / "c_rotated.jpg")]
    size = icon.availableSizes()[0]
    assert size.height() > size.width()

    # Filter and sort go through the proxy.
    window.filter_edit.setText("sydney")
    assert window.proxy.rowCount() == 1
    window.filter_edit.clear()
    window.status_filter.setCurrentText("Errors and no answer")
    assert window.proxy.rowCount() == 1
    window.status_filter.setCurrentText("All photos")
    window.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
    first = window.proxy.index(0, 0).data()
    assert first == "e_broken.jpg"


def test_drop_a_folder_recent_folders_and_settings_persist(window, qtbot, photo_folder, settings,
                                                           tmp_path):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo_folder))])
    drop = QDropEvent(QPoint(100, 100).toPointF(), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.folderOpened, timeout=10_000):
        window.dropEvent(drop)
    assert window.folder == photo_folder and len(window.results.rows) == 5
    assert window.recent_menu.actions()[0].text() == str(photo_folder)

    settings.samples = 3
    settings.threads = 2
    settings.sync()
    again = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    assert again.recent_folders[0] == str(photo_folder)
    assert (again.samples, again.threads) == (3, 2)
    assert again.engine_options().samples == 3
    assert "geolocsft" in window.about_text() and "Natural Earth" in window.about_text()


def test_settings_dialog_saves_what_the_user_set(qtbot, settings, tmp_path):
    from desktop.settings import SettingsDialog

    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.models_dir.setText(str(tmp_path / "my-models"))
    dialog.threads.setValue(3)
    dialog.image_tokens.setValue(640)
    dialog.samples.setValue(5)
    dialog.mbtiles.setText(str(tmp_path / "city.mbtiles"))
    dialog.apply()
    again = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    assert again.models_dir == str(tmp_path / "my-models")
    options = again.engine_options()
    assert (options.threads, options.image_max_tokens, options.samples) == (3, 640, 5)
    assert again.mbtiles == str(tmp_path / "city.mbtiles")


def test_a_missing_folder_is_reported_in_the_window(window, tmp_path):
    window.open_folder(tmp_path / "nope")
    assert window.problems and "nope: not a folder" in window.problems[-1]
    assert window.statusBar().currentMessage().endswith("not a folder")


# ------------------------------------------------------------------ runs with the tiny model

@pytest.fixture
def model_window(qtbot, tmp_path, tiny_qwen_folder, no_network):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-qwen").symlink_to(Path(tiny_qwen_folder), target_is_directory=True)
    q = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings = AppSettings(q)
    settings.models_dir = str(models)
    settings.threads = 1
    # Short string values: the untrained model fills each one to the cap, and the grammar then
    # leads it to a parseable answer (as in test_engine).
    win = MainWindow(settings=settings, store_path=tmp_path / "store" / "results.sqlite",
                     engine_kwargs={"max_tokens": 700, "n_ctx": 2048, "max_value_chars": 4})
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: win.spec is not None or bool(win.problems), timeout=60_000)
    assert win.spec is not None, win.problems
    yield win
    win.close()


@pytest.mark.slow
def test_run_streams_reasoning_marks_map_and_bad_row(model_window, qtbot, photo_folder):
    win = model_window
    assert "tiny-qwen" in win.model_combo.currentText() or win.model_combo.count() == 1
    open_and_wait(win, qtbot, photo_folder)
    pieces = []
    win.thread.worker.token.connect(lambda path, piece: pieces.append((path, piece)))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    paths = [str(photo_folder / n) for n in ("a_paris.jpg", "b_sydney.jpg", "e_broken.jpg")]
    followed = []  # (photo started, photo selected once the window handled it)
    win.thread.worker.photoStarted.connect(lambda path: followed.append((path, win.current_path())))
    plain_path = str(photo_folder / "d_plain.png")
    with qtbot.waitSignal(win.runDone, timeout=120_000) as finished:
        assert win.start_run(paths)
        assert win.cancel_action.isEnabled() and not win.locate_action.isEnabled()
        # While the first photo runs the user looks at another one: the window stops following.
        qtbot.waitUntil(lambda: any(p == paths[0] for p, _ in pieces), timeout=60_000)
        win.select_photo(plain_path)
    # The window's own (queued) handlers run after every outcome it was sent.
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)
    timer.stop()
    summary = finished.args[0]
    assert summary is not None and not summary.cancelled
    assert summary.count("computed") == 2 and summary.count("error") == 1
    # The event loop kept turning: the 20 ms timer fired all along the run (a GUI blocked by
    # the model would stall for a whole photo, ~10 s; 2 s leaves room for a loaded machine).
    run_s = ticks[-1] - ticks[0]
    assert len(ticks) > run_s / 0.02 / 4
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 2.0
    assert followed[0] == (paths[0], paths[0])  # followed while the user had not moved
    assert followed[1] == (paths[1], plain_path)  # then kept the user's choice
    assert win.current_path() == plain_path and win.reasoning.path == plain_path

    paris = win.results.row(photo_folder / "a_paris.jpg")
    assert paris.status == RowStatus.DONE and paris.result.has_point
    assert {p for p, _ in pieces} >= {paths[0], paths[1]}
    streamed = "".join(piece for p, piece in pieces if p == paths[0])
    assert streamed and paris.result.outputs[0]["text"] == streamed
    broken = win.results.row(photo_folder / "e_broken.jpg")
    assert broken.status == RowStatus.ERROR and "e_broken.jpg" in broken.message
    assert any("e_broken.jpg" in p for p in win.problems)

    # Select the Paris photo: the reasoning, the answer and the marker at the parsed point.
    win.select_photo(photo_folder / "b_sydney.jpg")
    win.select_photo(photo_folder / "a_paris.jpg")
    assert win.reasoning.plain_text() == streamed
    # Finished: the analysis reads as a report (when the model wrote one), raw text a click away.
    assert win.reasoning.showing_report() == bool(paris.result.analysis)
    result = paris.result
    assert win.map.prediction == (result.latitude, result.longitude)
    marker = win.map.overlay_items("prediction")[0]
    # (Web Mercator ends at ±85.05°: an untrained model's polar guess sits on that edge.)
    assert marker.scenePos() == win.map.scene_pos(result.latitude, result.longitude)
    if abs(result.latitude) < 85:
        assert win.map.lat_lon_at(marker.scenePos()) == pytest.approx(
            (result.latitude, result.longitude), abs=1e-6)
    assert win.answer.decimal.text() == f"{result.latitude:.6f}, {result.longitude:.6f}"
    assert win.answer.dms.text() == to_dms(result.latitude, result.longitude)
    assert win.map.truth == pytest.approx((48.8584, 2.2945), abs=1e-4)
    assert win.map.error_km == pytest.approx(result.truth_km, abs=0.01)
    assert win.map.result_points and (result.latitude, result.longitude) in win.map.result_points
    assert "image encode" in win.answer.timings.text()
    save_screenshot(win, "window-finished-photo")

    # Several guesses: the cloud and the geodesic confidence circle around the consensus.
    sampled = win.engine_options()
    sampled = type(sampled)(threads=sampled.threads, samples=2, temperature=0.8,
                            engine_kwargs=sampled.engine_kwargs)
    streamed: list[str] = []
    win.thread.worker.token.connect(lambda path, piece: streamed.append(piece))
    with qtbot.waitSignal(win.runDone, timeout=120_000):
        assert win.start_run([str(photo_folder / "d_plain.png")], sampled)
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)
    plain = win.results.row(photo_folder / "d_plain.png")
    assert plain.status == RowStatus.DONE and plain.result.samples == 2
    win.select_photo(photo_folder / "d_plain.png")
    # Each guess's text opens with its heading, live and once finished, and the same text.
    shown = win.reasoning.plain_text()
    assert shown.startswith("— guess 1 of 2 —\n") and "\n\n— guess 2 of 2 —\n" in shown
    assert "".join(streamed) == shown
    assert len(win.map.overlay_items("guesses")) == 2
    if plain.result.radius_km:
        assert win.map.overlay_items("circle")
    assert "guesses within" in win.answer.confidence.text()
    save_screenshot(win, "window-guesses")

    # Export writes the core's CSV/GeoJSON/KML, recorded in the store like the CLI's: its own
    # exports are refreshed without a question (and `locate` would refresh them too), a file
    # someone changed is never replaced unasked.
    from geolocsft import workflow

    out = photo_folder.parent / "export"
    written = win.exports.export_to(out)
    assert [p.suffix for p in written] == [".csv", ".geojson", ".kml"]
    assert "a_paris.jpg" in written[0].read_text()
    assert workflow.foreign_exports(win.store, out) == []
    assert win.exports.export_to(out, confirm_replace=lambda path: pytest.fail("ours")) == written
    written[0].write_text("edited by hand\n")
    assert win.exports.export_to(out, confirm_replace=lambda path: False) == []
    assert "not replaced" in win.problems[-1]
    assert written[0].read_text() == "edited by hand\n"

    # XMP sidecars from the app (as `locate --xmp`), read back with pyexiv2; an existing
    # sidecar is replaced only when the user says yes.
    import pyexiv2

    from geolocsft.export_xmp import parse_xmp_coordinate

    tags = win.exports.write_xmp_sidecars(confirm_replace=lambda existing: pytest.fail("nothing exists"))
    located = [r for r in win.results.rows if r.result is not None and r.result.has_point]
    assert sorted(t.path.name for t in tags) == sorted(f"{r.path.name}.xmp" for r in located)
    assert {t.action for t in tags} == {"created"}
    for row in located:
        xmp = pyexiv2.Image(str(row.path) + ".xmp").read_xmp()
        assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLatitude"]) == pytest.approx(
            row.result.latitude, abs=1e-5)
        assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLongitude"]) == pytest.approx(
            row.result.longitude, abs=1e-5)
    sidecar = Path(str(located[0].path) + ".xmp")
    before = sidecar.read_bytes()
    asked = []
    kept = win.exports.write_xmp_sidecars(confirm_replace=lambda existing: asked.append(existing) or False)
    assert len(asked[0]) == len(located) and {t.action for t in kept} == {"skipped"}
    assert sidecar.read_bytes() == before
    replaced = win.exports.write_xmp_sidecars(confirm_replace=lambda existing: True)
    assert {t.action for t in replaced} == {"updated"}

    # EXIF GPS into copies (as `locate --write-exif`): originals untouched, a photo's own GPS
    # kept, never into the photo folder, a file that is not ours replaced only when allowed.
    from geolocsft.images import read_gps

    originals = {row.path: row.path.read_bytes() for row in located}
    assert win.exports.write_exif_copies(photo_folder / "sub") == []
    assert "inside the photo folder" in win.problems[-1]
    copies = photo_folder.parent / "with-gps"
    copies.mkdir()
    victim = next(row.path.name for row in located if read_gps(row.path) is None)
    (copies / victim).write_bytes(b"someone else's file")
    asked = []
    tags = {t.path.name: t for t in win.exports.write_exif_copies(
        copies, confirm_replace=lambda existing: asked.append(existing) or False)}
    assert asked == [[copies / victim]]
    assert tags[victim].action == "skipped"
    assert (copies / victim).read_bytes() == b"someone else's file"
    for row in located:
        tag = tags[row.path.name]
        if read_gps(row.path) is not None:  # its own fix stays the truth
            assert tag.action == "skipped" and "already has EXIF GPS" in tag.message
        elif row.path.name != victim:
            assert tag.action == "created", tag
            assert read_gps(copies / row.path.name) == pytest.approx(
                (row.result.latitude, row.result.longitude), abs=1e-5)
        assert row.path.read_bytes() == originals[row.path]
    tags = {t.path.name: t for t in win.exports.write_exif_copies(
        copies, confirm_replace=lambda existing: True)}
    assert tags[victim].action == "created"
    row = next(r for r in located if r.path.name == victim)
    assert read_gps(copies / victim) == pytest.approx(
        (row.result.latitude, row.result.longitude), abs=1e-5)

    # A second run of the same photos comes from the store at once.
    with qtbot.waitSignal(win.runDone, timeout=60_000) as again:
        win.start_run(paths[:2])
    assert again.args[0].count("skipped") == 2
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)


def test_app_command_registers_without_importing_qt():
    import subprocess
    import sys

    code = ("import sys; from geolocsft.cli import build_parser; "
            "p = build_parser(); a = p.parse_args(['app', '/tmp/x']); "
            "print(a.folder, 'PySide6' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True).stdout
    assert out.split() == ["/tmp/x", "False"]


@pytest.mark.slow
def test_cancel_stops_within_a_second(model_window, qtbot, photo_folder, tmp_path):
    win = model_window
    many = tmp_path / "many"
    many.mkdir()
    for i in range(8):
        make_photo(many / f"p{i}.jpg", 10 + i)
    open_and_wait(win, qtbot, many)
    first_token = []
    win.thread.worker.token.connect(lambda path, piece: first_token.append(time.perf_counter()))
    win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier
                   | Qt.KeyboardModifier.ShiftModifier)  # Locate all
    assert win.running
    qtbot.waitUntil(lambda: bool(first_token), timeout=60_000)
    started = time.perf_counter()
    with qtbot.waitSignal(win.runDone, timeout=5_000) as finished:
        qtbot.keyClick(win, Qt.Key.Key_Escape)
    assert time.perf_counter() - started < 1.0
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)
    summary = finished.args[0]
    assert summary.cancelled and len(summary.outcomes) < 8
    assert not win.running and win.locate_all_action.isEnabled()
    assert any(r.status == RowStatus.CANCELLED for r in win.results.rows)


def test_the_app_shows_a_stores_results_for_the_chosen_model_at_once(qtbot, settings, tmp_path):
    """The demo's hand-over (`geolocsft app PHOTOS --store S --model M`): results the store has
    for that model fill the table and the map as soon as the folder opens, before (or without)
    the model loading; here the model's GGUF is not even real, and its failure is one line."""
    from geolocsft import protocol
    from geolocsft.images import default_budget
    from geolocsft.locate import LocateRunner, find_photos
    from geolocsft.manifest import Manifest, write_manifest
    from geolocsft.store import ResultStore
    from tests.fixtures.fake_engine import FakeEngine, answer_text, fake_spec

    folder = tmp_path / "photos"
    folder.mkdir()
    make_photo(folder / "a.jpg", 1)
    make_photo(folder / "b.jpg", 2)
    model = tmp_path / "demo-model"
    model.mkdir()
    (model / "model-Q8_0.gguf").write_bytes(b"not a real gguf")
    (model / "mmproj-f16.gguf").write_bytes(b"not a real projector")
    # The store is keyed by the model file as it is (hashed), as ModelSpec.from_folder does.
    spec = dataclasses.replace(fake_spec("demo"),
                               model_sha256=hashlib.sha256(b"not a real gguf").hexdigest())
    write_manifest(model, Manifest(
        name="demo-model", family="qwen2.5-vl", base_model="tiny", quant="Q8_0",
        model_file="model-Q8_0.gguf", mmproj_file="mmproj-f16.gguf",
        prompt_version=protocol.PROMPT_VERSION,
        image_budget=default_budget("qwen2.5-vl").to_dict(),
        files={"model-Q8_0.gguf": spec.model_sha256}))
    store_path = tmp_path / "report" / "results.sqlite"
    items, _ = find_photos([folder])
    replies = {0: [answer_text(-33.87, 151.21, "Sydney")], 1: [answer_text(35.68, 139.69)]}
    with ResultStore(store_path) as store:
        LocateRunner(FakeEngine(script=lambda n, image: replies[n], spec=spec), store,
                     places=False).run(items)

    win = MainWindow(settings=settings, store_path=store_path, model=model)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.folderOpened, timeout=10_000):
        win.open_folder(folder)
    rows = {row.path.name: row for row in win.results.rows}
    assert (rows["a.jpg"].result.latitude, rows["a.jpg"].result.longitude) == (-33.87, 151.21)
    assert rows["a.jpg"].status == RowStatus.DONE and rows["b.jpg"].result.latitude == 35.68
    assert sorted(win.map.result_points) == [(-33.87, 151.21), (35.68, 139.69)]
    assert win.settings.last_model == str(model.resolve())
    qtbot.waitUntil(lambda: win.model_label.text() == "model failed to load", timeout=10_000)
    assert any("demo-model" in p or "gguf" in p.lower() for p in win.problems)
    win.close()

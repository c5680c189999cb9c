"""`geolocsft --self-test [MODEL_FOLDER]`: prove an installed bundle works, with no display.

Offscreen, it exercises each native part the app needs: Pillow makes a photo, Exiv2 writes its
EXIF GPS (the ground truth) and the core reads it back, llama.cpp (llama + mtmd) loads the model
folder and geolocates the photo through `geolocsft.engine`, the offline place data names the
answer, the map widget draws the basemap with both points and the error line, and the main
window opens. Success prints one line starting "self-test ok" and exits 0; any failure prints
"self-test FAILED: <step>: <reason>" and exits 1. Nothing is written outside a temporary folder
(the window gets its own settings file and results store).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SUMMARY_OK = "self-test ok"
SUMMARY_FAILED = "self-test FAILED"
MAP_SIZE = (640, 400)


class SelfTestError(Exception):
    """One step failed; the message names the step and the reason."""


def _step(name: str, func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except SelfTestError:
        raise
    except Exception as exc:  # any failure becomes "<step>: <reason>", never a traceback storm
        raise SelfTestError(f"{name}: {type(exc).__name__}: {exc}") from exc


# The photo's ground truth (the Eiffel Tower): any real place works, the answer is not judged.
SELF_TEST_GPS = (48.8584, 2.2945)
_EXIF_ORIENTATION = 0x0112


def make_photo(folder: Path) -> tuple[Path, tuple[float, float]]:
    """A small JPEG stored turned, EXIF orientation 6 (as a phone held upright writes it), whose
    EXIF GPS is written with Exiv2, as a camera would."""
    import io

    import pyexiv2
    from PIL import Image, ImageDraw

    from geolocsft.export_xmp import exif_gps_fields

    upright = Image.new("RGB", (144, 176), (70, 130, 180))
    draw = ImageDraw.Draw(upright)
    for x in range(0, 144, 24):
        draw.rectangle((x, 0, x + 11, 175), fill=(245, 245, 235))
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6  # "rotate 90 CW to view": store it turned counter-clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=90,
                                                      exif=exif.tobytes())
    data = pyexiv2.ImageData(buffer.getvalue())
    try:
        data.modify_exif(exif_gps_fields(*SELF_TEST_GPS))
        payload = data.get_bytes()
    finally:
        data.close()
    path = folder / "self-test.jpg"
    path.write_bytes(payload)
    return path, SELF_TEST_GPS


def geolocate(model_folder: Path, photo: Path) -> dict:
    from geolocsft.engine import Engine, ModelSpec

    spec = ModelSpec.from_folder(model_folder)
    t0 = time.perf_counter()
    pieces: list[str] = []
    # A short cap on string values keeps even a random tiny test model's answer within
    # max_tokens; a trained model answers in far fewer tokens anyway. The photo is ~150 px, a
    # few dozen image tokens, so 2,048 tokens of context hold prompt, image and answer.
    with Engine(spec, max_tokens=700, n_ctx=2048, max_value_chars=4) as engine:
        load_s = time.perf_counter() - t0
        result = engine.locate(photo, on_token=pieces.append)
    if not pieces:
        raise SelfTestError("geolocate: no tokens were streamed")
    if result.point is None:
        reason = result.guesses[0].parsed.reason if result.guesses else "no output"
        raise SelfTestError(f"geolocate: the answer did not parse ({reason})")
    timings = result.timings
    return {"spec": spec, "point": result.point, "load_s": load_s, "tokens": len(pieces),
            "encode_s": timings.image_encode_s, "generate_s": timings.generate_s}


def draw_map(prediction: tuple[float, float], truth: tuple[float, float],
             screenshot: Path | None) -> dict:
    """Draw the basemap with the two points and the error line; check real pixels came out."""
    from PySide6.QtGui import QColor

    from desktop.map_view import LAND, OCEAN, MapView

    view = MapView(background=False)
    view.resize(*MAP_SIZE)
    view.show()
    view.set_prediction(*prediction)
    view.set_truth(*truth)
    view.fit_points([prediction, truth])
    image = view.grab().toImage()
    view.close()
    if image.isNull() or image.width() < 10:
        raise SelfTestError("map: the view rendered nothing")
    colours = {image.pixel(x, y) for x in range(0, image.width(), 8)
               for y in range(0, image.height(), 8)}
    land, ocean = QColor(LAND).rgb(), QColor(OCEAN).rgb()
    if len(colours) < 3 or not ({land, ocean} & colours):
        raise SelfTestError(f"map: no basemap drawn ({len(colours)} distinct colours)")
    if view.error_km is None:
        raise SelfTestError("map: no error line between prediction and truth")
    if screenshot is not None:
        image.save(str(screenshot))
    return {"error_km": view.error_km, "colours": len(colours),
            "items": len(view.basemap_items())}


def open_window(scratch: Path) -> float:
    """Seconds to build and show the main window (own settings file and store, no model)."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from desktop.main_window import MainWindow
    from desktop.settings import AppSettings

    settings = AppSettings(QSettings(str(scratch / "settings.ini"), QSettings.Format.IniFormat))
    empty_models = scratch / "models"
    empty_models.mkdir()
    settings.models_dir = str(empty_models)
    t0 = time.perf_counter()
    window = MainWindow(settings=settings, store_path=scratch / "results.sqlite")
    window.show()
    QApplication.processEvents()
    shown_s = time.perf_counter() - t0
    window.close()
    # Background jobs (map levels, thumbnails) finish before the window goes: a job that
    # signals a deleted view crashes the process under load.
    from PySide6.QtCore import QThreadPool

    for pool in window.findChildren(QThreadPool):
        pool.waitForDone(10_000)
    QApplication.processEvents()
    return shown_s


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), so start-up includes the bundle's
    loader and imports; None where unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def cpu_features() -> str:
    """llama.cpp's compiled CPU features (what the portable baseline promises)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    for part in info.split("CPU :")[1:2]:
        return " ".join(f.split("=")[0].strip() for f in part.split("|")
                        if f.strip().endswith("= 1"))
    return info.strip()


def run(model_folder: Path, screenshot: Path | None = None) -> str:
    """Run every step; returns the summary line or raises SelfTestError."""
    t_start = time.perf_counter()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise SelfTestError(f"model: {model_folder}: not a model folder")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    with tempfile.TemporaryDirectory(prefix="geolocsft-selftest-") as tmp:
        scratch = Path(tmp)
        # The window first: the process age then is the app's start-up time to its window.
        window_s = _step("window", open_window, scratch)
        started_s = process_age_s()
        photo, truth = _step("photo", make_photo, scratch)
        from geolocsft.images import read_gps

        read_back = _step("exif", read_gps, photo)
        if read_back is None or abs(read_back[0] - truth[0]) > 1e-4:
            raise SelfTestError(f"exif: GPS read back as {read_back}, expected {truth}")
        # Loading a model records its hash in the cache folder: keep that in the scratch
        # folder, so a self-test leaves nothing behind in the user's home.
        previous = os.environ.get("GEOLOCSFT_CACHE")
        os.environ["GEOLOCSFT_CACHE"] = str(scratch / "cache")
        try:
            found = _step("geolocate", geolocate, model_folder, photo)
        finally:
            if previous is None:
                os.environ.pop("GEOLOCSFT_CACHE", None)
            else:
                os.environ["GEOLOCSFT_CACHE"] = previous
        lat, lon = found["point"]
        from geolocsft import places

        place = _step("places", places.lookup, lat, lon)
        drawn = _step("map", draw_map, (lat, lon), truth, screenshot)
        features = _step("llama.cpp", cpu_features)
    spec = found["spec"]
    total_s = time.perf_counter() - t_start
    return "; ".join([
        f"{SUMMARY_OK}: model {spec.name} ({spec.family}) answered {lat:.4f}, {lon:.4f} "
        f"({place.label() or 'unnamed'}) {drawn['error_km']:.0f} km from the EXIF truth",
        f"{found['tokens']} tokens streamed, load {found['load_s']:.2f} s, image encode "
        f"{found['encode_s']:.2f} s, generate {found['generate_s']:.1f} s",
        f"map drawn ({drawn['items']} items)",
        f"window built in {window_s:.2f} s, shown {_seconds(started_s)} after process start",
        f"Qt {app.platformName()}",
        f"llama.cpp CPU: {features}",
        f"total {total_s:.1f} s",
    ])


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="geolocsft --self-test",
        description="Check offscreen that the app works: model, photo, map, window.")
    parser.add_argument("model", type=Path, nargs="?",
                        help="model folder (default: the first one in the models folder)")
    parser.add_argument("--screenshot", type=Path, help="save the drawn map as this PNG")
    args = parser.parse_args(argv)
    try:
        model = args.model or _first_model()
        print(run(model, args.screenshot), flush=True)
        return 0
    except SelfTestError as exc:
        print(f"{SUMMARY_FAILED}: {exc}", file=sys.stderr, flush=True)
        return 1


def _first_model() -> Path:
    from geolocsft.catalog import list_local, models_dir

    root = models_dir()
    installed, _problems = list_local(root)
    if not installed:
        raise SelfTestError(f"model: no model folder in {root} (give one as an argument)")
    return installed[0].folder


if __name__ == "__main__":
    sys.exit(main())

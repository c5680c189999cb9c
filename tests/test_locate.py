"""`geolocsft locate` end to end on the tiny Qwen2.5-VL GGUF: real engine, real store, real
exports; bad files, resume, SIGKILL, read-only folders, sidecars, no network."""

import csv
import ctypes
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from geolocsft.cli import main
from geolocsft.locate import PHOTO_SUFFIXES, PhotoItem, find_photos, format_eta
from tests.fixtures.images import png_header_only

# Tests that build or load a model are marked slow by tests/conftest.py (MODEL_FIXTURES).
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- photos

def photo(path: Path, seed: int, fmt: str = "JPEG", size=(64, 48)) -> Path:
    """A small photo with distinct content (distinct sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.effect_noise(size, 40 + seed).convert("RGB")
    img.putpixel((0, 0), (seed % 256, seed // 256 % 256, 7))
    img.save(path, fmt)
    return path


def with_gps(path: Path, lat: float, lon: float) -> Path:
    import pyexiv2

    data = pyexiv2.ImageData(path.read_bytes())
    data.modify_exif({
        "Exif.GPSInfo.GPSLatitudeRef": "N" if lat >= 0 else "S",
        "Exif.GPSInfo.GPSLatitude": f"{int(abs(lat) * 10000)}/10000 0/1 0/1",
        "Exif.GPSInfo.GPSLongitudeRef": "E" if lon >= 0 else "W",
        "Exif.GPSInfo.GPSLongitude": f"{int(abs(lon) * 10000)}/10000 0/1 0/1",
    })
    path.write_bytes(data.get_bytes())
    data.close()
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    """Good photos in every format (unicode and spaces in names, a subfolder) plus bad ones."""
    root = tmp_path / "photos ü"
    good = [
        with_gps(photo(root / "paris gps.jpg", 1), 48.8566, 2.3522),
        photo(root / "b.png", 2, "PNG"),
        photo(root / "sub dir/ç é.webp", 3, "WEBP"),
        photo(root / "sub dir/d.tiff", 4, "TIFF"),
    ]
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        good.append(photo(root / "e.heic", 5, "HEIF"))
    except ImportError:
        pass
    bad = {
        "zero.jpg": b"",
        "truncated.jpg": photo(tmp_path / "t.jpg", 6, size=(256, 256)).read_bytes()[:600],
        "notes.jpg": b"this is a text file, not a photo\n" * 10,
        "bomb.png": png_header_only(40_000, 40_000),
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    (root / "readme.txt").write_text("not picked up")
    (root / ".thumbnails").mkdir()
    photo(root / ".thumbnails/hidden.jpg", 9)
    return root, good, sorted(bad)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def model(tiny_qwen_folder):
    return str(tiny_qwen_folder)


# The tiny model has random weights: it streams text fast without a grammar (~90 tokens/s
# here) but under the answer grammar it fills the analysis strings for thousands of tokens
# before any answer. So runs here use --no-grammar and a few tokens (real engine, no answer),
# and the test that needs points seeds the store the way an earlier run would have.
FAST = ["--no-grammar", "--max-tokens", "8"]


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOCSFT_DATA", str(tmp_path / "userdata"))


# ---------------------------------------------------------------- no model needed

def test_find_photos_recursive_filtered_and_unique(tmp_path):
    root = tmp_path / "a b"
    for i, name in enumerate(["x.JPG", "y.jpeg", "z.Png", "w.webp", "v.tif", "u.HEIC", "skip.txt",
                              "sub/ü.jpg", ".hidden/no.jpg", ".dotfile.jpg"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    items, problems = find_photos([root, root / "x.JPG", tmp_path / "missing"])
    names = [item.path.name for item in items]
    assert names == ["u.HEIC", "v.tif", "w.webp", "x.JPG", "y.jpeg", "z.Png", "ü.jpg"]
    assert problems == [f"{tmp_path / 'missing'}: no such file or folder"]
    assert items[-1].relative == Path("sub/ü.jpg")
    assert {".heic", ".heif", ".tif", ".tiff", ".webp", ".png", ".jpg", ".jpeg"} <= PHOTO_SUFFIXES


def test_format_eta():
    assert format_eta(None) == "--:--"
    assert format_eta(65) == "01:05"
    assert format_eta(3725) == "1:02:05"


def test_cli_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    photo(tmp_path / "p.jpg", 1)
    assert main(["locate", str(tmp_path / "p.jpg")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["locate", str(tmp_path / "p.jpg"), "--model", "no-such-model"]) == 2
    assert "no-such-model: no such model folder" in capsys.readouterr().err
    assert main(["locate", str(tmp_path / "nothing-here")]) == 2
    assert "no photos found" in capsys.readouterr().err


# ---------------------------------------------------------------- the real thing

def test_locate_folder_end_to_end_offline(mixed_folder, model, tmp_path, capsys, no_network):
    root, good, bad = mixed_folder
    store = tmp_path / "store.sqlite"
    out = tmp_path / "out"
    args = ["locate", str(root), "--model", model, "--store", str(store), "--out", str(out), *FAST]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1  # some photos had errors, the batch went on
    for name in bad:  # one clear line per bad file, naming it
        assert sum(1 for line in err.splitlines() if name in line) == 1, (name, err)
    assert "decompression-bomb" in err and "empty file" in err

    rows = read_csv(out / "geolocsft.csv")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {p.name for p in good} | set(bad)
    for name in bad:
        assert by_name[name]["status"] == "error" and name in by_name[name]["error"]
    for p in good:  # every format, unicode and spaces in names, the subfolder
        row = by_name[p.name]
        assert row["status"] == "done", row
        # Random weights, 8 tokens: text but no answer, which is a result, not an error.
        assert row["parse_status"] in ("no_answer", "malformed", "empty"), row
        assert row["latitude"] == "" and row["flagged"] == ""
        assert int(row["generated_tokens"]) > 0 and float(row["image_encode_s"]) > 0
    assert float(by_name["paris gps.jpg"]["exif_lat"]) == pytest.approx(48.8566, abs=1e-4)
    geo = json.loads((out / "geolocsft.geojson").read_text(encoding="utf-8"))
    assert geo == {"type": "FeatureCollection", "features": []}
    assert ET.parse(out / "geolocsft.kml").getroot().tag.endswith("kml")

    db = sqlite3.connect(store)
    texts = [json.loads(r[0])[0]["text"] for r in db.execute(
        "SELECT outputs_json FROM results WHERE status='done'")]
    assert len(texts) == len(good) and all(texts)  # the raw output is kept
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()

    # Rerun: everything done is skipped, errors are retried (and fail again), and our own
    # untouched exports are refreshed.
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{len(good)} already in the store" in err
    assert len(read_csv(out / "geolocsft.csv")) == len(rows)
    # An export someone edited is theirs: refused before the model loads, unless --force.
    with open(out / "geolocsft.csv", "a", encoding="utf-8") as handle:
        handle.write("my note\n")
    assert main(args) == 2
    assert "geolocsft.csv exists and was not written by" in capsys.readouterr().err
    assert (out / "geolocsft.csv").read_text(encoding="utf-8").endswith("my note\n")
    assert main(args + ["--force"]) == 1
    assert len(read_csv(out / "geolocsft.csv")) == len(rows)


def test_several_samples_are_all_kept(tmp_path, model, capsys, no_network, monkeypatch):
    folder = tmp_path / "pics"
    photo(folder / "one.jpg", 11)
    out = tmp_path / "out"
    rc = main(["locate", str(folder), "--model", model, "--store", str(tmp_path / "s.sqlite"),
               "--out", str(out), "--samples", "2", "--temperature", "1.0", *FAST])
    assert rc == 0, capsys.readouterr().err
    row = read_csv(out / "geolocsft.csv")[0]
    assert row["samples"] == "2" and float(row["temperature"]) == 1.0
    db = sqlite3.connect(tmp_path / "s.sqlite")
    (outputs,) = db.execute("SELECT outputs_json FROM results").fetchone()
    assert len(json.loads(outputs)) == 2
    # Different samples/temperature is a different settings key: greedy is recomputed. The
    # model is named this time, and found in the models folder.
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-qwen").symlink_to(model)
    monkeypatch.setenv("GEOLOCSFT_MODELS", str(models))
    rc = main(["locate", str(folder), "--model", "tiny-qwen", "--store", str(tmp_path / "s.sqlite"),
               "--out", str(out), "--force", *FAST])
    assert rc == 0
    assert "0 already in the store" in capsys.readouterr().err
    assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2


def test_points_are_exported_tagged_and_flagged(tmp_path, tiny_qwen_folder, capsys):
    """Results with points (as a trained model's earlier run leaves them in the store) are
    exported, placed, flagged against EXIF GPS and written to XMP sidecars and EXIF copies."""
    pyexiv2 = pytest.importorskip("pyexiv2")
    from geolocsft import protocol
    from geolocsft.engine import Engine, Guess, LocateResult, ModelSpec, Timings
    from geolocsft.export_xmp import parse_xmp_coordinate
    from geolocsft.images import read_gps
    from geolocsft.locate import LocateRunner
    from geolocsft.store import ResultStore

    folder = tmp_path / "shots"
    paris = with_gps(photo(folder / "paris.jpg", 21), 48.8566, 2.3522)
    sydney = photo(folder / "sub/sydney ü.jpg", 22)
    originals = {p: p.read_bytes() for p in (paris, sydney)}
    store_path = tmp_path / "s.sqlite"
    answers = {paris: protocol.Answer(-33.8688, 151.2093, "NSW", "Australia", 0.4),
               sydney: protocol.Answer(-33.8688, 151.2093, "NSW", "Australia", 0.9)}
    with Engine(ModelSpec.from_folder(tiny_qwen_folder)) as engine, ResultStore(store_path) as store:
        runner = LocateRunner(engine, store)  # the CLI's defaults give the same settings key
        for path, answer in answers.items():
            text = protocol.format_target({"conclusion": "harbour"}, answer)
            located = LocateResult(guesses=[Guess(text, protocol.parse_output(text), Timings())])
            runner.store_result(PhotoItem(path, folder), located)

    out = tmp_path / "out"
    rc = main(["locate", str(folder), "--model", str(tiny_qwen_folder), "--store", str(store_path),
               "--out", str(out), "--xmp", "--write-exif"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "2 already in the store" in err
    assert "flagged 1 photos" in err
    rows = {Path(r["path"]).name: r for r in read_csv(out / "geolocsft.csv")}
    assert rows["paris.jpg"]["flagged"] == "yes" and float(rows["paris.jpg"]["exif_km"]) > 16000
    assert rows["sydney ü.jpg"]["flagged"] == ""
    assert rows["sydney ü.jpg"]["place_country"] == "Australia"
    assert rows["sydney ü.jpg"]["place"] == "Sydney, New South Wales"
    geo = json.loads((out / "geolocsft.geojson").read_text(encoding="utf-8"))
    assert [f["geometry"]["coordinates"] for f in geo["features"]] == [[151.2093, -33.8688]] * 2

    for path in (paris, sydney):
        xmp = pyexiv2.Image(str(path.with_name(path.name + ".xmp"))).read_xmp()
        assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLatitude"]) == pytest.approx(-33.8688, abs=1e-6)
        assert xmp["Xmp.photoshop.Country"] == "Australia"
        assert path.read_bytes() == originals[path]  # originals untouched
    copy = out / "with-gps" / "sub" / "sydney ü.jpg"
    assert read_gps(copy) == (pytest.approx(-33.8688, abs=1e-6), pytest.approx(151.2093, abs=1e-6))
    # The Paris photo has its own GPS: the copy is not given ours.
    assert "paris.jpg: exif skipped: photo already has EXIF GPS" in err
    assert read_gps(sydney) is None


KILL_SCRIPT = """
import sys
from geolocsft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_run_then_resume_each_photo_once(tmp_path, model):
    folder = tmp_path / "batch"
    photos = [photo(folder / f"p{i:02d}.jpg", 100 + i) for i in range(10)]
    store = tmp_path / "s.sqlite"
    args = [sys.executable, "-c", KILL_SCRIPT, "locate", str(folder), "--model", model,
            "--store", str(store), "--out", str(tmp_path / "out"), "--quiet",
            "--no-grammar", "--max-tokens", "24"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    db = sqlite3.connect(store, timeout=5)
                    done = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
                    db.close()
                except sqlite3.OperationalError:
                    done = 0  # table not created yet
            if done >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= done < len(photos), f"could not kill mid-run (done={done})"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already in the store" in rerun.stderr
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT photo_sha256, path, status FROM results").fetchall()
    db.close()
    assert sorted(Path(p).name for _, p, _ in rows) == [p.name for p in photos]
    assert len({sha for sha, _, _ in rows}) == len(photos)  # exactly once each
    assert all(status == "done" for _, _, status in rows)
    assert len(read_csv(tmp_path / "out" / "geolocsft.csv")) == len(photos)


def _drop_dac_override():
    """preexec_fn: root without CAP_DAC_OVERRIDE/READ_SEARCH/FOWNER obeys file modes, so a
    chmod-ed folder is really read-only for the child."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(77)


def test_read_only_folder_exports_go_to_the_user_folder(tmp_path, tiny_qwen_folder):
    from geolocsft import protocol
    from geolocsft.engine import Engine, Guess, LocateResult, ModelSpec, Timings
    from geolocsft.locate import LocateRunner
    from geolocsft.store import ResultStore

    folder = tmp_path / "readonly"
    computed = photo(folder / "r.jpg", 31)
    seeded = photo(folder / "s.jpg", 32)
    data_dir = tmp_path / "userdata"
    # s.jpg has a point from an earlier run (same settings as the command below), so the run
    # tries to write its sidecar into the read-only folder.
    with Engine(ModelSpec.from_folder(tiny_qwen_folder), grammar=False, max_tokens=8) as engine, \
            ResultStore(data_dir / "results.sqlite") as store:
        text = protocol.format_target({"conclusion": "x"}, protocol.Answer(45.0, 7.0))
        LocateRunner(engine, store).store_result(
            PhotoItem(seeded, folder),
            LocateResult(guesses=[Guess(text, protocol.parse_output(text), Timings())]))
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
               "GEOLOCSFT_DATA": str(data_dir)}
        args = [sys.executable, "-c", KILL_SCRIPT, "locate", str(folder), "--model",
                str(tiny_qwen_folder), "--quiet", "--xmp", *FAST]
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300,
                             preexec_fn=_drop_dac_override if os.geteuid() == 0 else None)
        if run.returncode == 77:
            pytest.skip("cannot drop root's file-permission override here")
        assert f"{folder} is read-only: writing exports to" in run.stderr, run.stderr
        exports = list((data_dir / "exports").glob("readonly-*/geolocsft.csv"))
        assert len(exports) == 1
        rows = {Path(r["path"]).name: r for r in read_csv(exports[0])}
        assert rows["r.jpg"]["status"] == "done" and float(rows["s.jpg"]["latitude"]) == 45.0
        # The sidecar cannot be written: one clear line naming it; the exit status says so.
        failed = [line for line in run.stderr.splitlines() if "s.jpg.xmp" in line]
        assert len(failed) == 1 and "xmp error: cannot write" in failed[0], failed
        assert failed[0].count("s.jpg.xmp") == 1
        assert run.returncode == 1
        assert sorted(p.name for p in folder.iterdir()) == ["r.jpg", "s.jpg"]  # nothing written
        assert computed.exists()
    finally:
        folder.chmod(stat.S_IRWXU)


def test_runner_streams_reports_progress_and_cancels(tmp_path, tiny_qwen_folder):
    """The library loop the desktop app drives: tokens per photo, progress with an ETA, and a
    cancel that stops mid-generation without storing the half-done photo."""
    import threading

    from geolocsft.engine import Engine, ModelSpec
    from geolocsft.locate import LocateRunner
    from geolocsft.store import ResultStore

    folder = tmp_path / "p"
    photos = [photo(folder / f"{i}.jpg", 200 + i) for i in range(3)]
    items, _ = find_photos([folder])
    progress, pieces, outcomes = [], {}, []
    cancel = threading.Event()

    def on_token(item, piece):
        pieces.setdefault(item.path.name, []).append(piece)
        if item.path == photos[1] and len(pieces[item.path.name]) == 3:
            cancel.set()  # as the app's Stop button does, mid-generation

    with Engine(ModelSpec.from_folder(tiny_qwen_folder), grammar=False, max_tokens=12) as engine, \
            ResultStore(tmp_path / "s.sqlite") as store:
        runner = LocateRunner(engine, store, on_token=on_token, cancel=cancel,
                              on_progress=lambda p: progress.append((p.processed, p.eta_s, p.current)),
                              on_outcome=outcomes.append)
        summary = runner.run(items)
        assert summary.cancelled
        assert [o.action for o in outcomes] == ["computed", "cancelled"]
        assert store.count() == 1  # the cancelled photo is not stored
        row = store.results()[0]
        assert row.outputs[0]["text"] == "".join(pieces["0.jpg"])  # streamed pieces = text
        assert progress[0] == (0, None, photos[0])
        assert any(eta is not None and eta > 0 for _, eta, _ in progress)  # 1 left after photo 0

        # Resume with a fresh cancel flag: photo 0 is skipped, 1 and 2 are computed.
        runner.cancel = threading.Event()
        outcomes.clear()
        summary = runner.run(items)
        assert [o.action for o in outcomes] == ["skipped", "computed", "computed"]
        assert not summary.cancelled and store.count() == 3

        # A renamed photo is recognised by content: skipped, reported under its new path.
        moved = photos[2].rename(folder / "renamed ü.jpg")
        outcomes.clear()
        runner.run(find_photos([folder])[0])
        assert [o.action for o in outcomes] == ["skipped"] * 3
        assert str(moved) in {o.result.path for o in outcomes}
        assert str(moved) in {r.path for r in store.results()} and store.count() == 3


def test_ctrl_c_stops_cleanly_and_exports_what_is_done(tmp_path, model):
    folder = tmp_path / "batch"
    for i in range(8):
        photo(folder / f"p{i}.jpg", 300 + i)
    store = tmp_path / "s.sqlite"
    args = [sys.executable, "-c", KILL_SCRIPT, "locate", str(folder), "--model", model,
            "--store", str(store), "--out", str(tmp_path / "out"), "--quiet",
            "--no-grammar", "--max-tokens", "24"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            db = sqlite3.connect(store, timeout=5)
            if db.execute("SELECT COUNT(*) FROM results").fetchone()[0] >= 1:
                db.close()
                break
            db.close()
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled; rerun the same command to continue" in err
    rows = read_csv(tmp_path / "out" / "geolocsft.csv")
    assert 1 <= len(rows) < 8 and all(r["status"] == "done" for r in rows)


def test_truncated_gguf_is_one_clear_line(tmp_path, tiny_qwen_folder, capsys):
    gguf = next(tiny_qwen_folder.glob("model-*.gguf"))
    mmproj = next(tiny_qwen_folder.glob("mmproj-*.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf.read_bytes()[:100_000])
    photo(tmp_path / "p" / "a.jpg", 1)
    rc = main(["locate", str(tmp_path / "p"), "--gguf", str(broken), "--mmproj", str(mmproj),
               "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "broken.gguf" in err[0]


def test_progress_bar_line_and_quiet_when_not_a_tty():
    import io

    from geolocsft.locate import Progress
    from geolocsft.locate_cli import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(stream, enabled=True)
    bar.update(Progress(total=10, processed=3, computed=3, current=Path("/x/ü photo.jpg"),
                        eta_s=65.0, s_per_photo=9.3))
    line = stream.getvalue()
    assert line.startswith("\r[#######") and "3/10" in line and "ETA 01:05" in line
    assert "9.3 s/photo" in line and "ü photo.jpg" in line
    bar.clear()
    assert stream.getvalue().endswith("\r")
    silent = io.StringIO()
    ProgressBar(silent, enabled=False).update(Progress(total=1))
    assert silent.getvalue() == ""


def test_consensus_of_several_guesses_fills_the_row():
    """fill_from_locate on the engine's own result types, parsed by the real protocol parser:
    the point is the consensus (medoid), its fields are that guess's, timings are summed."""
    from geolocsft import geo, protocol
    from geolocsft.engine import Guess, LocateResult, Timings
    from geolocsft.locate import fill_from_locate
    from geolocsft.store import PhotoResult

    answers = [protocol.Answer(48.85, 2.35, "Paris", "France", 0.5),
               protocol.Answer(48.80, 2.30, "Île-de-France", "France", 0.7),
               protocol.Answer(35.68, 139.69, "Tokyo", "Japan", 0.1)]
    guesses = []
    for i, answer in enumerate(answers):
        text = protocol.format_target({"conclusion": answer.region}, answer)
        guesses.append(Guess(text, protocol.parse_output(text),
                             Timings(generate_s=2.0, generated_tokens=50, image_encode_s=0.5 * (i == 0))))
    guesses.append(Guess("no answer here", protocol.parse_output("no answer here"), Timings()))
    consensus = geo.consensus([(a.latitude, a.longitude) for a in answers])
    located = LocateResult(guesses=guesses, consensus=consensus)
    row = PhotoResult(photo_sha256="a", model_sha256="b", prompt_version="gls-v1",
                      settings_hash="c", path="/p.jpg", samples=4, temperature=0.7)
    fill_from_locate(row, located)
    medoid = answers[consensus.index]
    assert consensus.index == 0  # Paris: 6 km from the other Paris guess, far from Tokyo
    assert (row.latitude, row.longitude) == (medoid.latitude, medoid.longitude)
    assert (row.consensus_lat, row.consensus_lon) == (medoid.latitude, medoid.longitude)
    assert row.radius_km == pytest.approx(consensus.radius_km, abs=1e-3) and row.radius_km > 5
    assert located.best is guesses[0] and located.point == (medoid.latitude, medoid.longitude)
    assert row.region == medoid.region and row.confidence == medoid.confidence
    assert row.parse_status == "ok"
    assert len(row.outputs) == 4 and row.outputs[3]["status"] == "no_answer"
    assert row.generated_tokens == 150 and row.generate_s == 6.0 and row.tokens_per_s == 25.0
    assert row.image_encode_s == 0.5

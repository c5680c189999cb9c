"""Hostile photo folders (issue 14): planted symlinks and files under the names we write to,
FIFOs and sockets named like photos, our own outputs in the scanned folder, in-place writes,
file names that are not UTF-8, decoder warnings. Each test builds the hostile case itself."""

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from geolocsft.fsutil import atomic_write, create_temp_dir, folder_is_writable
from geolocsft.locate import LocateRunner, PhotoItem, find_photos
from geolocsft.store import PhotoResult, ResultStore

REPO = Path(__file__).resolve().parent.parent


def photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.effect_noise((48, 32), 40 + seed).convert("RGB")
    img.putpixel((0, 0), (seed % 256, 1, 7))
    img.save(path, "JPEG")
    return path


def plant_links(folder: Path, names: list[str], victim: Path, pids) -> list[Path]:
    """Symlinks under every temp/probe name the old code would have used, for a range of pids,
    all pointing at `victim`."""
    planted = []
    for pid in pids:
        for name in names:
            for n in range(8):
                link = folder / f"{name}.tmp-{pid}-{n}"
                if not os.path.lexists(link):
                    link.symlink_to(victim)
                    planted.append(link)
        for probe in (folder / f".geolocsft-probe-{pid}", folder / f".{names[0]}.tmp-{pid}"):
            if not os.path.lexists(probe):
                probe.symlink_to(victim)
                planted.append(probe)
    return planted


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOCSFT_DATA", str(tmp_path / "userdata"))


# ---------------------------------------------------------------- temp files and probes

def test_planted_links_never_redirect_atomic_writes_or_probes(tmp_path):
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"keep me")
    folder = tmp_path / "share"
    folder.mkdir()
    pids = range(os.getpid() - 3, os.getpid() + 4)
    plant_links(folder, ["out.csv", "geolocsft-probe"], victim, pids)
    # An existing regular file at a guessable temp name is left alone too.
    decoy = folder / f"out.csv.tmp-{os.getpid()}-99"
    decoy.write_bytes(b"someone's file")
    for _ in range(20):
        atomic_write(folder / "out.csv", b"new export")
        assert folder_is_writable(folder)
    assert (folder / "out.csv").read_bytes() == b"new export"
    assert not (folder / "out.csv").is_symlink()
    assert victim.read_bytes() == b"keep me"
    assert decoy.read_bytes() == b"someone's file"
    # A symlink at the target itself is replaced by the file, not written through.
    link_target = folder / "linked.csv"
    link_target.symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic_write(link_target, b"x", force=False)
    atomic_write(link_target, b"ours")
    assert not link_target.is_symlink() and link_target.read_bytes() == b"ours"
    assert victim.read_bytes() == b"keep me"
    # New files keep the usual mode (umask), not mkstemp's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "out.csv").stat().st_mode & 0o777 == 0o666 & ~umask
    staging = create_temp_dir(folder, "model")
    assert staging.is_dir() and not staging.is_symlink() and staging.name.startswith(".model.")
    assert staging.stat().st_mode & 0o777 == 0o777 & ~umask


def test_locate_with_exports_and_xmp_ignores_planted_links(tmp_path, tiny_qwen_folder, capsys):
    """The whole `locate --xmp --write-exif` run in a folder full of planted temp-name links:
    every link target stays byte-identical, the exports are real files, and a rerun does not
    take our own EXIF-GPS copies or exports for photos."""
    pytest.importorskip("pyexiv2")
    from geolocsft import protocol
    from geolocsft.cli import main
    from geolocsft.engine import Engine, Guess, LocateResult, ModelSpec, Timings

    victims = {}
    for name in ("a", "b"):
        victims[name] = tmp_path / "victims" / f"{name}.bin"
        victims[name].parent.mkdir(exist_ok=True)
        victims[name].write_bytes(os.urandom(64))
    originals = {p: p.read_bytes() for p in victims.values()}
    folder = tmp_path / "shots"
    shots = [photo(folder / "one.jpg", 1), photo(folder / "sub" / "two.jpg", 2)]
    out = folder / "geolocsft-results"  # the default export folder, inside the photo folder
    out.mkdir()
    pids = range(os.getpid() - 2, os.getpid() + 3)
    plant_links(out, ["geolocsft.csv", "geolocsft.geojson", "geolocsft.kml"], victims["a"], pids)
    for shot in shots:
        plant_links(shot.parent, [shot.name + ".xmp", shot.name], victims["b"], pids)
    (out / "with-gps" / "sub").mkdir(parents=True)
    plant_links(out / "with-gps", ["one.jpg"], victims["a"], pids)
    plant_links(out / "with-gps" / "sub", ["two.jpg"], victims["b"], pids)

    store_path = tmp_path / "s.sqlite"
    with Engine(ModelSpec.from_folder(tiny_qwen_folder)) as engine, ResultStore(store_path) as store:
        runner = LocateRunner(engine, store)
        for shot in shots:
            answer = protocol.Answer(-33.8688, 151.2093, "NSW", "Australia", 0.5)
            text = protocol.format_target({"conclusion": "harbour"}, answer)
            runner.store_result(PhotoItem(shot, folder),
                                LocateResult(guesses=[Guess(text, protocol.parse_output(text), Timings())]))
    args = ["locate", str(folder), "--model", str(tiny_qwen_folder), "--store", str(store_path),
            "--xmp", "--write-exif"]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "located 2 of 2 photos" in err
    for victim, data in originals.items():
        assert victim.read_bytes() == data
    for export in ("geolocsft.csv", "geolocsft.geojson", "geolocsft.kml"):
        assert (out / export).is_file() and not (out / export).is_symlink()
    assert (folder / "one.jpg.xmp").is_file() and not (folder / "one.jpg.xmp").is_symlink()
    assert (out / "with-gps" / "sub" / "two.jpg").is_file()
    # Rerun: the copies under the export folder are ours, never input ("of 2", not "of 4").
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "located 2 of 2 photos" in err and "2 already in the store" in err
    for victim, data in originals.items():
        assert victim.read_bytes() == data


# ---------------------------------------------------------------- only regular files

def test_fifos_sockets_devices_and_broken_links_are_skipped_with_one_line(tmp_path):
    folder = tmp_path / "seized"
    photo(folder / "real.jpg", 3)
    os.mkfifo(folder / "x.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "s.png"))
    (folder / "dev.jpg").symlink_to("/dev/zero")
    (folder / "gone.jpg").symlink_to(folder / "missing.jpg")
    (folder / "ok link.jpg").symlink_to(folder / "real.jpg")  # same photo: listed once
    os.mkfifo(tmp_path / "named.jpg")

    found: list = []
    worker = threading.Thread(target=lambda: found.append(
        find_photos([folder, tmp_path / "named.jpg"])), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the scan blocked on a FIFO"
    items, problems = found[0]
    sock.close()
    assert [i.path.name for i in items] == ["ok link.jpg"]
    by_name = {Path(p.split(": ")[0]).name: p for p in problems}
    assert set(by_name) == {"x.jpg", "s.png", "dev.jpg", "gone.jpg", "named.jpg"}
    assert "a FIFO, not a regular file; skipped" in by_name["x.jpg"]
    assert "a socket" in by_name["s.png"]
    assert "a device" in by_name["dev.jpg"]
    assert "broken symlink" in by_name["gone.jpg"]
    assert all("\n" not in p for p in problems)


def test_reading_a_fifo_as_a_photo_fails_at_once(tmp_path):
    from geolocsft.images import ImageError, open_image, read_gps

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    for reader in (open_image, read_gps):
        with pytest.raises(ImageError, match="x.jpg: a FIFO, not a regular file"):
            reader(fifo)


class _FakeSpec:
    name, model_sha256, prompt_version = "fake", "f" * 64, "v1"

    @property
    def budget(self):
        from geolocsft.images import default_budget

        return default_budget("qwen2.5-vl")


class _FakeEngine:
    """The other side of the runner's interface: answers at once with a fixed point."""

    spec = _FakeSpec()

    def settings(self, **kwargs):
        return dict(kwargs)

    def locate(self, image, **kwargs):
        from geolocsft import protocol
        from geolocsft.engine import Guess, LocateResult, Timings

        text = protocol.format_target({"conclusion": "x"},
                                      protocol.Answer(10.0, 20.0, "R", "C", 0.5))
        return LocateResult(guesses=[Guess(text, protocol.parse_output(text), Timings())])


def test_cancel_stops_a_run_within_a_second_while_a_photo_blocks(tmp_path):
    """A photo whose reading never returns (here a FIFO that slipped past the scan) must not
    hold the run: Cancel returns within 1 s."""
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    cancel = threading.Event()
    with ResultStore(tmp_path / "s.sqlite") as store:
        runner = LocateRunner(_FakeEngine(), store, cancel=cancel, places=False)
        threading.Timer(0.3, cancel.set).start()
        began = time.monotonic()
        summary = runner.run([PhotoItem(fifo, tmp_path)])
        took = time.monotonic() - began
        assert summary.cancelled and took < 1.3, took
    with open(fifo, "wb"):  # let the reader thread finish (EOF) so the process can exit
        pass


# ---------------------------------------------------------------- our own outputs

def test_own_outputs_are_not_scanned(tmp_path):
    folder = tmp_path / "pics"
    photo(folder / "a.jpg", 4)
    photo(folder / "geolocsft-results" / "with-gps" / "a.jpg", 4)
    photo(folder / "exports" / "with-gps" / "b.jpg", 5)
    photo(folder / "exports" / "c.jpg", 6)
    items, _ = find_photos([folder], exclude=[folder / "exports"])
    assert [i.path.name for i in items] == ["a.jpg"]
    # The folder given as input is never excluded from itself.
    items, _ = find_photos([folder / "exports"], exclude=[folder / "exports"])
    assert sorted(i.path.name for i in items) == ["b.jpg", "c.jpg"]


def _result_for(path: Path) -> PhotoResult:
    return PhotoResult("a" * 64, "b" * 64, "v1", "s", str(path), latitude=-33.5, longitude=151.0,
                       model_name="m\x07odel")


def test_exif_target_that_is_the_source_is_refused_without_in_place(tmp_path):
    pytest.importorskip("pyexiv2")
    from geolocsft.export_xmp import write_exif_gps

    src = photo(tmp_path / "p" / "a.jpg", 7)
    before = src.read_bytes()
    alias = tmp_path / "out" / "a.jpg"
    alias.parent.mkdir()
    alias.symlink_to(src)
    hard = tmp_path / "out" / "hard.jpg"
    os.link(src, hard)
    for target in (alias, hard):
        outcome = write_exif_gps(src, target, _result_for(src), force=True)
        assert outcome.action == "error" and "source photo" in outcome.message
    assert src.read_bytes() == before


def test_in_place_keeps_mode_and_xattrs_and_writes_through_a_symlink(tmp_path):
    pytest.importorskip("pyexiv2")
    from geolocsft.export_xmp import write_exif_gps
    from geolocsft.images import read_gps

    real = photo(tmp_path / "store" / "real.jpg", 8)
    os.chmod(real, 0o640)
    try:
        os.setxattr(real, "user.geolocsft.test", b"tag")
    except OSError:
        pytest.skip("this file system has no user xattrs")
    link = tmp_path / "album" / "link.jpg"
    link.parent.mkdir()
    link.symlink_to(real)
    outcome = write_exif_gps(link, link, _result_for(link), in_place=True)
    assert outcome.action == "updated", outcome
    assert link.is_symlink() and os.readlink(link) == str(real)  # still a link
    assert read_gps(real) == (pytest.approx(-33.5, abs=1e-6), pytest.approx(151.0, abs=1e-6))
    assert real.stat().st_mode & 0o777 == 0o640
    assert os.getxattr(real, "user.geolocsft.test") == b"tag"
    assert [p.name for p in real.parent.iterdir()] == ["real.jpg"]  # no temp left


# ---------------------------------------------------------------- names and text

def test_non_utf8_file_names_are_processed_stored_and_exported(tmp_path):
    from geolocsft.export import write_exports

    folder = tmp_path / "card"
    folder.mkdir()
    raw_name = os.fsencode(folder) + b"/caf\xe9 \xff.jpg"
    photo(Path(os.fsdecode(raw_name)), 9)
    items, problems = find_photos([folder])
    assert problems == [] and len(items) == 1
    with ResultStore(tmp_path / "s.sqlite") as store:
        summary = LocateRunner(_FakeEngine(), store, places=False).run(items)
        assert [o.action for o in summary.outcomes] == ["computed"], summary.outcomes
        stored = store.results()
        assert os.fsencode(stored[0].path) == raw_name  # lossless round trip
        # A rerun recognises it (hash cache keyed by the same path).
        assert LocateRunner(_FakeEngine(), store, places=False).run(items).count("skipped") == 1
    paths = write_exports(stored, tmp_path / "out")
    with open(paths[0], encoding="utf-8", newline="") as handle:  # valid UTF-8
        row = next(csv.DictReader(handle))
    assert row["path"].endswith("caf\\xe9 \\xff.jpg")
    json.loads(paths[1].read_text(encoding="utf-8"))
    import xml.etree.ElementTree as ET

    ET.parse(paths[2])  # the KML parses: control characters in the model name are gone


def test_csv_formula_guard_and_xml_invalid_characters(tmp_path):
    from geolocsft.export import write_exports
    from geolocsft.report import PredictionRow, predictions_csv
    from geolocsft.textsafe import csv_safe, xml_text

    assert csv_safe("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert csv_safe("-33.5") == "-33.5" and csv_safe(-33.5) == -33.5
    assert csv_safe("@SUM(A1)") == "'@SUM(A1)" and csv_safe("plain") == "plain"
    assert xml_text("a\x00b\x1bc\ufffed\te") == "abcd\te"
    bad = PhotoResult("a" * 64, "b" * 64, "v1", "s", str(tmp_path / "=cmd.jpg"), latitude=1.0,
                      longitude=2.0, region="+1+cmd|' /C calc'!A0", country="C\x0bountry",
                      model_name="evil\x00model")
    paths = write_exports([bad], tmp_path / "out")
    row = next(csv.DictReader(open(paths[0], encoding="utf-8", newline="")))
    assert row["model_region"].startswith("'+")
    import xml.etree.ElementTree as ET

    ET.parse(paths[2])
    text = predictions_csv([PredictionRow("=1+1", -1.0, 2.0, 3.0, 4.0, "ok", raw="=WEBSERVICE()")])
    line = text.splitlines()[1]
    assert line.startswith("'=1+1,-1.0,2.0") and "'=WEBSERVICE()" in line


def test_decoder_warnings_do_not_reach_the_terminal(tmp_path):
    """A JPEG whose EXIF claims more bytes than it has: Pillow warns ("Tag data larger
    than file") on stderr unless we keep it quiet; the pixels still decode."""
    exif = (b"II*\x00\x08\x00\x00\x00" + b"\x01\x00"
            + b"\x0e\x01\x02\x00" + (1000).to_bytes(4, "little") + (26).to_bytes(4, "little")
            + b"\x00\x00\x00\x00")
    path = tmp_path / "odd.jpg"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path, exif=b"Exif\x00\x00" + exif)
    script = ("import sys; from geolocsft.images import open_image, read_gps;"
              "img = open_image(sys.argv[1]); read_gps(sys.argv[1]);"
              "from PIL import Image; Image.open(sys.argv[1]).getexif(); print(img.size)")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(16, 16)"
    assert done.stderr == ""
    # Without our filter the same reads do warn (so the test checks something real).
    plain = subprocess.run([sys.executable, "-c",
                            "import sys; from PIL import Image; Image.open(sys.argv[1]).getexif()",
                            str(path)], capture_output=True, text=True)
    assert "Skipping tag" in plain.stderr

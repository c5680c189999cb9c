"""`geolocsft bench run` on the tiny GGUF: report folder, resume after an interruption,
predictions that `bench score` reads back to the same numbers, and `bench compare`."""

from __future__ import annotations

import csv
import json
import threading

import pytest
from geographiclib.geodesic import Geodesic
from PIL import Image

from geolocsft import bench_run
from geolocsft.cli import main
from geolocsft.datasets import read_csv
from geolocsft.engine import Engine, ModelSpec

# Tests that build or load a model are marked slow by tests/conftest.py (MODEL_FIXTURES).

TRUTH = [("paris", 48.8566, 2.3522), ("tokyo", 35.6762, 139.6503), ("lima", -12.0464, -77.0428),
         ("nairobi", -1.2921, 36.8219), ("oslo", 59.9139, 10.7522)]


@pytest.fixture
def bench_set(tmp_path):
    images = tmp_path / "bench photos"
    images.mkdir()
    for i, (name, _, _) in enumerate(TRUTH):
        Image.new("RGB", (96 + 8 * i, 80), (40 * i, 200 - 30 * i, 90)).save(images / f"{name}.jpg")
    meta = tmp_path / "meta.csv"
    with open(meta, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["IMG_ID", "LAT", "LON"])
        writer.writerows([(f"{name}.jpg", lat, lon) for name, lat, lon in TRUTH])
        writer.writerow(["missing.jpg", 1.0, 2.0])
    return meta, images


def _expected_acc(pred_rows) -> dict[str, float]:
    dist = []
    for r in pred_rows:
        if r["pred_lat"]:
            g = Geodesic.WGS84.Inverse(float(r["true_lat"]), float(r["true_lon"]),
                                       float(r["pred_lat"]), float(r["pred_lon"]))
            dist.append(g["s12"] / 1000)
    n = len(pred_rows)
    return {str(t): sum(d <= t for d in dist) / n for t in (1, 25, 200, 750, 2500)}


def test_bench_run_report_resume_and_score(tiny_qwen_folder, bench_set, tmp_path, capsys):
    meta, images = bench_set
    out = tmp_path / "report"
    spec = ModelSpec.from_folder(tiny_qwen_folder)
    samples = read_csv(meta, images).samples
    assert len(samples) == 5  # the missing photo is skipped with a warning

    # Interrupt after two photos: the store keeps them; the rerun does only the rest.
    cancel = threading.Event()
    done = []

    def stop_after_two(outcome):
        done.append(outcome)
        if len(done) == 2:
            cancel.set()

    engine = Engine(spec, max_tokens=160)
    try:
        first = bench_run.run_benchmark(samples, engine, out, dataset="csv", images_root=images,
                                        on_outcome=stop_after_two, cancel=cancel)
        assert first.cancelled and first.computed == 2
        second = bench_run.run_benchmark(samples, engine, out, dataset="csv", images_root=images)
    finally:
        engine.close()
    assert (second.computed, second.skipped, second.errors, second.cancelled) == (3, 2, 0, False)

    for name in ("predictions.csv", "report.md", "report.json", "error_cdf.png", "error_map.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "error_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [f"{n}.jpg" for n, _, _ in TRUTH]
    # An untrained model rambles past max_tokens; each row still says what happened.
    assert {r["parse_status"] for r in rows} <= {"ok", "no_answer", "malformed", "out_of_range"}
    assert all(r["raw"] for r in rows)
    summary = json.loads((out / "report.json").read_text())
    assert summary["scores"]["acc"] == pytest.approx(_expected_acc(rows))
    assert summary["record"]["model_sha256"] == spec.model_sha256
    assert summary["record"]["prompt_version"] == spec.prompt_version
    assert any(p["method"] == "GeoCLIP" for p in load_published_any())

    # bench score reads the predictions back to the same numbers.
    capsys.readouterr()
    assert main(["bench", "score", str(out / "predictions.csv"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["acc"] == summary["scores"]["acc"]
    assert scored["median_km"] == pytest.approx(summary["scores"]["median_km"])

    # The CLI on the same folder finds everything in the store.
    assert main(["bench", "run", "--dataset", "csv", "--meta", str(meta), "--images",
                 str(images), "--model", str(tiny_qwen_folder), "--out", str(out),
                 "--max-tokens", "160", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "0 run now, 5 from the store" in text

    # A run compared with itself differs nowhere.
    assert main(["bench", "compare", str(out), str(out / "predictions.csv"), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert all(r["diff"] == 0 and r["p_value"] == 1.0 for r in compared)


def load_published_any():
    from geolocsft.report import load_published

    return load_published("im2gps3k") + load_published("yfcc4k")


def test_bench_run_bad_dataset_files(tiny_qwen_folder, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,foo\na.jpg,1\n")
    code = main(["bench", "run", "--dataset", "csv", "--meta", str(bad), "--images",
                 str(tmp_path), "--model", str(tiny_qwen_folder)])
    assert code == 2
    assert str(bad) in capsys.readouterr().err
    code = main(["bench", "run", "--dataset", "im2gps3k", "--images", str(tmp_path),
                 "--model", str(tiny_qwen_folder)])
    assert code == 2
    assert "--meta" in capsys.readouterr().err


def test_mcnemar_and_compare_by_hand():
    from geolocsft.report import compare, mcnemar_p

    # 10 discordant pairs split 9/1: two-sided exact p = 2 * (1 + 10) / 1024.
    assert mcnemar_p(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_p(0, 0) == 1.0
    a = {"x": 10.0, "y": 500.0, "z": None}
    b = {"x": 30.0, "y": 20.0, "z": 1.0, "only-b": 0.0}
    rows = {r["km"]: r for r in compare(a, b)}
    assert rows[25]["n"] == 3
    assert (rows[25]["acc_a"], rows[25]["acc_b"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (rows[25]["only_a"], rows[25]["only_b"]) == (1, 2)

"""`geolocsft bench score`: through cli.main and once through the installed console script."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from geographiclib.geodesic import Geodesic

from geolocsft.cli import main
from geolocsft.geo import distance_km

ROOT = Path(__file__).resolve().parent.parent
WGS84_A = 6378137.0


def point_at(lat, lon, km):
    out = Geodesic.WGS84.Direct(lat, lon, 135.0, km * 1000)
    return out["lat2"], out["lon2"]


def exactly_km_east_of_origin(km):
    """A longitude on the equator whose computed distance from (0, 0) is exactly `km`."""
    d = km * 1000 / WGS84_A * 180 / math.pi
    for _ in range(1000):
        got = distance_km(0.0, 0.0, 0.0, d)
        if got == km:
            return d
        d = math.nextafter(d, math.inf if got < km else -math.inf)
    pytest.fail(f"no float longitude gives exactly {km} km")


@pytest.fixture
def predictions(tmp_path):
    """Eight rows at chosen distances, one exactly on the 25 km boundary, two unparsed."""
    rows = ["id,pred_lat,pred_lon,true_lat,true_lon,parse_status"]
    truths = [(50.0, 10.0), (-10.0, -60.0), (30.0, 100.0), (60.0, 20.0), (-40.0, 170.0)]
    for i, ((lat, lon), km) in enumerate(zip(truths, [0.2, 20, 150, 600, 3000])):
        plat, plon = point_at(lat, lon, km)
        rows.append(f"r{i},{plat!r},{plon!r},{lat},{lon},ok")
    rows.append(f"edge,0.0,{exactly_km_east_of_origin(25.0)!r},0.0,0.0,ok")
    rows.append("u1,,,12.0,0.0,empty")           # 12 degrees of meridian from (0, 0)
    rows.append("u2,abc,def,-5.0,5.0,malformed")
    path = tmp_path / "predictions.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def run_json(capsys, *args):
    assert main(["bench", "score", *map(str, args), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object on one line
    return json.loads(out)


def test_json_known_accuracies(capsys, predictions):
    got = run_json(capsys, predictions)
    assert got["n"] == 8 and got["parsed"] == 6
    # parsed distances 0.2, 20, 25 (edge), 150, 600, 3000 km; <= counts the edge row
    assert got["acc"] == pytest.approx({"1": 1 / 8, "25": 3 / 8, "200": 4 / 8, "750": 5 / 8,
                                        "2500": 5 / 8})
    assert got["median_km"] == pytest.approx((25 + 150) / 2, abs=1e-6)
    assert got["mean_km"] == pytest.approx((0.2 + 20 + 25 + 150 + 600 + 3000) / 6, abs=1e-6)
    assert list(got) == ["n", "parsed", "acc", "median_km", "mean_km"]


def test_strict_excludes_the_boundary_row(capsys, predictions):
    got = run_json(capsys, predictions, "--strict")
    assert got["acc"]["25"] == pytest.approx(2 / 8)
    assert got["acc"]["1"] == pytest.approx(1 / 8) and got["acc"]["200"] == pytest.approx(4 / 8)


def test_origin_mode(capsys, predictions):
    got = run_json(capsys, predictions, "--unparsed", "origin")
    # u1 lies ~1,327 km from (0, 0) (12 degrees of meridian) and u2 ~785 km: both hit at
    # 2500 km only
    u1 = distance_km(0, 0, 12.0, 0.0)
    u2 = distance_km(0, 0, -5.0, 5.0)
    assert 750 < u2 < u1 < 2500
    assert got["parsed"] == 6
    assert got["acc"]["750"] == pytest.approx(5 / 8) and got["acc"]["2500"] == pytest.approx(7 / 8)
    all_km = [0.2, 20, 25, 150, 600, 3000, u1, u2]
    assert got["mean_km"] == pytest.approx(sum(all_km) / 8, abs=1e-6)


def test_table_output(capsys, predictions):
    assert main(["bench", "score", str(predictions), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "rows: 8   parsed: 6   parse failures: 2 (25.0%)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().endswith("]")}
    assert "37.5%" in lines["25"] and "12.5%" in lines["1"] and "62.5%" in lines["2500"]
    assert "median error: 87.5 km" in out


def test_sample_file_scores(capsys):
    got = run_json(capsys, ROOT / "samples" / "predictions.csv")
    assert got["n"] == 20 and got["parsed"] == 18
    assert 0 < got["acc"]["1"] < got["acc"]["25"] <= got["acc"]["2500"] < 1


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("", "file is empty"),
    ("lat,lon\n1,2\n", "missing column"),
    ("pred_lat,pred_lon,true_lat,true_lon\n1,2,north,east\n", "no row has numeric"),
])
def test_bad_files_exit_2_with_one_line(capsys, tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    assert main(["bench", "score", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"geolocsft: error: {path}: ") and problem in captured.err


def test_skipped_rows_are_warned_on_stderr(capsys, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("pred_lat,pred_lon,true_lat,true_lon\n1,1,1,1\n1,1,x,1\n")
    got = run_json(capsys, path)  # stdout stays pure JSON
    assert got["n"] == 1
    assert main(["bench", "score", str(path), "--json"]) == 0
    assert "warning" in capsys.readouterr().err


def test_console_script(predictions):
    script = Path(sys.executable).with_name("geolocsft")
    # (`python -m geolocsft.cli` would run cli.py as __main__, a second copy of CliError)
    fallback = [sys.executable, "-c",
                "import sys; from geolocsft.cli import main; sys.exit(main())"]
    command = [str(script)] if script.exists() else fallback
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([*command, "bench", "score", str(predictions), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acc"]["25"] == pytest.approx(3 / 8)
    bad = subprocess.run([*command, "bench", "score", str(predictions) + ".missing"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "file not found" in bad.stderr

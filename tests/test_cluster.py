"""`locate --ray` / `bench run --ray` on a real Ray instance on 127.0.0.1 (2 CPUs) with the tiny
Qwen2.5-VL GGUF: the same rows as single-process locate, a SIGKILLed actor, a SIGKILLed driver,
bad files. Ray is never mocked."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geolocsft.cli import main
from tests.test_locate import photo

REPO = Path(__file__).resolve().parent.parent
# The tiny model with random weights streams text fast without a grammar (see test_locate).
FAST = ["--no-grammar", "--max-tokens", "8"]
# The engine's timing and run-time fields differ between any two runs; everything else must not.
VARYING = {"image_prepare_s", "image_encode_s", "prompt_s", "generate_s", "tokens_per_s",
           "created_at", "settings_json", "outputs_json"}


# ---------------------------------------------------------------- no Ray needed

def test_ray_without_the_extra_is_one_line(tmp_path, monkeypatch, capsys):
    photo(tmp_path / "p.jpg", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    assert main(["locate", str(tmp_path / "p.jpg"), "--model", "m", "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("geolocsft: error: --ray needs Ray: install the cluster extra, "
                   "pip install -e '.[cluster]'")
    assert main(["locate", str(tmp_path / "p.jpg"), "--model", "m", "--actors", "2"]) == 2
    assert "--actors needs --ray" in capsys.readouterr().err


def test_core_command_line_does_not_import_ray():
    code = ("import sys; from geolocsft.cli import build_parser; build_parser(); "
            "assert 'ray' not in sys.modules, 'ray imported'; "
            "assert not any(m.startswith('ray.') for m in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- real Ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray instance for the module; the CLI under test finds it connected (in-process) or
    joins it by address (subprocesses)."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
            break
        except Exception:  # Ray gives its raylet 30 s to start: not always enough on a busy CI box
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOCSFT_DATA", str(tmp_path / "userdata"))


def rows_by_photo(store_path) -> dict[str, dict]:
    db = sqlite3.connect(store_path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM results")]
    db.close()
    return {r["path"]: r for r in rows}


def stored_count(store_path) -> int:
    """Rows in a store another process is writing (0 before it has made its table)."""
    try:
        db = sqlite3.connect(store_path, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def texts(row) -> list[tuple]:
    import json

    return [(o["text"], o["status"], o["latitude"], o["longitude"])
            for o in json.loads(row["outputs_json"])]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return sorted(csv.DictReader(handle), key=lambda r: r["path"])


pytestmark = pytest.mark.slow


def test_forty_photos_through_ray_give_the_rows_of_single_process_locate(
        tmp_path, tiny_qwen_folder, ray_cluster, capsys):
    folder = tmp_path / "photos"
    for i in range(40):
        photo(folder / f"p{i:02d}.jpg", 200 + i)
    # Bad files mixed in: one error row each, the run goes on.
    (folder / "zero.jpg").write_bytes(b"")
    whole = photo(tmp_path / "c.jpg", 7, size=(256, 256)).read_bytes()
    (folder / "corrupt.jpg").write_bytes(whole[:500])
    (folder / "notes.png").write_bytes(b"plain text, not a picture\n" * 20)
    common = ["locate", str(folder), "--model", str(tiny_qwen_folder), "--quiet", "--no-places",
              *FAST]

    assert main([*common, "--store", str(tmp_path / "one.sqlite"), "--out", str(tmp_path / "one"),
                 "--threads", "1"]) == 1
    capsys.readouterr()
    assert main([*common, "--store", str(tmp_path / "ray.sqlite"), "--out", str(tmp_path / "ray"),
                 "--ray", "--actors", "2"]) == 1  # 1: some photos were errors
    err = capsys.readouterr().err
    assert "located 0 of 43 photos (0 already in the store, 40 without an answer, 3 errors)" in err
    workers = [line for line in err.splitlines() if line.startswith("ray: actor ")]
    assert len(workers) == 2 and sum(int(w.split(": ")[2].split()[0]) for w in workers) == 40
    assert "ms per photo" in err

    single = rows_by_photo(tmp_path / "one.sqlite")
    clustered = rows_by_photo(tmp_path / "ray.sqlite")
    assert sorted(single) == sorted(clustered) and len(single) == 43
    for path, row in single.items():
        other = clustered[path]
        # Same key (photo, model, prompt version, settings hash), same text, same parse.
        assert {k: v for k, v in row.items() if k not in VARYING} == \
               {k: v for k, v in other.items() if k not in VARYING}, path
        assert texts(row) == texts(other), path
    errors = {Path(p).name: r["error"] for p, r in clustered.items() if r["status"] == "error"}
    assert sorted(errors) == ["corrupt.jpg", "notes.png", "zero.jpg"]
    assert all(str(folder) in message for message in errors.values())
    # The exports are the single-machine code: same rows apart from timings.
    def keep(rows):
        return [{k: v for k, v in r.items() if k not in VARYING} for r in rows]

    assert keep(read_csv(tmp_path / "one" / "geolocsft.csv")) == \
           keep(read_csv(tmp_path / "ray" / "geolocsft.csv"))

    # A rerun computes nothing (bad files are tried again, as in locate).
    assert main([*common, "--store", str(tmp_path / "ray.sqlite"), "--out", str(tmp_path / "ray"),
                 "--ray", "--actors", "2"]) == 1
    assert "(40 already in the store" in capsys.readouterr().err
    again = rows_by_photo(tmp_path / "ray.sqlite")
    assert {p: r for p, r in again.items() if r["status"] == "done"} == \
           {p: r for p, r in clustered.items() if r["status"] == "done"}


def test_killed_actor_is_restarted_and_every_photo_is_stored_once(
        tmp_path, tiny_qwen_folder, ray_cluster):
    from cluster.backend import ClusterEngine, ClusterOptions
    from cluster.runner import RayLocateRunner
    from geolocsft.engine import ModelSpec
    from geolocsft.locate import find_photos
    from geolocsft.store import ResultStore

    for i in range(30):
        photo(tmp_path / "photos" / f"k{i:02d}.jpg", 300 + i)
    items, _ = find_photos([tmp_path / "photos"])
    spec = ModelSpec.from_folder(tiny_qwen_folder)
    engine = ClusterEngine(spec, ClusterOptions(actors=2), {"grammar": False, "max_tokens": 24})
    store = ResultStore(tmp_path / "s.sqlite")
    killed = {}

    def on_outcome(outcome):
        if outcome.action == "computed" and not killed and len(runner.stats.workers) == 2 \
                and runner.stats.rows >= 3:
            killed["before"] = rows_by_photo(store.path)
            name = sorted(runner.stats.workers)[0]
            killed["pid"] = int(name.rsplit(":", 1)[1])
            killed["name"] = name
            os.kill(killed["pid"], signal.SIGKILL)

    runner = RayLocateRunner(engine, store, places=False, on_outcome=on_outcome)
    try:
        summary = runner.run(items)
    finally:
        store.close()
        engine.close()
    assert killed, "no actor was killed mid-run"
    assert summary.count("computed") == 30 and summary.count("error") == 0 and not summary.cancelled
    rows = rows_by_photo(tmp_path / "s.sqlite")
    assert sorted(Path(p).name for p in rows) == [f"k{i:02d}.jpg" for i in range(30)]
    assert all(r["status"] == "done" for r in rows.values())
    for path, row in killed["before"].items():  # what was stored before the kill is untouched
        assert rows[path] == row
    assert len(killed["before"]) < 30
    # The pool went on with a restarted actor (a new process) beside the survivor.
    assert len(runner.stats.workers) >= 2


KILL_SCRIPT = """
import sys
from geolocsft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_driver_rerun_computes_only_the_missing_photos(tmp_path, tiny_qwen_folder,
                                                               ray_cluster):
    folder = tmp_path / "batch"
    for i in range(24):
        photo(folder / f"d{i:02d}.jpg", 400 + i)
    store = tmp_path / "s.sqlite"
    # Joins the module's cluster by address, as `--ray auto` or `--ray ray://...` would.
    args = [sys.executable, "-c", KILL_SCRIPT, "locate", str(folder), "--model", str(tiny_qwen_folder),
            "--store", str(store), "--out", str(tmp_path / "out"), "--quiet", "--no-places",
            "--no-grammar", "--max-tokens", "24", "--actors", "2", "--ray", ray_cluster]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, done = time.time() + 180, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            done = stored_count(store) if store.exists() else 0
            if done >= 3:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = rows_by_photo(store)
    assert 3 <= len(before) < 24, f"could not kill mid-run (done={len(before)}): {proc.stderr.read()}"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({len(before)} already in the store" in rerun.stderr
    computed = sum(int(line.split(": ")[2].split()[0]) for line in rerun.stderr.splitlines()
                   if line.startswith("ray: actor "))
    assert computed == 24 - len(before)
    after = rows_by_photo(store)
    assert sorted(Path(p).name for p in after) == [f"d{i:02d}.jpg" for i in range(24)]
    assert all(r["status"] == "done" for r in after.values())
    for path, row in before.items():
        assert after[path] == row
    assert len(read_csv(tmp_path / "out" / "geolocsft.csv")) == 24


def test_bench_run_through_ray_writes_the_same_predictions(tmp_path, tiny_qwen_folder, ray_cluster,
                                                           capsys):
    images = tmp_path / "images"
    lines = ["image,lat,lon"]
    for i in range(5):
        photo(images / f"b{i}.jpg", 500 + i)
        lines.append(f"b{i}.jpg,{10 + i},{20 + i}")
    meta = tmp_path / "meta.csv"
    meta.write_text("\n".join(lines) + "\n")
    common = ["bench", "run", "--dataset", "csv", "--images", str(images), "--meta", str(meta),
              "--model", str(tiny_qwen_folder), "--max-tokens", "8", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray", "--actors", "1"]) == 0
    out = capsys.readouterr().out
    assert "5 photos (5 run now, 0 from the store, 0 errors)" in out
    one = (tmp_path / "one" / "predictions.csv").read_text()
    assert one == (tmp_path / "ray" / "predictions.csv").read_text() and one.count("\n") == 6


def test_ctrl_c_stops_cleanly_and_keeps_what_is_stored(tmp_path, tiny_qwen_folder, ray_cluster):
    folder = tmp_path / "batch"
    for i in range(24):
        photo(folder / f"c{i:02d}.jpg", 600 + i)
    store = tmp_path / "s.sqlite"
    args = [sys.executable, "-c", KILL_SCRIPT, "locate", str(folder), "--model", str(tiny_qwen_folder),
            "--store", str(store), "--out", str(tmp_path / "out"), "--quiet", "--no-places",
            "--no-grammar", "--max-tokens", "24", "--actors", "2", "--ray", ray_cluster]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if store.exists() and stored_count(store) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = rows_by_photo(store)
    assert proc.returncode == 130, err
    assert "cancelled; rerun the same command to continue" in err
    assert 3 <= len(rows) < 24 and all(r["status"] == "done" for r in rows.values())
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()

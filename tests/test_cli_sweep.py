"""A sweep over the CLI (issue 14): every sub-command, given bad input (missing files, a wrong
model, bad flags, no display for `app`), exits non-zero with its problem on one line and no
Python traceback. Run as real processes, as a user would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# (arguments, words the last line must contain). "{bad}" is a text file named like a photo,
# "{gguf}" a 2-byte file named like a model.
CASES = [
    (["bench", "score", "missing.csv"], "missing.csv: file not found"),
    (["bench", "score", "{bad}"], "bad.jpg"),
    (["bench", "compare", "a.csv", "b.csv"], "a.csv: file not found"),
    (["bench", "run", "--model", "nope", "--dataset", "csv", "--images", "x", "--labels", "y.csv"], ""),
    (["bench", "--bogus-flag"], "unrecognized arguments"),
    (["locate", "missing.jpg", "--model", "x"], "no photos found"),
    (["locate", "{bad}", "--model", "nope"], "nope: no such model folder"),
    (["locate", "{bad}", "--gguf", "{gguf}", "--mmproj", "{gguf}"], "model.gguf: truncated GGUF"),
    (["locate", "{bad}", "--model", "x", "--samples", "0"], "--samples must be at least 1"),
    (["locate", "{bad}", "--model", "x", "--store", "{bad}"], ""),
    (["locate"], "required: PATH"),
    (["models", "import", "{gguf}", "{gguf}"], "model.gguf: truncated GGUF"),
    (["models", "pull", "no-such-build"], "no catalog entry named 'no-such-build'"),
    (["models", "pull", "x", "--token", "hf_secret"], ""),
    (["models", "verify", "nope"], "nope: no such model folder"),
    (["train", "curate", "missing", "--out", "x.csv"], "missing: not found"),
    (["train", "caption", "missing.csv", "--out", "x.jsonl"], "missing.csv: not found"),
    (["train", "sft", "--config", "missing.toml"], "missing.toml: config file not found"),
    (["convert", "all", "--adapter", "missing", "--out", "x"], "missing: adapter folder not found"),
    (["convert", "merge", "--adapter", "missing", "--out", "x"], "adapter folder not found"),
    (["convert", "gguf", "missing", "--out", "x"], "not a Hugging Face checkpoint"),
    (["convert", "quantize", "missing.gguf", "--out", "y.gguf"], "missing.gguf"),
    (["convert", "verify", "missing"], "not a model folder"),
    (["demo", "--bogus-flag"], "unrecognized arguments"),
    (["no-such-command"], "invalid choice"),
]


def _run(argv, tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    """In process (fast; heavy imports are paid once): the exit code and stderr."""
    from geolocsft.cli import main

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEOLOCSFT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GEOLOCSFT_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out
    return code, captured.err


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, monkeypatch, capsys, argv, words):
    (tmp_path / "bad.jpg").write_text("not an image\n")
    (tmp_path / "model.gguf").write_bytes(b"GG")
    argv = [a.format(bad=tmp_path / "bad.jpg", gguf=tmp_path / "model.gguf") for a in argv]
    code, err = _run(argv, tmp_path, monkeypatch, capsys)
    assert isinstance(code, int) and code > 0, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, err
    last = lines[-1]
    assert last.startswith("geolocsft"), err
    assert words in last, err
    if not err.startswith("usage:"):  # argparse's own errors print a usage line first
        problems = [line for line in lines if "error" in line]
        assert len(problems) == 1, err


def test_app_without_a_display_is_one_line_not_a_qt_abort(tmp_path):
    """As a real process: Qt with no platform plugin calls abort(), which no handler catches."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(PYTHONPATH=str(REPO), GEOLOCSFT_DATA=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-m", "geolocsft", "app"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("geolocsft: error: no display")]

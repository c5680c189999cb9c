"""The `geolocsft` command itself: --version, --help, and that the core works without the
heavy extras (Qt, torch, llama.cpp) installed."""

from __future__ import annotations

import subprocess
import sys

from geolocsft import __version__
from geolocsft.cli import main

# Pretend the optional parts' libraries are missing (a None entry makes import fail).
BLOCK_HEAVY = (
    "import sys\n"
    "for name in ('llama_cpp', 'PySide6', 'torch', 'transformers', 'peft', 'trl', 'accelerate',"
    " 'anthropic'):\n"
    "    sys.modules[name] = None\n"
)


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"geolocsft {__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("bench", "locate", "models"):
        assert command in out


def test_core_commands_work_without_heavy_extras(tmp_path):
    script = BLOCK_HEAVY + (
        "from geolocsft.cli import main\n"
        "import geolocsft.engine, geolocsft.locate, geolocsft.catalog, geolocsft.report\n"
        "sys.exit(main(['bench', 'score', 'samples/predictions.csv', '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"n": 20' in done.stdout
    # Registering the optional parts' commands needs none of their libraries either.
    help_text = subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY + "from geolocsft.cli import main\nmain([])\n"],
        capture_output=True, text=True, timeout=120).stdout
    assert "train" in help_text and "convert" in help_text


def test_python_dash_m_is_the_command():
    done = subprocess.run([sys.executable, "-m", "geolocsft", "bench", "score", "missing.csv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "geolocsft: error: missing.csv: file not found"

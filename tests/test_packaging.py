"""The desktop bundle (packaging/): built by `packaging/build`, then run with no Python
environment at all (env -i, a minimal PATH, no PYTHON* variables, a fresh HOME, a temp cwd).

Building takes minutes, so the bundle is cached under cache_dir()/bundle/<hash>, keyed by a hash
of packaging/, desktop/, geolocsft/ and the catalog (plus the PyInstaller and llama-cpp-python
versions): a rerun with unchanged sources reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("packaging", "desktop", "geolocsft")
ARTIFACTS = ROOT / "artifacts" / "packaging"
MINIMAL_PATH = "/usr/bin:/bin"


def source_hash() -> str:
    digest = hashlib.sha256()
    files = [ROOT / "models" / "catalog.toml"]
    for top in SOURCES:
        files += [p for p in (ROOT / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for package in ("pyinstaller", "llama-cpp-python", "PySide6-Essentials"):
        digest.update(f"{package}={importlib.metadata.version(package)}".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def bundle() -> Path:
    """The built one-folder bundle (cached); its build log and time are kept beside it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the bundle test runs on Linux (see docs/install.md for Windows/macOS)")
    pytest.importorskip("PyInstaller")
    from convert.cache import build_once, prune_stale
    from geolocsft.paths import cache_dir

    final = cache_dir() / "bundle" / source_hash()
    final.parent.mkdir(parents=True, exist_ok=True)

    def build(temp: Path) -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(ROOT / "packaging" / "build"), "--dist", str(temp), "--work", str(temp / "work")],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        (temp / "build.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"packaging/build failed:\n{log[-4000:]}"
        shutil.rmtree(temp / "work")  # PyInstaller's scratch: not part of the bundle
        (temp / "build-seconds").write_text(f"{time.perf_counter() - t0:.1f}\n")

    folder = build_once(final, build)
    prune_stale(final, "*", max_age_s=600)  # each old bundle is ~300 MB
    return folder / "geolocsft"


def run_bundle(bundle: Path, args: list[str], tmp_path: Path, extra_env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the bundled executable the way a user on a machine without Python would."""
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    home.mkdir(exist_ok=True)
    cwd.mkdir(exist_ok=True)
    env = {"PATH": MINIMAL_PATH, "HOME": str(home), "QT_QPA_PLATFORM": "offscreen",
           "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run([str(bundle / "geolocsft"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bundle_holds_the_app_and_nothing_of_the_trainer(bundle):
    proc = subprocess.run([sys.executable, str(ROOT / "packaging" / "bundle_tool.py"), "report",
                           str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.startswith("bundle: ")
    internal = bundle / "_internal"
    modules = set(json.loads((internal / "bundle-modules.json").read_text())["modules"])
    assert {"geolocsft.engine", "desktop.main_window", "desktop.selftest", "llama_cpp.mtmd_cpp",
            "reverse_geocode", "pyexiv2"} <= modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers", "peft",
                                                          "trl", "trainer", "convert",
                                                          "ray", "cluster")}
    for name in ("libllama.so", "libmtmd.so", "libggml-cpu.so", "libggml-base.so"):
        assert (internal / "llama_cpp" / "lib" / name).exists(), name
    # Portable CPU baseline: no AVX-512 instruction (zmm registers) in llama.cpp's CPU backend.
    if shutil.which("objdump"):
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn",
                               str(internal / "llama_cpp" / "lib" / "libggml-cpu.so.0")],
                              capture_output=True, text=True, check=True).stdout
        assert "ymm" in code and "zmm" not in code


def test_self_test_runs_without_any_python_environment(bundle, tiny_qwen_folder, tmp_path):
    shot = tmp_path / "map.png"
    t0 = time.perf_counter()
    proc = run_bundle(bundle, ["--self-test", str(tiny_qwen_folder), "--screenshot", str(shot)],
                      tmp_path)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("self-test ok: model tiny-qwen2.5-vl"), line
    assert "from the EXIF truth" in line and "map drawn" in line and "Qt offscreen" in line
    assert "AVX2" in line and "AVX512" not in line  # the portable llama.cpp build
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # It wrote nothing into the user's home (own settings file and store in a temp folder).
    assert not any((tmp_path / "home").rglob("*")), list((tmp_path / "home").rglob("*"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "self-test-map.png")
    (ARTIFACTS / "self-test.txt").write_text(f"{line}\nwall {wall:.1f} s\n", encoding="utf-8")


def test_self_test_failure_names_the_problem(bundle, tmp_path):
    proc = run_bundle(bundle, ["--self-test", str(tmp_path / "no-such-model")], tmp_path)
    assert proc.returncode == 1
    missing = tmp_path / "no-such-model"
    assert f"self-test FAILED: model: {missing}: not a model folder" in proc.stderr


def test_models_import_list_and_app_use_the_user_models_folder(bundle, tiny_qwen_folder,
                                                               tmp_path):
    manifest = json.loads((tiny_qwen_folder / "manifest.json").read_text())
    gguf = tiny_qwen_folder / manifest["model_file"]
    mmproj = tiny_qwen_folder / manifest["mmproj_file"]
    user_models = tmp_path / "home" / ".local" / "share" / "geolocsft" / "models"

    proc = run_bundle(bundle, ["models", "import", str(gguf), str(mmproj), "--name", "field-kit"],
                      tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (user_models / "field-kit" / "manifest.json").is_file()
    assert proc.stdout.strip() == f"imported into {user_models / 'field-kit'}"

    proc = run_bundle(bundle, ["models", "list"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Installed in {user_models}:" in proc.stdout
    assert "field-kit" in proc.stdout and "qwen2.5-vl" in proc.stdout
    assert "Available to pull" in proc.stdout  # the shipped catalog is found

    # GEOLOCSFT_MODELS still overrides the default folder.
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = run_bundle(bundle, ["models", "list"], tmp_path, {"GEOLOCSFT_MODELS": str(other)})
    assert f"Installed in {other}:\n  (none)" in proc.stdout

    # A bad file is a one-line error naming it, exit code 2.
    proc = run_bundle(bundle, ["models", "import", str(tmp_path / "nope.gguf"), str(mmproj)],
                      tmp_path)
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope.gguf'}: file not found" in proc.stderr

    # The self-test with no model argument finds the imported model in the user's folder.
    proc = run_bundle(bundle, ["--self-test"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("self-test ok: model field-kit (qwen2.5-vl)")


def test_command_line_help_and_version(bundle, tmp_path):
    import geolocsft

    proc = run_bundle(bundle, ["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"geolocsft {geolocsft.__version__}"
    proc = run_bundle(bundle, ["--help"], tmp_path)
    assert proc.returncode == 0
    commands = set(re.findall(r"^    (\w+) ", proc.stdout, flags=re.MULTILINE))
    assert {"locate", "models", "app", "bench"} <= commands, commands
    assert not {"train", "convert"} & commands  # the trainer and converter are not bundled


def test_linux_install_script_installs_for_the_user_and_never_replaces_silently(bundle, tmp_path):
    prefix = tmp_path / "prefix"
    proc = subprocess.run([str(bundle / "install-linux.sh"), str(prefix)], capture_output=True,
                          text=True, env={"PATH": MINIMAL_PATH, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    installed = prefix / "opt" / "geolocsft" / "geolocsft"
    entry = (prefix / "share" / "applications" / "geolocsft.desktop").read_text()
    assert f'Exec="{installed}" app %f' in entry and "Icon=geolocsft" in entry
    icons = prefix / "share" / "icons" / "hicolor" / "scalable" / "apps"
    assert (icons / "geolocsft.svg").is_file()
    # The PATH link works: the bundle finds its _internal/ through the link.
    version = run_bundle(prefix / "bin", ["--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("geolocsft ")
    # A second install asks first; with no "y" nothing changes.
    marker = prefix / "opt" / "geolocsft" / "kept"
    marker.write_text("mine")
    again = subprocess.run([str(bundle / "install-linux.sh"), str(prefix)], input="\n",
                           capture_output=True, text=True, env={"PATH": MINIMAL_PATH})
    assert again.returncode == 1 and "nothing changed" in again.stdout
    assert marker.read_text() == "mine"


def test_self_test_passes_in_the_development_environment(tiny_qwen_folder, tmp_path):
    """The same routine from the venv (`python -m desktop.selftest`), so it is covered where
    PyInstaller is not installed."""
    proc = subprocess.run([sys.executable, "-m", "desktop.selftest", str(tiny_qwen_folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen",
                               "XDG_CONFIG_HOME": str(tmp_path / "config"),
                               "XDG_DATA_HOME": str(tmp_path / "data")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("self-test ok: model tiny-qwen2.5-vl")
    assert not (tmp_path / "config").exists() and not (tmp_path / "data").exists()


def test_models_pull_from_a_local_hub(bundle, tiny_qwen_folder, tmp_path):
    """`models pull` works from the bundle (huggingface_hub is bundled without its Xet layer),
    against a hub on 127.0.0.1."""
    from tests.fixtures.fake_hub import FakeHub, HubState

    manifest = json.loads((tiny_qwen_folder / "manifest.json").read_text())
    repo = "example/Tiny-VL-GGUF"
    root = tmp_path / "models"
    root.mkdir()
    (root / "catalog.toml").write_text(
        f'[[model]]\nname = "tiny-pulled"\nfamily = "qwen2.5-vl"\nbase_model = "tiny"\n'
        f'repo = "{repo}"\nmodel = "*Q8_0.gguf"\nmmproj = "mmproj-*f16.gguf"\nquant = "Q8_0"\n'
        f"size_gb = 0.1\nmemory_gb = 0.5\n")
    state = HubState(repos={repo: {
        "Tiny-VL-Q8_0.gguf": (tiny_qwen_folder / manifest["model_file"]).read_bytes(),
        "mmproj-Tiny-VL-f16.gguf": (tiny_qwen_folder / manifest["mmproj_file"]).read_bytes()}})
    with FakeHub(state) as hub:
        proc = run_bundle(bundle, ["models", "pull", "tiny-pulled", "--endpoint", hub.url,
                                   "--quiet"], tmp_path, {"GEOLOCSFT_MODELS": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"pulled tiny-pulled into {root / 'tiny-pulled'}"
    proc = run_bundle(bundle, ["models", "verify", "tiny-pulled", "--no-load"], tmp_path,
                      {"GEOLOCSFT_MODELS": str(root)})
    assert proc.returncode == 0 and "checksums ok" in proc.stdout, proc.stderr


def test_benchmark_run_with_plots_from_the_bundle(bundle, tiny_qwen_folder, tmp_path):
    """The engine, results store, report and matplotlib plots work from the bundle."""
    from desktop.selftest import make_photo

    photos = tmp_path / "photos"
    photos.mkdir()
    make_photo(photos)  # a JPEG with EXIF GPS: the `exif` dataset's ground truth
    out = tmp_path / "report"
    proc = run_bundle(bundle, ["bench", "run", "--dataset", "exif", "--images", str(photos),
                               "--model", str(tiny_qwen_folder), "--out", str(out),
                               "--max-tokens", "48", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in proc.stdout
    for name in ("error_cdf.png", "error_map.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2  # header + the one photo

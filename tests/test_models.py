"""`geolocsft models`: import, verify, list and pull (through the real huggingface_hub client
against a local hub on 127.0.0.1), on the tiny GGUF model folder from the converter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geolocsft import catalog, manifest
from geolocsft.cli import main
from tests.fixtures.fake_hub import FakeHub, HubState

# Tests that build or load a model are marked slow by tests/conftest.py (MODEL_FIXTURES).

REPO = "ggml-org/Tiny-VL-GGUF"


@pytest.fixture
def pair(tiny_qwen_folder, tmp_path):
    """The tiny model's GGUF + projector, copied somewhere with an awkward name."""
    m = manifest.read_manifest(tiny_qwen_folder)
    src = tmp_path / "downloads été"
    src.mkdir()
    gguf = shutil.copyfile(tiny_qwen_folder / m.model_file, src / "Tiny VL-Q8_0.gguf")
    mmproj = shutil.copyfile(tiny_qwen_folder / m.mmproj_file, src / "mmproj-Tiny-f16.gguf")
    return Path(gguf), Path(mmproj)


@pytest.fixture
def hub_online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; pulls here talk to 127.0.0.1 only."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_import_makes_a_verified_folder(pair, tmp_path, capsys):
    gguf, mmproj = pair
    root = tmp_path / "models"
    assert main(["models", "--dir", str(root), "import", str(gguf), str(mmproj),
                 "--name", "tiny"]) == 0
    folder = root / "tiny"
    m = manifest.read_manifest(folder)
    assert (m.family, m.quant, m.model_file, m.mmproj_file) == (
        "qwen2.5-vl", "Q8_0", "model-Q8_0.gguf", "mmproj-f16.gguf")
    assert manifest.verify_files(folder) == []
    assert gguf.exists() and mmproj.exists()  # the user's files stay where they were
    assert sorted(p.name for p in root.iterdir()) == ["tiny"]  # no temp folder left

    # The same name again is refused; nothing is replaced.
    before = (folder / "manifest.json").read_bytes()
    assert main(["models", "--dir", str(root), "import", str(gguf), str(mmproj),
                 "--name", "tiny"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == before


def test_import_rejects_bad_pairs(pair, tmp_path, capsys):
    gguf, mmproj = pair
    root = tmp_path / "models"
    assert main(["models", "--dir", str(root), "import", str(mmproj), str(gguf)]) == 2
    assert "projector" in capsys.readouterr().err

    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 3])
    assert main(["models", "--dir", str(root), "import", str(truncated), str(mmproj)]) == 2
    err = capsys.readouterr().err
    assert str(truncated) in err
    assert not root.exists() or not any(root.iterdir())


def test_verify_checks_checksums_and_loads(pair, tmp_path, capsys):
    gguf, mmproj = pair
    root = tmp_path / "models"
    folder = catalog.import_model(gguf, mmproj, name="tiny", root=root)
    assert main(["models", "--dir", str(root), "verify", "tiny"]) == 0
    assert "loads ok" in capsys.readouterr().out

    data = bytearray((folder / "mmproj-f16.gguf").read_bytes())
    data[-1] ^= 0xFF
    (folder / "mmproj-f16.gguf").write_bytes(bytes(data))
    assert main(["models", "--dir", str(root), "verify", str(folder)]) == 1
    assert "does not match the manifest" in capsys.readouterr().err


def test_list_shows_installed_and_catalog(pair, tmp_path, capsys):
    gguf, mmproj = pair
    root = tmp_path / "models"
    catalog.import_model(gguf, mmproj, name="tiny", root=root)
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{not json")
    assert main(["models", "--dir", str(root), "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "Q8_0" in out and "fits" in out
    assert "broken" in out  # an unreadable folder is reported, not hidden
    assert "qwen2.5-vl-3b-instruct-q4_k_m" in out  # the shipped catalog


def _catalog(root: Path, **extra) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        "[[model]]", 'name = "tiny-pulled"', 'family = "qwen2.5-vl"', 'base_model = "tiny"',
        f'repo = "{REPO}"', 'model = "*Q8_0.gguf"', 'mmproj = "mmproj-*f16.gguf"',
        'quant = "Q8_0"', "size_gb = 0.1", "memory_gb = 0.5",
    ] + [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    (root / "catalog.toml").write_text("\n".join(lines) + "\n")


def _hub_state(pair) -> HubState:
    gguf, mmproj = pair
    return HubState(repos={REPO: {"Tiny-VL-Q8_0.gguf": gguf.read_bytes(),
                                  "mmproj-Tiny-VL-f16.gguf": mmproj.read_bytes(),
                                  "README.md": b"tiny\n"}})


def test_pull_resumes_after_a_dropped_connection(pair, tmp_path, monkeypatch, hub_online):
    root = tmp_path / "models"
    _catalog(root)
    monkeypatch.setenv("GEOLOCSFT_MODELS", str(root))
    state = _hub_state(pair)
    size = len(state.repos[REPO]["Tiny-VL-Q8_0.gguf"])
    state.drop_after["Tiny-VL-Q8_0.gguf"] = size // 2
    with FakeHub(state) as fake:
        argv = ["models", "pull", "tiny-pulled", "--endpoint", fake.url, "--quiet"]
        code = main(argv)
        if code != 0:  # the client gave up on the dropped connection: the rerun resumes
            assert not (root / "tiny-pulled").exists()
            code = main(argv)
    assert code == 0
    folder = root / "tiny-pulled"
    assert manifest.verify_files(folder) == []
    ranges = [r for method, path, r in state.requests if method == "GET" and r]
    assert ranges, state.requests
    resumed_at = int(ranges[0].removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_at <= size // 2  # what reached the disk before the drop is kept
    total = sum(len(d) for d in state.repos[REPO].values())
    assert state.bytes_sent < 1.2 * total  # resumed, not restarted
    assert not (root / ".partial" / "tiny-pulled").exists()


def test_pull_rejects_a_bad_checksum(pair, tmp_path, monkeypatch, hub_online, capsys):
    root = tmp_path / "models"
    _catalog(root)
    monkeypatch.setenv("GEOLOCSFT_MODELS", str(root))
    state = _hub_state(pair)
    good = state.repos[REPO]["mmproj-Tiny-VL-f16.gguf"]
    state.served_instead[(REPO, "mmproj-Tiny-VL-f16.gguf")] = good[:-1] + bytes([good[-1] ^ 1])
    with FakeHub(state) as fake:
        assert main(["models", "pull", "tiny-pulled", "--endpoint", fake.url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mmproj-Tiny-VL-f16.gguf" in err and "does not match" in err
    assert not (root / "tiny-pulled").exists()
    assert not list((root / ".partial").rglob("mmproj-Tiny-VL-f16.gguf"))


def test_pull_gated_needs_a_token(pair, tmp_path, monkeypatch, hub_online, capsys):
    root = tmp_path / "models"
    _catalog(root, gated=True)
    monkeypatch.setenv("GEOLOCSFT_MODELS", str(root))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    state = _hub_state(pair)
    state.gated.add(REPO)
    state.token = "hf_test_token"
    with FakeHub(state) as fake:
        assert main(["models", "pull", "tiny-pulled", "--endpoint", fake.url, "--quiet"]) == 2
        assert "HF_TOKEN" in capsys.readouterr().err
        # Never on the command line (other users see it in ps, the shell keeps it)...
        assert main(["models", "pull", "tiny-pulled", "--endpoint", fake.url, "--quiet",
                     "--token", "hf_test_token"]) == 2
        assert "set HF_TOKEN or use --ask-token" in capsys.readouterr().err
        # ...from the environment (or the --ask-token prompt).
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        assert main(["models", "pull", "tiny-pulled", "--endpoint", fake.url, "--quiet"]) == 0
    assert manifest.verify_files(root / "tiny-pulled") == []


def test_catalog_entry_must_match_exactly_one_file():
    entry = catalog.CatalogEntry(name="x", family="gemma3", base_model="b", repo="r",
                                 model="*Q4_K_M.gguf", mmproj="mmproj-*f16.gguf", quant="Q4_K_M",
                                 size_gb=1, memory_gb=2)
    assert entry.pick(["a-Q4_K_M.gguf", "mmproj-a-f16.gguf", "README.md"]) == (
        "a-Q4_K_M.gguf", "mmproj-a-f16.gguf")
    with pytest.raises(catalog.CatalogError, match="expected one model file"):
        entry.pick(["a-Q4_K_M.gguf", "b-Q4_K_M.gguf", "mmproj-a-f16.gguf"])
    with pytest.raises(catalog.CatalogError, match="projector"):
        entry.pick(["a-Q4_K_M.gguf"])

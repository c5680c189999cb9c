"""Offline is the normal case (issue 14): `models pull` ends in one clear line, saying what to
do instead, on every way a download fails: no DNS, nothing listening, a silent server, 401/403,
404, 5xx, a connection dropped mid-file (the partial file is kept and the rerun resumes).
Tested with the real huggingface_hub client against servers on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import pytest

from geolocsft.cli import main
from tests.fixtures.fake_hub import FakeHub, HubState

REPO = "ggml-org/Tiny-VL-GGUF"
FILES = {"Tiny-VL-Q8_0.gguf": b"G" * 300_000, "mmproj-Tiny-VL-f16.gguf": b"M" * 1000}


@pytest.fixture
def models(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the session runs offline
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("GEOLOCSFT_PULL_TIMEOUT", "1")
    root = tmp_path / "models"
    root.mkdir()
    (root / "catalog.toml").write_text("\n".join([
        "[[model]]", 'name = "tiny-pulled"', 'family = "qwen2.5-vl"', 'base_model = "tiny"',
        f'repo = "{REPO}"', 'model = "*Q8_0.gguf"', 'mmproj = "mmproj-*f16.gguf"',
        'quant = "Q8_0"', "size_gb = 0.1", "memory_gb = 0.5"]) + "\n")
    monkeypatch.setenv("GEOLOCSFT_MODELS", str(root))
    return root


def pull_line(capsys, endpoint: str) -> str:
    code = main(["models", "pull", "tiny-pulled", "--endpoint", endpoint, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_no_dns(models, capsys, monkeypatch):
    def no_resolver(host, *args, **kwargs):  # what the OS answers with no network at all
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    line = pull_line(capsys, "https://hub.example.org")
    assert "no network" in line and "geolocsft models import" in line


def test_nothing_listening(models, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    line = pull_line(capsys, f"http://127.0.0.1:{port}")
    assert "cannot connect" in line and "geolocsft models import" in line


def test_silent_server_times_out(models, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept and never answer
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        line = pull_line(capsys, f"http://127.0.0.1:{server.getsockname()[1]}")
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert "timed out" in line


@pytest.mark.parametrize("where, status, words", [
    ("info", 401, "set HF_TOKEN"),
    ("info", 500, "server failed (HTTP 500)"),
    ("info", 503, "server failed (HTTP 503)"),
    ("Tiny-VL-Q8_0.gguf", 404, "not found (404"),
])
def test_http_failures(models, capsys, where, status, words):
    state = HubState(repos={REPO: dict(FILES)}, fail_with={where: status})
    with FakeHub(state) as fake:
        line = pull_line(capsys, fake.url)
    assert words in line, line
    assert not (models / "tiny-pulled").exists()


def test_dropped_mid_download_keeps_the_partial_file_for_the_rerun(models, capsys):
    state = HubState(repos={REPO: dict(FILES)}, drop_every_time=True)
    size = len(FILES["Tiny-VL-Q8_0.gguf"])
    state.drop_after["Tiny-VL-Q8_0.gguf"] = size // 3
    with FakeHub(state) as fake:
        line = pull_line(capsys, fake.url)
    assert "connection dropped" in line and "is kept" in line and "run the same pull again" in line
    partial = [p for p in (models / ".partial" / "tiny-pulled").rglob("*") if p.is_file()
               and p.stat().st_size]
    assert partial and all(p.stat().st_size < size for p in partial)  # kept, to resume


def test_offline_mode_is_named(models, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = pull_line(capsys, "http://127.0.0.1:9")
    assert "HF_HUB_OFFLINE" in line and "geolocsft models import" in line


def test_train_caption_without_network_is_one_final_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("anthropic")
    from PIL import Image

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-offline")
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    pool = tmp_path / "pool"
    pool.mkdir()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(pool / "a.jpg")
    Image.new("RGB", (64, 48), (30, 20, 10)).save(pool / "b.jpg")
    picks = pool / "picks.csv"
    picks.write_text(f"id,image,lat,lon\na,{pool / 'a.jpg'},48.85,2.35\nb,{pool / 'b.jpg'},35.68,139.69\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "captions.jsonl"
    code = main(["train", "caption", str(picks), "--out", str(out), "--base-url",
                 f"http://127.0.0.1:{port}", "--max-retries", "0", "--timeout", "2",
                 "--attempts", "2", "--concurrency", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "no network: cannot reach the API" in last and "rerun the same command" in last


def test_convert_base_download_without_network_is_one_line(monkeypatch):
    pytest.importorskip("convert")
    import huggingface_hub.constants as constants

    from convert.errors import ConvertError
    from convert.merge import resolve_base

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    with pytest.raises(ConvertError) as caught:
        resolve_base("some-org/some-base-model")
    message = str(caught.value)
    assert "\n" not in message and "some-org/some-base-model" in message
    assert "cannot connect" in message and "connected machine" in message

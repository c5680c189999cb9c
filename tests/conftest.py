import os

# Qt must never try to open a display in tests.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Training on CPU: one thread per op is ~20x faster than two on this kind of machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Shared fixtures live in their own modules, one per area.
pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.network",
]

# Fixtures that build or load a model (or the app bundle): a test that uses one, directly or
# through another fixture, is `slow`. Marking by fixture, not by module, keeps the pure unit
# tests of the same module in the fast suite (`pytest -m "not slow"`).
MODEL_FIXTURES = {
    "tiny_qwen_dir", "tiny_qwen_folder", "tiny_qwen_adapter",
    "tiny_gemma_dir", "tiny_gemma_folder", "tiny_gemma_adapter", "bundle",
}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

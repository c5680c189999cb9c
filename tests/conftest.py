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

"""What runs on the cluster's workers: the preparation task (read, hash, prepare the pixels) and
the inference actor (one Engine loaded once, many photos). Rows are plain dicts of scalars and
bytes so Ray Data can move them between nodes without custom types."""

from __future__ import annotations

import os
import pickle
import socket
import time
from pathlib import Path

# Rows the driver gets back: the photo, its hash, what preparation and inference produced.
EMPTY_FIELDS = {
    "sha256": "", "skip": False, "error": "", "pixels": b"", "width": 0, "height": 0,
    "truth_lat": None, "truth_lon": None, "prepare_s": 0.0,
    "located": b"", "worker": "", "infer_s": 0.0, "settings_hash": "",
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def prepare_photo(row: dict, *, budget: dict, done: frozenset) -> dict:
    """Read and hash one photo; unless its result is already done (`done`: photo hashes the
    store has under this run's key), prepare its pixels exactly as `locate` does."""
    from geolocsft.images import ImageBudget, prepare_image, read_gps
    from geolocsft.locate import _error_text
    from geolocsft.manifest import sha256_file

    out = {**row, **EMPTY_FIELDS}
    path = Path(row["path"])
    start = time.perf_counter()
    try:
        out["sha256"] = sha256_file(path)
        if out["sha256"] in done:
            out["skip"] = True
            return out
        image = prepare_image(path, ImageBudget.from_dict(budget))
        if image.mode != "RGB":
            image = image.convert("RGB")
        out["pixels"], (out["width"], out["height"]) = image.tobytes(), image.size
        truth = read_gps(path)
        if truth is not None:
            out["truth_lat"], out["truth_lon"] = truth
    except Exception as exc:  # any bad file is one error row; the batch goes on
        out["error"] = _error_text(exc, path)
    out["prepare_s"] = time.perf_counter() - start
    return out


def open_node_engine(spec, engine_kwargs: dict):
    """The Engine on this node, after checking the node holds the same model the driver named
    (every node needs the model folder at the same path)."""
    from geolocsft.engine import Engine, EngineError, ModelSpec

    for path in (Path(spec.gguf), Path(spec.mmproj)):
        if not path.is_file():
            raise EngineError(f"{path}: not found on node {socket.gethostname()}; every node "
                              "needs the model folder at the same path (docs/cluster.md)")
    folder = Path(spec.gguf).parent
    if (folder / "manifest.json").is_file():
        local = ModelSpec.from_folder(folder)
        if Path(local.gguf) == Path(spec.gguf) and local.model_sha256 != spec.model_sha256:
            raise EngineError(f"{folder}: the model on node {socket.gethostname()} differs from "
                              "the driver's (run `geolocsft models verify` on each node)")
    return Engine(spec, **engine_kwargs)


def engine_settings(spec, engine_kwargs: dict, samples: int, temperature: float) -> dict:
    """Load the model once on a worker and return what keys its results (the driver has no
    model loaded; a node with another llama.cpp build would key differently)."""
    engine = open_node_engine(spec, engine_kwargs)
    try:
        return engine.settings(samples=samples, temperature=temperature)
    finally:
        engine.close()


class LocateActor:
    """One loaded Engine serving many photos. A photo that fails inference becomes an error
    row; the actor goes on."""

    def __init__(self, spec, engine_kwargs: dict, samples: int, temperature: float):
        from geolocsft.store import settings_hash

        self.engine = open_node_engine(spec, engine_kwargs)
        self.samples, self.temperature = samples, temperature
        self.settings_hash = settings_hash(self.engine.settings(samples=samples,
                                                                temperature=temperature))
        self.name = worker_name()

    def __call__(self, row: dict) -> dict:
        from PIL import Image

        from geolocsft.locate import _error_text

        row = dict(row)
        row["worker"], row["settings_hash"] = self.name, self.settings_hash
        if row["skip"] or row["error"]:
            return row
        size = (int(row["width"]), int(row["height"]))
        image = Image.frombytes("RGB", size, bytes(row["pixels"]))
        row["pixels"] = b""  # the driver does not need the pixels back
        start = time.perf_counter()
        try:
            located = self.engine.locate(image, samples=self.samples, temperature=self.temperature)
            row["located"] = pickle.dumps(located)
        except Exception as exc:  # EngineError and friends: this photo fails, the run goes on
            row["error"] = _error_text(exc, Path(row["path"]))
        row["infer_s"] = time.perf_counter() - start
        return row

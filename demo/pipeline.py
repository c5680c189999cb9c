"""The built-in demonstration: the whole pipeline on synthetic places, end to end.

    synthetic renders (demo.synthetic) -> `geolocsft train sft` (LoRA on the tiny random
    Qwen2.5-VL or Gemma 3 from the converter's factory) -> `geolocsft convert all` (merge ->
    GGUF + mmproj -> Q8_0 / Q4_K_M) -> the engine through `bench_run` on held-out renders

Training and conversion need torch, which the core never imports: they run as the real
`geolocsft` commands in subprocesses, so the demo also proves those commands work. The build is
cached under `cache_dir()/demo/<family>-<key>`, where the key hashes the code that shapes it
(trainer, converter, core contract, this module, the generator) and the library versions, so
a second demo takes seconds and a code change rebuilds. The end-to-end test shares the build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from geolocsft import families, geo
from geolocsft.fsutil import file_lock
from geolocsft.paths import PROJECT_ROOT, cache_dir

from demo import synthetic

FAMILIES = families.names()
DEFAULT_FAMILY = families.DEFAULT  # the seed's family
QUANTS = ("Q8_0", "Q4_K_M")  # Q8_0 is the demo's model; Q4_K_M is built and reported too
AGREEMENT_KM = 25.0  # two answers "agree" when they are this close (the 25 km metric)

# The SFT recipe of the demo, per family, as `geolocsft train sft` flags on top of the `seed`
# preset (LoRA rank 32, alpha 64 on the language model), from the registry's DemoRecipe.
# Divergences, explained in docs/demo.md: a tiny random base needs a high learning rate and
# several epochs over a few renders per place, and LoRA alone on a random base learns the
# caption's skeleton but not to read the photo, so the vision-to-text projector is trained too
# (--train-projector).
SFT_FLAGS: dict[str, tuple[str, ...]] = {f.name: f.demo.sft_flags for f in families.FAMILIES}
TRAIN_PER_PLACE = 6
HELDOUT_PER_PLACE = 3
TRAIN_SEED, HELDOUT_SEED = 0, 1
# Room for the HF evaluation's answers (a template target's length in the tiny model's tokens).
EVAL_MAX_NEW_TOKENS = {f.name: f.demo.eval_max_new_tokens for f in families.FAMILIES}

# Files whose content shapes the build: a change to any of them makes a new cache key.
_KEY_SOURCES = ("demo/synthetic.py", "geolocsft/protocol.py", "geolocsft/images.py",
                "geolocsft/manifest.py")
_KEY_FOLDERS = ("trainer", "convert")  # + the family's own converter module (build_key)
_KEY_PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "llama-cpp-python")

BUILD_INFO = "build.json"

Progress = Callable[[str], None]


class DemoError(RuntimeError):
    """A demo build step failed; the message names the step and its log file."""


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cache key

def recipe(family: str) -> dict:
    """Everything in this module that shapes a build (its other code only reads builds)."""
    return {"family": family, "sft": list(SFT_FLAGS[family]), "quants": list(QUANTS),
            "train": [TRAIN_PER_PLACE, TRAIN_SEED], "heldout": [HELDOUT_PER_PLACE, HELDOUT_SEED],
            "eval_tokens": EVAL_MAX_NEW_TOKENS[family], "layout": 1,
            "registry": repr(families.get(family))}


def build_key(family: str) -> str:
    """Changes with the recipe, the generator, the core contract, the trainer's and the
    converter's code, and the versions of the libraries they run on."""
    from convert.families import module_files

    digest = hashlib.sha256(json.dumps(recipe(family), sort_keys=True).encode())
    paths = [PROJECT_ROOT / s for s in _KEY_SOURCES]
    for folder in _KEY_FOLDERS:
        paths += sorted((PROJECT_ROOT / folder).glob("*.py"))
    # Only this family's converter modules: adding a family does not rebuild the others' demos.
    paths += [PROJECT_ROOT / "convert/families/__init__.py", *module_files(family)]
    for path in paths:
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    for package in _KEY_PACKAGES:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "none"
        digest.update(f"{package}={version}".encode())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- the build

@dataclass
class DemoBuild:
    """A finished, cached build: data, adapter, model folders and the HF model's answers."""

    root: Path
    family: str
    info: dict = field(default_factory=dict)

    @property
    def train(self) -> Path:
        return self.root / "data" / "train"

    @property
    def heldout(self) -> Path:
        return self.root / "data" / "heldout"

    @property
    def adapter(self) -> Path:
        return self.root / "run" / "adapter"

    @property
    def hf_predictions(self) -> Path:
        """The trainer's end-of-run greedy answers (HF generate) on the held-out renders."""
        return self.root / "run" / "eval" / "predictions.jsonl"

    def model(self, quant: str = QUANTS[0]) -> Path:
        return self.root / "models" / model_name(self.family, quant)


def model_name(family: str, quant: str) -> str:
    return f"demo-synthetic-{family}-{quant.lower()}"


def _run_step(title: str, args: list[str], log_path: Path, progress: Progress) -> str:
    """Run one real `geolocsft` command (or a Python one-liner) in a subprocess, its output in
    `log_path`; returns stdout. A failure raises DemoError with the log's tail."""
    env = dict(os.environ)
    # One thread per op trains the tiny models ~20x faster on CPU than two (measured).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # the bases are local; nothing is downloaded
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    progress(f"[demo] {title} ...")
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(args) + "\n")
        log.flush()
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                              cwd=PROJECT_ROOT)
        log.write("--- stdout ---\n" + proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise DemoError(f"{title} failed (exit {proc.returncode}); log: {log_path}\n{tail}")
    progress(f"[demo] {title}: done in {time.monotonic() - started:.0f} s")
    return proc.stdout


def tiny_base(family: str, log_dir: Path, progress: Progress) -> Path:
    """The converter's tiny random checkpoint (built once in its own cache)."""
    code = ("import sys; from convert.tiny import tiny_model; "
            "print(tiny_model(sys.argv[1]))")
    out = _run_step(f"tiny {family} base model", [sys.executable, "-c", code, family],
                    log_dir / "base.log", progress)
    return Path(out.strip().splitlines()[-1])


def _build_into(work: Path, logs: Path, family: str, progress: Progress) -> dict:
    """Fill `work`; step logs go to `logs`, which outlives a failed build (errors cite it)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    train = synthetic.write_split(work / "data" / "train", TRAIN_PER_PLACE, TRAIN_SEED)
    held = synthetic.write_split(work / "data" / "heldout", HELDOUT_PER_PLACE, HELDOUT_SEED,
                                 prefix="held-")
    timings["data_s"] = round(time.monotonic() - started, 1)
    progress(f"[demo] {len(synthetic.PLACES)} synthetic places: {train.count} training and "
             f"{held.count} held-out renders")

    t = time.monotonic()
    base = tiny_base(family, logs, progress)
    timings["base_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    geolocsft = [sys.executable, "-m", "geolocsft"]
    _run_step(
        f"LoRA SFT of the tiny {family} (geolocsft train sft)",
        [*geolocsft, "train", "sft", "--model", str(base), "--data", str(train.jsonl),
         "--eval-data", str(held.jsonl), "--eval-max-samples", "0",
         "--eval-max-new-tokens", str(EVAL_MAX_NEW_TOKENS[family]),
         "--output-dir", str(work / "run"),
         "--save-every-steps", "0", "--no-tensorboard", *SFT_FLAGS[family]],
        logs / "train.log", progress)
    timings["train_s"] = round(time.monotonic() - t, 1)

    for quant in QUANTS:
        t = time.monotonic()
        args = [*geolocsft, "convert", "all", "--adapter", str(work / "run" / "adapter"),
                "--out", str(work / "models" / model_name(family, quant)), "--quant", quant]
        if quant != QUANTS[0]:
            args.append("--no-logit-check")  # checked once, on the first build
        _run_step(f"merge, GGUF and {quant} (geolocsft convert all)", args,
                  logs / f"convert-{quant}.log", progress)
        timings[f"convert_{quant}_s"] = round(time.monotonic() - t, 1)
    record = json.loads((work / "run" / "adapter" / "training_record.json").read_text())
    return {"family": family, "base": str(base), "timings": timings,
            "hf_eval": record.get("eval"), "steps": record.get("steps"),
            "final_loss": record.get("final_loss"),
            "train": train.count, "heldout": held.count}


def build(family: str = DEFAULT_FAMILY, progress: Progress = _print,
          rebuild: bool = False) -> DemoBuild:
    """The demo build for `family`, made once and cached (a concurrent caller waits for it)."""
    # The converter's build-once cache (the demo sits above convert and may use it); imported
    # here so `geolocsft demo` can still say which extras are missing when convert is absent.
    from convert.cache import build_once

    if family not in FAMILIES:
        raise DemoError(f"family {family!r}: choose one of {', '.join(FAMILIES)}")
    parent = cache_dir() / "demo"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / f"{family}-{build_key(family)}"
    if rebuild:
        with file_lock(parent / f"{final.name}.lock"):  # the lock build_once takes
            shutil.rmtree(final, ignore_errors=True)

    def fill(work: Path) -> None:
        # Left by a build that was killed (SIGTERM/SIGKILL skip build_once's cleanup); no one
        # else can be writing one: build_once holds this key's lock.
        for stale in parent.glob(f"*{final.name}.tmp-*"):
            if stale != work:
                shutil.rmtree(stale, ignore_errors=True)
        progress(f"[demo] building the {family} demo model once (cached in {final})")
        logs = parent / f"{final.name}.logs"  # outlives a failed build: errors cite it
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        started = time.monotonic()
        info = _build_into(work, logs, family, progress)
        info["build_s"] = round(time.monotonic() - started, 1)
        (work / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        shutil.move(str(logs), work / "logs")

    made = not final.is_dir()
    build_once(final, fill)
    if made:
        _prune(parent, family, final)
    info = json.loads((final / BUILD_INFO).read_text(encoding="utf-8"))
    return DemoBuild(final, family, info)


def _prune(parent: Path, family: str, keep: Path) -> None:
    """Builds of older code for the same family are dead weight."""
    for old in parent.glob(f"{family}-" + "?" * 12):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(f"{old}.logs", ignore_errors=True)
            Path(f"{old}.lock").unlink(missing_ok=True)


# ---------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    quant: str
    scores: geo.Scores
    rows: list  # report.PredictionRow
    out_dir: Path
    seconds: float


def evaluate(demo: DemoBuild, out_dir: Path, quant: str = QUANTS[0], *,
             n_threads: int | None = None, photos: Path | None = None,
             on_progress=None) -> Evaluation:
    """The held-out renders through the engine (llama.cpp) with `bench_run`, report included.
    `photos`: a copy of the held-out folder to read the photos from (default: the cache)."""
    from geolocsft import bench_run
    from geolocsft.engine import Engine, ModelSpec

    folder = photos or demo.heldout
    data = bench_run.read_benchmark("csv", folder / "photos.csv", folder)
    spec = ModelSpec.from_folder(demo.model(quant))
    started = time.monotonic()
    with Engine(spec, **({"n_threads": n_threads} if n_threads else {})) as engine:
        result = bench_run.run_benchmark(data.samples, engine, out_dir, dataset="csv",
                                         images_root=folder, on_progress=on_progress,
                                         extra_record={"demo": "synthetic places"})
    return Evaluation(quant, result.scores, result.rows, Path(out_dir),
                      time.monotonic() - started)


def hf_answers(demo: DemoBuild) -> dict[str, tuple[float, float] | None]:
    """{photo id: (lat, lon) or None} of the Hugging Face model's greedy answers."""
    out = {}
    for line in demo.hf_predictions.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            lat, lon = row.get("pred_latitude"), row.get("pred_longitude")
            out[row["id"]] = None if lat is None or lon is None else (lat, lon)
    return out


def agreement(demo: DemoBuild, rows: list) -> tuple[int, int]:
    """(photos where the HF model and the GGUF answered within AGREEMENT_KM of each other,
    photos compared). A photo either side failed to answer counts as a disagreement."""
    hf = hf_answers(demo)
    agree = 0
    for row in rows:
        # The benchmark's id is the CSV's image column (images/<id>.jpg); the trainer's is the
        # record id, the file's stem.
        theirs = hf.get(Path(row.id).stem)
        if theirs is None or row.pred_lat is None or row.pred_lon is None:
            continue
        if geo.distance_km(theirs[0], theirs[1], row.pred_lat, row.pred_lon) <= AGREEMENT_KM:
            agree += 1
    return agree, len(rows)

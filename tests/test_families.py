"""The family registry (geolocsft/families.py): every entry is complete and is the only place
that names a family, and every registered family goes through the whole chain on its tiny
model: LoRA SFT (loss falls, loss only on the answer, LoRA only on the language model) ->
exact merge (only the adapted modules change) -> GGUF f16 that agrees with transformers at
every position -> Q8_0 -> the engine's answers parse through the grammar."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from geolocsft import families
from geolocsft.images import ImageBudget, default_budget, preset_budget, target_size
from tests.test_sft_data import PLACES, loss_tokens, make_dataset

ROOT = Path(__file__).resolve().parent.parent
NAMES = families.names()
FAMILY_MODULE_API = ("make_tiny", "prepare_for_converter", "image_budget",
                     "save_skeleton_processor", "stock_chat_handler")


# --- the registry itself -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_entry_is_complete_and_consistent(name):
    spec = families.get(name)
    assert families.get(spec) is spec and spec.name == name
    module = importlib.import_module(spec.converter_module)
    missing = [f for f in FAMILY_MODULE_API if not callable(getattr(module, f, None))]
    assert not missing, f"{spec.converter_module} lacks {missing}"
    assert module.MODEL_TYPE in spec.model_types and module.ARCHITECTURE in spec.hf_architectures
    for model_type in spec.model_types:
        assert families.by_model_type(model_type) is spec
    for arch in spec.gguf_architectures:
        assert families.by_gguf_architecture(arch) is spec
    assert spec.image_placeholder and "{marker}" in spec.placeholder_wrap and spec.end_of_turn
    assert sum(spec.layout.per_layer.values()) > 0
    re.compile(spec.layout.targets)
    for skeleton, config in spec.skeletons.items():
        data = json.loads((ROOT / "convert" / "configs" / config).read_text(encoding="utf-8"))
        assert data.get("_source") and data["model_type"] in spec.model_types, skeleton
    assert spec.demo.sft_flags and spec.demo.eval_max_new_tokens > 0


@pytest.mark.parametrize("name", NAMES)
def test_budgets_follow_the_image_rule(name):
    spec = families.get(name)
    seed, fast = default_budget(name), preset_budget(name, "fast")
    assert ImageBudget.from_dict(seed.to_dict()) == seed
    for budget in (seed, fast):
        assert not spec.image.allowed_tokens or budget.max_tokens in spec.image.allowed_tokens
        for size in ((640, 480), (480, 640), (4000, 3000), (3000, 40), (100, 100)):
            width, height = target_size(*size, budget)
            if spec.image.resize == "square":
                assert width == height == budget.fixed_side
                continue
            assert width % budget.factor == 0 and height % budget.factor == 0
            assert (width // budget.factor) * (height // budget.factor) <= budget.max_tokens \
                or min(width, height) == budget.factor
    assert fast.max_tokens <= max(seed.max_tokens, spec.image.fast_tokens)


def test_lookups_fail_with_the_known_names():
    with pytest.raises(families.UnknownFamilyError, match="known: " + re.escape(NAMES[0])):
        families.get("llava")
    with pytest.raises(families.UnknownFamilyError, match="model_type 'llava'"):
        families.by_model_type("llava")
    with pytest.raises(families.UnknownFamilyError, match="GGUF architecture"):
        families.by_gguf_architecture("llama")
    assert families.DEFAULT in NAMES


def _family_words() -> re.Pattern:
    """Any family's name, model_type, HF or GGUF architecture or projector type as a word of its
    own (not inside a longer name such as a model's "qwen2.5-vl-3b-instruct")."""
    strings = set()
    for spec in families.FAMILIES:
        strings |= {spec.name, *spec.model_types, *spec.hf_architectures,
                    *spec.gguf_architectures, *spec.projector_types}
    words = sorted(strings, key=len, reverse=True)
    return re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, words)) + r")(?![\w-]|\.\w)")


# Packages whose modules must not name a family: they read the registry instead.
CHECKED = ("geolocsft", "trainer", "convert", "demo", "desktop", "cluster", "bench")
ALLOWED = ("geolocsft/families.py",)
ALLOWED_FOLDER = "convert/families/"


def test_no_module_outside_the_registry_names_a_family():
    """A family's name, model_type, HF or GGUF architecture or projector type as a word of its
    own (not inside a longer name such as a model's "qwen2.5-vl-3b-instruct") appears only in
    the registry and the converter's family modules."""
    pattern = _family_words()
    found = []
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED or rel.startswith(ALLOWED_FOLDER):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                match = pattern.search(line)
                if match:
                    found.append(f"{rel}:{number}: {match.group(1)}")
    assert not found, "family facts outside geolocsft/families.py:\n" + "\n".join(found)


def test_the_check_catches_a_hard_coded_family(tmp_path):
    pattern = _family_words()
    name = families.DEFAULT
    assert pattern.search(f'if family == "{name}":')
    assert pattern.search(f"swa_full = arch == '{families.get(name).gguf_architectures[0]}'")
    assert not pattern.search(f"pull {name}-3b-instruct-q4_k_m")


# --- every family through the chain on its tiny model ----------------------------------------

@pytest.fixture(scope="module", params=NAMES)
def chain(request, tmp_path_factory):
    """One family's tiny model, trained a few SFT steps, merged, converted and loaded."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("llama_cpp")
    from convert.tiny import tiny_model
    from tests.test_sft_train import run_config
    from trainer.sft import train

    name = request.param
    root = tmp_path_factory.mktemp(f"chain-{name}")
    base = tiny_model(name)
    data = make_dataset(root / "data", per_place=2)
    cfg = run_config(base, data, root / "run", epochs=3, eval_fraction=0.0, lora_dropout=0.0,
                     learning_rate=5e-3, save_every_steps=0, tensorboard=False)
    summary = train(cfg)
    return name, base, root, summary


@pytest.mark.slow
def test_sft_loss_falls_and_lora_stays_in_the_language_model(chain):
    from safetensors.torch import load_file

    from trainer.collate import SFTCollator, load_records
    from trainer.sft import image_budget
    from trainer.sft_config import SFTConfig
    from transformers import AutoProcessor

    name, base, root, summary = chain
    spec = families.get(name)
    log = [json.loads(line) for line in
           (root / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses[-1] < losses[0], losses
    lora = load_file(str(root / "run" / "adapter" / "adapter_model.safetensors"))
    prefix = "base_model.model." + spec.layout.language_model + ".layers."
    assert lora and all(key.startswith(prefix) for key in lora), sorted(lora)[:3]
    record = json.loads((root / "run" / "adapter" / "training_record.json").read_text())
    assert record["family"] == name and record["lora_targets"] * 2 == len(lora)
    # The loss falls on exactly the caption and the end-of-turn token: decoded, they read back.
    processor = AutoProcessor.from_pretrained(base)
    budget = image_budget(spec, processor, SFTConfig())
    records, _ = load_records(make_dataset(root / "mask", per_place=1), budget)
    _, texts = loss_tokens(SFTCollator(processor, spec, budget), records[:2])
    assert texts == [r.target + spec.end_of_turn for r in records[:2]]


@pytest.mark.slow
def test_merge_changes_only_the_adapted_modules(chain):
    from convert.merge import merge_adapter
    from tests.fixtures.models import assert_merge_exact

    name, base, root, summary = chain
    merged = merge_adapter(base, root / "run" / "adapter", root / "merged", dtype="float32")
    record = json.loads((root / "run" / "adapter" / "training_record.json").read_text())
    assert assert_merge_exact(base, root / "run" / "adapter", merged) == record["lora_targets"]


@pytest.fixture(scope="module")
def folder(chain):
    from convert.build import build_model_folder

    name, base, root, summary = chain
    return build_model_folder(root / "models" / f"tiny-{name}", adapter=root / "run" / "adapter",
                              quant="Q8_0", keep_f16=True, progress=None)


@pytest.mark.slow
def test_f16_gguf_agrees_with_hugging_face_at_every_position(folder):
    report = folder.logit_report
    print(f"{folder.folder.name}: {report.summary()}")  # max |Δlogit| for the record
    assert report.positions >= 20
    assert report.agreement == 1.0, report.summary()
    assert report.max_abs_diff < 0.1, report.summary()


@pytest.mark.slow
def test_engine_answers_parse_through_the_grammar(folder, tmp_path):
    from PIL import Image

    from geolocsft.engine import Engine, ModelSpec

    spec = ModelSpec.from_folder(folder.folder)
    assert spec.family == folder.folder.name.removeprefix("tiny-")
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (160, 120), PLACES[0][4]).save(photo)
    # A model trained a few steps fills each value to the grammar's cap: short caps keep the
    # whole caption within max_tokens even one character per token (the tiny SentencePiece).
    with Engine(spec, n_threads=1, max_tokens=2000, max_value_chars=6) as engine:
        result = engine.locate(photo)
    guess = result.guesses[0]
    assert guess.parsed.ok, (guess.parsed.reason, guess.text[-300:])
    assert -90 <= guess.parsed.latitude <= 90 and -180 <= guess.parsed.longitude <= 180
    assert guess.timings.image_tokens > 0

"""The converter's family modules: the code that has to know a family's checkpoint files.
Which module serves which family is registry data (`geolocsft.families.FamilySpec.converter_module`).

Each family module offers the same functions:
- `make_tiny(out_dir)`: a tiny random checkpoint for tests and the demo;
- `prepare_for_converter(src_dir, staging_dir)`: a copy of a checkpoint that llama.cpp's
  converter reads correctly (the source is never modified);
- `image_budget(ckpt_dir) -> geolocsft.images.ImageBudget`;
- `save_skeleton_processor(out_dir, config)`: tokenizer, processor and chat template of a
  full-size skeleton (convert/skeleton.py);
- `stock_chat_handler(mmproj)`: llama-cpp-python's own chat handler for the family (the
  independent path `convert verify` and the benchmark's "stock" column use);
and the constants MODEL_TYPE, ARCHITECTURE, BASE_MODEL_IDS."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

from geolocsft import families
from geolocsft.families import FamilySpec
from geolocsft.fsutil import read_json


class UnsupportedModelError(ValueError):
    """A checkpoint of an architecture the converter does not handle."""


def family_module(family: FamilySpec | str) -> ModuleType:
    """The converter module of a family (a registry entry or name, e.g. "qwen2.5-vl")."""
    try:
        spec = families.get(family)
    except families.UnknownFamilyError as exc:
        raise UnsupportedModelError(str(exc)) from None
    return importlib.import_module(spec.converter_module)


def module_files(family: FamilySpec | str) -> list[Path]:
    """The source files of a family's converter module and of the sibling family modules it
    borrows from (a Qwen3-VL tokenizer is built by the Qwen2.5-VL module): cache keys hash them
    all, so a change to the borrowed code rebuilds this family's models too."""
    here = Path(__file__).resolve().parent
    name = families.get(family).converter_module.rsplit(".", 1)[1]
    seen, todo = [], [name]
    while todo:
        current = todo.pop()
        if current in seen or not (here / f"{current}.py").is_file():
            continue
        seen.append(current)
        text = (here / f"{current}.py").read_text(encoding="utf-8")
        for dotted, listed in re.findall(r"convert\.families(?:\.(\w+)| import ([\w, ]+))", text):
            todo += [dotted] if dotted else [n.strip() for n in listed.split(",")]
    return [here / f"{n}.py" for n in sorted(seen)]


def image_processor_config(ckpt_dir: Path, error: type[Exception] = ValueError
                           ) -> tuple[Path, dict]:
    """(file, settings) of a checkpoint's image processor. transformers 5 nests it in
    processor_config.json (what a trained or merged checkpoint carries, so it wins); released
    checkpoints may keep a flat preprocessor_config.json."""
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = Path(ckpt_dir) / name
        if not path.is_file():
            continue
        cfg = read_json(path, error, unreadable="cannot read the image processor config")
        cfg = (cfg.get(key) or {}) if key else cfg
        if cfg:
            return path, cfg
    raise error(f"{ckpt_dir}: no processor_config.json or preprocessor_config.json")


def read_config(ckpt_dir: Path) -> dict:
    return read_json(Path(ckpt_dir) / "config.json", UnsupportedModelError,
                     missing="missing (not a Hugging Face checkpoint)")


def family_of(ckpt_dir: Path) -> FamilySpec:
    """The family of a checkpoint folder, from its config.json; clear error otherwise."""
    config = read_config(ckpt_dir)
    try:
        return families.by_model_type(config.get("model_type"))
    except families.UnknownFamilyError as exc:
        raise UnsupportedModelError(f"{Path(ckpt_dir) / 'config.json'}: {exc}") from None


def module_for_checkpoint(ckpt_dir: Path) -> ModuleType:
    return family_module(family_of(ckpt_dir))

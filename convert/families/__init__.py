"""Model families the converter handles, keyed by the `model_type` in a checkpoint's config.json.

Each family module offers the same functions:
- `make_tiny(out_dir)`: a tiny random checkpoint for tests and the demo;
- `prepare_for_converter(src_dir, staging_dir)`: a copy of a checkpoint that llama.cpp's
  converter reads correctly (the source is never modified);
- `image_budget(ckpt_dir) -> geolocsft.images.ImageBudget`;
and the constants MODEL_TYPE, ARCHITECTURE, BASE_MODEL_IDS."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from geolocsft.images import Family
from geolocsft.fsutil import read_json

# config.json model_type -> (family, module)
_FAMILIES: dict[str, tuple[Family, str]] = {
    "qwen2_5_vl": (Family.QWEN25VL, "convert.families.qwen25vl"),
    "gemma3": (Family.GEMMA3, "convert.families.gemma3"),
}


class UnsupportedModelError(ValueError):
    """A checkpoint of an architecture the converter does not handle."""


def family_module(family: Family | str) -> ModuleType:
    """The family module for a Family (or its value, e.g. "qwen2.5-vl")."""
    family = Family(family)
    for fam, module in _FAMILIES.values():
        if fam is family:
            return importlib.import_module(module)
    raise UnsupportedModelError(f"no converter family for {family.value}")


def read_config(ckpt_dir: Path) -> dict:
    return read_json(Path(ckpt_dir) / "config.json", UnsupportedModelError,
                     missing="missing (not a Hugging Face checkpoint)")


def family_of(ckpt_dir: Path) -> Family:
    """The family of a checkpoint folder, from its config.json; clear error otherwise."""
    config = read_config(ckpt_dir)
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES))
        raise UnsupportedModelError(
            f"{Path(ckpt_dir) / 'config.json'}: model_type {model_type!r} is not supported "
            f"(supported: {known})"
        )
    return _FAMILIES[model_type][0]


def module_for_checkpoint(ckpt_dir: Path) -> ModuleType:
    return family_module(family_of(ckpt_dir))

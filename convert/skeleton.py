"""Full-size skeletons: random-weight checkpoints built from the published configs, for timing,
memory and converter-layout work at real size (they time exactly like the released weights;
their answers are noise). Built once per version of this code and cached under
`cache_dir()/skeleton/`, like the tiny models; never part of the default test run.

The configs live as data in `convert/configs/<name>.json` with their source; each is loaded
through transformers' own `from_dict`, the path a released config.json takes."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from convert.cache import build_once, prune_stale
from convert.tiny import _version
from geolocsft import families
from geolocsft.paths import cache_dir

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SEED = 1234


def published_config(name: str) -> dict:
    family, file = _entry(name)
    data = json.loads((CONFIG_DIR / file).read_text(encoding="utf-8"))
    data.pop("_source", None)
    return data


def _entry(name: str) -> tuple[families.FamilySpec, str]:
    """(family, config file) of a skeleton: the names are the released checkpoints' names,
    listed in the registry (geolocsft.families, `skeletons`)."""
    try:
        return families.skeleton_family(name)
    except families.UnknownFamilyError as exc:
        raise ValueError(str(exc)) from None


def _config(name: str, layers: int | None):
    from transformers import AutoConfig

    data = published_config(name)
    model_type = data.pop("model_type")
    config = AutoConfig.for_model(model_type, **data)
    if layers is not None:  # the shallow variant: real widths, fewer decoder layers
        text = getattr(config, "text_config", config)
        text.num_hidden_layers = layers
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:layers]
    return config


def make_skeleton(name: str, out_dir: Path, *, layers: int | None = None) -> Path:
    """Write a random-weight checkpoint of `name` into `out_dir`: bf16 weights (one copy in
    memory), the family's real tokenizer layout at the released vocabulary size, processor
    and chat template, as the released repository has them."""
    import torch

    from convert.families import family_module

    family, _ = _entry(name)
    module = family_module(family)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _config(name, layers)
    torch.manual_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: a 4B model is 8 GB, not 16
    try:
        model = _model_class(family)(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out_dir, safe_serialization=True)
    del model
    module.save_skeleton_processor(out_dir, config)
    return out_dir


def _model_class(family: families.FamilySpec):
    import transformers

    from convert.families import family_module

    return getattr(transformers, family_module(family).ARCHITECTURE)


def _hash(name: str, layers: int | None) -> str:
    from convert.families import module_files

    family, file = _entry(name)
    digest = hashlib.sha256(inspect.getsource(inspect.getmodule(make_skeleton)).encode())
    for path in module_files(family):
        digest.update(path.read_bytes())
    digest.update((CONFIG_DIR / file).read_bytes())
    digest.update(f"layers={layers}".encode())
    for package in ("transformers", "tokenizers", "sentencepiece", "torch"):
        digest.update(f"{package}={_version(package)}".encode())
    return digest.hexdigest()[:12]


def skeleton_checkpoint(name: str, *, layers: int | None = None) -> Path:
    """The cached random-weight checkpoint of `name` (built on first use: minutes, ~10 GB RAM)."""
    tag = name if layers is None else f"{name}-{layers}l"
    final = cache_dir() / "skeleton" / f"{tag}-{_hash(name, layers)}"
    final.parent.mkdir(parents=True, exist_ok=True)
    built = build_once(final, lambda temp: make_skeleton(name, temp, layers=layers))
    prune_stale(final, f"{tag}-" + "?" * 12)
    return built


def skeleton_folder(name: str, quant: str = "Q4_K_M", *, layers: int | None = None,
                    progress=None) -> Path:
    """A model folder of the skeleton converted by this project's converter."""
    from convert.build import build_model_folder
    from convert.tiny import pipeline_hash

    ckpt = skeleton_checkpoint(name, layers=layers)
    key = hashlib.sha256(f"{ckpt.name}/{pipeline_hash(_entry(name)[0])}/{quant}".encode()).hexdigest()[:12]
    tag = ckpt.name.rsplit("-", 1)[0]
    final = cache_dir() / "skeleton" / f"{tag}-folder-{quant}-{key}"
    built = build_once(final, lambda temp: build_model_folder(
        temp, base=ckpt, quant=quant, check_logits=False, answer=False,
        name=f"skeleton-{tag}-{quant}", overwrite=True, progress=progress))
    prune_stale(final, f"{tag}-folder-{quant}-" + "?" * 12)
    return built

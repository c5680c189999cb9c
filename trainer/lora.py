"""Which modules get LoRA: the language model's attention and MLP projections, nothing else.

Vision towers have gate/up/down_proj and q/k/v_proj too, so a plain suffix list (what most
recipes pass to peft) would also adapt the vision encoder. We list targets by full module path
under the language model, as the family's layout in the registry (geolocsft.families) states
them, and check the count per layer type.
"""

from __future__ import annotations

import re
from typing import Any

from geolocsft import families
from geolocsft.families import FamilySpec


class LoraTargetError(RuntimeError):
    """The model does not match the family's layout: refuse rather than adapt the wrong thing."""


def family_from_model_type(model_type: str, source: str = "config") -> FamilySpec:
    try:
        return families.by_model_type(model_type)
    except families.UnknownFamilyError as exc:
        raise LoraTargetError(f"{source}: {exc}") from None


def num_text_layers(model: Any) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or config
    return int(text.num_hidden_layers)


def expected_targets(model: Any, family: FamilySpec) -> int:
    """How many LoRA targets the language model has: the layout's count per layer type."""
    text = getattr(model.config, "text_config", None) or model.config
    per_layer = family.layout.per_layer
    types = list(getattr(text, "layer_types", None) or [])[:num_text_layers(model)]
    if not types or not set(types) <= set(per_layer):
        counts = [per_layer[""]] * num_text_layers(model)
    else:
        counts = [per_layer[t] for t in types]
    # The last num_kv_shared_layers layers reuse earlier layers' keys and values and have no
    # k/v projections: the layout's "kv_shared" count applies there, whatever their type.
    shared = int(getattr(text, "num_kv_shared_layers", 0) or 0)
    if shared and "kv_shared" in per_layer:
        first = max(0, len(counts) - shared)
        counts[first:] = [per_layer["kv_shared"]] * (len(counts) - first)
    return sum(counts)


def select_targets(model: Any, family: FamilySpec) -> list[str]:
    """Full paths of the LoRA targets; raises unless each language-model layer has its count."""
    layout = family.layout
    names = dict(model.named_modules())
    for part in (layout.language_model, layout.vision_tower, layout.projector):
        if part not in names:
            raise LoraTargetError(f"{family.name} model has no module {part!r}")
    prefix = layout.language_model + ".layers."
    pattern = re.compile(r"^\d+\." + layout.targets + "$")
    targets = [name for name in names
               if name.startswith(prefix) and pattern.match(name[len(prefix):])]
    expected = expected_targets(model, family)
    if len(targets) != expected:
        raise LoraTargetError(
            f"found {len(targets)} LoRA targets under {layout.language_model}, expected "
            f"{expected} ({num_text_layers(model)} layers; per layer type: "
            f"{dict(layout.per_layer)})"
        )
    return targets


def lora_config(targets: list[str], family: FamilySpec, rank: int, alpha: int, dropout: float,
                train_projector: bool = False):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=targets,
        modules_to_save=[family.layout.projector] if train_projector else None,
        task_type="CAUSAL_LM",
    )


def apply_lora(model: Any, family: FamilySpec, rank: int, alpha: int, dropout: float,
               train_projector: bool = False):
    """Wrap `model` with LoRA adapters on the language model only; returns (peft_model, targets)."""
    from peft import get_peft_model

    targets = select_targets(model, family)
    peft_model = get_peft_model(
        model, lora_config(targets, family, rank, alpha, dropout, train_projector)
    )
    check_adapted(peft_model, family, len(targets))
    return peft_model, targets


def lora_module_names(peft_model: Any) -> list[str]:
    """Names (in the base model's namespace) of the modules that carry LoRA weights."""
    from peft.tuners.lora import LoraLayer

    strip = "base_model.model."
    return [
        name[len(strip):] if name.startswith(strip) else name
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    ]


def check_adapted(peft_model: Any, family: FamilySpec, expected: int) -> None:
    layout = family.layout
    adapted = lora_module_names(peft_model)
    outside = [n for n in adapted if not n.startswith(layout.language_model + ".")]
    if outside or len(adapted) != expected:
        raise LoraTargetError(
            f"LoRA landed on {len(adapted)} modules (expected {expected}); "
            f"outside the language model: {outside[:5]}"
        )

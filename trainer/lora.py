"""Which modules get LoRA: the language model's attention and MLP projections, nothing else.

Qwen2.5-VL's vision blocks have gate/up/down_proj and Gemma 3's SigLIP tower has q/k/v_proj, so
a plain suffix list (what most recipes pass to peft) would also adapt the vision encoder. We list
targets by full module path under the language model and check the count: 7 per decoder layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from geolocsft.images import Family

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj of decoder layer N.
LAYER_TARGET = re.compile(r"\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")


@dataclass(frozen=True)
class ModelLayout:
    """Where the parts of a vision-language model sit (transformers 5 module paths)."""

    language_model: str
    vision_tower: str
    projector: str


LAYOUTS = {
    Family.QWEN25VL: ModelLayout("model.language_model", "model.visual", "model.visual.merger"),
    Family.GEMMA3: ModelLayout(
        "model.language_model", "model.vision_tower", "model.multi_modal_projector"
    ),
}

MODEL_TYPES = {"qwen2_5_vl": Family.QWEN25VL, "gemma3": Family.GEMMA3}


class LoraTargetError(RuntimeError):
    """The model does not match the family's layout: refuse rather than adapt the wrong thing."""


def family_from_model_type(model_type: str, source: str = "config") -> Family:
    try:
        return MODEL_TYPES[model_type]
    except KeyError:
        known = ", ".join(sorted(MODEL_TYPES))
        raise LoraTargetError(
            f"{source}: model_type {model_type!r} is not supported (known: {known})"
        ) from None


def num_text_layers(model: Any) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or config
    return int(text.num_hidden_layers)


def select_targets(model: Any, family: Family) -> list[str]:
    """Full paths of the LoRA targets; raises unless exactly 7 per language-model layer."""
    layout = LAYOUTS[family]
    names = dict(model.named_modules())
    for part in (layout.language_model, layout.vision_tower, layout.projector):
        if part not in names:
            raise LoraTargetError(f"{family.value} model has no module {part!r}")
    prefix = layout.language_model
    targets = [
        name
        for name in names
        if name.startswith(prefix + ".layers.") and LAYER_TARGET.search(name[len(prefix):])
    ]
    expected = num_text_layers(model) * len(PROJECTIONS)
    if len(targets) != expected:
        raise LoraTargetError(
            f"found {len(targets)} LoRA targets under {prefix}, expected {expected} "
            f"({num_text_layers(model)} layers x {len(PROJECTIONS)} projections)"
        )
    return targets


def lora_config(targets: list[str], family: Family, rank: int, alpha: int, dropout: float,
                train_projector: bool = False):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=targets,
        modules_to_save=[LAYOUTS[family].projector] if train_projector else None,
        task_type="CAUSAL_LM",
    )


def apply_lora(model: Any, family: Family, rank: int, alpha: int, dropout: float,
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


def check_adapted(peft_model: Any, family: Family, expected: int) -> None:
    layout = LAYOUTS[family]
    adapted = lora_module_names(peft_model)
    outside = [n for n in adapted if not n.startswith(layout.language_model + ".")]
    if outside or len(adapted) != expected:
        raise LoraTargetError(
            f"LoRA landed on {len(adapted)} modules (expected {expected}); "
            f"outside the language model: {outside[:5]}"
        )

"""Model families: the one place that states what differs between the vision-language models
geolocsft fine-tunes and runs, as data. The engine, image preparation, trainer, converter,
benchmark and demo read these entries; no other module names a family (tests/test_families.py
checks that). The converter's family modules (`convert/families/<module>.py`) hold the code
that has to know a checkpoint's files: the tiny-model factory, converter preparation, reading
a checkpoint's image budget and the stock chat handler.

Adding a family: an entry here, a converter family module, its published configs under
`convert/configs/` (for the benchmark's skeletons) and catalog entries (docs/families.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


class UnknownFamilyError(ValueError):
    """A family name (or architecture) no entry here describes."""


@dataclass(frozen=True)
class ImageRule:
    """How the family's processor sizes a photo, and the seed's budget for it.

    resize:
      "smart":  sides rounded to multiples of `factor`, then scaled together so the area lies
                within [min_pixels, max_pixels] (Qwen-VL processors); tokens = area / factor².
      "square": squashed to fixed_side x fixed_side (Gemma 3 without pan-and-scan); a fixed
                `tokens` per image.
      "fit":    scaled to the largest size whose sides are multiples of `factor` and whose area
                is at most max_pixels, aspect kept (Gemma 4); tokens = area / factor².
    """

    resize: str
    factor: int = 0  # side multiple: patch size x merge (or pooling) size
    min_pixels: int = 0
    max_pixels: int = 0  # the seed's budget
    max_aspect: int = 0  # longest/shortest side the processor accepts (0: no limit)
    fixed_side: int = 0
    tokens: int = 0  # "square": tokens per image
    fast_tokens: int = 256  # the fast preset's vision tokens (docs/performance.md)
    allowed_tokens: tuple[int, ...] = ()  # token budgets the processor accepts (empty: any)

    def __post_init__(self) -> None:
        if self.resize not in ("smart", "square", "fit"):
            raise ValueError(f"unknown resize rule {self.resize!r}")


@dataclass(frozen=True)
class ModelLayout:
    """Where a checkpoint's parts sit (transformers 5 module paths), and which language-model
    modules LoRA adapts: `targets` matches the path after `<language_model>.layers.N.`, and
    `per_layer` says how many targets each layer type has ("" for layers without a type;
    "kv_shared" for the last `num_kv_shared_layers` layers, which reuse earlier layers' KV and
    have no k/v projections)."""

    language_model: str
    vision_tower: str
    projector: str
    targets: str = r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    per_layer: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({"": 7}))


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's SFT on this family's tiny model (`geolocsft train sft` flags on top of the
    seed preset) and the room its HF evaluation needs for an answer (docs/demo.md)."""

    sft_flags: tuple[str, ...]
    eval_max_new_tokens: int
    in_ci: bool = False  # the default test run checks this family's demo accuracy


@dataclass(frozen=True)
class FamilySpec:
    name: str  # what manifests, training records and stores carry, e.g. "qwen2.5-vl"
    title: str  # for people, e.g. "Qwen2.5-VL"
    model_types: tuple[str, ...]  # config.json model_type of its checkpoints
    hf_architectures: tuple[str, ...]  # config.json architectures
    gguf_architectures: tuple[str, ...]  # general.architecture of its text GGUF
    projector_types: tuple[str, ...]  # clip.projector_type of its mmproj GGUF
    converter_module: str  # convert.families.<module>
    image: ImageRule
    # What the HF chat template writes where the image goes (the processor expands it at
    # training time; mtmd's marker takes its place at inference), and the text around it.
    image_placeholder: str
    placeholder_wrap: str
    end_of_turn: str  # the token the template writes after an assistant turn
    layout: ModelLayout
    demo: DemoRecipe
    base_models: tuple[str, ...] = ()  # released checkpoints the converter takes
    # Released sizes as full-size random-weight skeletons: name -> convert/configs/<file>.
    skeletons: Mapping[str, str] = field(default_factory=dict)
    # Sliding-window attention layers keep the full cache (else the prompt prefix is dropped).
    full_swa_cache: bool = False
    # Part of the language model is recurrent: its state cannot be cut back to a position, so
    # the engine restores saved copies of the prefix's and the prompt's state instead of
    # trimming (geolocsft/engine_state.py) and does not draft grammar-forced tokens.
    recurrent: bool = False
    # Variables the chat template is rendered with wherever a prompt is built (training, the
    # HF evaluation, the engine), so that all three see the same text; e.g. a template whose
    # generation prompt opens a thinking block unless told not to.
    chat_template_kwargs: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}))
    notes: str = ""  # status and caveats, shown in docs/families.md


_QWEN_LAYOUT = ModelLayout("model.language_model", "model.visual", "model.visual.merger")

_COMMON_DEMO_FLAGS = ("--batch-size", "2", "--learning-rate", "2e-3", "--warmup-steps", "3",
                      "--lora-dropout", "0", "--train-projector")

FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(
        name="qwen2.5-vl",
        title="Qwen2.5-VL",
        model_types=("qwen2_5_vl",),
        hf_architectures=("Qwen2_5_VLForConditionalGeneration",),
        gguf_architectures=("qwen2vl",),
        projector_types=("qwen2.5vl_merger", "qwen25vl"),
        converter_module="convert.families.qwen25vl",
        # 14 px patches merged 2x2; the paper's budget of 1,280 vision tokens; min is Qwen's 56².
        image=ImageRule("smart", factor=28, min_pixels=56 * 56, max_pixels=1280 * 28 * 28,
                        max_aspect=200),
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        placeholder_wrap="{marker}",
        end_of_turn="<|im_end|>",
        layout=_QWEN_LAYOUT,
        # The tiny Qwen needs 12 epochs with the rate decaying to 0: at a constant rate its
        # greedy answers kept slipping a token out of the memorised caption (docs/demo.md).
        demo=DemoRecipe(("--epochs", "12", "--lr-scheduler", "cosine", *_COMMON_DEMO_FLAGS),
                        eval_max_new_tokens=256, in_ci=True),
        base_models=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
                     "Qwen/Qwen2.5-VL-32B-Instruct", "Qwen/Qwen2.5-VL-72B-Instruct"),
        skeletons=MappingProxyType({"qwen2.5-vl-3b-instruct": "qwen2.5-vl-3b-instruct.json"}),
        notes="the seed's family",
    ),
    FamilySpec(
        name="gemma3",
        title="Gemma 3",
        model_types=("gemma3",),
        hf_architectures=("Gemma3ForConditionalGeneration",),
        gguf_architectures=("gemma3",),
        projector_types=("gemma3",),
        converter_module="convert.families.gemma3",
        image=ImageRule("square", fixed_side=896, tokens=256),
        image_placeholder="<start_of_image>",
        placeholder_wrap="\n\n{marker}\n\n",
        end_of_turn="<end_of_turn>",
        layout=ModelLayout("model.language_model", "model.vision_tower",
                           "model.multi_modal_projector"),
        # Gemma 3 learns the renders in 4 epochs at a constant rate (100 % held out); a template
        # target is ~300 tokens of the tiny model's small SentencePiece vocabulary.
        demo=DemoRecipe(("--epochs", "4", "--lr-scheduler", "constant", *_COMMON_DEMO_FLAGS),
                        eval_max_new_tokens=420, in_ci=True),
        base_models=("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it",
                     "google/gemma-3-4b-pt", "google/gemma-3-12b-pt", "google/gemma-3-27b-pt"),
        skeletons=MappingProxyType({"gemma-3-4b-it": "gemma-3-4b-it.json"}),
        full_swa_cache=True,
        notes="the seed's second family",
    ),
    FamilySpec(
        name="qwen3-vl",
        title="Qwen3-VL",
        model_types=("qwen3_vl",),
        hf_architectures=("Qwen3VLForConditionalGeneration",),
        gguf_architectures=("qwen3vl",),
        projector_types=("qwen3vl_merger",),
        converter_module="convert.families.qwen3vl",
        # 16 px patches merged 2x2 (sides multiples of 32). The seed's 1,280 vision tokens kept as
        # tokens, not pixels (1,280 x 32² ~ 1.3 MP): the language model reads as many image
        # tokens per photo as in the paper's recipe. Min is the released processor's 256².
        image=ImageRule("smart", factor=32, min_pixels=256 * 256, max_pixels=1280 * 32 * 32,
                        max_aspect=200),
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        placeholder_wrap="{marker}",
        end_of_turn="<|im_end|>",
        # The DeepStack mergers (model.visual.deepstack_merger_list) stay frozen: the projector
        # trained with --train-projector is the final merger, as for Qwen2.5-VL.
        layout=_QWEN_LAYOUT,
        # The tiny Qwen2.5-VL's recipe (same vocabulary, same caption lengths): 95.8 % at 25 km
        # through Q8_0 (docs/demo.md, "Qwen3-VL"); the new family the default test run checks.
        demo=DemoRecipe(("--epochs", "12", "--lr-scheduler", "cosine", *_COMMON_DEMO_FLAGS),
                        eval_max_new_tokens=256, in_ci=True),
        base_models=("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct",
                     "Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-32B-Instruct"),
        skeletons=MappingProxyType({"qwen3-vl-2b-instruct": "qwen3-vl-2b-instruct.json",
                                    "qwen3-vl-4b-instruct": "qwen3-vl-4b-instruct.json"}),
        notes="dense Instruct sizes; tested here with tiny models, real weights untested",
    ),
    FamilySpec(
        name="gemma4",
        title="Gemma 4",
        model_types=("gemma4",),
        hf_architectures=("Gemma4ForConditionalGeneration",),
        gguf_architectures=("gemma4",),
        projector_types=("gemma4v",),
        converter_module="convert.families.gemma4",
        # Patches of 16 px pooled 3x3: sides on a 48 px grid, aspect kept, at most N tokens with
        # N one of 70/140/280/560/1120. 280 is the released processors' default and the allowed
        # budget nearest the seed's 256 Gemma 3 tokens; the fast preset halves it to 140 (256,
        # the other families' fast budget, is not one the processor accepts).
        image=ImageRule("fit", factor=48, max_pixels=280 * 48 * 48, fast_tokens=140,
                        allowed_tokens=(70, 140, 280, 560, 1120)),
        image_placeholder="<|image|>",
        placeholder_wrap="{marker}",
        end_of_turn="<turn|>",
        # KV-sharing layers (the last 20 of E2B's 35, 18 of E4B's 42) reuse an earlier layer's
        # keys and values and have no k/v projections: 5 targets there ("kv_shared", counted
        # from text_config.num_kv_shared_layers), 7 elsewhere. The per-layer-input gate and
        # projection are left as the seed leaves embeddings.
        layout=ModelLayout("model.language_model", "model.vision_tower", "model.embed_vision",
                           per_layer=MappingProxyType({"sliding_attention": 7, "full_attention": 7,
                                                       "kv_shared": 5})),
        # Gemma 3's recipe (4 epochs, constant rate) left the tiny Gemma 4 under-fitted (loss
        # 0.061, 62.5 % at 25 km: slips late in the caption); twice the epochs, decaying to 0 as
        # for the Qwen families: 95.8 % (docs/demo.md, "The newer families").
        demo=DemoRecipe(("--epochs", "8", "--lr-scheduler", "cosine", *_COMMON_DEMO_FLAGS),
                        eval_max_new_tokens=420),
        base_models=("google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "google/gemma-4-E2B",
                     "google/gemma-4-E4B"),
        skeletons=MappingProxyType({"gemma-4-e2b-it": "gemma-4-e2b-it.json",
                                    "gemma-4-e4b-it": "gemma-4-e4b-it.json"}),
        # Sliding-window layers (512 tokens released) as in Gemma 3: the engine reuses the prompt.
        full_swa_cache=True,
        notes="E2B / E4B; tested here with a tiny random model, real weights untested",
    ),
    FamilySpec(
        name="qwen3.5",
        title="Qwen3.5",
        model_types=("qwen3_5",),
        hf_architectures=("Qwen3_5ForConditionalGeneration",),
        gguf_architectures=("qwen35",),
        projector_types=("qwen3vl_merger",),
        converter_module="convert.families.qwen35",
        # 16 px patches merged 2x2. The seed's budget of 1,280 vision tokens (as Qwen2.5-VL's),
        # within mtmd's 4,096 cap; the released processors' floor of 64 tokens (65,536 px).
        image=ImageRule("smart", factor=32, min_pixels=65536, max_pixels=1280 * 32 * 32,
                        max_aspect=200),
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        placeholder_wrap="{marker}",
        end_of_turn="<|im_end|>",
        # LoRA on the language model only; the linear-attention (Gated DeltaNet) layers have
        # their own projections: fused q/k/v in, output gate z and out (the per-head a/b gates
        # are 16-48 wide and stay frozen). Full-attention layers are as in Qwen2.5.
        layout=ModelLayout(
            "model.language_model", "model.visual", "model.visual.merger",
            targets=r"(self_attn\.[qkvo]_proj|linear_attn\.(in_proj_qkv|in_proj_z|out_proj)"
                    r"|mlp\.(gate|up|down)_proj)",
            per_layer=MappingProxyType({"full_attention": 7, "linear_attention": 6})),
        # The tiny Qwen2.5-VL's recipe (same caption lengths): 95.8 % at 25 km through Q8_0
        # (docs/demo.md, "Qwen3.5"). Out of the default run to keep CI short (its steps cost
        # ~1.5x Qwen2.5-VL's).
        demo=DemoRecipe(("--epochs", "12", "--lr-scheduler", "cosine", *_COMMON_DEMO_FLAGS),
                        eval_max_new_tokens=256, in_ci=False),
        base_models=("Qwen/Qwen3.5-0.8B", "Qwen/Qwen3.5-2B", "Qwen/Qwen3.5-4B", "Qwen/Qwen3.5-9B",
                     "Qwen/Qwen3.5-27B", "Qwen/Qwen3.5-0.8B-Base", "Qwen/Qwen3.5-2B-Base",
                     "Qwen/Qwen3.5-4B-Base", "Qwen/Qwen3.5-9B-Base"),
        skeletons=MappingProxyType({"qwen3.5-0.8b": "qwen3.5-0.8b.json"}),
        recurrent=True,
        # 4B and larger ship a template whose generation prompt opens a thinking block ("<think>\n")
        # by default; 0.8B/2B's closes it empty. Geolocation captions are trained and read
        # after an empty think block for every size.
        chat_template_kwargs=MappingProxyType({"enable_thinking": False}),
        notes="hybrid Gated DeltaNet + attention language model (recurrent state)",
    ),
)

# The seed's family: the default wherever a family is not given or read from a model.
DEFAULT = FAMILIES[0].name

_BY_NAME = {spec.name: spec for spec in FAMILIES}


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def get(family: str | FamilySpec) -> FamilySpec:
    """The entry for a family name (or the entry itself); one clear error otherwise."""
    if isinstance(family, FamilySpec):
        return family
    try:
        return _BY_NAME[str(family)]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {family!r}; known: {', '.join(_BY_NAME)}") from None


def _lookup(attribute: str, value: str, what: str) -> FamilySpec:
    for spec in FAMILIES:
        if value in getattr(spec, attribute):
            return spec
    known = ", ".join(sorted(v for spec in FAMILIES for v in getattr(spec, attribute)))
    raise UnknownFamilyError(f"{what} {value!r} is not supported (supported: {known})")


def by_model_type(model_type: str) -> FamilySpec:
    """The family of a Hugging Face checkpoint, from its config.json model_type."""
    return _lookup("model_types", model_type, "model_type")


def by_gguf_architecture(arch: str) -> FamilySpec:
    """The family of a text GGUF, from its general.architecture."""
    return _lookup("gguf_architectures", arch, "GGUF architecture")


def skeleton_family(name: str) -> tuple[FamilySpec, str]:
    """(family, config file) of a full-size skeleton name such as "qwen2.5-vl-3b-instruct"."""
    for spec in FAMILIES:
        if name in spec.skeletons:
            return spec, spec.skeletons[name]
    known = ", ".join(s for spec in FAMILIES for s in spec.skeletons)
    raise UnknownFamilyError(f"unknown skeleton {name!r}; known: {known}")


def all_skeletons() -> tuple[str, ...]:
    return tuple(s for spec in FAMILIES for s in spec.skeletons)

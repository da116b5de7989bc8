"""Which modules get LoRA: one resolver for the loader, validate and plan, whose count PEFT itself confirms."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import error
from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel

# peft.LoraConfig field -> the recipe key (trl.ModelConfig) it is built from, so PEFT's errors can name the key.
LORA_FIELDS = {
    "r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "target_parameters": "lora_target_parameters",
    "modules_to_save": "lora_modules_to_save",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "task_type": "lora_task_type",
}
# Path fragments of the parts of a VLM that are not the language model, for a model whose decoder layers are not found.
VISION_PARTS = ("vision", "visual", "image", "multi_modal_projector", "mm_projector", "connector", "patch_embed")


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Full names of the linear layers (plain or bitsandbytes) outside the output head."""
    import torch

    names = []
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and module is not output and not name.endswith("lm_head"):
            names.append(name)
    return names


def decoder_layer_lists(model: PreTrainedModel) -> list[str]:
    """Full names of the language model's lists of decoder layers (`model.layers`, `model.language_model.layers`,
    ...), found through transformers' own get_decoder; empty when the model has no recognisable decoder."""
    import torch

    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    if decoder is None or prefix is None:
        return []
    lists = [name for name, child in decoder.named_children() if isinstance(child, torch.nn.ModuleList)]
    return [f"{prefix}.{name}" if prefix else name for name in lists]


def decoder_linear_names(model: PreTrainedModel, kind: str) -> list[str]:
    """Full names of every linear layer inside the language model's decoder layers, fused projections included."""
    linear = linear_module_names(model)
    lists = decoder_layer_lists(model)
    if lists:
        return [n for n in linear if any(n.startswith(f"{layers}.") for layers in lists)]
    return [n for n in linear if not (kind == IMAGE_TEXT_TO_TEXT and any(p in n for p in VISION_PARTS))]


def default_lora_targets(model: PreTrainedModel, kind: str) -> list[str] | str:
    """Every linear layer of the decoder layers: their leaf names when no other linear layer shares one (the
    readable form PEFT suffix-matches), else a regex anchored at the decoder layers (VLMs, whose vision tower has
    its own q_proj)."""
    adapted = decoder_linear_names(model, kind)
    if not adapted:
        raise error(
            "lora_target_modules",
            f"found no linear layer in the decoder layers of {type(model).__name__}",
            "name the modules to adapt in lora_target_modules",
        )
    leaves = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in adapted))
    others = set(linear_module_names(model)) - set(adapted)
    if not any(n.rsplit(".", 1)[-1] in leaves for n in others):
        return leaves
    lists = [prefix for prefix in decoder_layer_lists(model) if any(n.startswith(f"{prefix}.") for n in adapted)]
    if not lists:  # no decoder found: the names themselves, exact
        return rf"^(?:{_alternatives(adapted)})$"
    return rf"^(?:{_alternatives(lists)})\.\d+\.(?:.*\.)?(?:{_alternatives(leaves)})$"


def _alternatives(names: list[str]) -> str:
    return "|".join(re.escape(name) for name in names)


def resolve_lora_targets(model: PreTrainedModel, kind: str, requested: list[str] | str | None) -> list[str] | str:
    """What LoraConfig.target_modules gets: the requested leaf names (each must name a linear layer), regex or
    `all-linear`, else every linear layer inside the language model's decoder layers, never the vision tower, the
    projector or lm_head."""
    if not requested:
        return default_lora_targets(model, kind)
    if isinstance(requested, str) and (requested == "all-linear" or not re.fullmatch(r"[\w.]+", requested)):
        return requested  # a regex, full-matched by PEFT
    # trl.ModelConfig turns a one-item list into a string; a plain name is still a name
    targets = [requested] if isinstance(requested, str) else list(requested)
    leaves = {n.rsplit(".", 1)[-1] for n in linear_module_names(model)}
    missing = [t for t in targets if t not in leaves and t != "all-linear"]
    if missing:
        raise error(
            "lora_target_modules", f"{missing} match no linear layer of this model", f"use some of: {sorted(leaves)}"
        )
    return targets


def build_lora_config(model_args: Any, model: PreTrainedModel, kind: str) -> LoraConfig | None:
    """The LoraConfig of the recipe, with resolve_lora_targets' targets; None without use_peft."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        **{name: getattr(model_args, key) for name, key in LORA_FIELDS.items()},
        target_modules=resolve_lora_targets(model, kind, model_args.lora_target_modules),
        bias="none",
    )


def lora_copy(model: PreTrainedModel, lora_config: LoraConfig) -> Any:
    """PEFT's own model of `lora_config` on a copy of `model` (made for meta-device models, where the copy costs
    nothing), so that counts come from PEFT and never from a formula of ours."""
    import copy

    from peft import get_peft_model

    return get_peft_model(copy.deepcopy(model), copy.deepcopy(lora_config))


def count_lora_parameters(model: PreTrainedModel, lora_config: LoraConfig) -> int:
    """Trainable parameters once PEFT applies `lora_config`: adapters, DoRA magnitudes and modules_to_save alike."""
    return sum(p.numel() for p in lora_copy(model, lora_config).parameters() if p.requires_grad)

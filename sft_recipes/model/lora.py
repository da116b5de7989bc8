"""LoRA targets and config: every linear projection of the language model, never the vision tower or lm_head."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel

# The attention/MLP projections of llama-like decoders, the LoRA default (QLoRA paper: adapt all linear layers).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Path fragments of the parts of a VLM that are not the language model; LoRA leaves them alone by default.
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


def is_vision_part(name: str) -> bool:
    return any(part in name for part in VISION_PARTS)


def default_lora_targets(model: PreTrainedModel, kind: str) -> list[str] | str:
    """All linear projections of the language model: the llama-style seven when present, else every linear leaf.
    For VLMs a regex that keeps the vision tower and projector out."""
    linear = [n for n in linear_module_names(model) if not (kind == IMAGE_TEXT_TO_TEXT and is_vision_part(n))]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
    targets = [t for t in DEFAULT_LORA_TARGETS if t in leaves] or leaves
    if kind == IMAGE_TEXT_TO_TEXT:
        parts = "|".join(re.escape(p) for p in VISION_PARTS)
        return rf"^(?!.*({parts})).*\.({'|'.join(targets)})$"
    return targets


def build_lora_config(model_args: Any, model: PreTrainedModel, kind: str) -> LoraConfig | None:
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    targets: list[str] | str = model_args.lora_target_modules or default_lora_targets(model, kind)
    if isinstance(targets, str) and re.fullmatch(r"[\w.]+", targets) and targets != "all-linear":
        targets = [targets]  # trl.ModelConfig turns a one-item list into a string; a plain name is still a name
    if isinstance(targets, list):
        leaves = {n.rsplit(".", 1)[-1] for n in linear_module_names(model)}
        missing = [t for t in targets if t not in leaves and t != "all-linear"]
        if missing:
            raise RecipeError(
                Problem(
                    "lora_target_modules",
                    f"{missing} match no linear layer of this model",
                    f"use some of: {sorted(leaves)}",
                )
            )
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        target_parameters=model_args.lora_target_parameters,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
        task_type=model_args.lora_task_type,
    )

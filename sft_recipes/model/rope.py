"""RoPE scaling for a max_length beyond the model's context, for every rope_parameters layout of transformers 5."""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any

from sft_recipes.errors import error

# Layouts nested by layer type (Gemma-3: full_attention, sliding_attention) hold one entry per type; transformers
# ignores scaling keys written beside them. Only the global entry is scaled, as Google's long-context Gemma-3 configs
# do: a sliding-window layer never sees a distance beyond its window.
GLOBAL_ATTENTION = "full_attention"
FLAT = ""  # the entry name of a flat layout, one dict that every layer reads
# Scalings that name the context they reach (factor x original_max_position_embeddings) and reshape the frequencies
# unevenly, so that a linear scaling on top of them is no longer one of their kind: refused, never replaced.
EXTENDING = ("yarn", "llama3", "longrope", "dynamic")
# Written beside a LoRA adapter when training loaded its base with a changed config (this RoPE scaling). Not
# config.json: with one there, `AutoModelForCausalLM.from_pretrained(run)` would look for the base weights in it.
BASE_CONFIG = "base_config.json"


@dataclass(frozen=True)
class RopeScaling:
    """Linear RoPE scaling by `extra` = ceil(max_length / context) of the rope_parameters entries it names."""

    max_length: int
    context: int
    extra: float
    factors: dict[str, float]  # entry (FLAT for a flat layout) -> its linear factor once scaled
    existing: dict[str, float]  # entry -> the linear factor it had, composed with (multiplied by) extra
    unscaled: tuple[str, ...] = ()  # entries of a nested layout left as they are

    def describe(self, applied_to: Any = None) -> str:
        """What the loaded model gets, e.g. "linear scaling x3 on the full_attention layers only"; given the text
        config it was applied to, also the form written where that is not rope_type linear."""
        text = f"linear scaling x{self.extra:g}"
        if FLAT not in self.factors:
            text += f" on the {', '.join(self.factors)} layers only ({', '.join(self.unscaled)} unscaled)"
        for entry, factor in self.existing.items():
            text += f", composed with the existing linear x{factor:g}{f' ({entry})' if entry else ''}"
            text += f" into x{self.factors[entry]:g}"
        if applied_to is not None:
            entry = next(iter(self.factors))
            written = _rope_type(applied_to.rope_parameters[entry] if entry else applied_to.rope_parameters)
            if written != "linear":
                text += f" (as uniform {written}, the only form {type(applied_to).__name__} takes)"
        return text

    def apply(self, text_config: Any) -> None:
        """Scale a transformers text config in place (the entries of a nested layout, never its top level), as
        rope_type linear, or as longrope with uniform factors where the config refuses linear."""
        rope = text_config.rope_parameters
        text_config.rope_parameters = self._scaled(rope, {"rope_type": "linear"})
        try:
            text_config.validate_rope()
        except ValueError:
            # Phi-3's config refuses the linear type. LongRoPE with the same factor for every frequency and no
            # attention factor computes the same inv_freq: default / factor, at any length.
            original = getattr(text_config, "original_max_position_embeddings", None) or self.context
            text_config.rope_parameters = self._scaled(
                rope, {"rope_type": "longrope", "attention_factor": 1.0, "original_max_position_embeddings": original}
            )
            head_dim = (
                getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
            )
            for entry, factor in self.factors.items():
                params = text_config.rope_parameters[entry] if entry else text_config.rope_parameters
                half = int(head_dim * params.get("partial_rotary_factor", 1.0)) // 2
                params.update(short_factor=[factor] * half, long_factor=[factor] * half)
            text_config.validate_rope()

    def _scaled(self, rope: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
        scaled = copy.deepcopy(rope)
        for entry, factor in self.factors.items():
            params = scaled[entry] if entry else scaled
            params.pop("type", None)  # the legacy name of rope_type
            params.update(keys, factor=factor)
        return scaled


def rope_scaling_plan(config: Any, max_length: int | None, policy: str = "auto") -> RopeScaling | None:
    """The linear RoPE scaling a max_length beyond the context needs (FastChat's ceil(max_length / context)),
    composed with an existing linear one; None when none is needed. `config`: a config.json dict or a transformers
    config. Check a scaling by the loaded model's rotary `inv_freq`, never by the config key."""
    rope, context, layer_types = _rope_view(config)
    if not max_length or not context:
        return None
    entries = _global_entries(rope, layer_types)
    kinds = {entry: _rope_type(rope[entry] if entry else rope) for entry in entries}
    context = max([context] + [_reached_context(rope[e] if e else rope, context, k) for e, k in kinds.items()])
    if max_length <= context:
        return None
    if policy == "off":
        raise error(
            "max_length",
            f"max_length {max_length} exceeds the model's context {context} and rope_scaling_policy is off",
            f"set max_length <= {context}, or rope_scaling_policy: auto",
        )
    extra = float(math.ceil(max_length / context))
    factors, existing = {}, {}
    for entry, kind in kinds.items():
        if kind not in ("default", "linear"):
            raise error(
                f"config.json rope_parameters{'.' + entry if entry else ''}.rope_type",
                f"max_length {max_length} exceeds the context {context} that the model's own {kind} RoPE "
                f"scaling reaches, and a linear scaling on top of {kind} cannot be composed exactly",
                f"set max_length <= {context}, or extend the {kind} scaling itself in a copy of the model's "
                "config.json (e.g. a larger `factor`) and train from that copy",
            )
        existing_factor = 1.0
        if kind == "linear":
            existing_factor = existing[entry] = float((rope[entry] if entry else rope).get("factor") or 1.0)
        factors[entry] = existing_factor * extra
    unscaled = tuple(k for k in rope if k not in factors and isinstance(rope[k], dict)) if FLAT not in factors else ()
    return RopeScaling(max_length, context, extra, factors, existing, unscaled)


def _rope_view(config: Any) -> tuple[dict[str, Any], int | None, list[str]]:
    """(rope_parameters, max_position_embeddings, layer_types) of the language model, standardized by transformers
    when it knows the model type (legacy `rope_scaling`/`rope_theta`, Gemma-3's `rope_local_base_freq`)."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type") if isinstance(config, dict) else None
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        with contextlib.suppress(TypeError, ValueError, KeyError):  # else the dict as it is
            config = CONFIG_MAPPING[model_type].from_dict(copy.deepcopy(config))
    if isinstance(config, dict):
        text = config.get("text_config") or config
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        return dict(rope), text.get("max_position_embeddings"), list(text.get("layer_types") or [])
    text = config.get_text_config()
    rope = getattr(text, "rope_parameters", None) or {}
    return dict(rope), getattr(text, "max_position_embeddings", None), list(getattr(text, "layer_types", None) or [])


def _global_entries(rope: dict[str, Any], layer_types: list[str]) -> list[str]:
    """The entries whose layers attend to the whole sequence: the flat dict, or a nested layout's full_attention."""
    nested = [k for k, v in rope.items() if isinstance(v, dict) or (v is None and k in layer_types)]
    if not nested:
        return [FLAT]
    if isinstance(rope.get(GLOBAL_ATTENTION), dict):
        return [GLOBAL_ATTENTION]
    raise error(
        "config.json rope_parameters",
        f"RoPE parameters nested by layer type ({', '.join(nested)}) without a {GLOBAL_ATTENTION} entry: "
        "which layers attend to the whole sequence, and need scaling, is unknown",
        "set max_length within the model's context (max_position_embeddings)",
    )


def _rope_type(params: dict[str, Any]) -> str:
    return str(params.get("rope_type") or params.get("type") or "default")


def _reached_context(params: dict[str, Any], context: int, kind: str) -> int:
    """The context an existing scaling declares it reaches: factor x original_max_position_embeddings for the
    scalings that name their pretraining context (Qwen's yarn leaves max_position_embeddings at the original)."""
    if kind not in EXTENDING:
        return context
    original = params.get("original_max_position_embeddings") or context
    return int(float(params.get("factor") or 1.0) * original)

"""Migration of a recipe's keys to today's: one rule per `action` of the rename table (sft_recipes.renames)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.migrate.mixture import drop_inner, rewrite_mixer, rewrite_mixture, split_names
from sft_recipes.migrate.recipe_text import Change, RecipeText, Rewrite, flow


@dataclass
class Migration:
    """The migrated text, what changed and why, files to write beside it, and keys nobody knows."""

    text: str
    changes: list[Change] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def migrate_text(text: str, template: tuple[Path, str], known: dict[str, Any]) -> Migration:
    """The recipe `text` in today's keys; `known` maps every recipe key to its type hint (config.field_types)."""
    import yaml

    from sft_recipes.renames import RENAMED

    try:
        doc = RecipeText(text)
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as err:
        raise RecipeError(Problem("OLD.yaml", f"cannot read it as a recipe: {err}", "fix the YAML first")) from None
    state = Rewrite(doc, data, template)
    for key in list(doc.pairs):
        entry = RENAMED.get(key)
        if entry is not None:
            RULES[entry.action](state, key, entry)
        else:
            _values(state, key, known)
    _write_env(state)
    migrated = doc.render()
    unknown = [k for k in (yaml.safe_load(migrated) or {}) if k not in known and k != "env"]
    return Migration(migrated, state.changes, state.files, unknown)


# -- rules: one per `action` of the rename table ---------------------------------------------------------------------


def _rename(state: Rewrite, key: str, entry: Any) -> None:
    doc = state.doc
    if entry.new in doc.pairs:
        doc.delete(key)
        state.note(key, f"{key} removed", f"{entry.new} is set too and is kept ({entry.reason}); check it", True)
        return
    doc.replace_node(doc.pairs[key][0], entry.new)
    state.note(key, f"{key} -> {entry.new}", entry.reason)


def _flag(state: Rewrite, key: str, entry: Any) -> None:
    doc, on = state.doc, _truthy(state.data[key])
    value = entry.value[0] if on else entry.value[1]
    if value is None or entry.new in doc.pairs:
        doc.delete(key)
        why = f"{entry.new} is set and is kept" if entry.new in doc.pairs else "false was the default"
        state.note(key, f"{key}: {flow(state.data[key])} removed", f"{why} ({entry.reason})")
        return
    doc.replace(key, [f"{entry.new}: {flow(value)}"])
    reason = entry.reason
    if not on and key == "use_flash_attention_2":
        reason = (
            "flash attention stays off: transformers 4 then used sdpa (eager for a model without sdpa), while an "
            "unset attn_implementation would pick flash attention where it is installed"
        )
    state.note(key, f"{key}: {flow(state.data[key])} -> {entry.new}: {flow(value)}", reason)


def _drop(state: Rewrite, key: str, entry: Any) -> None:
    state.doc.delete(key)
    review = bool(entry.fix) and state.data[key] not in (None, False, [], "")
    state.note(key, f"{key} removed", f"{entry.reason}{'; ' + entry.fix if review else ''}", review)


def _env(state: Rewrite, key: str, entry: Any) -> None:
    state.env.append((key, entry.value, state.data[key]))
    state.note(key, f"{key} -> env: {entry.value}", entry.reason)


def _write_env(state: Rewrite) -> None:
    """Give the collected variables to the recipe's `env:` block, made in place of the first old key if absent."""
    if not state.env:
        return
    doc = state.doc
    lines = [f"{var}: {flow(value)}" for _, var, value in state.env]
    first = state.env[0][0]
    for key, _, _ in state.env[1:]:
        doc.delete(key)
    block = doc.pairs.get("env")
    if block is None:
        doc.replace(first, ["env:", *(f"  {line}" for line in lines)])
        return
    doc.delete(first)
    mapping = block[1]
    if not getattr(mapping, "value", None) or getattr(mapping, "flow_style", False):
        doc.replace("env", ["env:", *(f"  {k}: {flow(v)}" for k, v in dict(state.data["env"] or {}).items())])
        first_line = doc.span("env")[0]
        last, new_lines = doc.replaced[first_line]
        doc.replaced[first_line] = (last, new_lines + [f"  {line}" for line in lines])
        return
    indent = " " * mapping.value[0][0].start_mark.column
    doc.append_to_line(doc.last_line(mapping), "".join(f"\n{indent}{line}" for line in lines))


def _warmup(state: Rewrite, key: str, entry: Any) -> None:
    doc, ratio = state.doc, state.data[key]
    steps = state.data.get("warmup_steps")
    if steps not in (None, 0):
        doc.delete(key)
        state.note(key, f"{key} removed", f"warmup_steps: {steps} is set, and overrode the ratio in transformers 4")
        return
    if "warmup_steps" in doc.pairs:
        doc.delete("warmup_steps")
    if not ratio:
        doc.delete(key)
        state.note(key, f"{key}: {flow(ratio)} removed", "no warmup is the default")
        return
    doc.replace_node(doc.pairs[key][0], "warmup_steps")
    if float(ratio) >= 1:
        doc.replace_node(doc.pairs[key][1], "0.999")
        state.note(
            key, f"{key}: {ratio} -> warmup_steps: 0.999", "warmup_steps 1 would be one step; " + entry.reason, True
        )
        return
    state.note(key, f"{key}: {ratio} -> warmup_steps: {ratio}", entry.reason)


def _liger(state: Rewrite, key: str, entry: Any) -> None:
    from sft_recipes.renames import RENAMED

    state.doc.delete(key)
    if not _truthy(state.data[key]):
        state.note(key, f"{key}: false removed", "false is the default")
        return
    why = RENAMED["use_liger_kernel"].reason
    state.note(
        key,
        f"{key}: true removed",
        f"{why}. On a CUDA machine with liger-kernel installed, `use_liger_kernel: true` still works (deprecated); "
        "once `kernels` installs, `model_init_kwargs: {use_kernels: true}` replaces it",
    )


def _template(state: Rewrite, key: str, entry: Any) -> None:
    doc, value = state.doc, state.data[key]
    if not isinstance(value, str) or not value.strip():
        doc.delete(key)
        state.note(key, f"{key} removed", "empty: the tokenizer's own template is used")
        return
    if "chat_template_path" in doc.pairs:
        doc.delete(key)
        state.note(key, f"{key} removed", "chat_template_path is set too and is kept; check which you meant", True)
        return
    path, ref = state.template
    state.files[path] = value
    doc.replace(key, [f"chat_template_path: {flow(ref)}"])
    state.note(key, f"{key} -> chat_template_path: {ref}", f"{entry.reason}; the template is saved there as it was")


def _configs(state: Rewrite, key: str, entry: Any) -> None:
    if "dataset_mixer" in state.doc.pairs:
        return  # the mixer rule pairs these names with its datasets
    doc, names = state.doc, state.data[key]
    names = names if isinstance(names, list) else [names]
    if "dataset_config" in doc.pairs or not names:
        doc.delete(key)
        state.note(key, f"{key} removed", "dataset_config is set and is kept" if names else "empty")
        return
    doc.replace(key, [f"dataset_config: {flow(names[0])}"])
    extra = len(names) > 1
    reason = f"{entry.reason}; {names[1:]} dropped" if extra else entry.reason
    state.note(key, f"{key}: {flow(names)} -> dataset_config: {flow(names[0])}", reason, extra)


def _splits(state: Rewrite, key: str, entry: Any) -> None:
    if "dataset_mixer" in state.doc.pairs:
        return  # consumed by the mixer rule
    split = split_names(state.data[key])
    lines = [f"dataset_train_split: {flow(split['train'][0])}"] if split["train"] else []
    lines += [f"dataset_test_split: {flow(split['test'][0])}"] if split["test"] else []
    state.doc.replace(key, lines)
    review = len(split["train"]) > 1 or len(split["test"]) > 1
    state.note(key, f"{key} -> {', '.join(line.split(':')[0] for line in lines) or 'removed'}", entry.reason, review)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "yes", "1")


def _values(state: Rewrite, key: str, known: dict[str, Any]) -> None:
    """Renamed values, dict entries TRL no longer reads, and YAML 1.1 booleans in string fields."""
    from sft_recipes.renames import INNER_REMOVED, VALUES

    doc, value = state.doc, state.data[key]
    node = doc.pairs[key][1]
    if isinstance(value, (str, int, float)) and (key, value) in VALUES:
        new, reason, _ = VALUES[(key, value)]
        doc.replace_node(node, flow(new))
        state.note(key, f"{key}: {flow(value)} -> {flow(new)}", reason)
    elif isinstance(value, bool) and _takes_str(known.get(key)):
        doc.replace_node(node, f'"{node.value}"')
        state.note(key, f'{key}: {node.value} -> "{node.value}"', "YAML reads an unquoted yes/no/on/off as true/false")
    elif isinstance(value, dict) and any((key, inner) in INNER_REMOVED for inner in value):
        drop_inner(
            state, key, {inner: INNER_REMOVED[(key, inner)][0] for inner in value if (key, inner) in INNER_REMOVED}
        )


def _takes_str(hint: Any) -> bool:
    import enum
    import typing

    args = typing.get_args(hint) or (hint,)
    if bool in args:
        return False
    return any(a is str or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in args)


RULES: dict[str, Callable[[Rewrite, str, Any], None]] = {
    "rename": _rename,
    "flag": _flag,
    "drop": _drop,
    "env": _env,
    "warmup": _warmup,
    "liger": _liger,
    "template": _template,
    "mixture": rewrite_mixture,
    "mixer": rewrite_mixer,
    "configs": _configs,
    "splits": _splits,
}

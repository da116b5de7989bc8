"""Migration of a recipe's keys to today's: one rule per `action` of the rename table (sft_recipes.renames), and
alignment-handbook's `dataset_mixture` rewritten as TRL's `datasets:` mixture."""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.migrate.recipe_text import Change, RecipeText, Rewrite, flow
from sft_recipes.renames import INNER_REMOVED, RENAMED, VALUES

TRL_MIXTURE = "TRL's mixture (trl/scripts/utils.py DatasetConfig: path, name, split, columns)"


@dataclass
class Migration:
    """The migrated text, what changed and why, files to write beside it, and keys nobody knows."""

    text: str
    changes: list[Change] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def migrate_text(text: str, template: tuple[Path, str], known: dict[str, Any]) -> Migration:
    """The recipe `text` in today's keys; `known` maps every recipe key to its type hint (config.field_types)."""
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
        lines = [f"{k}: {flow(v)}" for k, v in dict(state.data["env"] or {}).items()] + lines
        doc.replace("env", ["env:", *(f"  {line}" for line in lines)])
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
        why = "warmup_steps 1 would be one step; " + entry.reason
        state.note(key, f"{key}: {ratio} -> warmup_steps: 0.999", why, True)
        return
    state.note(key, f"{key}: {ratio} -> warmup_steps: {ratio}", entry.reason)


def _liger(state: Rewrite, key: str, entry: Any) -> None:
    state.doc.delete(key)
    if not _truthy(state.data[key]):
        state.note(key, f"{key}: false removed", "false is the default")
        return
    why = (
        f"{RENAMED['use_liger_kernel'].reason}. On a CUDA machine with liger-kernel installed, `use_liger_kernel: "
        "true` still works (deprecated); once `kernels` installs, `model_init_kwargs: {use_kernels: true}` replaces it"
    )
    state.note(key, f"{key}: true removed", why)


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
        _drop_inner(state, key)


def _takes_str(hint: Any) -> bool:
    args = typing.get_args(hint) or (hint,)
    return bool not in args and any(a is str or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in args)


def _mixture(state: Rewrite, key: str, entry: Any) -> None:
    """`dataset_mixture: {datasets: [{id, config, split, columns, weight}], test_split_size, seed}` -> `datasets:`."""
    doc = state.doc
    head, mapping = doc.pairs[key]
    children = {k.value: (k, v) for k, v in mapping.value} if isinstance(mapping, yaml.MappingNode) else {}
    items = children.get("datasets", (None, None))[1]
    clash = [k for k in ("datasets", "test_split_size") if k in children and k in doc.pairs]
    if not isinstance(items, yaml.SequenceNode) or mapping.flow_style or items.flow_style or clash:
        why = f"top-level {', '.join(clash)} already set" if clash else "not a block mapping with a `datasets:` list"
        state.note(key, f"{key} left as is", f"{why}; {entry.fix}", True)
        return
    first, last = doc.span(key)
    note = doc.lines[first][head.end_mark.column :].lstrip(" :")
    if note.startswith("#"):
        doc.replaced[first] = (first, [note])
    else:
        doc.delete_lines(first, first)
    indent = mapping.value[0][0].start_mark.column
    for line in range(first + 1, last + 1):
        doc.dedent[line] = indent
    for item in items.value:
        _entry(state, item)
    state.note(key, f"{key} -> datasets ({len(items.value)} entries: id -> path, config -> name)", entry.reason)
    if "seed" in children:
        k, v = children["seed"]
        doc.delete_lines(k.start_mark.line, doc.last_line(v))
        why = (
            "TRL's mixture has no seed: sft-recipes holds out test_split_size rows with the training seed "
            f"({state.data.get('seed', 42)}), so the held-out rows differ from alignment-handbook's"
            if "test_split_size" in children
            else "it only shuffled the concatenated mixture, and SFTTrainer shuffles its batches with `seed`"
        )
        state.note(key, f"dataset_mixture.seed: {v.value} removed", why, line=k.start_mark.line + 1)


def _entry(state: Rewrite, item: Any) -> None:
    """One mixture entry: id -> path, config -> name, weight -> a slice of the split."""
    doc = state.doc
    if not isinstance(item, yaml.MappingNode) or item.flow_style:
        state.note("dataset_mixture", "a mixture entry left as is", "write it as a block mapping first", True)
        return
    fields = {k.value: (k, v) for k, v in item.value}
    for old, new in (("id", "path"), ("config", "name")):
        if old in fields:
            doc.replace_node(fields[old][0], new)
    if "weight" not in fields:
        return
    wk, wv = fields["weight"]
    line = wk.start_mark.line + 1
    doc.delete_lines(wk.start_mark.line, doc.last_line(wv))
    weight = float(wv.value)
    if weight == 1:
        state.note("dataset_mixture", f"weight {wv.value} removed", "TRL concatenates whole datasets", line=line)
    elif weight == 0:
        doc.delete_lines(item.start_mark.line, doc.last_line(item))
        state.note("dataset_mixture", "an entry of weight 0 removed", "it contributed no rows", line=line)
    elif weight > 1:
        why = "a weight above 1 would repeat rows, which neither alignment-handbook's select nor TRL does"
        state.note("dataset_mixture", f"weight {wv.value} removed", f"{why}: the whole dataset is kept", True, line)
    else:
        _slice(state, fields, weight, wk, doc.comment(wv))


def _slice(state: Rewrite, fields: dict[str, Any], weight: float, wk: Any, comment: str) -> None:
    """Turn a fraction of the rows into a `split[:P%]` slice, moving the weight's comment to the split line. The
    weight kept the first int(len * weight) rows after a seeded shuffle; TRL's `fraction` is another thing (shares of
    the mixture, normalised, capped so that no dataset repeats), so a weight becomes a slice, cut in whole percents."""
    doc = state.doc
    percent, exact = percent_of(weight)
    if "split" in fields:
        node = fields["split"][1]
        spec = f"{node.value}[:{percent}%]"
        doc.replace_node(node, flow(spec))
        if comment and not doc.comment(node):
            doc.append_to_line(node.end_mark.line, f"  {comment}")
    else:  # alignment-handbook's DatasetConfig.split defaults to "train", as TRL's does
        spec = f"train[:{percent}%]"
        doc.replaced[wk.start_mark.line] = (wk.start_mark.line, [f"{' ' * wk.start_mark.column}split: {flow(spec)}"])
    why = (
        f"TRL has no per-dataset weight; the slice keeps the first {percent}% of rows, where alignment-handbook kept "
        "a seeded random share (same count, other rows)"
    )
    if not exact:
        why += f"; splits slice whole percents, so {weight * 100:g}% became {percent}%"
    state.note("dataset_mixture", f"weight {weight:g} -> split {spec}", why, True, wk.start_mark.line + 1)


def split_names(splits: Any) -> dict[str, list[str]]:
    """alignment-handbook 0.3's split list sorted as it did: names with "train" train, names with "test" evaluate."""
    splits = splits if isinstance(splits, list) else [splits]
    return {
        "train": [s for s in splits if "train" in str(s)],
        "test": [s for s in splits if "test" in str(s) and "train" not in str(s)],
    }


def percent_of(weight: float) -> tuple[int, bool]:
    """The whole percent closest to a fraction (at least 1), and whether it is exact."""
    percent = weight * 100
    whole = max(1, round(percent))
    return whole, abs(percent - whole) < 1e-6


def _mixer(state: Rewrite, key: str, entry: Any) -> None:
    """alignment-handbook 0.3: `dataset_mixer: {id: fraction}`, `dataset_splits`, `dataset_configs` -> dataset_name
    and its splits (one dataset, whole), else a `datasets:` list of the train splits."""
    doc, data = state.doc, state.data
    mixer = data[key] if isinstance(data[key], dict) else {}
    splits = split_names(data.get("dataset_splits", ["train", "test"]))
    configs = data.get("dataset_configs") or [None] * len(mixer)
    configs = configs if isinstance(configs, list) else [configs]
    for consumed in ("dataset_splits", "dataset_configs"):
        if consumed in doc.pairs:
            doc.delete(consumed)
            state.note(consumed, f"{consumed} folded into the datasets", entry.reason)
    if list(mixer.values()) == [1] and len(splits["train"]) == 1 and len(splits["test"]) <= 1:
        lines = [f"dataset_name: {flow(next(iter(mixer)))}"]
        lines += [f"dataset_config: {flow(configs[0])}"] if configs and configs[0] else []
        lines += [f"dataset_train_split: {flow(splits['train'][0])}"] if splits["train"][0] != "train" else []
        lines += [f"dataset_test_split: {flow(splits['test'][0])}"] if splits["test"][:1] not in ([], ["test"]) else []
        doc.replace(key, lines)
        state.note(key, f"{key} -> {', '.join(line.split(':')[0] for line in lines)}", entry.reason)
        return
    lines = ["datasets:"]
    for (name, fraction), config in zip(mixer.items(), configs + [None] * len(mixer), strict=False):
        for split in splits["train"]:
            percent, exact = percent_of(float(fraction)) if 0 < float(fraction) < 1 else (100, True)
            spec = split if percent == 100 else f"{split}[:{percent}%]"
            lines += [f"  - path: {flow(name)}", *([f"    name: {flow(config)}"] if config else [])]
            lines += [f"    split: {flow(spec)}"]
            if not exact:
                state.note(key, f"{name}: {fraction} -> split {spec}", "splits slice whole percents", True)
    doc.replace(key, lines)
    entries = sum(line.startswith("  - ") for line in lines)
    state.note(key, f"{key} -> datasets ({entries} entries)", f"{entry.reason}; {TRL_MIXTURE}")
    if splits["test"]:
        _no_eval_datasets(state, key, splits["test"])


def _no_eval_datasets(state: Rewrite, key: str, tests: list[str]) -> None:
    """A TRL mixture has no separate evaluation datasets: the test splits go, and with them evaluation if it was on."""
    doc, data = state.doc, state.data
    name = next((k for k in ("eval_strategy", "evaluation_strategy") if k in doc.pairs), None)
    value = str(data.get(name, "no")).lower() if name else "no"
    if name is None or value in ("no", "false"):
        state.note(key, f"test splits {tests} dropped", "evaluation is off in this recipe: they were not used")
        return
    doc.replace_node(doc.pairs[name][1], '"no"')
    why = (
        f"TRL's mixture has no separate evaluation datasets, so the test splits {tests} are gone; to evaluate, hold "
        "out rows of the mixture with `test_split_size` (as alignment-handbook's later recipes do)"
    )
    state.note(name, f'{name}: {value} -> "no"', why, True)


def _drop_inner(state: Rewrite, key: str) -> None:
    """Remove entries of a dict-valued key that TRL no longer reads (the key itself when nothing is left)."""
    doc = state.doc
    reasons = {inner: INNER_REMOVED[(key, inner)][0] for inner in state.data[key] if (key, inner) in INNER_REMOVED}
    mapping = doc.pairs[key][1]
    left = {k: v for k, v in state.data[key].items() if k not in reasons}
    if not left:
        doc.delete(key)
    elif mapping.flow_style:
        doc.replace(key, [f"{key}: {flow(left)}"])
    else:
        for k, v in mapping.value:
            if k.value in reasons:
                doc.delete_lines(k.start_mark.line, doc.last_line(v))
    for inner, reason in reasons.items():
        state.note(key, f"{key}.{inner} removed", reason)


# One rule per `action` of the rename table, named after it.
RULES: dict[str, Callable[[Rewrite, str, Any], None]] = {
    rule.__name__.lstrip("_"): rule
    for rule in (_rename, _flag, _drop, _env, _warmup, _liger, _template, _mixture, _mixer, _configs, _splits)
}

"""alignment-handbook's and open-r1's dataset mixtures rewritten as TRL's `datasets:` list (trl.DatasetMixtureConfig).

Their `weight` kept the first int(len * weight) rows of a dataset (after a seeded shuffle in `dataset_mixture`, in
file order in 0.3's `dataset_mixer`). TRL's `fraction` is something else: shares of the mixture, normalised, capped
so that no dataset repeats. So a weight becomes a split slice, `train[:50%]`, which `datasets` cuts in whole percents.
"""

from __future__ import annotations

from typing import Any

import yaml

from sft_recipes.migrate.recipe_text import Rewrite, flow

TRL_MIXTURE = "TRL's mixture (trl/scripts/utils.py DatasetConfig: path, name, split, columns)"


def rewrite_mixture(state: Rewrite, key: str, entry: Any) -> None:
    """`dataset_mixture: {datasets: [{id, config, split, columns, weight}], test_split_size, seed}` -> `datasets:`."""
    doc = state.doc
    head, mapping = doc.pairs[key]
    children = (
        {k.value: (k, v) for k, v in getattr(mapping, "value", [])} if isinstance(mapping, yaml.MappingNode) else {}
    )
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
        _drop_seed(state, key, children["seed"], "test_split_size" in children)


def _drop_seed(state: Rewrite, key: str, pair: tuple[Any, Any], held_out: bool) -> None:
    k, v = pair
    state.doc.delete_lines(k.start_mark.line, state.doc.last_line(v))
    seed = state.data.get("seed", 42)
    why = (
        f"TRL's mixture has no seed: sft-recipes holds out test_split_size rows with the training seed ({seed}), "
        "so the held-out rows differ from alignment-handbook's"
        if held_out
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
        _slice(state, fields, weight, wk, doc.comment(wv), shuffled=True)


def _slice(state: Rewrite, fields: dict[str, Any], weight: float, wk: Any, comment: str, shuffled: bool) -> None:
    """Turn a fraction of the rows into a `split[:P%]` slice, moving the weight's comment to the split line."""
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
    why = f"TRL has no per-dataset weight; the slice keeps the first {percent}% of rows"
    if shuffled:
        why += ", where alignment-handbook kept a seeded random share (same count, other rows)"
    if not exact:
        why += f"; splits slice whole percents, so {weight * 100:g}% became {percent}%"
    state.note(
        "dataset_mixture", f"weight {weight:g} -> split {spec}", why, shuffled or not exact, wk.start_mark.line + 1
    )


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


def rewrite_mixer(state: Rewrite, key: str, entry: Any) -> None:
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
    fractions = list(mixer.values())
    if len(mixer) == 1 and len(splits["train"]) == 1 and len(splits["test"]) <= 1 and fractions[0] == 1:
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
    state.note(
        name,
        f'{name}: {value} -> "no"',
        f"TRL's mixture has no separate evaluation datasets, so the test splits {tests} are gone; to evaluate, hold "
        "out rows of the mixture with `test_split_size` (as alignment-handbook's later recipes do)",
        True,
    )


def drop_inner(state: Rewrite, key: str, reasons: dict[str, str]) -> None:
    """Remove entries of a dict-valued key that TRL no longer reads (the key itself when nothing is left)."""
    doc = state.doc
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

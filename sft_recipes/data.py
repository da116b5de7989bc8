"""Datasets in, SFTTrainer-ready datasets out: local files, directories, hub ids and mixtures, in every chat format."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem, RecipeError, error

if TYPE_CHECKING:
    from datasets import Dataset, Features, IterableDataset

logger = logging.getLogger(__name__)

FORMATS = ("text", "messages", "prompt_completion", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant", "tool")
EXTRA_COLUMNS = ("tools", "images", "chat_template_kwargs")  # passed through to TRL when present
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".arrow": "arrow"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "function_response": "tool",
    "observation": "tool",
}
STREAMING_CHECK_ROWS = 1000  # a stream has no end to check up to: validate its head
MAX_REPORTED_PROBLEMS = 20
_FORMAT_HELP = (
    "the format comes from the columns: 'prompt'+'completion', 'messages', 'conversations' (ShareGPT), "
    "'instruction'+'output' (Alpaca) or the text field (dataset_text_field); set dataset_format, "
    "dataset_text_field, or pick columns with a `datasets:` entry's `columns`"
)


def load_training_data(script_args, mixture, training_args) -> tuple[Dataset | IterableDataset, Any]:
    """Load, check and convert the training data; returns (train, eval), eval None when eval_strategy is "no".

    Eval is the `dataset_test_split` split when the source has one, else a seeded `test_split_size` split of train.
    """
    fmt = getattr(script_args, "dataset_format", "auto") or "auto"
    text_field = training_args.dataset_text_field
    num_proc = training_args.dataset_num_proc
    want_eval = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"
    problems: list[Problem] = []
    eval_ds = None

    if mixture.datasets:
        if script_args.dataset_name:
            logger.warning(
                "Both `datasets` and `dataset_name` are set: the `datasets` mixture is used and `dataset_name` "
                "(%s) is ignored, as in TRL.",
                script_args.dataset_name,
            )
        train = _load_mixture(mixture, fmt, text_field, num_proc, problems)
    elif script_args.dataset_name:
        from trl.scripts.utils import DatasetConfig

        source = script_args.dataset_name
        cfg = DatasetConfig(path=source, name=script_args.dataset_config)
        splits = _load(cfg, "dataset_name", split=None, streaming=script_args.dataset_streaming)
        if script_args.dataset_train_split not in splits:
            raise error(
                "dataset_train_split",
                f"{source} has no split {script_args.dataset_train_split!r}; splits found: {', '.join(splits)}",
                fix="set dataset_train_split to one of those",
            )
        train = _prepare(splits[script_args.dataset_train_split], fmt, source, text_field, num_proc, problems)
        test_split = script_args.dataset_test_split
        if want_eval and test_split in splits and test_split != script_args.dataset_train_split:
            label = f"{source}:{test_split}"
            eval_ds = _prepare(
                splits[test_split], fmt, label, text_field, num_proc, problems, base_dir=_base_dir(source)
            )
    else:
        raise error(
            "dataset_name",
            "no training data given",
            fix="set dataset_name (a .jsonl/.json/.parquet/.csv file, a directory of them, or a hub id) "
            "or a `datasets:` list",
        )

    _raise_errors(problems)
    if want_eval and eval_ds is None:
        eval_ds, train = _split_eval(train, mixture.test_split_size, training_args.seed, script_args)
    return train, eval_ds


def detect_format(column_names, text_field: str = "text", source: str = "dataset") -> str:
    """The data format named by the columns, in TRL's precedence (prompt-completion before messages)."""
    cols = set(column_names)
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if text_field in cols:
        return "text"
    raise error(source, f"cannot tell the data format; columns found: {_names(column_names)}", fix=_FORMAT_HELP)


def to_trl_format(
    dataset, fmt: str, source: str, text_field: str = "text", num_proc: int | None = None, base_dir: str | None = None
):
    """Check and convert `dataset` from `fmt` ("auto" or one of FORMATS) to the columns SFTTrainer reads.

    Raises RecipeError naming "<source>[row <i>]" for bad rows: checking inside the conversion's map makes it one
    pass, parallel under `num_proc`, and cached by `datasets` with the result, so a second run repeats neither.
    A stream is checked as it is read. Relative image paths resolve against `base_dir`, by default the directory
    of `source` when that is a local path.
    """
    from datasets import Dataset

    columns = _column_names(dataset)
    fmt = detect_format(columns, text_field, source) if fmt == "auto" else fmt
    missing = _missing_columns(fmt, columns, text_field, source)
    if missing:
        raise RecipeError(missing)
    dataset = _undecoded_images(dataset)
    first = _first_row(dataset)
    if first is None:
        raise error(source, "the split is empty", fix="check the path, split, data_files or fraction")
    conversational = _is_conversational(first, fmt)
    extras = [c for c in EXTRA_COLUMNS if c in columns or (c == "images" and "image" in columns)]
    features = _features(fmt, conversational, _plain_chat(dataset, fmt), text_field, extras)
    fn_kwargs = {
        "fmt": fmt,
        "text_field": text_field,
        "extras": extras,
        "base_dir": base_dir or _base_dir(source),
        "conversational": conversational,
        "source": source,
    }
    map_kwargs = {"with_indices": True, "batched": True, "fn_kwargs": fn_kwargs, "remove_columns": columns}
    if not isinstance(dataset, Dataset):
        # IterableDataset.map ignores `features` for encoding; casting afterwards encodes (and decodes images)
        return dataset.map(_convert_batch, **map_kwargs).cast(features)
    try:
        desc = f"Checking and converting {source} ({fmt})"
        return dataset.map(_convert_batch, features=features, num_proc=num_proc, desc=desc, **map_kwargs)
    except _BadRows as e:
        raise RecipeError(e.args[0]) from None


def check_rows(
    dataset, fmt: str, source: str, limit: int | None = None, text_field: str = "text", base_dir: str | None = None
) -> list[Problem]:
    """Problems in the rows of `dataset` (raw in `fmt`, or already converted); `where` is "<source>[row <i>]".

    Roles are system/user/assistant/tool; a system message only comes first; a tool message follows an assistant or
    tool message; a conversation (or completion) has an assistant turn, else there is nothing to learn; assistant
    turns are non-empty unless they carry `tool_calls`; content is a string or a list of text/image blocks; images
    open with PIL and match the `{"type": "image"}` placeholders. Consecutive user (or assistant) turns are allowed:
    templates that demand alternation (Gemma, Mistral) raise on their own, and many datasets are fine with it.
    """
    from datasets import Dataset

    columns = _column_names(dataset)
    try:
        fmt = detect_format(columns, text_field, source) if fmt == "auto" else fmt
    except RecipeError as e:
        return e.problems
    missing = _missing_columns(fmt, columns, text_field, source)
    if missing:
        return missing
    if limit is not None:
        dataset = (
            dataset.select(range(min(limit, len(dataset)))) if isinstance(dataset, Dataset) else dataset.take(limit)
        )
    dataset = _undecoded_images(dataset)
    base_dir = base_dir or _base_dir(source)
    problems: list[Problem] = []
    conversational = None  # decided by the first row, as TRL does
    for index, row in enumerate(_iter_rows(dataset)):
        conversational = _is_conversational(row, fmt) if conversational is None else conversational
        issues = _row_issues(row, fmt, text_field, base_dir, conversational)
        problems += [Problem(f"{source}[row {index}]", issue) for issue in issues]
    if conversational is None:
        problems.append(Problem(source, "the split is empty", fix="check the path, split, data_files or fraction"))
    return problems


def check_file(path) -> list[Problem]:
    """Problems with a local data file: missing, empty, malformed JSON (as "path:LINE"), unreadable parquet."""
    p = Path(path)
    if not p.is_file():
        fix = "check the path (relative paths are resolved from the current directory)"
        return [Problem(str(path), "file not found" if not p.exists() else "not a file", fix=fix)]
    if p.stat().st_size == 0:
        return [Problem(str(path), "the file is empty")]
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - any read failure means the same thing to the user
            return [Problem(str(path), f"not a readable parquet file: {e}")]
    if p.suffix not in (".json", ".jsonl"):
        return []
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return [Problem(str(path), "the file has no rows (only blank lines)")]
    if p.suffix == ".json":  # a .json file may hold one document (array or object) or JSON lines
        try:
            document = json.loads(text)
            return [] if document else [Problem(str(path), f"the JSON document is empty ({text.strip()}): no rows")]
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                return [_json_problem(path, e, e.lineno)]
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return [_json_problem(path, e, lineno)]
        if not isinstance(row, dict):
            return [Problem(f"{path}:{lineno}", f"each line must be a JSON object, got {type(row).__name__}")]
    return []


def _load(cfg, where: str, split: str | None, streaming: bool) -> Any:
    """datasets.load_dataset for a DatasetConfig whose `path` may also be a local file or directory."""
    import datasets

    path = os.path.expanduser(cfg.path)
    kwargs: dict[str, Any] = {"name": cfg.name, "data_dir": cfg.data_dir, "data_files": cfg.data_files}
    local_files: list[str] = []
    if os.path.isdir(path):
        local_files = [f for f in sorted(glob.glob(os.path.join(path, "**", "*"), recursive=True)) if _is_data(f)]
        if not local_files and cfg.data_files is None:
            raise error(where, f"no data files ({', '.join(BUILDERS)}) in directory {cfg.path}")
    elif os.path.isfile(path) or _looks_like_file(cfg.path):
        if not os.path.isfile(path):
            raise RecipeError(check_file(path))
        local_files = [path]
        kwargs["data_files"] = path
        path = BUILDERS.get(Path(path).suffix, "json")
    if cfg.data_files is not None and not local_files:  # generic builder ("json") with local data_files
        files = [cfg.data_files] if isinstance(cfg.data_files, str) else list(_flatten(cfg.data_files))
        local_files = [f for pattern in files for f in sorted(glob.glob(os.path.expanduser(pattern)))]
    try:
        return datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
    except Exception as e:  # datasets raises a dozen types; the user needs the file:line or the reason, not a trace
        pinpointed = [p for f in local_files for p in check_file(f)]
        if pinpointed:
            raise RecipeError(pinpointed) from e
        raise error(
            where,
            f"could not load {cfg.path!r}: {type(e).__name__}: {e}",
            fix="give a local .jsonl/.json/.parquet/.csv file or directory, or a hub id (with HF_HUB_OFFLINE=1 it "
            "must already be in the HF cache)",
        ) from e


def _load_mixture(mixture, fmt: str, text_field: str, num_proc: int | None, problems: list[Problem]) -> Any:
    """TRL's get_dataset semantics (columns, split, fraction = first rows) with local paths and per-source formats."""
    import datasets

    raw = []
    for i, cfg in enumerate(mixture.datasets):
        ds = _load(cfg, f"datasets[{i}]", split=cfg.split, streaming=mixture.streaming)
        if cfg.columns is not None:
            found = _column_names(ds)
            absent = [c for c in cfg.columns if c not in found]
            if absent:
                raise error(
                    f"datasets[{i}].columns",
                    f"{cfg.path} has no column {_names(absent)}; columns found: {_names(found)}",
                )
            ds = ds.select_columns(cfg.columns)
        raw.append(ds)

    fractions = [cfg.fraction for cfg in mixture.datasets]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions):
            raise error("datasets", "`fraction` must be set for every dataset of the mixture or for none")
        if mixture.streaming:
            raise error("datasets", "`fraction` needs dataset lengths, which streaming datasets do not have")
        if any(f <= 0 for f in fractions):
            raise error("datasets", f"every `fraction` must be > 0, got {fractions}", fix="drop the entry instead")
        weights = [f / sum(fractions) for f in fractions]
        total = min(len(ds) / w for ds, w in zip(raw, weights, strict=True))
        raw = [ds.select(range(round(w * total))) for ds, w in zip(raw, weights, strict=True)]

    parts = [
        _prepare(ds, fmt, cfg.path, text_field, num_proc, problems)
        for ds, cfg in zip(raw, mixture.datasets, strict=True)
    ]
    _raise_errors(problems)
    parts = _harmonize(parts, [cfg.path for cfg in mixture.datasets], num_proc)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _prepare(ds, fmt, source, text_field, num_proc, problems: list[Problem], base_dir: str | None = None) -> Any:
    """Check and convert one split; problems are collected so that every source is reported at once."""
    from datasets import Dataset

    try:
        if not isinstance(ds, Dataset):  # a stream is checked as it is read: fail before training on its head
            head = check_rows(ds, fmt, source, limit=STREAMING_CHECK_ROWS, text_field=text_field, base_dir=base_dir)
            if any(p.severity == "error" for p in head):
                problems += head
                return ds
        return to_trl_format(ds, fmt, source, text_field=text_field, num_proc=num_proc, base_dir=base_dir)
    except RecipeError as e:
        problems += e.problems
        return ds


def _harmonize(parts: list, sources: list[str], num_proc: int | None) -> list:
    """Give every part of a mixture the same columns and features, or say why they cannot be mixed."""
    from datasets import Dataset, Features, Json, List

    kinds = [_kind(ds) for ds in parts]
    if len(set(kinds)) > 1:
        if set(kinds) == {"messages", "prompt_completion_chat"}:
            logger.warning(
                "Mixing `messages` with conversational prompt-completion data: the prompt-completion sources are "
                "turned into `messages`, so their loss covers the whole conversation unless assistant_only_loss=True."
            )
            chat_pc = [k == "prompt_completion_chat" for k in kinds]
            parts = [_as_messages(ds, num_proc) if pc else ds for ds, pc in zip(parts, chat_pc, strict=True)]
        else:
            listing = ", ".join(f"{s} ({k})" for s, k in zip(sources, kinds, strict=True))
            raise error(
                "datasets",
                f"these sources cannot be mixed into one training set: {listing}",
                fix="convert them to one format (e.g. all conversational), or train on them separately",
            )
    wanted = list(dict.fromkeys(c for ds in parts for c in _column_names(ds)))
    features = Features()
    for column in wanted:  # message columns may be {role, content} structs in one source and Json in another
        found = [ds.features[column] for ds in parts if column in _column_names(ds)]
        features[column] = found[0] if all(f == found[0] for f in found) else List(Json())
    defaults: dict[str, Any] = {"tools": None, "images": [], "chat_template_kwargs": {}}
    aligned = []
    for ds in parts:
        missing = {c: defaults.get(c) for c in wanted if c not in _column_names(ds)}
        if missing and isinstance(ds, Dataset):
            own = Features({**ds.features, **{c: features[c] for c in missing}})
            ds = ds.map(_add_columns, fn_kwargs={"values": missing}, features=own, num_proc=num_proc)
        elif missing:
            ds = ds.map(_add_columns, fn_kwargs={"values": missing})
        ds = ds.select_columns(wanted)
        aligned.append(ds if ds.features == features else ds.cast(features))
    return aligned


def _split_eval(train, size: float | None, seed: int, script_args) -> tuple[Any, Any]:
    """(eval, train) from a seeded `test_split_size` split of train: a fraction in (0, 1) or a row count."""
    from datasets import Dataset

    if size is None:
        raise error(
            "eval_strategy",
            f"evaluation is on but the data has no {script_args.dataset_test_split!r} split",
            fix="set test_split_size (e.g. 0.05 or 200), point dataset_test_split at an existing split, "
            "or set eval_strategy: no",
        )
    count = int(size) if size >= 1 and float(size).is_integer() else None
    if not isinstance(train, Dataset):
        if count is None:
            raise error("test_split_size", f"a streaming dataset has no length: give a row count, not {size}")
        return train.take(count), train.skip(count)
    try:
        halves = train.train_test_split(test_size=count if count is not None else size, seed=seed)
    except ValueError as e:
        raise error("test_split_size", str(e), fix="a fraction in (0, 1) or a row count below the dataset size") from e
    return halves["test"], halves["train"]


class _BadRows(Exception):
    """Carries row problems out of a `datasets` map worker (a RecipeError would not survive pickling)."""

    def __str__(self) -> str:  # what a stream shows when a bad row turns up mid-training
        return "\n".join(str(p) for p in self.args[0])


def _convert_batch(batch: dict, indices: list[int], **kw) -> dict:
    fmt, text_field, base_dir, conversational = kw["fmt"], kw["text_field"], kw["base_dir"], kw["conversational"]
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    problems = [
        Problem(f"{kw['source']}[row {index}]", issue)
        for index, row in zip(indices, rows, strict=True)
        for issue in _row_issues(row, fmt, text_field, base_dir, conversational)
    ]
    if problems:
        raise _BadRows(problems)
    converted = [_convert_row(row, fmt, text_field, kw["extras"], base_dir) for row in rows]
    return {key: [row[key] for row in converted] for key in converted[0]} if converted else {}


def _row_issues(row: dict, fmt: str, text_field: str, base_dir: str | None, conversational: bool) -> list[str]:
    view = _convert_row(row, fmt, text_field, [], None) if fmt in ("sharegpt", "alpaca") else row
    if fmt == "text":
        issues = _check_text(view[text_field], text_field)
    elif "messages" in view:
        issues = _check_messages(view["messages"], "messages", need_assistant=True)
    else:
        issues = _check_prompt_completion(view["prompt"], view["completion"], conversational)
    return issues + _check_tools(row.get("tools")) + _check_images(row, view, base_dir)


def _is_conversational(row: dict, fmt: str) -> bool:
    if fmt == "prompt_completion":
        return isinstance(row["prompt"], list)
    return fmt != "text"


def _convert_row(row: dict, fmt: str, text_field: str, extras: list[str], base_dir: str | None) -> dict:
    """One row in `fmt` -> the TRL columns. Leaves malformed values as they are, for check_rows to name."""
    if fmt == "text":
        out = {text_field: row[text_field]}
    elif fmt == "messages":
        out = {"messages": _drop_nones(row["messages"])}
    elif fmt == "sharegpt":
        out = {"messages": _sharegpt_messages(row)}
    elif fmt == "alpaca":
        out = _alpaca_prompt_completion(row)
    elif fmt == "prompt_completion":
        out = {"prompt": _drop_nones(row["prompt"]), "completion": _drop_nones(row["completion"])}
    else:
        raise error("dataset_format", f"unknown format {fmt!r}", fix=f"one of: auto, {', '.join(FORMATS)}")
    if "tools" in extras:
        tools = row.get("tools")
        if isinstance(tools, str) and tools.strip():
            with contextlib.suppress(json.JSONDecodeError):  # check_rows reports it
                tools = json.loads(tools)
        out["tools"] = _drop_nones(tools) if tools else None
    if "images" in extras:
        images = row["images"] if "images" in row else [row.get("image")]
        out["images"] = [_resolve_image(img, base_dir) for img in images or [] if img is not None]
    if "chat_template_kwargs" in extras:
        out["chat_template_kwargs"] = row.get("chat_template_kwargs") or {}
    return out


def _sharegpt_messages(row: dict) -> Any:
    conversations = row["conversations"]
    if not isinstance(conversations, list):
        return conversations
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():  # LLaMA-Factory's ShareGPT keeps the system prompt in a column
        messages.append({"role": "system", "content": system})
    for turn in conversations:
        if isinstance(turn, dict) and "from" in turn:
            message = {k: v for k, v in turn.items() if k not in ("from", "value") and v is not None}
            role = turn["from"]
            message["role"] = SHAREGPT_ROLES.get(role.lower(), role) if isinstance(role, str) else role
            message["content"] = turn.get("value")
            messages.append(message)
        else:
            messages.append(_drop_nones(turn))
    return messages


def _alpaca_prompt_completion(row: dict) -> dict:
    # CSV readers type an all-numeric column as numbers; an answer of 5 is still the text "5"
    keys = ("instruction", "input", "system", "output")
    instruction, extra, system, output = (str(v) if isinstance(v, int | float) else v for v in map(row.get, keys))
    user = instruction
    if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
        user = f"{instruction}\n\n{extra}"
    prompt: list[dict[str, Any]] = [{"role": "user", "content": user}]
    if isinstance(system, str) and system.strip():
        prompt.insert(0, {"role": "system", "content": system})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": output}]}


def _as_messages(ds, num_proc: int | None):
    from datasets import Dataset

    rest = [c for c in _column_names(ds) if c not in ("prompt", "completion")]
    features = ds.features.copy()
    features = type(features)({"messages": features["prompt"], **{c: features[c] for c in rest}})
    if isinstance(ds, Dataset):
        return ds.map(
            _join_prompt_completion, remove_columns=["prompt", "completion"], features=features, num_proc=num_proc
        )
    return ds.map(_join_prompt_completion, remove_columns=["prompt", "completion"]).cast(features)


def _join_prompt_completion(row: dict) -> dict:
    return {"messages": row["prompt"] + row["completion"]}


def _add_columns(row: dict, values: dict) -> dict:
    return dict(values)


def _drop_nones(value: Any, top: bool = True) -> Any:
    """Drop the None-valued keys Arrow adds when it unifies structs; a message's own `content` may stay None."""
    if isinstance(value, list):
        return [v if isinstance(v, str) else _drop_nones(v, top) for v in value]
    if isinstance(value, dict):
        if all(type(v) is str for v in value.values()):  # the common {role, content} message: nothing to drop
            return value
        return {
            k: v if isinstance(v, str) else _drop_nones(v, top=False)
            for k, v in value.items()
            if v is not None or (top and k == "content")
        }
    return value


def _resolve_image(image: Any, base_dir: str | None) -> Any:
    """Relative image paths in a local data file are relative to that file, not to the current directory."""
    path = image if isinstance(image, str) else image.get("path") if isinstance(image, dict) else None
    if not path or os.path.isabs(path) or "://" in path or base_dir is None:
        return image
    candidate = os.path.join(base_dir, path)
    if not os.path.exists(candidate):
        return image
    return candidate if isinstance(image, str) else {**image, "path": candidate}


def _check_text(text: Any, field: str) -> list[str]:
    if not isinstance(text, str):
        return [f"{field} is {type(text).__name__}, expected a string"]
    return [] if text.strip() else [f"{field} is empty"]


def _check_prompt_completion(prompt: Any, completion: Any, chat_rows: bool) -> list[str]:
    is_chat = isinstance(prompt, list)
    if isinstance(prompt, str) and isinstance(completion, str):
        issues = [] if completion.strip() else ["completion is empty"]
    elif is_chat and isinstance(completion, list):
        issues = _check_messages(prompt, "prompt", need_assistant=False)
        issues += _check_messages(completion, "completion", need_assistant=True, system_allowed=False)
    else:
        return [
            f"prompt is {type(prompt).__name__} and completion is {type(completion).__name__}: "
            "both must be strings or both message lists"
        ]
    if is_chat != chat_rows:
        issues.append("rows mix string and conversational prompt-completion; the first row decides the format")
    return issues


def _check_messages(messages: Any, field: str, need_assistant: bool, system_allowed: bool = True) -> list[str]:
    if not isinstance(messages, list):
        return [f"{field} is {type(messages).__name__}, expected a list of {{role, content}} messages"]
    if not messages:
        return [f"{field} is empty"]
    issues = []
    previous = None
    for i, message in enumerate(messages):
        label = f"{field}[{i}]"
        if not isinstance(message, dict) or "role" not in message:
            issues.append(f"{label} is not a {{role, content}} message: {str(message)[:80]}")
            previous = None
            continue
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            issues.append(f"{label} has role {role!r}; allowed: {', '.join(ROLES)}")
        elif role == "system" and (i > 0 or not system_allowed):
            issues.append(f"{label} is a system message; a system message may only come first")
        elif role == "tool" and previous not in ("assistant", "tool"):
            issues.append(f"{label} is a tool message that does not follow an assistant turn")
        if role == "assistant" and message.get("tool_calls") and content is None:
            pass  # a pure tool call has no content
        elif isinstance(content, list):
            issues += _check_blocks(content, label)
        elif not isinstance(content, str):
            issues.append(f"{label} content is {type(content).__name__}, expected a string")
        elif role == "assistant" and not content.strip() and not message.get("tool_calls"):
            issues.append(f"{label} is an empty assistant turn")
        previous = role
    if need_assistant and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        issues.append(f"{field} has no assistant turn, so there is nothing to train on")
    return issues


def _check_blocks(blocks: list, label: str) -> list[str]:
    """Structured content (vision datasets): [{"type": "text", "text": ...}, {"type": "image"}, ...]."""
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in ("text", "image"):
            return [f"{label} content has a block {str(block)[:80]}; expected {{'type': 'text'|'image', ...}}"]
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            return [f"{label} content has a text block without a string 'text'"]
    return []


def _check_tools(tools: Any) -> list[str]:
    if tools is None or (isinstance(tools, str) and not tools.strip()):
        return []
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            return [f"tools is not valid JSON: {e}"]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return ["tools must be a list of JSON-schema tool objects"]
    return []


def _check_images(row: dict, view: dict, base_dir: str | None) -> list[str]:
    if "images" not in row and "image" not in row:
        return []
    images = row["images"] if "images" in row else [row["image"]]
    if images is None:
        images = []
    if not isinstance(images, list):
        return [f"images is {type(images).__name__}, expected a list"]
    issues = [f"images[{i}] {msg}" for i, img in enumerate(images) if (msg := _image_issue(img, base_dir))]
    messages = view.get("messages") or view.get("prompt")
    if isinstance(messages, list):  # TRL fills {"type": "image"} placeholders with the images, one for one
        placeholders = sum(
            1
            for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), list)
            for b in m["content"]
            if isinstance(b, dict) and b.get("type") == "image" and "image" not in b
        )
        if placeholders and placeholders != len(images):
            issues.append(f"{len(images)} images but {placeholders} image placeholders in the messages")
    return issues


def _image_issue(image: Any, base_dir: str | None) -> str:
    from io import BytesIO

    try:
        from PIL import Image
    except ImportError:
        return "cannot be checked: pillow is not installed (pip install 'sft-recipes[vision]')"
    if isinstance(image, dict) and image.get("bytes"):
        source: Any = BytesIO(image["bytes"])
    else:
        path = _resolve_image(image, base_dir)
        path = path.get("path") if isinstance(path, dict) else path
        if not isinstance(path, str):
            return f"is {type(image).__name__}, expected a path or image bytes"
        if "://" in path:
            return ""  # remote: cannot be checked offline, the image processor fetches it
        if not os.path.isfile(path):
            return f"not found: {path}"
        source = path
    try:
        with Image.open(source) as img:
            img.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises several types for a bad image
        return f"is not a readable image: {e}"
    return ""


def _features(fmt: str, conversational: bool, plain: bool, text_field: str, extras: list[str]) -> Features:
    """The output schema. Messages are `List(Json())` unless `plain`: an Arrow struct holds the union of every
    message's keys, so `tool_calls: None` and `name: None` would reappear in each row and templates that test
    `'tool_calls' in message` render empty tool calls."""
    from datasets import Features, Image, Json, List, Value

    chat = List({"role": Value("string"), "content": Value("string")}) if plain else List(Json())
    if fmt == "text":
        columns: dict[str, Any] = {text_field: Value("string")}
    elif fmt in ("messages", "sharegpt"):
        columns = {"messages": chat}
    else:
        kind = chat if conversational else Value("string")
        columns = {"prompt": kind, "completion": kind}
    extra_features = {"tools": Json(), "images": List(Image()), "chat_template_kwargs": Json()}
    return Features({**columns, **{c: extra_features[c] for c in extras}})


def _missing_columns(fmt: str, columns: list[str], text_field: str, source: str) -> list[Problem]:
    required = {
        "text": [text_field],
        "messages": ["messages"],
        "prompt_completion": ["prompt", "completion"],
        "sharegpt": ["conversations"],
        "alpaca": ["instruction", "output"],
    }
    if fmt not in required:
        return [Problem("dataset_format", f"unknown format {fmt!r}", fix=f"one of: auto, {', '.join(FORMATS)}")]
    absent = [c for c in required[fmt] if c not in columns]
    if not absent:
        return []
    return [
        Problem(
            source,
            f"format {fmt!r} needs column {_names(absent)}; columns found: {_names(columns)}",
            fix="set dataset_format: auto, or rename the columns; " + _FORMAT_HELP,
        )
    ]


def _plain_chat(ds, fmt: str) -> bool:
    """Whether every message is already {role, content} strings in Arrow: a struct then pads no keys and is ~3x
    faster to write and read than Json."""
    from datasets import List, Value

    columns = {"messages": ["messages"], "sharegpt": ["conversations"], "prompt_completion": ["prompt", "completion"]}
    keys = {"from", "value"} if fmt == "sharegpt" else {"role", "content"}
    for column in columns.get(fmt, []):  # alpaca rows always become {role, content} strings
        feature = (ds.features or {}).get(column)
        inner = feature.feature if isinstance(feature, List) else None
        if not isinstance(inner, dict) or set(inner) != keys or any(v != Value("string") for v in inner.values()):
            return False
    return True


def _kind(ds) -> str:
    columns = _column_names(ds)
    if "prompt" in columns:
        from datasets import Value

        return "prompt_completion" if isinstance(ds.features["prompt"], Value) else "prompt_completion_chat"
    return "messages" if "messages" in columns else "text"


def _undecoded_images(ds):
    """Image columns as {path, bytes}: checking or re-encoding them needs no pixel decode."""
    from datasets import Image, List

    features = ds.features or {}
    for column in ("images", "image"):
        feature = features.get(column)
        if isinstance(feature, Image):
            ds = ds.cast_column(column, Image(decode=False))
        elif isinstance(feature, List) and isinstance(feature.feature, Image):
            ds = ds.cast_column(column, List(Image(decode=False)))
    return ds


def _column_names(ds) -> list[str]:
    if ds.column_names is not None:
        return list(ds.column_names)
    row = _first_row(ds)
    return list(row) if row is not None else []


def _first_row(ds) -> dict | None:
    from datasets import Dataset

    if isinstance(ds, Dataset):
        return ds[0] if len(ds) else None
    return next(iter(ds), None)


def _iter_rows(ds):
    from datasets import Dataset

    if isinstance(ds, Dataset):  # batched reads are ~4x faster than row access
        for batch in ds.iter(batch_size=1000):
            keys = list(batch)
            yield from (dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True))
    else:
        yield from ds


def _base_dir(source: str) -> str | None:
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return path
    return os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else None


def _is_data(path: str) -> bool:
    name = os.path.basename(path)
    return os.path.isfile(path) and not name.startswith(".") and Path(path).suffix in BUILDERS


def _looks_like_file(path: str) -> bool:
    return Path(path).suffix in BUILDERS or path.startswith(("./", "../", "/", "~"))


def _flatten(data_files: Any):
    for value in data_files.values() if isinstance(data_files, dict) else data_files:
        yield from [value] if isinstance(value, str) else value


def _json_problem(path, e: json.JSONDecodeError, lineno: int) -> Problem:
    return Problem(f"{path}:{lineno}", f"malformed JSON: {e.msg} (column {e.colno})", fix="fix or delete that line")


def _names(columns) -> str:
    return ", ".join(repr(c) for c in columns) or "(none)"


def _raise_errors(problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity != "error":
            logger.warning("%s", p)
    if not errors:
        return
    if len(errors) > MAX_REPORTED_PROBLEMS:
        hidden = len(errors) - MAX_REPORTED_PROBLEMS
        errors = errors[:MAX_REPORTED_PROBLEMS] + [Problem("data", f"... and {hidden} more problems like these")]
    raise RecipeError(errors)

"""Training data in: local files, directories, hub ids and mixtures, with the eval split; checked and converted."""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.data.formats import check_rows, columns_of, quoted, source_dir, to_trl_format
from sft_recipes.errors import Problem, RecipeError, error

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".arrow": "arrow"}

STREAMING_CHECK_ROWS = 1000  # a stream has no end to check up to: validate its head

MAX_REPORTED_PROBLEMS = 20


def load_training_data(
    script_args, mixture, training_args, counts: list[dict[str, Any]] | None = None
) -> tuple[Dataset | IterableDataset, Any]:
    """Load, check and convert the training data: (train, eval), eval None when eval_strategy is "no", else the
    `dataset_test_split` split or a seeded `test_split_size` split of train. `counts`, when given, receives each
    source's rows after conversion (before that split; None when streamed)."""
    problems: list[Problem] = []  # collected so that every source is reported at once
    fmt, num_proc = getattr(script_args, "dataset_format", "auto") or "auto", training_args.dataset_num_proc
    preference_column = getattr(script_args, "preference_column", None)
    options = {"text_field": training_args.dataset_text_field, "preference_column": preference_column}
    prepare = functools.partial(_prepare, problems=problems, fmt=fmt, num_proc=num_proc, options=options)
    want_eval = wants_eval(training_args)
    eval_ds = None
    source = script_args.dataset_name
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
    if mixture.datasets:
        if source:
            logger.warning(
                "Both `datasets` and `dataset_name` are set: the `datasets` mixture is used and `dataset_name` "
                "(%s) is ignored, as in TRL.",
                source,
            )
        train = _load_mixture(mixture, prepare, problems, num_proc, counts)
    elif source:
        from trl.scripts.utils import DatasetConfig

        cfg = DatasetConfig(path=source, name=script_args.dataset_config)
        splits = _load(cfg, "dataset_name", split=None, streaming=script_args.dataset_streaming)
        if train_split not in splits:
            raise error(
                "dataset_train_split",
                f"{source} has no split {train_split!r}; splits found: {', '.join(splits)}",
                fix="set dataset_train_split to one of those",
            )
        train = prepare(splits[train_split], source)
        if want_eval and test_split in splits and test_split != train_split:
            eval_ds = prepare(splits[test_split], f"{source}:{test_split}", source_dir(source))
        _raise_errors(problems)
        used = ((train_split, train), (test_split, eval_ds))
        if counts is not None:
            counts += [_count(source, split, ds) for split, ds in used if ds is not None]
    else:
        raise error(
            "dataset_name",
            "no training data given",
            fix="set dataset_name (a .jsonl/.json/.parquet/.csv file, a directory of them, or a hub id) "
            "or a `datasets:` list",
        )
    if want_eval and eval_ds is None:
        eval_ds, train = _split_eval(train, mixture.test_split_size, training_args.seed, script_args)
    return train, eval_ds


def wants_eval(training_args) -> bool:
    """Whether the run evaluates, so that load_training_data returns an eval split."""
    return str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"


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


def local_data_files(cfg) -> list[str]:
    """The local files a source (a DatasetConfig) reads, as they are now: none for a hub id or a missing path."""
    path = os.path.expanduser(cfg.path)
    found: list[str] = []
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "*"), recursive=True))
        found = [
            f for f in found if os.path.isfile(f) and Path(f).suffix in BUILDERS and not Path(f).name.startswith(".")
        ]
    elif os.path.isfile(path):
        found = [path]
    if cfg.data_files is not None and not found:  # generic builder ("json") with local data_files
        found = [f for pattern in _files(cfg.data_files) for f in sorted(glob.glob(os.path.expanduser(pattern)))]
    return found


HEAD_BYTES = 1 << 20  # enough of a .json file to decode the first element of its array


def _array_of_non_objects(path: str) -> Problem | None:
    """A .json file holding an array whose first element is not an object (a row): named by file, from its head."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(HEAD_BYTES).lstrip()
    if not head.startswith("["):
        return None
    try:
        first, _ = json.JSONDecoder().raw_decode(head[1:].lstrip())
    except json.JSONDecodeError:  # an empty array, or a first element longer than the head: the loader decides
        return None
    if isinstance(first, dict):
        return None
    shown = " ".join(head.split())
    shown = shown if len(shown) <= 40 else shown[:40] + "..."
    fix = 'write one object per row, e.g. [{"messages": [...]}, ...] or JSON lines'
    return Problem(path, f"a JSON array of {type(first).__name__} ({shown}): each row must be a JSON object", fix)


def _label(cfg) -> str:
    """How problems name a mixture entry: its path, or its data files when the path is a builder (`json`)."""
    if cfg.path in BUILDERS.values() and cfg.data_files is not None:
        return ", ".join(str(f) for f in _files(cfg.data_files))
    return cfg.path


def _load(cfg, where: str, split: str | None, streaming: bool) -> Any:
    """datasets.load_dataset for a DatasetConfig whose `path` may also be a local file or directory."""
    import datasets

    path = os.path.expanduser(cfg.path)
    kwargs: dict[str, Any] = {"name": cfg.name, "data_dir": cfg.data_dir, "data_files": cfg.data_files}
    local_files = local_data_files(cfg)
    if os.path.isdir(path):
        if not local_files and cfg.data_files is None:
            raise error(where, f"no data files ({', '.join(BUILDERS)}) in directory {cfg.path}")
    elif os.path.isfile(path) or Path(path).suffix in BUILDERS or cfg.path.startswith(("./", "../", "/", "~")):
        if not os.path.isfile(path):
            raise RecipeError(check_file(path))
        kwargs["data_files"] = path
        path = BUILDERS.get(Path(path).suffix, "json")
    not_objects = [p for f in local_files if f.endswith(".json") and (p := _array_of_non_objects(f))]
    if not_objects:  # datasets would load [1, 2] as a `text` column of numbers and blame each row
        raise RecipeError(not_objects)
    try:
        loaded = datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
        if streaming and local_files:  # a stream is parsed only as it is read: read its head where errors are named
            for stream in loaded.values() if isinstance(loaded, dict) else [loaded]:
                list(stream.take(STREAMING_CHECK_ROWS))
        return loaded
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


def _load_mixture(mixture, prepare, problems: list[Problem], num_proc: int | None, counts: list | None) -> Any:
    """TRL's get_dataset semantics (columns, split, fraction = first rows) with local paths and per-source formats."""
    import datasets

    raw = []
    for i, cfg in enumerate(mixture.datasets):
        ds = _load(cfg, f"datasets[{i}]", split=cfg.split, streaming=mixture.streaming)
        if cfg.columns is not None:
            found = columns_of(ds)
            absent = [c for c in cfg.columns if c not in found]
            if absent:
                message = f"{cfg.path} has no column {quoted(absent)}; columns found: {quoted(found)}"
                raise error(f"datasets[{i}].columns", message)
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

    parts = [prepare(ds, _label(cfg)) for ds, cfg in zip(raw, mixture.datasets, strict=True)]
    _raise_errors(problems)
    if counts is not None:
        counts += [_count(cfg.path, cfg.split, ds) for cfg, ds in zip(mixture.datasets, parts, strict=True)]
    parts = _harmonize(parts, [cfg.path for cfg in mixture.datasets], num_proc)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _count(source: str, split: str, ds: Any) -> dict[str, Any]:
    return {"source": source, "split": split, "rows": len(ds) if hasattr(ds, "__len__") else None}


def _prepare(ds, source: str, base_dir: str | None = None, *, problems: list[Problem], fmt, num_proc, options) -> Any:
    """Check and convert one split, its problems added to `problems`; `options` are to_trl_format's."""
    from datasets import Dataset

    try:
        if not isinstance(ds, Dataset):  # a stream is checked as it is read: fail before training on its head
            head = check_rows(ds.take(STREAMING_CHECK_ROWS), fmt, source, base_dir=base_dir, **options)
            if head:
                raise RecipeError(head)
        return to_trl_format(ds, fmt, source, num_proc=num_proc, base_dir=base_dir, **options)
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
            chat_pc = [kind == "prompt_completion_chat" for kind in kinds]
            parts = [_as_messages(ds, num_proc) if pc else ds for ds, pc in zip(parts, chat_pc, strict=True)]
        else:
            listing = ", ".join(f"{s} ({k})" for s, k in zip(sources, kinds, strict=True))
            raise error(
                "datasets",
                f"these sources cannot be mixed into one training set: {listing}",
                fix="convert them to one format (e.g. all conversational), or train on them separately",
            )
    wanted = list(dict.fromkeys(c for ds in parts for c in columns_of(ds)))
    features = Features()
    for column in wanted:  # message columns may be {role, content} structs in one source and Json in another
        found = [ds.features[column] for ds in parts if column in columns_of(ds)]
        features[column] = found[0] if all(f == found[0] for f in found) else List(Json())
    defaults: dict[str, Any] = {"tools": None, "images": [], "chat_template_kwargs": {}}
    aligned = []
    for ds in parts:
        missing = {c: defaults.get(c) for c in wanted if c not in columns_of(ds)}
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


def _as_messages(ds, num_proc: int | None):
    from datasets import Dataset, Features

    rest = {c: ds.features[c] for c in columns_of(ds) if c not in ("prompt", "completion")}
    features = Features({"messages": ds.features["prompt"], **rest})
    removed = ["prompt", "completion"]
    if isinstance(ds, Dataset):
        return ds.map(_join_prompt_completion, remove_columns=removed, features=features, num_proc=num_proc)
    return ds.map(_join_prompt_completion, remove_columns=removed).cast(features)


def _join_prompt_completion(row: dict) -> dict:
    return {"messages": row["prompt"] + row["completion"]}


def _add_columns(row: dict, values: dict) -> dict:
    return dict(values)


def _kind(ds) -> str:
    columns = columns_of(ds)
    if "prompt" in columns:
        from datasets import Value

        return "prompt_completion" if isinstance(ds.features["prompt"], Value) else "prompt_completion_chat"
    return "messages" if "messages" in columns else "text"


def _files(data_files: Any) -> list[str]:
    """`data_files` (a path, a list, or split -> path or list) as one list."""
    if isinstance(data_files, str):
        return [data_files]
    values = data_files.values() if isinstance(data_files, dict) else data_files
    return [f for value in values for f in ([value] if isinstance(value, str) else value)]


def _json_problem(path, e: json.JSONDecodeError, lineno: int) -> Problem:
    return Problem(f"{path}:{lineno}", f"malformed JSON: {e.msg} (column {e.colno})", fix="fix or delete that line")


def _raise_errors(problems: list[Problem]) -> None:
    if len(problems) > MAX_REPORTED_PROBLEMS:
        hidden = len(problems) - MAX_REPORTED_PROBLEMS
        problems = problems[:MAX_REPORTED_PROBLEMS] + [Problem("data", f"... and {hidden} more problems like these")]
    if problems:
        raise RecipeError(problems)

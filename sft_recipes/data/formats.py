"""A dataset's format: detected from its columns, checked row by row, converted in one cached pass for SFTTrainer."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.data.rows import FUNCTION_CALL_ROLES, chosen_as_prompt_completion, convert_row, row_issues
from sft_recipes.errors import Problem, RecipeError, error

if TYPE_CHECKING:
    from datasets import Features

logger = logging.getLogger(__name__)

FORMATS = ("text", "messages", "prompt_completion", "sharegpt", "alpaca", "preference")

# The columns each format needs, in TRL's precedence; the text field (dataset_text_field) comes last. Preference pairs
# come first: their prompt may sit in a 'prompt', 'messages' or 'conversations' column too.
REQUIRED_COLUMNS = {
    "preference": ("chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
}

EXTRA_COLUMNS = ("tools", "images", "chat_template_kwargs")  # passed through to TRL when present

# A preference row holds a good and a bad answer and SFT trains on one: such data is refused unless the recipe says
# which (`preference_column: chosen`), then trained as prompt-completion on the chosen answer.
PREFERENCE_CHOICES = ("chosen",)

LABEL = "label"  # KTO's unpaired layout: a row whose boolean label is false is a bad answer, never trained

_FORMAT_HELP = (
    "the format comes from the columns: 'chosen'+'rejected' (preference), 'prompt'+'completion', 'messages', "
    "'conversations' (ShareGPT), 'instruction'+'output' (Alpaca) or the text field (dataset_text_field); set "
    "dataset_format, dataset_text_field, or pick columns with a `datasets:` entry's `columns`"
)


def detect_format(column_names, text_field: str = "text", source: str = "dataset") -> str:
    """The data format the columns name: the first of REQUIRED_COLUMNS whose columns are all there, else text."""
    for fmt, needed in (*REQUIRED_COLUMNS.items(), ("text", (text_field,))):
        if set(needed) <= set(column_names):
            return fmt
    raise error(source, f"cannot tell the data format; columns found: {quoted(column_names)}", fix=_FORMAT_HELP)


def to_trl_format(
    dataset,
    fmt: str,
    source: str,
    text_field: str = "text",
    num_proc: int | None = None,
    base_dir: str | None = None,
    preference_column: str | None = None,
):
    """Check and convert `dataset` from `fmt` ("auto" or one of FORMATS) to the columns SFTTrainer reads; RecipeError
    names "<source>[row <i>]" for bad rows. Checking inside the conversion's map makes one pass, parallel under
    `num_proc`, cached with the result (a stream is checked as it is read). Relative image paths resolve against
    `base_dir`, by default the directory of a local `source`."""
    from datasets import Dataset

    columns = columns_of(dataset)
    fmt = _checked_format(columns, fmt, text_field, source)
    dataset = _undecoded_images(without_rejected_labels(dataset, columns, source))
    first = first_row(dataset)
    if first is None:
        raise RecipeError(_empty(columns, source))
    if fmt == "preference":
        if preference_column not in PREFERENCE_CHOICES:
            raise RecipeError(refusal(columns, first, source))
        first = chosen_as_prompt_completion(first)
    conversational = is_conversational(first, fmt)
    extras = [c for c in EXTRA_COLUMNS if c in columns or (c == "images" and "image" in columns)]
    plain = _plain_chat(dataset, fmt) and "images" not in extras  # `<image>` markers become typed content
    features = _features(_row_format(fmt), conversational, plain, text_field, extras)
    fn_kwargs = {"fmt": fmt, "text_field": text_field, "extras": extras, "conversational": conversational}
    # datasets fingerprints _convert_batch by its own code, not the row checks it calls: without `code`, a
    # conversion cached by an older sft-recipes would be read back after those checks changed.
    fn_kwargs |= {"base_dir": base_dir or source_dir(source), "source": source, "code": conversion_code()}
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
    dataset,
    fmt: str,
    source: str,
    text_field: str = "text",
    base_dir: str | None = None,
    preference_column: str | None = None,
) -> list[Problem]:
    """Problems in the rows of `dataset` (raw in `fmt`, or already converted); `where` is "<source>[row <i>]".
    Consecutive user (or assistant) turns are allowed: templates that demand alternation (Gemma, Mistral) raise on
    their own, and many datasets are fine with it."""
    columns = columns_of(dataset)
    try:
        fmt = _checked_format(columns, fmt, text_field, source)
    except RecipeError as e:
        return e.problems
    if fmt == "preference" and preference_column not in PREFERENCE_CHOICES:
        return [refusal(columns, first_row(dataset), source)]
    dataset = _undecoded_images(dataset)
    base_dir = base_dir or source_dir(source)
    problems: list[Problem] = []
    conversational = None  # decided by the first row, as TRL does
    for index, row in enumerate(_iter_rows(dataset)):
        if row.get(LABEL) is False:
            continue  # excluded from training, see without_rejected_labels
        row = chosen_as_prompt_completion(row) if fmt == "preference" else row
        conversational = is_conversational(row, fmt) if conversational is None else conversational
        issues = row_issues(row, _row_format(fmt), text_field, base_dir, conversational)
        problems += [Problem(f"{source}[row {index}]", issue) for issue in issues]
    return problems if conversational is not None else [*problems, _empty(columns, source)]


def refusal(columns, first: dict | None, source: str) -> Problem:
    """The one problem a preference data set gets when the recipe has not said which answer to train on."""
    prompt = next((c for c in ("prompt", "conversations", "messages", "instruction") if c in columns), None)
    layout = "plain-text" if isinstance((first or {}).get("chosen"), str) else "conversational"
    where = f"an explicit prompt in {prompt!r}" if prompt else "an implicit prompt (the shared start of both)"
    return Problem(
        source,
        f"this is {layout} preference data ('chosen' and 'rejected' answers, with {where}), not SFT data: SFT "
        "trains on one answer per prompt",
        fix="set preference_column: chosen to train on the chosen answers (the rejected ones are dropped), or "
        "train with a preference trainer (trl's DPOTrainer, `trl dpo`)",
    )


def without_rejected_labels(dataset, columns: list[str], source: str):
    """`dataset` without its `label: false` rows when `label` holds booleans; the count is logged."""
    from datasets import Dataset, Value

    feature = (dataset.features or {}).get(LABEL)
    stream = not isinstance(dataset, Dataset)
    if LABEL not in columns or feature != Value("bool") and not (stream and feature is None):
        return dataset
    if stream:
        logger.warning("%s: rows with label: false (bad answers, KTO-style) are skipped as the stream is read", source)
        return dataset.filter(lambda row: row.get(LABEL) is not False)
    kept = dataset.filter(_good, input_columns=[LABEL], batched=True, desc=f"Dropping label: false rows of {source}")
    if len(kept) < len(dataset):
        logger.warning(
            f"{source}: excluded {len(dataset) - len(kept)} of {len(dataset)} rows with label: false (KTO-style bad "
            f"answers, never trained as good ones); {len(kept)} rows left"
        )
    return kept


def _good(labels: list) -> list[bool]:
    return [label is not False for label in labels]


def _checked_format(columns: list[str], fmt: str, text_field: str, source: str) -> str:
    """`fmt`, detected when "auto"; RecipeError when it is unknown or the columns it needs are absent."""
    fmt = detect_format(columns, text_field, source) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise error("dataset_format", f"unknown format {fmt!r}", fix=f"one of: auto, {', '.join(FORMATS)}")
    absent = [c for c in REQUIRED_COLUMNS.get(fmt, (text_field,)) if c not in columns]
    if absent:
        message = f"format {fmt!r} needs column {quoted(absent)}; columns found: {quoted(columns)}"
        raise error(source, message, fix="set dataset_format: auto, or rename the columns; " + _FORMAT_HELP)
    return fmt


def is_conversational(row: dict, fmt: str) -> bool:
    """Whether rows are message lists: prompt-completion rows (preference ones once converted) may be either."""
    return isinstance(row["prompt"], list) if fmt in ("prompt_completion", "preference") else fmt != "text"


def _row_format(fmt: str) -> str:
    """The format a row is checked and converted in: a preference row is first made prompt-completion."""
    return "prompt_completion" if fmt == "preference" else fmt


def _empty(columns, source: str) -> Problem:
    excluded = " once its label: false rows are excluded" if LABEL in columns else ""
    return Problem(source, f"the split is empty{excluded}", fix="check the path, split, data_files or fraction")


class _BadRows(Exception):
    """Carries row problems out of a `datasets` map worker (a RecipeError would not survive pickling)."""

    def __str__(self) -> str:  # what a stream shows when a bad row turns up mid-training
        return "\n".join(str(p) for p in self.args[0])


@functools.cache
def conversion_code() -> str:
    """A hash of the data layer's source, part of the conversion's cache fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _convert_batch(batch: dict, indices: list[int], **kw) -> dict:
    fmt, text_field, base_dir, conversational = kw["fmt"], kw["text_field"], kw["base_dir"], kw["conversational"]
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    if fmt == "preference":
        rows = [chosen_as_prompt_completion(row) for row in rows]
    fmt = _row_format(fmt)
    problems = [
        Problem(f"{kw['source']}[row {index}]", issue)
        for index, row in zip(indices, rows, strict=True)
        for issue in row_issues(row, fmt, text_field, base_dir, conversational)
    ]
    if problems:
        raise _BadRows(problems)
    converted = [convert_row(row, fmt, text_field, kw["extras"], base_dir) for row in rows]
    return {key: [row[key] for row in converted] for key in converted[0]} if converted else {}


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


def _plain_chat(ds, fmt: str) -> bool:
    """Whether every message is already {role, content} strings in Arrow: a struct then pads no keys and is ~3x
    faster to write and read than Json."""
    from datasets import Dataset, List, Value

    if fmt == "preference":
        return False  # chosen answers come as strings, one message or several
    keys = {"from", "value"} if fmt == "sharegpt" else {"role", "content"}
    chat_columns = () if fmt == "alpaca" else REQUIRED_COLUMNS.get(fmt, ())  # alpaca rows become {role, content}
    for column in chat_columns:
        feature = (ds.features or {}).get(column)
        inner = feature.feature if isinstance(feature, List) else None
        if not isinstance(inner, dict) or set(inner) != keys or any(v != Value("string") for v in inner.values()):
            return False
    if fmt != "sharegpt":
        return True
    if not isinstance(ds, Dataset):
        return False
    import pyarrow.compute as pc

    # function_call turns become tool_calls, which a {role, content} struct cannot hold; read from Arrow, undecoded
    turns = pc.list_flatten(ds.data.column("conversations"))
    roles = {r.lower() for r in pc.unique(pc.struct_field(turns, "from")).to_pylist() if isinstance(r, str)}
    return not roles & set(FUNCTION_CALL_ROLES)


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


def columns_of(ds) -> list[str]:
    """The column names of a dataset, or of a stream's first row when the stream does not know them."""
    return list(ds.column_names) if ds.column_names is not None else list(first_row(ds) or [])


def first_row(ds) -> dict | None:
    """The first row of a dataset or stream; None when it is empty."""
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


def source_dir(source: str) -> str | None:
    """The directory relative image paths of a local source resolve against; None for a hub id."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return path
    return os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else None


def quoted(columns) -> str:
    """Column names for a message: 'a', 'b', or (none)."""
    return ", ".join(repr(c) for c in columns) or "(none)"

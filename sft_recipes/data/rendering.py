"""Converted rows through the trainer's own template and collator: the tool use it leaves out, the first batch."""

from __future__ import annotations

from typing import Any

from sft_recipes.errors import Problem

TOOL_ROWS_CHECKED = 1000  # the first rows looked at for tool use
TOOL_ROWS_RENDERED = 16  # rows with tool use rendered: a template's support does not change from row to row

_TEXT_COLUMNS = ("messages", "prompt", "completion", "tools", "chat_template_kwargs")
_EMPTY_TURN = "that turn would train as an empty assistant turn"
_TOOL_FIX = (
    "use the model's own tool-calling chat template (chat_template_path), e.g. Qwen2.5's or Llama-3.1's; or drop "
    "the tools and tool calls from the data"
)
_FIX = "fix or drop that row: train stops at the first batch that holds it"


def unrendered_tool_use(dataset, processing_class: Any, source: str) -> list[Problem]:
    """Problems ("<source>[row <i>]") for the tools, tool calls and tool results of converted rows that the chat
    template renders to the same text as without them (nothing fails otherwise), or fails on; one per kind."""
    columns = [c for c in _TEXT_COLUMNS if c in (dataset.column_names or _TEXT_COLUMNS)]
    if dataset.column_names is not None:  # images are not decoded: rendering needs the text only
        dataset = dataset.select_columns(columns)
    problems: dict[str, Problem] = {}
    rendered = 0
    for index, row in zip(range(TOOL_ROWS_CHECKED), dataset, strict=False):
        messages = _messages(row)
        if not messages or not (row.get("tools") or any(_calls(m) or _is_tool(m) for m in messages)):
            continue
        for kind, message in _row_problems(row, messages, processing_class):
            problems.setdefault(kind, Problem(f"{source}[row {index}]", message, _TOOL_FIX))
        rendered += 1
        if rendered == TOOL_ROWS_RENDERED:
            break
    return list(problems.values())


def _row_problems(row: dict, messages: list, processing_class: Any):
    """(kind, message) for what this row's template leaves out."""
    tools = row.get("tools") or None
    extra = row.get("chat_template_kwargs") or {}

    def render(conversation: list, with_tools: Any) -> str | Exception:
        try:
            return processing_class.apply_chat_template(conversation, tools=with_tools, tokenize=False, **extra)
        except Exception as err:  # noqa: BLE001 - jinja, the template's raise_exception and TypeErrors alike
            return err

    full = render(messages, tools)
    if isinstance(full, Exception):
        yield "render", f"the chat template fails on this row's tool use: {full}"
        return
    if tools and render(messages, None) == full:
        yield "tools", "the chat template does not render the row's `tools`: the model would learn to call them unseen"
    for i, message in enumerate(messages):
        if _calls(message):
            without = {k: v for k, v in message.items() if k != "tool_calls"}
            without["content"] = message.get("content") or ""
            if render([*messages[:i], without, *messages[i + 1 :]], tools) == full:
                yield "tool_calls", f"the chat template does not render the tool calls of message {i}: {_EMPTY_TURN}"
                break
    for i, message in enumerate(messages):
        if _is_tool(message) and render([*messages[:i], *messages[i + 1 :]], tools) == full:
            yield "tool", f"the chat template does not render the tool result in message {i} (role 'tool')"
            break


def _messages(row: dict) -> list | None:
    if isinstance(row.get("messages"), list):
        return row["messages"]
    if isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        return row["prompt"] + row["completion"]
    return None


def _calls(message: Any) -> bool:
    return isinstance(message, dict) and bool(message.get("tool_calls"))


def _is_tool(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "tool"


def first_batch_problems(dataset, collate: Any, source: str, rows: int) -> list[Problem]:
    """Problems ("<source>[row <i>]") of the first `rows` rows built into one batch by `collate` (TRL's: for vision
    data, the processor call a training step makes: image tokens vs images, truncated image files). When the batch
    fails, each row alone names those that do; rows are fetched afresh, as collators rewrite the rows they get."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):  # a stream: its head as one batch
        try:
            collate([dict(row) for row in dataset.take(rows)])
        except Exception as err:  # noqa: BLE001 - datasets, PIL and processors raise many types
            return [Problem(f"{source}[rows 0-{rows - 1}]", f"the first batch cannot be built: {_say(err)}", _FIX)]
        return []
    count = min(rows, len(dataset))
    try:
        collate([dataset[i] for i in range(count)])
        return []
    except Exception as batch_error:  # noqa: BLE001
        failed = []
        for index in range(count):
            try:
                collate([dataset[index]])
            except Exception as err:  # noqa: BLE001
                failed.append(Problem(f"{source}[row {index}]", f"the first batch cannot be built: {_say(err)}", _FIX))
        where = f"{source}[rows 0-{count - 1}]"
        return failed or [Problem(where, f"these rows cannot be built into one batch: {_say(batch_error)}", _FIX)]


def _say(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"

"""What the chat template leaves out of a row: tools, tool calls and tool results it does not render."""

from __future__ import annotations

from typing import Any

from sft_recipes.errors import Problem

TOOL_ROWS_CHECKED = 1000  # the first rows looked at for tool use
TOOL_ROWS_RENDERED = 16  # rows with tool use rendered: a template's support does not change from row to row

_TEXT_COLUMNS = ("messages", "prompt", "completion", "tools", "chat_template_kwargs")
_EMPTY_TURN = "that turn would train as an empty assistant turn"
_FIX = (
    "use the model's own tool-calling chat template (chat_template_path), e.g. Qwen2.5's or Llama-3.1's; or drop "
    "the tools and tool calls from the data"
)


def unrendered_tool_use(
    dataset, processing_class: Any, source: str, chat_template: str | None = None, limit: int = TOOL_ROWS_CHECKED
) -> list[Problem]:
    """Problems ("<source>[row <i>]") for the tools, tool calls and tool results of converted rows that the chat
    template renders to the same text as without them (nothing fails otherwise), or fails on; one per kind."""
    columns = [c for c in _TEXT_COLUMNS if c in (dataset.column_names or _TEXT_COLUMNS)]
    if dataset.column_names is not None:  # images are not decoded: rendering needs the text only
        dataset = dataset.select_columns(columns)
    problems: dict[str, Problem] = {}
    rendered = 0
    for index, row in zip(range(limit), dataset, strict=False):
        messages = _messages(row)
        if not messages or not (row.get("tools") or any(_calls(m) or _is_tool(m) for m in messages)):
            continue
        for kind, message in _row_problems(row, messages, processing_class, chat_template):
            problems.setdefault(kind, Problem(f"{source}[row {index}]", message, _FIX))
        rendered += 1
        if rendered == TOOL_ROWS_RENDERED:
            break
    return list(problems.values())


def _row_problems(row: dict, messages: list, processing_class: Any, chat_template: str | None):
    """(kind, message) for what this row's template leaves out."""
    tools = row.get("tools") or None
    extra = {"chat_template": chat_template, **(row.get("chat_template_kwargs") or {})}

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

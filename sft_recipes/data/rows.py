"""One row in any format: its conversion to the columns SFTTrainer reads, and checks that name what is wrong."""

from __future__ import annotations

from typing import Any

from sft_recipes.data import tool_calls
from sft_recipes.data.images import image_issues, resolve_image, typed_placeholders

ROLES = ("system", "user", "assistant", "tool")

SHAREGPT_ROLES = {
    **dict.fromkeys(("human", "user"), "user"),
    **dict.fromkeys(("gpt", "assistant", "chatgpt", "model", "bard", "function_call"), "assistant"),
    **dict.fromkeys(("tool", "function", "function_response", "observation"), "tool"),
    "system": "system",
}


def row_issues(row: dict, fmt: str, text_field: str, base_dir: str | None, conversational: bool) -> list[str]:
    """What is wrong with one row in `fmt`; empty when nothing is."""
    view = convert_row(row, fmt, text_field, [], None) if fmt in ("sharegpt", "alpaca") else row
    if fmt == "text":
        issues = _check_text(view[text_field], text_field)
    elif "messages" in view:
        issues = _check_messages(view["messages"], "messages", need_assistant=True)
    else:
        issues = _check_prompt_completion(view["prompt"], view["completion"], conversational)
    if fmt == "sharegpt":
        issues += tool_calls.function_call_issues(row["conversations"])
    messages = view.get("messages") or view.get("prompt")
    if isinstance(messages, list) and isinstance(view.get("completion"), list):
        messages = messages + view["completion"]
    issues += [issue] if (issue := tool_calls.tools_issue(row.get("tools"))) else []
    return issues + image_issues(row, messages, base_dir)


def is_conversational(row: dict, fmt: str) -> bool:
    """Whether rows of `fmt` are message lists; prompt-completion rows may be either, as the first row says."""
    if fmt == "prompt_completion":
        return isinstance(row["prompt"], list)
    return fmt != "text"


def convert_row(row: dict, fmt: str, text_field: str, extras: list[str], base_dir: str | None) -> dict:
    """One row in `fmt` -> the TRL columns. Leaves malformed values as they are, for check_rows to name."""
    if fmt == "text":
        out = {text_field: row[text_field]}
    elif fmt == "messages":
        out = {"messages": _with_tool_calls(_drop_nones(row["messages"]))}
    elif fmt == "sharegpt":
        out = {"messages": sharegpt_messages(row)}
    elif fmt == "alpaca":
        out = alpaca_prompt_completion(row)
    else:
        out = {"prompt": _drop_nones(row["prompt"]), "completion": _with_tool_calls(_drop_nones(row["completion"]))}
    if "tools" in extras:
        out["tools"] = _drop_nones(tool_calls.parse_tools(row.get("tools")))
    if "images" in extras:
        images = row["images"] if "images" in row else [row.get("image")]
        out["images"] = [resolve_image(img, base_dir) for img in images or [] if img is not None]
        for column in ("messages", "prompt", "completion"):
            if column in out:
                out[column] = typed_placeholders(out[column])
    if "chat_template_kwargs" in extras:
        out["chat_template_kwargs"] = row.get("chat_template_kwargs") or {}
    return out


def sharegpt_messages(row: dict) -> Any:
    conversations = row["conversations"]
    if not isinstance(conversations, list):
        return conversations
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():  # LLaMA-Factory's ShareGPT keeps the system prompt in a column
        messages.append({"role": "system", "content": system})
    for turn in conversations:
        if not (isinstance(turn, dict) and "from" in turn):
            messages.append(_drop_nones(turn))
            continue
        message = {k: v for k, v in turn.items() if k not in ("from", "value") and v is not None}
        role = turn["from"]
        message["role"] = SHAREGPT_ROLES.get(role.lower(), role) if isinstance(role, str) else role
        is_call = isinstance(role, str) and role.lower() in tool_calls.FUNCTION_CALL_ROLES
        calls = tool_calls.parse_function_call(turn.get("value")) if is_call else None
        if calls is None:  # a malformed call stays text, for check_rows to name
            message["content"] = turn.get("value")
        else:  # empty content, not none: templates without tool support then render it instead of raising
            message.update(content="", tool_calls=calls)
        messages.append(message)
    return messages


def alpaca_prompt_completion(row: dict) -> dict:
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


def chosen_as_prompt_completion(row: dict) -> dict:
    """A preference row as a prompt-completion row on its chosen answer; its other columns (images, tools) kept."""
    prompt = _preference_prompt(row)
    chosen = _answer(row.get("chosen"))
    if prompt is None:  # TRL's implicit prompt: the longest shared start of chosen and rejected
        from trl.data_utils import extract_prompt

        split = extract_prompt({"chosen": chosen, "rejected": _answer(row.get("rejected"))})
        prompt, chosen = split["prompt"], split["chosen"]
    if isinstance(prompt, list) and isinstance(chosen, str):
        chosen = [{"role": "assistant", "content": chosen}]
    elif isinstance(prompt, str) and isinstance(chosen, list):
        prompt = [{"role": "user", "content": prompt}]
    rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected", "prompt", "conversations", "messages")}
    return {**rest, "prompt": prompt, "completion": chosen}


def _preference_prompt(row: dict) -> Any:
    if "prompt" in row:
        return row["prompt"]
    if "conversations" in row:  # LLaMA-Factory's ShareGPT preference layout
        return sharegpt_messages(row)
    if "messages" in row:
        return row["messages"]
    return alpaca_prompt_completion(row)["prompt"] if "instruction" in row else None


def _answer(answer: Any) -> Any:
    """An answer as a string or a message list: LLaMA-Factory keeps one message ({from, value} or {role, content})."""
    if isinstance(answer, dict):
        answer = [answer]
    if isinstance(answer, list) and any(isinstance(m, dict) and "from" in m for m in answer):
        return sharegpt_messages({"conversations": answer})
    return answer


def _with_tool_calls(messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages
    return [tool_calls.with_tool_calls(m) if isinstance(m, dict) and m.get("tool_calls") else m for m in messages]


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

"""One row in any format: converted to the columns SFTTrainer reads (tool calls and images included) and checked."""

from __future__ import annotations

import json
import os
from typing import Any

ROLES = ("system", "user", "assistant", "tool")

SHAREGPT_ROLES = {
    **dict.fromkeys(("human", "user"), "user"),
    **dict.fromkeys(("gpt", "assistant", "chatgpt", "model", "bard", "function_call"), "assistant"),
    **dict.fromkeys(("tool", "function", "function_response", "observation"), "tool"),
    "system": "system",
}

FUNCTION_CALL_ROLES = ("function_call",)  # LLaMA-Factory's `function_tag` (glaive_toolcall and its descendants)

PLACEHOLDER = "<image>"  # LLaMA-Factory's and LLaVA's marker for "the next image of `images` goes here"


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
        issues += function_call_issues(row["conversations"])
    messages = view.get("messages") or view.get("prompt")
    if isinstance(messages, list) and isinstance(view.get("completion"), list):
        messages = messages + view["completion"]
    issues += [issue] if (issue := tools_issue(row.get("tools"))) else []
    return issues + image_issues(row, messages, base_dir)


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
        out["tools"] = _drop_nones(parse_tools(row.get("tools")))
    if "images" in extras:
        images = row["images"] if "images" in row else [row.get("image")]
        out["images"] = [resolve_image(img, base_dir) for img in images or [] if img is not None]
        out |= {c: typed_placeholders(out[c]) for c in ("messages", "prompt", "completion") if c in out}
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
        is_call = isinstance(role, str) and role.lower() in FUNCTION_CALL_ROLES
        calls = parse_function_call(turn.get("value")) if is_call else None
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
    """Messages whose tool_calls are in tool_call's layout (OpenAI-style JSON-string arguments parsed)."""
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls and isinstance(calls, list) and all(isinstance(c, dict) for c in calls):
            message = {**message, "tool_calls": [tool_call(c) for c in calls]}
        out.append(message)  # malformed tool_calls are left for check_rows to name
    return out


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


def parse_function_call(value: Any) -> list[dict] | None:
    """A ShareGPT function_call value ('{"name": ..., "arguments": ...}', or a JSON list of them for parallel calls)
    as tool_calls; None when it is not one."""
    if isinstance(value, str):
        value = _loads(value)  # None when it is not JSON: no call
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    return [tool_call(c) for c in calls]


def tool_call(call: dict) -> dict:
    """One call as {"type": "function", "function": {"name": ..., "arguments": {...}}} (transformers' tool-use docs),
    its arguments a mapping (Llama-3.1 and others `tojson` them: a JSON string would be written as a quoted string).
    Datasets in Llama's own output format name them `parameters`."""
    function = call["function"] if isinstance(call.get("function"), dict) else call
    arguments = function["arguments"] if "arguments" in function else function.get("parameters", {})
    if isinstance(arguments, str) and isinstance(parsed := _loads(arguments), dict):
        arguments = parsed
    out: dict[str, Any] = {"type": "function", "function": {"name": function.get("name"), "arguments": arguments}}
    if call.get("id") is not None:  # Mistral's template pairs calls and results by id
        out["id"] = call["id"]
    return out


def parse_tools(tools: Any) -> Any:
    """The `tools` column as a list of {"type": "function", "function": {name, description, parameters}}: a JSON string
    parsed (glaive keeps them so), bare {name, parameters} schemas wrapped; None for no tools."""
    if isinstance(tools, str):
        tools = _loads(tools, default=tools) if tools.strip() else None  # check_rows reports bad JSON
    if not isinstance(tools, list):
        return tools or None
    wrapped = [{"type": "function", "function": t} if isinstance(t, dict) and "name" in t else t for t in tools]
    return wrapped or None


def tools_issue(tools: Any) -> str:
    """What is wrong with a row's `tools` value; empty when nothing is."""
    if isinstance(tools, str) and tools.strip():
        try:
            json.loads(tools)
        except json.JSONDecodeError as e:
            return f"tools is not valid JSON: {e}"
    tools = parse_tools(tools)
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        return "tools must be a list of JSON-schema tool objects"
    return ""


def function_call_issues(conversations: Any) -> list[str]:
    """ShareGPT function_call turns whose value is not a JSON tool call."""
    if not isinstance(conversations, list):
        return []
    return [
        f"conversations[{i}] is a {turn['from']!r} turn whose value is not a JSON tool call "
        f'{{"name": ..., "arguments": {{...}}}} (or a list of them): {str(turn.get("value"))[:80]}'
        for i, turn in enumerate(conversations)
        if isinstance(turn, dict)
        and isinstance(turn.get("from"), str)
        and turn["from"].lower() in FUNCTION_CALL_ROLES
        and parse_function_call(turn.get("value")) is None
    ]


def _loads(text: str, default: Any = None) -> Any:
    """`text` as JSON; `default` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


def typed_placeholders(messages: Any) -> Any:
    """Messages with `<image>` markers as typed content: "<image>Who?" -> [{"type": "image"}, {"type": "text", ...}].

    Every string content becomes typed, not only the marked ones: TRL inserts all images into a string first user
    turn, on top of the markers, and the processor then counts twice the image tokens it has images.
    """
    if not isinstance(messages, list) or not any(_has_text(m) and PLACEHOLDER in m["content"] for m in messages):
        return messages
    return [{**m, "content": _blocks(m["content"])} if _has_text(m) else m for m in messages]


def placeholder_count(messages: Any, in_tool_messages: bool = False) -> int:
    """The images a conversation asks for: unfilled {"type": "image"} blocks and `<image>` markers in strings, in
    the messages TRL fills with images (every role but "tool"), or in the tool messages only."""
    if not isinstance(messages, list):
        return 0
    count = 0
    for message in messages:
        if not isinstance(message, dict) or (message.get("role") == "tool") != in_tool_messages:
            continue
        content = message.get("content")
        if isinstance(content, str):
            count += content.count(PLACEHOLDER)
        elif isinstance(content, list):
            count += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image" and "image" not in b)
    return count


def resolve_image(image: Any, base_dir: str | None) -> Any:
    """A relative image path is looked up next to the data file first, then in the working directory; the path
    found is made absolute, so that decoding does not depend on where the process runs later."""
    path = image if isinstance(image, str) else image.get("path") if isinstance(image, dict) else None
    if not path or os.path.isabs(path) or "://" in path:
        return image
    found = next(
        (c for c in (os.path.join(base_dir, path) if base_dir else None, path) if c and os.path.exists(c)), None
    )
    if found is None:
        return image
    found = os.path.abspath(found)
    return found if isinstance(image, str) else {**image, "path": found}


def image_issues(row: dict, messages: Any, base_dir: str | None) -> list[str]:
    """What is wrong with a row's images: not a list, unreadable files, or not as many as its placeholders."""
    if "images" not in row and "image" not in row:
        return []
    images = row["images"] if "images" in row else [row["image"]]
    if images is None:
        images = []
    if not isinstance(images, list):
        return [f"images is {type(images).__name__}, expected a list"]
    issues = [f"images[{i}] {msg}" for i, img in enumerate(images) if (msg := _image_issue(img, base_dir))]
    placeholders = placeholder_count(messages)
    if placeholder_count(messages, in_tool_messages=True):
        issues.append("a tool message holds an image placeholder, and TRL fills only user, assistant and system turns")
    elif placeholders and placeholders != len(images):  # with none, TRL puts every image before the first user turn
        issues.append(
            f"{len(images)} images but {placeholders} image placeholders in the messages: the processor needs "
            f"exactly one image per placeholder (an image block or a {PLACEHOLDER} marker in the text)"
        )
    return issues


def _has_text(message: Any) -> bool:
    return isinstance(message, dict) and isinstance(message.get("content"), str)


def _blocks(content: str) -> list[dict]:
    blocks: list[dict] = []
    for i, text in enumerate(content.split(PLACEHOLDER)):
        if i:
            blocks.append({"type": "image"})
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _image_issue(image: Any, base_dir: str | None) -> str:
    from io import BytesIO

    try:
        from PIL import Image
    except ImportError:
        return "cannot be checked: pillow is not installed (pip install 'sft-recipes[vision]')"
    if isinstance(image, dict) and image.get("bytes"):
        source: Any = BytesIO(image["bytes"])
    else:
        path = resolve_image(image, base_dir)
        path = path.get("path") if isinstance(path, dict) else path
        if not isinstance(path, str):
            return f"is {type(image).__name__}, expected a path or image bytes"
        if "://" in path:
            return ""  # remote: cannot be checked offline, the image processor fetches it
        if not os.path.isfile(path):
            if os.path.isabs(path):
                return f"not found: {path}"
            beside = f"next to the data file in {base_dir}, then " if base_dir else ""
            return f"not found: {path} (looked {beside}in the working directory {os.getcwd()})"
        source = path
    try:
        with Image.open(source) as img:
            img.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises several types for a bad image
        return f"is not a readable image: {e}"
    return ""


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
